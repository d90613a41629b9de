"""``.npy`` files, read through a memory map and written in blocks into a preallocated file."""

from __future__ import annotations

import ast
import io
import math
import mmap
import os
import struct
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.lib.format as npformat

from pwconv.errors import FormatError, InputFileError
from pwconv.io.atomic import FileSink, check_output_path, mark_published, setting_up, write_together
from pwconv.io.checks import check_readable, numeric_dtype
from pwconv.io.interface import Backend, BlockWriter, Description, Sink, SinkRequest, Source
from pwconv.io.rawio import (
    box_of,
    contiguous_runs,
    drop_pages,
    raw_paths_enabled,
    reserve_space,
    transfer_runs,
    write_all,
)
from pwconv.io.stores import RangedFile, RemoteObject, StreamedUpload, is_url, shown, streamed_upload_parts

if TYPE_CHECKING:
    from pwconv.io.spec import Spec


# Header rules per format version, kept as data: (length field, text encoding).
_VERSIONS: dict[tuple[int, int], tuple[str, str]] = {
    (1, 0): ("<H", "latin1"),
    (2, 0): ("<I", "latin1"),
    (3, 0): ("<I", "utf8"),
}
_MAGIC = b"\x93NUMPY"
# A numeric array's header is under 200 bytes; anything near this is not one.
_MAX_HEADER_BYTES = 1 << 16
_MAX_DIMS = 64
_MAX_DATA_BYTES = 2**63 - 1
_SAVE_FIX = "save the array with numpy.save"


def _corrupt(name: str, found: str) -> FormatError:
    return FormatError(
        f"expected an npy file in {name}, found a corrupt or non-npy header ({found}); {_SAVE_FIX}"
    )


def _take(stream: IO[bytes], count: int, name: str, what: str) -> bytes:
    data = b""
    while len(data) < count:
        got = stream.read(count - len(data))
        if not got:
            raise _corrupt(name, f"the end of the data after {len(data)} of the {count} bytes of its {what}")
        data += got
    return data


def read_header(
    stream: IO[bytes], name: str, *, text: bool = False
) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Parse an npy header strictly: (shape, dtype, fortran_order). Never unpickles.

    The magic string and version go through numpy's public ``read_magic``; the rest is
    parsed here, stricter than numpy's readers and naming the field at fault: header length,
    the header's literal, descr, fortran_order, each shape entry, the data size. Any fault is
    a one-line FormatError. ``text`` admits fixed-width unicode (a bank's names: plain
    characters, nothing to unpickle) besides numbers.
    """
    try:
        version = npformat.read_magic(stream)  # numpy's own check of the magic string
    except ValueError as exc:
        if "EOF" in str(exc):
            raise _corrupt(name, "the end of the data inside its magic string") from None
        raise _corrupt(name, f"magic bytes other than {_MAGIC!r}") from None
    if version not in _VERSIONS:
        raise _corrupt(name, f"format version {version[0]}.{version[1]} (known: 1.0, 2.0, 3.0)")
    length_format, encoding = _VERSIONS[version]
    (length,) = struct.unpack(
        length_format, _take(stream, struct.calcsize(length_format), name, "header length")
    )
    if length > _MAX_HEADER_BYTES:
        raise _corrupt(name, f"a header length of {length} bytes (at most {_MAX_HEADER_BYTES})")
    raw = _take(stream, length, name, "header")
    try:
        header = ast.literal_eval(raw.decode(encoding))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        raise _corrupt(name, "a header that is not a Python literal") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        keys = sorted(map(repr, header)) if isinstance(header, dict) else type(header).__name__
        raise _corrupt(name, f"header keys {keys} instead of 'descr', 'fortran_order', 'shape'")
    fortran, shape = header["fortran_order"], header["shape"]
    if not isinstance(fortran, bool):
        raise _corrupt(name, f"fortran_order {fortran!r} instead of True or False")
    if (
        not isinstance(shape, tuple)
        or len(shape) > _MAX_DIMS
        or not all(type(n) is int and n >= 0 for n in shape)
    ):
        raise _corrupt(name, f"shape {shape!r} instead of a tuple of at most {_MAX_DIMS} whole numbers >= 0")
    try:
        dtype = npformat.descr_to_dtype(header["descr"])
    except Exception:  # noqa: BLE001 - numpy raises several types for a bad descr
        raise _corrupt(name, f"descr {header['descr']!r}, which is not a numpy dtype") from None
    dtype = dtype if text and dtype.kind == "U" else numeric_dtype(dtype, name)
    if math.prod(shape) * dtype.itemsize > _MAX_DATA_BYTES:
        raise _corrupt(name, f"shape {shape} of {dtype}, more bytes than any file holds")
    return shape, dtype, fortran


def read_exact(stream: IO[bytes], view: memoryview, name: str) -> None:
    done = 0
    while done < len(view):
        got = stream.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise FormatError(
                f"expected {len(view)} more bytes of data in {name}, found the end of the data after "
                f"{done}; the file or stream is truncated"
            )
        done += got


def _storage(fortran: bool, offset: int, nbytes: int) -> dict[str, Any]:
    """What ``info`` says of an npy file's storage."""
    return {"format": "npy", "fortran_order": fortran, "header_bytes": offset, "data_bytes": nbytes}


