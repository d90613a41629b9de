"""``.npy`` files and npy streams on stdin/stdout, read and written in blocks."""

from __future__ import annotations

import errno
import io
import math
import mmap
import os
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

from pwconv.errors import FormatError, InputFileError, UsageError, WriteError
from pwconv.io.base import (
    box_of,
    check_readable,
    contiguous_runs,
    publish,
    remove_quietly,
    temp_path_beside,
)


def read_header(stream: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Parse an npy header: (shape, dtype, fortran_order). Never unpickles."""
    try:
        version = npformat.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(stream)
        else:
            shape, fortran, dtype = npformat._read_array_header(stream, version)  # type: ignore[attr-defined]
    except (ValueError, SyntaxError, EOFError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(
            f"expected an npy file in {name}, found a corrupt or non-npy header ({detail}); "
            "save the array with numpy.save"
        ) from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise FormatError(
            f"expected a numeric array in {name}, found an object array; pwconv never unpickles "
            "data: save a numeric array instead"
        )
    if dtype.kind not in "biufc":
        raise FormatError(f"expected a numeric array in {name}, found dtype {dtype}; convert it to numbers")
    return tuple(int(n) for n in shape), dtype, bool(fortran)


def _read_exact(stream: IO[bytes], view: memoryview, name: str) -> None:
    done = 0
    while done < len(view):
        got = stream.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise FormatError(
                f"expected {len(view)} more bytes of data in {name}, found the end of the data after "
                f"{done}; the file or stream is truncated"
            )
        done += got


class NpySource:
    """A ``.npy`` file read in blocks.

    Blocks are zero-copy views of a read-only memory map (mapping the pages ahead in the
    reader thread was measured: no faster); :meth:`release` drops a finished
    block's pages from this process (they stay in the page cache), so resident memory stays
    at the block size however large the file. Where a file cannot be mapped, blocks are read
    with positioned reads into fresh arrays.
    """

    sequential = False

    def __init__(self, path: str) -> None:
        check_readable(path)
        self.path = path
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise InputFileError(f"expected a readable file at {path!r}, found: {exc.strerror}") from None
        try:
            self.shape, self.dtype, self.fortran = read_header(self._file, repr(path))
            self.offset = self._file.tell()
            self.nbytes = math.prod(self.shape) * self.dtype.itemsize
            size = os.fstat(self._file.fileno()).st_size
            if size < self.offset + self.nbytes:
                raise FormatError(
                    f"expected {self.nbytes} data bytes in {path!r} for shape {self.shape} {self.dtype}, "
                    f"found {size - self.offset}; the file is truncated, write it again"
                )
        except BaseException:
            self._file.close()
            raise
        # np.memmap keeps the mapping alive for as long as any view of it exists: a block
        # handed out is never left pointing at unmapped memory.
        self._array: np.ndarray | None = None
        self._map: mmap.mmap | None = None
        if self.nbytes:
            try:
                mapped = np.memmap(
                    path,
                    dtype=self.dtype,
                    mode="r",
                    offset=self.offset,
                    shape=self.shape,
                    order="F" if self.fortran else "C",
                )
                self._array, self._map = mapped, getattr(mapped, "_mmap", None)
            except (OSError, ValueError):
                self._array, self._map = None, None

    def chunks(self) -> tuple[int, ...] | None:
        return None

    def _byte_range(self, index: tuple[slice, ...]) -> tuple[int, int] | None:
        """Page-aligned (start, stop) in the mapping that lies wholly inside a block."""
        box, _ = box_of(index, self.shape)
        if any(stop <= start for start, stop in box):
            return None
        run, offsets = contiguous_runs(self.shape, box)
        # np.memmap maps from the page holding the data's first byte.
        base = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY
        start = self.offset - base + offsets[0] * self.dtype.itemsize
        stop = self.offset - base + (offsets[-1] + run) * self.dtype.itemsize
        page = mmap.PAGESIZE
        start, stop = -(-start // page) * page, stop // page * page
        return (start, stop) if stop > start else None

    def release(self, index: tuple[slice, ...]) -> None:
        """Drop the pages of a finished block from this process's memory (not from the file)."""
        if self._map is None or self.fortran or not hasattr(self._map, "madvise"):
            return
        span = self._byte_range(index)
        if span is not None:
            self._map.madvise(mmap.MADV_DONTNEED, span[0], span[1] - span[0])

    def storage(self) -> dict[str, Any]:
        return {
            "format": "npy",
            "fortran_order": self.fortran,
            "header_bytes": self.offset,
            "data_bytes": self.nbytes,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._array is not None:
            return self._array[index]
        # Fortran order: read the same bytes as the C-order transpose, then transpose back.
        shape = self.shape[::-1] if self.fortran else self.shape
        index = index[::-1] if self.fortran else index
        box, steps = box_of(index, shape)
        extents = tuple(stop - start for start, stop in box)
        block = np.empty(extents, dtype=self.dtype)
        if block.size:
            run, offsets = contiguous_runs(shape, box)
            flat = block.reshape(-1).view(np.uint8).data
            run_bytes = run * self.dtype.itemsize
            for i, offset in enumerate(offsets):
                self._file.seek(self.offset + offset * self.dtype.itemsize)
                _read_exact(self._file, flat[i * run_bytes : (i + 1) * run_bytes], repr(self.path))
        block = block[steps]
        return block.T if self.fortran else block

    def close(self) -> None:
        # The mapping goes when the last block that uses it goes (np.memmap owns it).
        self._array, self._map = None, None
        self._file.close()


def _header_bytes(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    npformat.write_array_header_1_0(buffer, header) if _fits_v1(header) else npformat.write_array_header_2_0(
        buffer, header
    )
    return buffer.getvalue()


def _fits_v1(header: dict[str, Any]) -> bool:
    return len(repr(header)) < 60000


class NpySink:
    """A ``.npy`` file written in blocks into a preallocated temp file, renamed on commit."""

    sequential = False

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        fd, self._temp = temp_path_beside(path)
        self._file: IO[bytes] | None = os.fdopen(fd, "w+b")
        try:
            header = _header_bytes(shape, self.dtype)
            self._file.write(header)
            self.offset = len(header)
            total = self.offset + math.prod(shape) * self.dtype.itemsize
            self._reserve(total)
        except BaseException:
            self.abort()
            raise

    def _reserve(self, total: int) -> None:
        # Claim the space now, so a full disk fails before any computing is done.
        assert self._file is not None
        self._file.flush()
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self._file.fileno(), 0, total)
                return
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise WriteError(
                        f"cannot write {total} bytes to {self.path!r}: no space left on the device; "
                        "free some space or write elsewhere"
                    ) from None
        self._file.truncate(total)

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        assert self._file is not None
        box, _ = box_of(index, self.shape)
        if not block.size:
            return
        data = np.ascontiguousarray(block, dtype=self.dtype)
        run, offsets = contiguous_runs(self.shape, box)
        flat = data.reshape(-1).view(np.uint8).data
        run_bytes = run * self.dtype.itemsize
        for i, offset in enumerate(offsets):
            self._file.seek(self.offset + offset * self.dtype.itemsize)
            self._file.write(flat[i * run_bytes : (i + 1) * run_bytes])

    def commit(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        publish(self._temp, self.path)
        self._temp = ""

    def abort(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        remove_quietly(self._temp)
        self._temp = ""


class StreamSource:
    """An npy stream on stdin: header first, then blocks read strictly in order."""

    sequential = True

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        import sys

        self._stream = stream if stream is not None else sys.stdin.buffer
        if self._stream.isatty():
            raise UsageError("expected npy data on stdin for input '-', found a terminal; pipe a file in")
        self.shape, self.dtype, fortran = read_header(self._stream, "stdin")
        if fortran:
            raise FormatError(
                "expected a C-order npy stream on stdin, found Fortran order; save it with "
                "numpy.save(numpy.ascontiguousarray(a))"
            )
        self._position = 0

    def chunks(self) -> tuple[int, ...] | None:
        return None

    def storage(self) -> dict[str, Any]:
        return {"format": "npy stream"}

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        box, steps = box_of(index, self.shape)
        extents = tuple(stop - start for start, stop in box)
        block = np.empty(extents, dtype=self.dtype)
        if block.size:
            run, offsets = contiguous_runs(self.shape, box)
            if len(offsets) != 1 or offsets[0] < self._position:
                raise FormatError("internal error: stdin blocks must be contiguous and in order")
            skip = (offsets[0] - self._position) * self.dtype.itemsize
            while skip:
                skip -= len(self._stream.read(min(skip, 1 << 20)) or b"") or skip
            _read_exact(self._stream, block.reshape(-1).view(np.uint8).data, "stdin")
            self._position = offsets[0] + run
        return block[steps]

    def close(self) -> None:
        pass


class StreamSink:
    """An npy stream on stdout: the header goes out with the first block."""

    sequential = True

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, stream: IO[bytes] | None = None) -> None:
        import sys

        self.shape, self.dtype = shape, np.dtype(dtype)
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self._stream.write(_header_bytes(self.shape, self.dtype))
            self._started = True

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        self._start()
        if block.size:
            self._stream.write(np.ascontiguousarray(block, dtype=self.dtype).reshape(-1).view(np.uint8).data)

    def commit(self) -> None:
        self._start()
        self._stream.flush()

    def abort(self) -> None:
        pass
