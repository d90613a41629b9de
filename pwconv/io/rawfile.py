"""Arrays whose bytes lie uncompressed in one file at known offsets, read and written with
positioned reads and writes: no library, no lock and no copy in between, and the GIL is
released while the operating system moves the bytes.

Formats that store raw chunks (an unfiltered HDF5 dataset, contiguous or chunked) describe
them once as a :class:`RawChunks`; blocks of any shape are then cut into the runs of bytes
they meet in each chunk.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import TYPE_CHECKING

import numpy as np

from pwconv.errors import FormatError, WriteError
from pwconv.io.base import contiguous_runs, drop_pages, reserve_space

if TYPE_CHECKING:
    import mmap


# A chunk a box meets: its byte offset (None: never written), the box inside the chunk, and
# where that lies in the box.
Piece = tuple[int | None, list[tuple[int, int]], tuple[slice, ...]]


class RawChunks:
    """A C-order array stored as C-order chunks (edge chunks at full size) in one file.

    ``offsets`` maps each chunk's grid coordinates to the byte offset of its first element;
    a chunk missing from it was never written and reads as ``fill``. A contiguous array is
    one chunk the size of the array.
    """

    def __init__(
        self,
        fd: int,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        offsets: dict[tuple[int, ...], int],
        fill: object = 0,
    ) -> None:
        self.fd, self.name = fd, name
        self.shape, self.dtype, self.chunks = shape, np.dtype(dtype), chunks
        self.offsets, self.fill = offsets, fill
        # A read-only map of the whole file, set by readers: a box whose bytes are one run
        # in the file is then a view of it, with no copy (as for .npy files).
        self.mapping: mmap.mmap | None = None

    def check_inside(self, size: int) -> None:
        """Refuse a layout whose chunks reach past ``size`` bytes (a truncated or lying file)."""
        chunk_bytes = math.prod(self.chunks) * self.dtype.itemsize
        for coords, offset in self.offsets.items():
            if offset < 0 or offset + chunk_bytes > size:
                raise FormatError(
                    f"expected the data of {self.name} chunk {coords} at bytes {offset}-{offset + chunk_bytes}, "
                    f"found a file of {size} bytes; the file is truncated or damaged, write it again"
                )

    def reserve(self) -> None:
        """Claim the disk space of every chunk now (writers): a full disk fails before any
        computing, and writes into claimed space are faster than into a sparse file."""
        end = max(self.offsets.values(), default=0) + math.prod(self.chunks) * self.dtype.itemsize
        reserve_space(self.fd, end, self.name)

    def _pieces(self, index: tuple[slice, ...]) -> list[Piece]:
        """For each chunk a step-1 box meets: its byte offset (None: never written), the box
        inside the chunk, and where that lies in the box."""
        bounds = [sl.indices(n)[:2] for sl, n in zip(index, self.shape)]
        grids = [range(start // c, (stop - 1) // c + 1) for (start, stop), c in zip(bounds, self.chunks)]
        pieces = []
        for coords in itertools.product(*grids):
            low = [g * c for g, c in zip(coords, self.chunks)]
            inside = [
                (max(start, lo), min(stop, lo + c)) for (start, stop), lo, c in zip(bounds, low, self.chunks)
            ]
            local = [(a - lo, b - lo) for (a, b), lo in zip(inside, low)]
            target = tuple(slice(a - start, b - start) for (a, b), (start, _) in zip(inside, bounds))
            pieces.append((self.offsets.get(coords), local, target))
        return pieces

    def _extents(self, index: tuple[slice, ...]) -> tuple[int, ...]:
        return tuple(len(range(*sl.indices(n))) for sl, n in zip(index, self.shape))

    def _one_run(self, pieces: list[Piece], extents: tuple[int, ...]) -> tuple[int, int] | None:
        """(first byte, bytes) when a box cut into ``pieces`` is one run of bytes in the file,
        in order."""
        if not math.prod(extents):
            return None
        done, first = 0, -1
        for offset, local, target in pieces:
            run, starts = contiguous_runs(self.chunks, local)
            size = math.prod(b - a for a, b in local)
            if offset is None or len(starts) != 1 or run != size:
                return None
            # This piece must start where the last one ended, in the box and in the file.
            position = offset + starts[0] * self.dtype.itemsize
            at = int(np.ravel_multi_index(tuple(t.start for t in target), extents))
            if at != done or (first >= 0 and position != first + done * self.dtype.itemsize):
                return None
            first = position if first < 0 else first
            done += size
        return first, done * self.dtype.itemsize

    def release(self, index: tuple[slice, ...]) -> None:
        """Drop the mapped pages of a box read as a view (they stay in the page cache)."""
        if self.mapping is None:
            return
        span = self._one_run(self._pieces(index), self._extents(index))
        if span is not None:
            drop_pages(self.mapping, span[0], span[0] + span[1])

    def read_box(self, index: tuple[slice, ...]) -> np.ndarray:
        """The step-1 box ``index``: a view of the map where its bytes are one run, else a
        new array."""
        extents = self._extents(index)
        pieces = self._pieces(index)
        span = self._one_run(pieces, extents) if self.mapping is not None else None
        if span is not None:
            return np.ndarray(extents, dtype=self.dtype, buffer=self.mapping, offset=span[0])
        out = np.empty(extents, self.dtype)
        if out.size == 0:
            return out
        for offset, local, target in pieces:
            part = out[target]
            if offset is None:
                part[...] = self.fill
                continue
            direct = part.flags.c_contiguous
            buffer = part if direct else np.empty(part.shape, self.dtype)
            self._transfer(offset, local, buffer, write=False)
            if not direct:
                part[...] = buffer
        return out

    def write_box(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        """Write ``block`` at the step-1 box ``index`` (every chunk it meets must exist)."""
        for offset, local, target in self._pieces(index):
            if offset is None:
                raise WriteError(f"cannot write {self.name}: chunk space was not reserved")
            self._transfer(offset, local, np.ascontiguousarray(block[target], dtype=self.dtype), write=True)

    def _transfer(self, offset: int, local: list[tuple[int, int]], data: np.ndarray, write: bool) -> None:
        run, starts = contiguous_runs(self.chunks, local)
        itemsize = self.dtype.itemsize
        view = data.reshape(-1).view(np.uint8).data
        step = run * itemsize
        for i, start in enumerate(starts):
            piece = view[i * step : (i + 1) * step]
            position = offset + start * itemsize
            if write:
                _write_all(self.fd, piece, position, self.name)
            else:
                _read_all(self.fd, piece, position, self.name)


def _read_all(fd: int, view: memoryview, position: int, name: str) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], position + done)
        if got <= 0:
            raise FormatError(
                f"expected {len(view)} bytes of {name} at byte {position}, found the end of the file after "
                f"{done}; the file is truncated, write it again"
            )
        done += got


def _write_all(fd: int, view: memoryview, position: int, name: str) -> None:
    done = 0
    while done < len(view):
        try:
            done += os.pwritev(fd, [view[done:]], position + done)
        except OSError as exc:
            raise WriteError(
                f"cannot write {name}: the file system refused it ({exc.strerror}); "
                "free some space, check permissions or write elsewhere"
            ) from None