class NpySource(Source):
    """A ``.npy`` file read in blocks.

    Blocks are zero-copy views of a read-only memory map (mapping the pages ahead in the
    reader thread was measured: no faster); :meth:`release` drops a finished
    block's pages from this process (they stay in the page cache), so resident memory stays
    at the block size however large the file. Where a file cannot be mapped (or raw paths
    are off), blocks are read with positioned reads into fresh arrays.
    """

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
        # The array holds the mapping (through its buffer) for as long as any view of it
        # exists: a block handed out never points at unmapped memory.
        self._array: np.ndarray | None = None
        self._map: mmap.mmap | None = None
        if self.nbytes and raw_paths_enabled():
            try:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
                self._array = np.ndarray(
                    self.shape,
                    dtype=self.dtype,
                    buffer=self._map,
                    offset=self.offset,
                    order="F" if self.fortran else "C",
                )
            except (OSError, ValueError):
                self._array, self._map = None, None
        self.description = Description(reader="memory map" if self._array is not None else "positioned reads")

    def release(self, index: tuple[slice, ...]) -> None:
        """Drop the pages of a finished block from this process's memory (not from the file)."""
        if self._map is None or self.fortran:
            return
        box, _ = box_of(index, self.shape)
        if any(stop <= start for start, stop in box):
            return
        run, offsets = contiguous_runs(self.shape, box)
        # The mapping starts at the beginning of the file.
        start = self.offset + offsets[0] * self.dtype.itemsize
        drop_pages(self._map, start, self.offset + (offsets[-1] + run) * self.dtype.itemsize)

    def storage(self) -> dict[str, Any]:
        return _storage(self.fortran, self.offset, self.nbytes)

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._array is not None:
            return self._array[index]
        # Fortran order: read the same bytes as the C-order transpose, then transpose back.
        shape = self.shape[::-1] if self.fortran else self.shape
        index = index[::-1] if self.fortran else index
        box, steps = box_of(index, shape)
        block = np.empty(tuple(stop - start for start, stop in box), dtype=self.dtype)
        if block.size:
            transfer_runs(
                self._file.fileno(), self.offset, shape, box, block, write=False, name=repr(self.path)
            )
        block = block[steps]
        return block.T if self.fortran else block

    def close(self) -> None:
        # The mapping goes when the last block that uses it goes (its views hold it).
        self._array, self._map = None, None
        self._file.close()


class RemoteNpySource(Source):
    """A ``.npy`` object behind a URL, read by byte ranges: a block's contiguous runs are
    fetched together, several requests in flight; only the header is read on opening."""

    def __init__(self, url: str) -> None:
        self.path = url
        self._object = RemoteObject(url)
        name = repr(shown(url))
        stream: Any = RangedFile(self._object, 4096)
        self.shape, self.dtype, self.fortran = read_header(stream, name)
        self.offset = stream.tell()
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        if self._object.size < self.offset + self.nbytes:
            raise FormatError(
                f"expected {self.nbytes} data bytes in {name} for shape {self.shape} {self.dtype}, "
                f"found {self._object.size - self.offset}; the object is truncated, write it again"
            )
        self.description = Description(reader="byte ranges")

    def storage(self) -> dict[str, Any]:
        return {**_storage(self.fortran, self.offset, self.nbytes), "object_bytes": self._object.size}

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        shape = self.shape[::-1] if self.fortran else self.shape
        index = index[::-1] if self.fortran else index
        box, steps = box_of(index, shape)
        block = np.empty(tuple(stop - start for start, stop in box), dtype=self.dtype)
        if block.size:
            run, offsets = contiguous_runs(shape, box)
            size = self.dtype.itemsize
            starts = [self.offset + o * size for o in offsets]
            self._object.read_into(starts, run * size, block.reshape(-1).view(np.uint8).data)
        block = block[steps]
        return block.T if self.fortran else block


