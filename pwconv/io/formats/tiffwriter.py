"""TIFF outputs written during the run: strips or tiles encoded on the codec threads as
each is complete, handed to the file's writer in order by a thread of their own; and the
bytes in front of an uncompressed TIFF's pixels (:func:`tiff_head`), for a file written
front to back where nothing can be rewritten (an upload).

Used for plain TIFF outputs (strips) and for GeoTIFF outputs pwconv writes itself (tiles,
the georeferencing tags made by GDAL: :mod:`pwconv.io.formats.raster`).
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pwconv.io import codecs, threads
from pwconv.io.atomic import open_empty
from pwconv.io.formats.tiffblocks import BlockLayout, predicted

#: pwconv's codec names -> tifffile's.
TIFFFILE_NAMES = {"deflate": "zlib", "zstd": "zstd", "lzw": "lzw"}
#: Past this many bytes of pixels (4 GiB less a margin for the tags), an output is a BigTIFF.
BIGTIFF_BYTES = 2**32 - 2**25
# The complete blocks that may wait behind the reads where the sink was given no budget.
_HOLD = 64 << 20


#: Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., IFD8).
FIELD_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}  # fmt: skip
_SHORT, _LONG, _LONG8 = 3, 4, 16


@dataclass(frozen=True)
class RawTag:
    """A TIFF tag as a little-endian file stores it: code, field type, count of values and
    the values' bytes.

    >>> RawTag.shorts(259, 1)
    RawTag(code=259, type=3, count=1, data=b'\\x01\\x00')
    """

    code: int
    type: int
    count: int
    data: bytes

    @classmethod
    def shorts(cls, code: int, *values: int) -> RawTag:
        return cls(code, _SHORT, len(values), struct.pack(f"<{len(values)}H", *values))

    @classmethod
    def longs(cls, code: int, *values: int) -> RawTag:
        return cls(code, _LONG, len(values), struct.pack(f"<{len(values)}I", *values))


def tiff_head(tags: list[RawTag], block_bytes: list[int], *, bigtiff: bool, tiled: bool) -> bytes:
    """The bytes in front of a TIFF's pixels: the header, one IFD holding ``tags`` and the
    blocks' offsets and byte counts, and the values too long for the IFD, padded to a
    multiple of 16. The blocks (``block_bytes``: each one's size, tiles or strips in the
    file's order) are to follow these bytes back to back, so the whole file can be written
    front to back. A classic TIFF that would pass 4 GiB is refused (ValueError)."""
    word, entry_bytes = (8, 20) if bigtiff else (4, 12)
    place_type = _LONG8 if bigtiff else _LONG
    count = len(block_bytes)
    offsets_code, counts_code = (324, 325) if tiled else (273, 279)
    blank = bytes(count * word)
    entries = sorted(
        [
            *tags,
            RawTag(offsets_code, place_type, count, blank),
            RawTag(counts_code, place_type, count, blank),
        ],
        key=lambda tag: tag.code,
    )
    header_bytes, count_bytes = (16, 8) if bigtiff else (8, 2)
    # the header, the IFD's entry count, its entries and the next IFD's offset (none)
    end = header_bytes + count_bytes + len(entries) * entry_bytes + word
    places: dict[int, int] = {}
    for tag in entries:
        if len(tag.data) > word:
            end += end % 2  # values start on a word boundary
            places[tag.code] = end
            end += len(tag.data)
    start = -(-end // 16) * 16
    if not bigtiff and start + sum(block_bytes) >= 2**32:
        raise ValueError("a classic TIFF holds at most 4 GiB; write a BigTIFF")
    unit = "<u8" if bigtiff else "<u4"
    starts = start + np.concatenate(([0], np.cumsum(block_bytes[:-1], dtype=np.int64)))
    filled = {
        offsets_code: starts.astype(unit).tobytes(),
        counts_code: np.asarray(block_bytes, unit).tobytes(),
    }
    head = bytearray(start)
    head[:header_bytes] = (
        struct.pack("<2sHHHQ", b"II", 43, 8, 0, header_bytes)
        if bigtiff
        else struct.pack("<2sHI", b"II", 42, header_bytes)
    )
    at = header_bytes
    head[at : at + count_bytes] = struct.pack("<Q" if bigtiff else "<H", len(entries))
    at += count_bytes
    for tag in entries:
        data = filled.get(tag.code, tag.data)
        counted = struct.pack("<HHQ" if bigtiff else "<HHI", tag.code, tag.type, tag.count)
        value = (
            data.ljust(word, b"\0") if tag.code not in places else places[tag.code].to_bytes(word, "little")
        )
        head[at : at + entry_bytes] = counted + value
        at += entry_bytes
        if tag.code in places:
            head[places[tag.code] : places[tag.code] + len(data)] = data
    return bytes(head)


def level_or_default(codec: str, level: int | None) -> int:
    """The compression level asked for, else the usual one (``codecs.LEVELS``)."""
    levels = codecs.LEVELS[codec]
    assert levels is not None
    return level or levels[2]


class BlockFile(Protocol):
    """Where the blocks go: a file open for writing, or anything written the same way."""

    def write(self, data: Any, /) -> int: ...

    def close(self) -> None: ...


class _Stopped(Exception):
    """The run failed: the block writer stops and the temp file is discarded."""


class EncodedBlocks:
    """A TIFF's blocks (``layout``: the block grid, codec and predictor; ``level``: the
    codec's, None for its usual one): strips, or tiles where ``tiled`` (a tile is stored
    whole, padded past the image's edges; a strip at the bottom stores only its rows). Each
    block is encoded on the codec threads once its last pixel is written (a layout without
    a codec stores it as it is), and its raw pixels let go; a thread of its own hands the
    encoded blocks to the file's writer in order (row by row of blocks) as they are ready,
    so the file is written during the run and only blocks not yet complete, or complete
    ahead of an earlier one, are held.

    Held whole and written by tifffile at the end, 256 MiB of float32 took 2.4 s of deflate
    on two cores after the run, and a compressed output had to fit in half of
    ``--max-memory``.

    A complete block is encoded after any decoding that waits (the reads go first); once the
    complete blocks not yet handed to the file hold more than ``hold`` bytes (0: 64 MiB), the
    engine's next write waits until the codec threads and the file's writer have taken
    enough of them, unless the writer waits for a block still incomplete (which only the
    engine can complete). Without that bound, a run whose reads kept both cores busy (a zstd
    GeoTIFF in, decoded by pwconv) held its output until the reads ended: 1 GiB in held 125
    MiB more than GDAL's writer, 2 GiB in 300 MiB more; and a file written to an upload
    slower than the reads would hold what the upload had not taken. The sinks pass a
    sixteenth of ``--max-memory``: on that 1 GiB GeoTIFF, 128 MiB took 3.68-3.78 s at 507 MiB
    peak RSS, 32 MiB 2.92-3.37 s at 410 MiB, 8 MiB 3.21-3.93 s at 387 MiB (GDAL's writer:
    384 MiB)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        layout: BlockLayout,
        level: int | None,
        name: str,
        *,
        tiled: bool,
        hold: int,
    ) -> None:
        self.shape, self.layout, self._level, self._name, self.tiled = shape, layout, level, name, tiled
        self._hold, self._waiting = hold or _HOLD, 0  # bytes of complete blocks not yet in the file
        self.rows, self.cols = layout.block if tiled else (layout.block[0], shape[1])
        self._across = -(-shape[1] // self.cols)
        count = -(-shape[0] // self.rows) * self._across
        self._raw: list[np.ndarray | None] = [None] * count
        self._left = [math.prod(self._inside(i)) * math.prod(shape[2:]) for i in range(count)]
        self._encoded: list[Future[Any] | None] = [None] * count
        self._sizes = [0] * count  # each complete block's raw bytes, counted in _waiting
        self._written = 0  # blocks handed to the file
        self._closing = self._stopped = False
        self._ended = False  # the file's writer returned or failed: it takes no more blocks
        self._failure: BaseException | None = None
        self._lock = threading.Condition()
        self._thread: threads.Thread | None = None
        self._file: BlockFile | None = None

    def start(self, target: str | BlockFile, write: Callable[[Any, Iterator[Any]], None]) -> None:
        """Open ``target`` for writing (a path; or a file already open) and run ``write(file,
        encoded blocks in order)`` on the block writer's thread. The file is opened here, not
        on that thread: a run stopped by a signal removes its temp files, and a thread opening
        the file by name after that made it again (an empty file left behind)."""
        self._file = open_empty(target) if isinstance(target, str) else target  # closed by finish() or drop()
        file = self._file

        def run() -> None:
            try:
                write(file, self._in_order())
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - raised again by finish(), on the caller's thread
                self._failure = exc
            finally:
                with self._lock:
                    self._ended = True
                    self._lock.notify_all()

        self._thread = threads.Thread(run, "pwconv-tiff-blocks")

    def _origin(self, i: int) -> tuple[int, int]:
        """Block ``i``'s first row and column in the image."""
        row, col = divmod(i, self._across)
        return row * self.rows, col * self.cols

    def _inside(self, i: int) -> tuple[int, int]:
        """The rows and columns of block ``i`` that lie in the image."""
        top, left = self._origin(i)
        return min(self.rows, self.shape[0] - top), min(self.cols, self.shape[1] - left)

    def _blank(self, i: int) -> np.ndarray:
        """Block ``i``'s pixels before any is written."""
        rows = self.rows if self.tiled else self._inside(i)[0]
        return np.zeros((rows, self.cols, *self.shape[2:]), self.layout.dtype)

    def _encode(self, raw: np.ndarray) -> bytes:
        """``raw``'s stored bytes."""
        layout = self.layout
        stored = predicted(raw.reshape(raw.shape[0], raw.shape[1], layout.samples), layout.predictor)
        if layout.codec == "zstd":
            return codecs.zstd(stored, level_or_default("zstd", self._level))
        if layout.codec == "lzw":
            return codecs.lzw(stored)
        return codecs.deflate(stored, level_or_default("deflate", self._level))

    def write(self, box: list[tuple[int, int]], block: np.ndarray) -> None:
        """Copy ``block`` (the pixels of ``box``) into its blocks; encode those it completes."""
        block = block.reshape(tuple(b - a for a, b in box))
        (top, bottom), (left, right) = box[0], box[1]
        for row in range(top // self.rows, -(-bottom // self.rows)):
            for col in range(left // self.cols, -(-right // self.cols)):
                self._copy(row * self._across + col, box, block)

    def _copy(self, i: int, box: list[tuple[int, int]], block: np.ndarray) -> None:
        """Copy the part of ``block`` (the pixels of ``box``) that lies in block ``i``."""
        (top, bottom), (left, right) = box[0], box[1]
        first_row, first_col = self._origin(i)
        low, high = max(top, first_row), min(bottom, first_row + self.rows)
        west, east = max(left, first_col), min(right, first_col + self.cols)
        place = (slice(low - first_row, high - first_row), slice(west - first_col, east - first_col)) + tuple(
            slice(a, b) for a, b in box[2:]
        )
        with self._lock:
            raw = self._raw[i]
            if raw is None:
                if self._encoded[i] is not None or i < self._written:  # no engine writes a pixel twice
                    raise RuntimeError(f"block {i} of {self._name} was written after it was complete")
                raw = self._raw[i] = self._blank(i)
            raw[place] = block[low - top : high - top, west - left : east - left]
            self._left[i] -= (high - low) * (east - west) * math.prod(b - a for a, b in box[2:])
            if self._left[i] <= 0 and self._ended:  # the writer stopped (failed): the file takes no more
                self._raw[i] = None
            elif self._left[i] <= 0:
                self._waiting += raw.nbytes
                self._sizes[i] = raw.nbytes
                self._encoded[i] = self._stored(raw, later=True)
                self._raw[i] = None
                self._lock.notify_all()
                while self._waiting > self._hold and not (
                    self._stopped or self._ended or self._writer_starved()
                ):
                    self._lock.wait()  # the reads stop; the codec threads and the writer take these

    def _writer_starved(self) -> bool:
        """The file's writer needs a block the engine has not completed yet."""
        return self._written < len(self._encoded) and self._encoded[self._written] is None

    def _stored(self, raw: np.ndarray, *, later: bool = False) -> Future[Any]:
        """``raw``'s stored bytes to come: encoded on the codec threads (``later``: after any
        decoding that waits), or the pixels themselves where the layout has no codec."""
        if self.layout.codec is None:
            done: Future[Any] = Future()
            done.set_result(np.ascontiguousarray(raw).reshape(-1).view(np.uint8).data)
            return done
        return codecs.pool().submit(self._encode, raw, later=later)

    def _in_order(self) -> Iterator[Any]:
        """Every block's stored bytes, in order, each once it is encoded; at the end a block
        never completed is encoded as it is."""
        for i in range(len(self._encoded)):
            with self._lock:
                while self._encoded[i] is None and not (self._closing or self._stopped):
                    self._lock.wait()
                if self._stopped:
                    raise _Stopped
                future = self._encoded[i]
                if future is None:
                    raw = self._raw[i]
                    future = self._stored(raw if raw is not None else self._blank(i))
                    self._raw[i] = None
            data = future.result()
            with self._lock:
                self._encoded[i], self._written = None, i + 1
            yield data
            with self._lock:
                self._waiting -= self._sizes[i]
                self._sizes[i] = 0
                self._lock.notify_all()

    @property
    def failure(self) -> BaseException | None:
        """What stopped the file's writer, if anything has (raised again by :meth:`finish`)."""
        return self._failure

    def finish(self) -> None:
        """Wait for the file to be written; its writer's failure is raised here."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._failure is not None:
            raise self._failure
        if self._file is not None:
            file, self._file = self._file, None
            file.close()  # its last bytes go to the disk here: a full disk fails the run

    def drop(self) -> None:
        """Stop the writer and let go of every block; encodings not yet started are cancelled."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
            for future in self._encoded:
                if future is not None:
                    future.cancel()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        self._raw = [None] * len(self._raw)
        self._encoded = [None] * len(self._encoded)
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:
                pass
