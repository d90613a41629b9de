"""What every reader and writer offers, and helpers they share."""

from __future__ import annotations

import errno
import math
import mmap
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pwconv.core.conv import saturate
from pwconv.errors import FormatError, InputFileError, OutputExistsError, UsageError, WriteError


class Source(Protocol):
    """A lazily read tensor: shape and dtype are known before any data is read."""

    shape: tuple[int, ...]
    dtype: np.dtype
    sequential: bool  # only contiguous blocks, in order (a pipe)

    def read(self, index: tuple[slice, ...]) -> np.ndarray: ...

    def chunks(self) -> tuple[int, ...] | None: ...

    def storage(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class BlockWriter(Protocol):
    """``writer[index] = block``: picklable, and safe to use from several processes at once."""

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None: ...


class Sink(Protocol):
    """A tensor being written; invisible under its final name until :meth:`commit`.

    :meth:`write` is for the process that opened the sink, one block at a time.
    :meth:`parallel_writer` hands out a writer that other processes may use at the same
    time, or None when the format cannot be written that way (HDF5, a pipe).
    """

    sequential: bool

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None: ...

    def parallel_writer(self) -> BlockWriter | None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class SinkRequest:
    """What an output must hold, and how the writer should lay it out.

    ``chunks`` is ``auto``, ``none`` or one size per axis; ``block_shape`` is the shape of
    the blocks an engine will write, for formats that chunk best along them.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    channel_axis: int
    overwrite: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)
    compression: str | None = None
    chunks: str | tuple[int, ...] = "auto"
    block_shape: tuple[int, ...] | None = None
    quality: int | None = None  # lossy formats (JPEG, WebP)
    nodata: float | None = None  # the output's nodata value, for formats that record one
    stride: int = 1
    creation_options: tuple[str, ...] = ()  # KEY=VALUE, for GDAL drivers
    metadata: dict[str, Any] = field(default_factory=dict)  # what the input's format passes on


class SqueezedSink:
    """A sink for an output whose size-1 channel axis is dropped (``squeeze``)."""

    def __init__(self, sink: Sink, axis: int) -> None:
        self.sink, self.axis = sink, axis
        self.sequential = sink.sequential

    def _drop(self, index: tuple[slice, ...], block: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
        axis = self.axis
        return index[:axis] + index[axis + 1 :], block.reshape(block.shape[:axis] + block.shape[axis + 1 :])

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        self.sink.write(*self._drop(index, block))

    def parallel_writer(self) -> BlockWriter | None:
        inner = self.sink.parallel_writer()
        return None if inner is None else _SqueezedWriter(inner, self.axis)

    def commit(self) -> None:
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()


class _SqueezedWriter:
    def __init__(self, writer: BlockWriter, axis: int) -> None:
        self.writer, self.axis = writer, axis

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        axis = self.axis
        self.writer[index[:axis] + index[axis + 1 :]] = block.reshape(
            block.shape[:axis] + block.shape[axis + 1 :]
        )


def numeric_dtype(dtype: Any, where: str) -> np.dtype:
    """``dtype`` as a numpy dtype if it holds numbers, else a one-line error naming ``where``."""
    try:
        found = np.dtype(dtype)
    except TypeError:
        raise FormatError(f"expected a numeric array in {where}, found an unknown dtype {dtype!r}") from None
    if found.hasobject:
        raise FormatError(
            f"expected a numeric array in {where}, found an object array; pwconv never unpickles "
            "data: save a numeric array instead"
        )
    if found.kind not in "biufc":
        raise FormatError(f"expected a numeric array in {where}, found dtype {found}; convert it to numbers")
    return found


def first_line(exc: BaseException, limit: int = 160) -> str:
    """A library's exception as one short line for a message (its type when it says nothing)."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]


def check_readable(path: str, what: str = "input") -> None:
    """Raise a one-line error for a missing, unreadable or directory input path."""
    if not os.path.exists(path):
        raise InputFileError(f"expected an existing {what} file, found no file at {path!r}; check the path")
    if os.path.isdir(path) and not path.rstrip("/").endswith(".zarr"):
        raise InputFileError(f"expected a {what} file, found a directory at {path!r}")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"expected a readable {what} file, found {path!r} without read permission")


def check_output_path(path: str, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite`` and a missing output directory."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(
            f"expected an existing directory for the output, found none at {parent!r}; create it first"
        )
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(
            f"output {path!r} exists; pass [[overwrite!]] to replace it, or choose another name"
        )
    if os.path.isdir(path) and not path.rstrip("/").endswith(".zarr"):
        raise UsageError(f"expected a file name for the output, found the directory {path!r}")


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def temp_path_beside(path: str) -> tuple[int, str]:
    """Create a hidden temporary file in the target's directory (same filesystem: atomic rename)."""
    return _beside(path, tempfile.mkstemp)


def temp_dir_beside(path: str) -> str:
    """Create a hidden temporary folder in the target's directory (for stores such as Zarr)."""
    return _beside(path, tempfile.mkdtemp)


def _beside(path: str, make: Callable[..., Any]) -> Any:
    directory, name = os.path.split(os.path.abspath(path.rstrip("/")))
    try:
        return make(prefix=f".{name}.", suffix=".pwconv-part", dir=directory)
    except OSError as exc:
        raise WriteError(
            f"cannot create the output in {directory!r}: {exc.strerror}; check permissions and free space"
        ) from exc