def header_bytes(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The npy header numpy itself writes for a C-order array (version 1.0 when it fits)."""
    buffer = io.BytesIO()
    header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    npformat.write_array_header_1_0(buffer, header) if _fits_v1(header) else npformat.write_array_header_2_0(
        buffer, header
    )
    return buffer.getvalue()


def _fits_v1(header: dict[str, Any]) -> bool:
    return len(repr(header)) < 60000


class NpySink(FileSink):
    """A ``.npy`` file written in blocks into a preallocated temp file, renamed on commit."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        super().__init__(path)
        self.shape, self.dtype = shape, np.dtype(dtype)
        self._fd = -1
        with setting_up(self, path):
            self._fd = os.open(self.temp.path, os.O_RDWR)
            header = header_bytes(shape, self.dtype)
            write_all(self._fd, memoryview(header), 0, repr(path))
            self.offset = len(header)
            total = self.offset + math.prod(shape) * self.dtype.itemsize
            if not reserve_space(self._fd, total, repr(path)):
                os.ftruncate(self._fd, total)

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if block.size:
            box, _ = box_of(index, self.shape)
            data = np.ascontiguousarray(block, dtype=self.dtype)
            transfer_runs(self._fd, self.offset, self.shape, box, data, write=True, name=repr(self.target))

    def parallel_writer(self) -> BlockWriter:
        return _NpyBlockWriter(self.temp.path)

    def finish(self) -> None:
        os.close(self._fd)
        self._fd = -1

    def close_quietly(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StreamedNpySink(Sink):
    """A ``.npy`` object at a URL written as the blocks come, front to back (the engine cuts
    them so and writes them in order): one multipart upload fed while the run goes on, so
    nothing is staged on the local disk. The object appears only when the upload completes
    on commit; a failure aborts it and leaves nothing at the URL."""

    sequential = True
    writer = "multipart upload, streamed"

    def __init__(self, url: str, shape: tuple[int, ...], dtype: np.dtype, parts: int = 8) -> None:
        self.target, self.shape, self.dtype = url, shape, np.dtype(dtype)
        self._upload = StreamedUpload(url, parts)
        self._position = 0  # elements written
        try:
            self._upload.send(header_bytes(shape, self.dtype))
        except BaseException:
            self._upload.cancel()
            raise

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if not block.size:
            return
        box, _ = box_of(index, self.shape)
        run, offsets = contiguous_runs(self.shape, box)
        if len(offsets) != 1 or offsets[0] != self._position:
            raise AssertionError("blocks of a streamed .npy output must be contiguous and in order")
        data = np.ascontiguousarray(block, dtype=self.dtype)
        self._upload.send(data.reshape(-1).view(np.uint8).data)
        self._position += run

    def commit(self) -> None:
        if self._position != math.prod(self.shape):
            self.abort()
            raise AssertionError(f"{self._position} of {math.prod(self.shape)} values were written")
        try:
            self._upload.finish()
        except BaseException:
            self.abort()
            raise
        mark_published(self.target)

    def abort(self) -> None:
        self._upload.cancel()


class _NpyBlockWriter:
    """``writer[index] = block`` into the preallocated temp file, from any process."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        target = npformat.open_memmap(self.path, mode="r+")
        target[index] = block
        target.flush()
        del target


def bias_path(path: str) -> str:
    """Where a weights-only ``.npy`` bank keeps its bias: ``bank.npy`` -> ``bank.bias.npy``."""
    return path[: -len(".npy")] + ".bias.npy" if path.endswith(".npy") else path + ".bias.npy"


class NpyFormat(Backend):
    """``.npy``: one array a file; a bank's bias goes beside it as ``NAME.bias.npy``."""

    def open_source(self, spec: Spec) -> Source:
        return RemoteNpySource(spec.path) if is_url(spec.path) else NpySource(spec.path)

    def open_sink(self, spec: Spec, request: SinkRequest) -> Sink:
        check_output_path(spec.path, request.overwrite)
        if request.in_order and is_url(spec.path):
            return StreamedNpySink(
                spec.path, request.shape, request.dtype, streamed_upload_parts(request.buffer_bytes)
            )
        return NpySink(spec.path, request.shape, request.dtype)

    def bank_files(self, path: str) -> list[str]:
        return [path, bias_path(path)]

    def write_arrays(self, path: str, arrays: dict[str, np.ndarray], overwrite: bool) -> list[str]:
        """An ``.npy`` holds one array: the ``weights``; a ``bias`` goes to ``NAME.bias.npy``.
        Both files are published together or not at all."""
        writes: dict[str, Callable[[str], None]] = {}
        for name, target in (("weights", path), ("bias", bias_path(path))):
            if name in arrays:

                def write(temp: str, array: np.ndarray = arrays[name]) -> None:
                    with open(temp, "wb") as handle:
                        np.save(handle, array)

                writes[target] = write
        write_together(writes, overwrite)
        return list(writes)
