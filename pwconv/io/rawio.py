"""Raw byte I/O: arrays whose bytes lie uncompressed at known offsets, moved with positioned
reads and writes (no library, no lock and no copy in between; the GIL is released while the
operating system moves the bytes), and the geometry that cuts a box into runs and chunks.

- :func:`box_of`, :func:`contiguous_runs`: a selection as a step-1 box, and that box as runs
  of contiguous elements of a C-order array;
- :func:`chunk_pieces`: the one place a box is cut into per-chunk pieces (raw HDF5, Zarr
  chunk files, both ways);
- :func:`transfer_runs`: the one positioned-transfer loop (npy, TIFF, raw HDF5);
- :class:`RawChunks`: an array stored as raw C-order chunks in one file (an unfiltered HDF5
  dataset, contiguous or chunked).
"""

from __future__ import annotations

import errno
import itertools
import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pwconv.core import kernels
from pwconv.errors import FormatError, WriteError

if TYPE_CHECKING:
    from pwconv.io.stores import RemoteObject

#: Set to ``0`` (or ``off``) to read and write every format through its library instead of
#: pwconv's own byte-level paths (npy and TIFF maps, raw HDF5 offsets, Zarr chunk files,
#: GeoTIFF blocks):
#: for measuring what those paths buy, and for testing both on the same files.
RAW_IO_VARIABLE = "PWCONV_RAW_IO"


def raw_paths_enabled() -> bool:
    """Whether pwconv's own byte-level readers and writers may be used (see :data:`RAW_IO_VARIABLE`)."""
    return os.environ.get(RAW_IO_VARIABLE, "1").strip().lower() not in ("0", "off", "no", "false")


