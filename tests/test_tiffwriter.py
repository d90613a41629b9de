"""The TIFF block writer: tiles and strips in order, its bound on the complete blocks not
yet in the file (behind the codec threads or a slow file), and the head written first for
a file written front to back."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest

from pwconv.io import codecs
from pwconv.io.formats.tiffblocks import BlockLayout
from pwconv.io.formats.tiffwriter import EncodedBlocks, RawTag, tiff_head


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


def test_blocks_written_out_of_order_never_wait_for_a_writer_that_needs_an_earlier_one(tmp_path):
    """With a bound of one byte, every complete block is over it; the writer waits for the
    first block, which only the engine can complete, so the engine must not wait."""
    image = np.arange(64 * 16, dtype=np.float32).reshape(64, 16, 1)
    layout = BlockLayout(image.shape, image.dtype, (16, 16), 1, None, 1)
    blocks = EncodedBlocks(image.shape, layout, None, "x", tiled=False, hold=1)
    out = _written(blocks, tmp_path)
    writer = threading.Thread(target=lambda: [blocks.write([(r, r + 16), (0, 16), (0, 1)], image[r : r + 16])
                                              for r in range(48, -1, -16)])  # fmt: skip
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive()
    blocks.finish()
    assert b"".join(bytes(b) for b in out) == image.tobytes()  # no codec: the pixels as they are


class _SlowFile:
    """A file whose first write waits until ``release`` is set."""

    def __init__(self) -> None:
        self.release, self.data = threading.Event(), bytearray()

    def write(self, data) -> int:
        self.release.wait()
        self.data += data
        return len(data)

    def close(self) -> None:
        pass


def test_a_write_waits_while_the_file_has_not_taken_the_complete_blocks():
    """An upload slower than the run: complete blocks beyond the bound are not held, the
    engine waits for the file's writer instead."""
    image = np.ones((64, 16, 1), np.float32)
    layout = BlockLayout(image.shape, image.dtype, (16, 16), 1, None, 1)
    blocks = EncodedBlocks(image.shape, layout, None, "x", tiled=False, hold=2 * 16 * 16 * 4)  # two blocks
    slow = _SlowFile()
    blocks.start(slow, lambda file, encoded: [file.write(b) for b in encoded] and None)
    writer = threading.Thread(target=lambda: [blocks.write([(r, r + 16), (0, 16), (0, 1)], image[r : r + 16])
                                              for r in range(0, 64, 16)])  # fmt: skip
    writer.start()
    writer.join(timeout=1.0)
    try:
        assert writer.is_alive()  # the file took none: the fourth block's write waits
    finally:
        slow.release.set()
    writer.join(timeout=60)
    assert not writer.is_alive()
    blocks.finish()
    assert bytes(slow.data) == image.tobytes()


@pytest.mark.parametrize("bigtiff", [False, True])
@pytest.mark.parametrize("tiled", [True, False])
def test_a_head_written_first_makes_a_tiff_that_tifffile_reads(tmp_path, bigtiff, tiled):
    tifffile = pytest.importorskip("tifffile")
    image = np.random.default_rng(4).random((37, 45, 3)).astype(np.float32)
    rows, cols = (16, 32) if tiled else (16, 45)
    pieces = []
    for r in range(0, 37, rows):
        for c in range(0, 45, cols):
            piece = image[r : r + rows, c : c + cols]
            if tiled:
                piece = np.pad(piece, ((0, rows - piece.shape[0]), (0, cols - piece.shape[1]), (0, 0)))
            pieces.append(piece.tobytes())
    block = [RawTag.longs(322, cols), RawTag.longs(323, rows)] if tiled else [RawTag.longs(278, rows)]
    tags = [RawTag.longs(256, 45), RawTag.longs(257, 37), RawTag.shorts(258, 32, 32, 32), RawTag.shorts(259, 1),
            RawTag.shorts(262, 2), RawTag.shorts(277, 3), RawTag.shorts(284, 1), RawTag.shorts(339, 3, 3, 3),
            RawTag(305, 2, 7, b"pwconv\0"), RawTag(33550, 12, 3, np.array([10.0, 10.0, 0.0]).tobytes()),
            *block]  # fmt: skip
    head = tiff_head(tags, [len(p) for p in pieces], bigtiff=bigtiff, tiled=tiled)
    (tmp_path / "x.tif").write_bytes(head + b"".join(pieces))
    with tifffile.TiffFile(tmp_path / "x.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff == bigtiff and page.is_tiled == tiled
        assert page.tags[305].value == "pwconv" and page.tags[33550].value == (10.0, 10.0, 0.0)
        np.testing.assert_array_equal(page.asarray(), image)


def test_a_classic_tiff_head_refuses_pixels_past_4_gib():
    tags = [RawTag.longs(256, 1), RawTag.longs(257, 1)]
    with pytest.raises(ValueError, match="BigTIFF"):
        tiff_head(tags, [2**31, 2**31], bigtiff=False, tiled=True)
    assert tiff_head(tags, [2**31, 2**31], bigtiff=True, tiled=True)[:4] == b"II+\x00"