def publish(temp: str, final: str) -> None:
    """Give the finished temp file normal permissions and rename it over ``final``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    os.replace(temp, final)


def drop_pages(mapping: mmap.mmap, start: int, stop: int) -> None:
    """Drop the pages wholly inside bytes ``start``-``stop`` of a read-only map from this
    process's memory (they stay in the page cache), so that resident memory follows the
    block being computed, not the file."""
    if not hasattr(mapping, "madvise"):
        return
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, stop // page * page
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def reserve_space(fd: int, total: int, name: str) -> bool:
    """Claim ``total`` bytes of disk for an output now, so that a full disk fails before any
    computing (and writes land in claimed space, not a sparse file). False where the file
    system cannot claim space ahead; a full disk is a one-line error."""
    if not hasattr(os, "posix_fallocate"):
        return False
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


def remove_quietly(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def box_of(
    index: tuple[slice, ...], shape: tuple[int, ...]
) -> tuple[list[tuple[int, int]], tuple[slice, ...]]:
    """The step-1 bounding box of ``index`` and the steps to apply to it afterwards."""
    box, steps = [], []
    for sl, n in zip(index, shape):
        start, stop, step = sl.indices(n)
        count = max(0, -(-(stop - start) // step))
        last = start + (count - 1) * step + 1 if count else start
        box.append((start, last))
        steps.append(slice(None, None, step) if step != 1 else slice(None))
    return box, tuple(steps)


def contiguous_runs(shape: tuple[int, ...], box: list[tuple[int, int]]) -> tuple[int, list[int]]:
    """Split a C-order box into runs: (elements per run, element offset of each run)."""
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


class ArraySource:
    """A tensor of a model or bank file, or a whole image: shape and dtype from its header,
    data loaded at the first read (only this tensor's bytes) and sliced from memory after.

    ``name`` is the tensor's full name inside its file (None for an image); ``notes`` are
    what the report should say about how it was read.
    """

    sequential = False

    def __init__(
        self,
        name: str | None,
        shape: tuple[int, ...],
        dtype: np.dtype,
        load: Callable[[], np.ndarray],
        storage: dict[str, Any],
        *,
        is_image: bool = False,
        notes: list[str] | None = None,
    ) -> None:
        self.name, self.shape, self.dtype = name, tuple(int(n) for n in shape), np.dtype(dtype)
        self._load, self._storage = load, storage
        self.is_image, self.notes = is_image, notes or []
        self._data: np.ndarray | None = None

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._data is None:
            data = np.asarray(self._load())
            if data.shape != self.shape:
                raise FormatError(
                    f"expected {self.name or 'the data'!r} of shape {self.shape}, found {data.shape} in the "
                    "file; it is damaged, write it again"
                )
            self._data = data
        return self._data[index]

    def chunks(self) -> tuple[int, ...] | None:
        return None

    def storage(self) -> dict[str, Any]:
        return self._storage

    def close(self) -> None:
        self._data = None


def pick_name(path: str, name: str | None, names: list[str], what: str = "tensor") -> str:
    """``name`` if ``path`` holds it; with no name, the only one there is. Else a one-line error
    that lists the closest names (or the first few)."""
    if name is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise InputFileError(f"expected a {what} in {path!r}, found none; the file holds no arrays")
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise UsageError(
            f"expected one {what} in {path!r} or a name, found {len(names)}: {shown}; "
            f"name one as {path}:{names[0]}"
        )
    if name in names:
        return name
    for suffix in (".weight", "/kernel"):  # a layer's name selects its weights
        if name + suffix in names:
            return name + suffix
    import difflib

    close = difflib.get_close_matches(name, names, n=5, cutoff=0.3) or names[:5]
    raise InputFileError(
        f"expected a {what} {name!r} in {path!r}, found none; closest: {', '.join(close) or 'none'}"
        " (pwconv info lists them all)"
    )


def zip_member_guard(path: str, info: Any, limit_ratio: int = 100) -> None:
    """Refuse a zip member that would inflate far beyond its stored size (a zip bomb)."""
    if (
        info.compress_size
        and info.file_size > (16 << 20)
        and info.file_size > limit_ratio * info.compress_size
    ):
        raise FormatError(
            f"expected an ordinary zip member in {path!r}, found {info.filename!r} declaring "
            f"{info.file_size} bytes from {info.compress_size} (over {limit_ratio}x): refused as a zip bomb"
        )


class SaturatingSink:
    """A sink of integers for results computed in another type: values are rounded to nearest
    and clipped into range (never wrapped), and the clipped values are counted."""

    def __init__(self, sink: Sink, dtype: np.dtype) -> None:
        self.sink, self.dtype = sink, np.dtype(dtype)
        self.sequential = sink.sequential
        self.clipped_low = self.clipped_high = 0
        self.counted = True

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        converted, low, high = saturate(block, self.dtype)
        self.clipped_low += low
        self.clipped_high += high
        self.sink.write(index, converted)

    def parallel_writer(self) -> BlockWriter | None:
        inner = self.sink.parallel_writer()
        if inner is None:
            return None
        self.counted = False  # workers in other processes cannot report their counts
        return _SaturatingWriter(inner, self.dtype)

    def commit(self) -> None:
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()


class _SaturatingWriter:
    def __init__(self, writer: BlockWriter, dtype: np.dtype) -> None:
        self.writer, self.dtype = writer, dtype

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        self.writer[index] = saturate(block, self.dtype)[0]


def write_atomically(path: str, overwrite: bool, write: Callable[[str], None]) -> None:
    """Run ``write(temp)`` on a temp file beside ``path``, then rename it into place."""
    check_output_path(path, overwrite)
    fd, temp = temp_path_beside(path)
    os.close(fd)
    try:
        write(temp)
        publish(temp, path)
    except OSError as exc:
        remove_quietly(temp)
        raise WriteError(
            f"cannot write {path!r}: {exc.strerror or exc}; check the disk and permissions"
        ) from None
    except BaseException:
        remove_quietly(temp)
        raise