class BlockMemory:
    """Memory for the blocks one reader hands out, taken again once nothing refers to it.

    A fresh block's pages are faulted in and zeroed by the kernel at first touch (blocks are
    mapped anew each time, see ``cli.native``): on a pipe that was a third of the run's
    system time. Kept buffers stay resident, so this pays only where it was measured to: the
    stdin reader, the numpy engine's output blocks, and the boxes of the compressed chunk
    readers (HDF5 gzip, Zarr, TIFF blocks), two kept each. The chunk readers' boxes measured
    slower kept while they were whole rows of chunks (128 MiB and more); as tiles (now
    columns) of a few chunks they measured 2-7% faster, for 30-36 MiB more at the peak.

    A buffer is free when no block, and no view of one, refers to it any longer: its
    reference count is what it was when it was new. Where that cannot be told (the count
    does not grow with a view, or a build without the GIL), every block is fresh memory, as
    before. Readers called from several threads (the Dask engine's) share it under a lock: a
    buffer is handed out with its view made before another thread looks.
    """

    def __init__(self, keep: int = 4) -> None:
        import threading

        self._buffers: list[np.ndarray] = []
        self._keep = keep
        self._free_count = 0  # measured on first use; -1 where it cannot be told
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[BlockMemory], tuple[int]]:
        """A reader sent to another process (a Dask worker's) starts with no buffers there."""
        return BlockMemory, (self._keep,)

    def _count(self, i: int) -> int:
        import sys

        return sys.getrefcount(self._buffers[i])

    def _calibrate(self) -> None:
        """Measure the count of a free buffer, and check that a view raises it."""
        import sys

        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            self._free_count = -1
            return
        self._buffers.append(np.empty(1, np.uint8))
        free = self._count(0)
        view = self._buffers[0][:]
        held = self._count(0)
        del view
        self._buffers.clear()
        self._free_count = free if held == free + 1 else -1

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised array: a free buffer's memory where one is large enough. A free
        buffer too small for the block is let go in favour of the new one, so that the buffers
        kept are never more than the blocks once alive together."""
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            if self._free_count == 0:
                self._calibrate()
            free = [i for i in range(len(self._buffers)) if self._count(i) == self._free_count]
            for i in free:
                if self._buffers[i].nbytes >= nbytes:
                    return self._buffers[i][:nbytes].view(dtype).reshape(shape)
            if free:
                del self._buffers[free[0]]
            buffer = np.empty(nbytes, np.uint8)
            if self._free_count > 0 and len(self._buffers) < self._keep:
                self._buffers.append(buffer)
            return buffer.view(dtype).reshape(shape)


def box_of(
    index: tuple[slice, ...], shape: tuple[int, ...]
) -> tuple[list[tuple[int, int]], tuple[slice, ...]]:
    """The step-1 bounding box of ``index`` and the steps to apply to it afterwards.

    >>> box_of((slice(0, 10, 2), slice(None)), (10, 3))
    ([(0, 9), (0, 3)], (slice(None, None, 2), slice(None, None, None)))
    """
    box, steps = [], []
    for sl, n in zip(index, shape):
        start, stop, step = sl.indices(n)
        count = max(0, -(-(stop - start) // step))
        last = start + (count - 1) * step + 1 if count else start
        box.append((start, last))
        steps.append(slice(None, None, step) if step != 1 else slice(None))
    return box, tuple(steps)


def contiguous_runs(shape: tuple[int, ...], box: list[tuple[int, int]]) -> tuple[int, list[int]]:
    """Split a C-order box into runs: (elements per run, element offset of each run).

    >>> contiguous_runs((4, 5), [(1, 3), (0, 5)])
    (10, [5])
    """
    ndim = len(shape)
    k = ndim  # first axis from which everything after is whole
    while k > 0 and box[k - 1] == (0, shape[k - 1]):
        k -= 1
    if k == 0:
        return math.prod(shape), [0]
    strides = [math.prod(shape[i + 1 :]) for i in range(ndim)]
    run = (box[k - 1][1] - box[k - 1][0]) * strides[k - 1]
    outer_axes = list(range(k - 1))
    offsets = [box[k - 1][0] * strides[k - 1]]
    for axis in reversed(outer_axes):
        start, stop = box[axis]
        offsets = [o + i * strides[axis] for i in range(start, stop) for o in offsets]
    return run, sorted(offsets)


@dataclass(frozen=True)
class ChunkPiece:
    """Where a step-1 box meets one chunk: the chunk's grid coordinates, the selection inside
    the chunk, and where that lies in the box."""

    coords: tuple[int, ...]
    inner: tuple[slice, ...]
    outer: tuple[slice, ...]

    @property
    def inner_box(self) -> list[tuple[int, int]]:
        return [(s.start, s.stop) for s in self.inner]


def chunk_pieces(bounds: list[tuple[int, int]], chunks: tuple[int, ...]) -> Iterator[ChunkPiece]:
    """Cut the step-1 box ``bounds`` ((start, stop) per axis) into per-chunk pieces, in C order.

    >>> [p.coords for p in chunk_pieces([(2, 6)], (4,))]
    [(0,), (1,)]
    """
    grids = [range(start // c, (stop - 1) // c + 1) for (start, stop), c in zip(bounds, chunks)]
    for coords in itertools.product(*grids):
        low = [g * c for g, c in zip(coords, chunks)]
        inside = [(max(start, lo), min(stop, lo + c)) for (start, stop), lo, c in zip(bounds, low, chunks)]
        inner = tuple(slice(a - lo, b - lo) for (a, b), lo in zip(inside, low))
        outer = tuple(slice(a - start, b - start) for (a, b), (start, _) in zip(inside, bounds))
        yield ChunkPiece(tuple(coords), inner, outer)


def whole_slab(out: np.ndarray, piece: ChunkPiece, chunks: tuple[int, ...]) -> np.ndarray | None:
    """``out[piece.outer]`` where the piece is a whole chunk and that part of ``out`` is one
    run of memory (a block one chunk wide, see ``plan_blocks``), for a chunk to be decoded
    straight into; else None.

    >>> box = np.zeros((4, 2, 3))
    >>> [whole_slab(box, p, (2, 2, 3)) is not None for p in chunk_pieces([(0, 4), (0, 2), (0, 3)], (2, 2, 3))]
    [True, True]
    >>> [whole_slab(box, p, (2, 1, 3)) is not None for p in chunk_pieces([(0, 4), (0, 2), (0, 3)], (2, 1, 3))]
    [False, False, False, False]
    """
    if any(s.stop - s.start != c for s, c in zip(piece.inner, chunks)):
        return None
    part = out[piece.outer]
    return part if part.flags.c_contiguous else None


def drop_pages(mapping: mmap.mmap, start: int, stop: int) -> None:
    """Drop the pages wholly inside bytes ``start``-``stop`` of a read-only map from this
    process's memory (they stay in the page cache), so that resident memory follows the
    block being computed, not the file."""
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, stop // page * page
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def reserve_space(fd: int, total: int, name: str) -> bool:
    """Claim ``total`` bytes of disk for an output now, so that a full disk fails before any
    computing (and writes land in claimed space, not a sparse file). False where the file
    system cannot claim space ahead; a full disk is a one-line error."""
    try:
        os.posix_fallocate(fd, 0, total)
        return True
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise WriteError(
                f"cannot write {total} bytes to {name}: no space left on the device; "
                "free some space or write elsewhere"
            ) from None
        return False


def read_all(fd: int, view: memoryview, position: int, name: str) -> None:
    """Fill ``view`` from byte ``position`` of ``fd``; a short file is a one-line error."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], position + done)
        if got <= 0:
            raise FormatError(
                f"expected {len(view)} bytes of {name} at byte {position}, found the end of the file after "
                f"{done}; the file is truncated, write it again"
            )
        done += got


# A positioned write of at least twice this many bytes is split into pieces of at least this
# many, written at once on the kernel's threads (whole pages each). Writing a file takes fresh
# page-cache pages, and on this project's virtual machines a page the system has not touched
# lately costs a fault in the host on first write: one thread then spent a core copying the
# output of a 1 GiB npy 64 -> 16 run. Measured there: median wall 0.45-0.54 s -> 0.39 s,
# best unchanged.
_WRITE_PIECE_BYTES = 1 << 20


