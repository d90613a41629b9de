"""The compressed TIFF block writer: tiles and strips in order, and its bound on the
complete blocks that wait for the codec threads."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest

from pwconv.io import codecs
from pwconv.io.formats.tiffblocks import BlockLayout
from pwconv.io.formats.tiffwriter import EncodedBlocks


def _written(blocks: EncodedBlocks, folder) -> list[bytes]:
    out: list[bytes] = []
    blocks.start(str(folder / "blocks"), lambda file, encoded: out.extend(encoded))
    return out


@pytest.mark.parametrize("tiled", [True, False])
def test_blocks_come_out_in_order_whatever_order_they_are_written_in(tmp_path, tiled):
    image = np.random.default_rng(0).integers(0, 9, (37, 45, 3)).astype(np.uint16)
    layout = BlockLayout(image.shape, image.dtype, (16, 32), 3, "deflate", 1)
    blocks = EncodedBlocks(image.shape, layout, 6, "x", tiled=tiled, hold=0)
    out = _written(blocks, tmp_path)
    windows = [(r, c) for r in range(0, 37, 10) for c in range(0, 45, 20)][::-1]  # bottom right first
    for r, c in windows:
        box = [(r, min(r + 10, 37)), (c, min(c + 20, 45)), (0, 3)]
        blocks.write(box, image[r : r + 10, c : c + 20])
    blocks.finish()
    rows, cols = (16, 32) if tiled else (16, 45)
    expected = []
    for r in range(0, 37, rows):
        for c in range(0, 45, cols):
            piece = image[r : r + rows, c : c + cols]
            if tiled:  # a tile is stored whole: padded past the image's edges
                piece = np.pad(piece, ((0, rows - piece.shape[0]), (0, cols - piece.shape[1]), (0, 0)))
            expected.append(piece.tobytes())
    assert [zlib.decompress(b) for b in out] == expected


def test_a_write_waits_while_too_many_complete_blocks_wait_for_the_codec_threads(tmp_path):
    image = np.ones((64, 16, 1), np.float32)
    layout = BlockLayout(image.shape, image.dtype, (16, 16), 1, "deflate", 1)
    blocks = EncodedBlocks(image.shape, layout, 1, "x", tiled=False, hold=2 * 16 * 16 * 4)  # two blocks
    out = _written(blocks, tmp_path)
    release = threading.Event()
    busy = [codecs.pool().submit(release.wait) for _ in range(8)]  # every codec thread held
    writer = threading.Thread(target=lambda: [blocks.write([(r, r + 16), (0, 16), (0, 1)], image[r : r + 16])
                                              for r in range(0, 64, 16)])  # fmt: skip
    writer.start()
    writer.join(timeout=1.0)
    try:
        assert writer.is_alive()  # the third complete block waits: the threads take none
    finally:
        release.set()
    writer.join(timeout=60)
    assert not writer.is_alive()
    for future in busy:
        future.result()
    blocks.finish()
    assert b"".join(zlib.decompress(b) for b in out) == image.tobytes()