def write_all(fd: int, view: memoryview, position: int, name: str) -> None:
    """Write all of ``view`` at byte ``position`` of ``fd``; a refusal is a one-line error."""
    parts = min(kernels.threads, len(view) // _WRITE_PIECE_BYTES)
    if parts < 2:
        _write_all(fd, view, position, name)
        return
    page = mmap.PAGESIZE
    step = -(-len(view) // parts)
    # file offsets of the cuts, on page boundaries: no page is written by two threads
    cuts = sorted(
        {min(len(view), -(-(position + i * step) // page) * page - position) for i in range(1, parts)}
    )
    starts = [0, *cuts]
    stops = [*cuts, len(view)]
    kernels.run_jobs(
        lambda piece: _write_all(fd, view[piece[0] : piece[1]], position + piece[0], name),
        [(a, b) for a, b in zip(starts, stops) if b > a],
    )


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


def transfer_runs(
    fd: int,
    start: int,
    shape: tuple[int, ...],
    box: list[tuple[int, int]],
    data: np.ndarray,
    *,
    write: bool,
    name: str,
) -> None:
    """Move the step-1 ``box`` of a C-order array of ``shape`` stored from byte ``start`` of
    ``fd`` between the file and ``data`` (C-contiguous, the box's shape), run by run."""
    itemsize = data.dtype.itemsize
    run, offsets = contiguous_runs(shape, box)
    view = data.reshape(-1).view(np.uint8).data
    step = run * itemsize
    move = write_all if write else read_all
    for i, offset in enumerate(offsets):
        move(fd, view[i * step : (i + 1) * step], start + offset * itemsize, name)


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
        fd: int | RemoteObject,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        offsets: dict[tuple[int, ...], int],
        fill: object = 0,
    ) -> None:
        """``fd``: the file's descriptor, or (for reading) the object at a URL, whose runs a
        block fetches all together (:meth:`_fetch_into`)."""
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
        assert isinstance(self.fd, int)
        reserve_space(self.fd, end, self.name)

    def _pieces(self, index: tuple[slice, ...]) -> list[Piece]:
        """For each chunk a step-1 box meets: its byte offset (None: never written), the box
        inside the chunk, and where that lies in the box."""
        bounds = [sl.indices(n)[:2] for sl, n in zip(index, self.shape)]
        return [
            (self.offsets.get(piece.coords), piece.inner_box, piece.outer)
            for piece in chunk_pieces(bounds, self.chunks)
        ]

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

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """Any selection (steps too): its step-1 box read, then stepped."""
        box, steps = box_of(index, self.shape)
        return self.read_box(tuple(slice(a, b) for a, b in box))[steps]

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
        if not isinstance(self.fd, int):
            self._fetch_into(out, pieces)
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

    def _fetch_into(self, out: np.ndarray, pieces: list[Piece]) -> None:
        """``out`` from the object at a URL: the runs of every chunk it meets fetched together
        (neighbours in the object, a block's chunks written in order, joined into spans and
        fetched in 8 MiB pieces, several in flight), then copied into place. Requests per
        chunk straight into place (4 MiB each) took twice as long from Azurite."""
        assert not isinstance(self.fd, int)
        itemsize = self.dtype.itemsize
        wanted: list[tuple[tuple[slice, ...], list[int], int]] = []  # (where in out, run starts, run bytes)
        for offset, local, target in pieces:
            if offset is None:
                out[target] = self.fill
                continue
            run, starts = contiguous_runs(self.chunks, local)
            wanted.append((target, [offset + s * itemsize for s in starts], run * itemsize))
        starts = [a for _, firsts, _ in wanted for a in firsts]
        ends = [a + length for _, firsts, length in wanted for a in firsts]
        got = iter(self.fd.read_spans(starts, ends))
        for target, firsts, _ in wanted:
            runs = [next(got) for _ in firsts]  # the piece's bytes in C order, run after run
            data = runs[0] if len(runs) == 1 else b"".join(runs)
            part = out[target]
            part[...] = np.frombuffer(data, self.dtype).reshape(part.shape)

    def write_box(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        """Write ``block`` at the step-1 box ``index`` (every chunk it meets must exist)."""
        for offset, local, target in self._pieces(index):
            if offset is None:
                raise WriteError(f"cannot write {self.name}: chunk space was not reserved")
            self._transfer(offset, local, np.ascontiguousarray(block[target], dtype=self.dtype), write=True)

    def _transfer(self, offset: int, local: list[tuple[int, int]], data: np.ndarray, write: bool) -> None:
        assert isinstance(self.fd, int)
        transfer_runs(self.fd, offset, self.chunks, local, data, write=write, name=self.name)
