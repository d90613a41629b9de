"""HDF5 datasets (h5py is imported only here).

An unfiltered dataset's bytes lie as they are in the file: such a dataset is read, and a
new uncompressed output written, with positioned reads and writes at the offsets HDF5
reports (:mod:`pwconv.io.rawfile`), several times faster than h5py's hyperslab machinery
and free of its global lock. Anything else (filters, external storage, odd layouts) goes
through h5py.
"""

from __future__ import annotations

import math
import mmap
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.core.blocks import chunk_shape
from pwconv.errors import FormatError, InputFileError, OutputExistsError, UsageError, WriteError
from pwconv.io.base import (
    SinkRequest,
    box_of,
    check_output_path,
    check_readable,
    first_line,
    numeric_dtype,
    publish,
    remove_quietly,
    temp_path_beside,
    write_atomically,
)
from pwconv.io.rawfile import RawChunks

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

COMPRESSIONS = ("gzip", "lzf")
# HDF5 files cannot be written from several processes at once.
PARALLEL_WRITE = False

_CHUNK_TARGET_BYTES = 1 << 20
# Above this many chunks, listing where each lies costs more than h5py's own reads.
_MAX_RAW_CHUNKS = 1 << 18


def _h5py() -> Any:
    import h5py

    return h5py


def list_datasets(group: Any) -> list[str]:
    """Names of every dataset under ``group``, depth first."""
    h5py = _h5py()
    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            names.append("/" + name)

    group.visititems(visit)
    return names


def _open_file(path: str, mode: str) -> Any:
    h5py = _h5py()
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        detail = str(exc).splitlines()[0]
        raise FormatError(
            f"expected an HDF5 file at {path!r}, found one h5py cannot open ({detail}); check that it "
            "is HDF5 and not truncated"
        ) from None


def resolve_dataset(handle: Any, path: str, dataset: str | None) -> Any:
    """The named dataset, or the file's only dataset; errors list what exists."""
    h5py = _h5py()
    names = list_datasets(handle)
    if dataset is None:
        if len(names) == 1:
            return handle[names[0]]
        if not names:
            raise InputFileError(f"expected a dataset in {path!r}, found none; the file is empty")
        raise UsageError(
            f"expected one dataset in {path!r} or a dataset name, found {len(names)}: "
            f"{', '.join(names[:10])}; name one as {path}:{names[0]} or with [[dataset]]"
        )
    obj = handle.get(dataset)
    if not isinstance(obj, h5py.Dataset):
        listed = ", ".join(names[:10]) or "none"
        raise InputFileError(
            f"expected a dataset {dataset!r} in {path!r}, found {'a group' if obj is not None else 'nothing'}; "
            f"datasets there: {listed}"
        )
    return obj


def raw_layout(ds: Any, fd: int, name: str) -> RawChunks | None:
    """Where an unfiltered dataset's bytes lie in its file, or None where h5py must read it
    (filters, external or virtual storage, foreign byte order, unallocated data)."""
    try:
        plist = ds.id.get_create_plist()
        dtype = np.dtype(ds.dtype)
        shape = tuple(int(n) for n in ds.shape)
        if plist.get_nfilters() or plist.get_external_count() or not dtype.isnative or not math.prod(shape):
            return None
        layout = plist.get_layout()
        h5d = _h5py().h5d
        if layout == h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            if offset is None:
                return None
            return RawChunks(fd, name, shape, dtype, shape, {(0,) * len(shape): int(offset)}, ds.fillvalue)
        if layout != h5d.CHUNKED or ds.id.get_num_chunks() > _MAX_RAW_CHUNKS:
            return None
        chunks = tuple(int(c) for c in ds.chunks)
        chunk_bytes = math.prod(chunks) * dtype.itemsize
        found: list[Any] = []
        if hasattr(ds.id, "chunk_iter"):
            ds.id.chunk_iter(found.append)
        else:
            found = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
        offsets = {}
        for info in found:
            if info.size != chunk_bytes or info.filter_mask:
                return None
            offsets[tuple(o // c for o, c in zip(info.chunk_offset, chunks))] = int(info.byte_offset)
        return RawChunks(fd, name, shape, dtype, chunks, offsets, ds.fillvalue)
    except (OSError, ValueError, RuntimeError, TypeError, AttributeError):
        return None


class H5Source:
    """An HDF5 dataset; blocks are read straight from the file where its bytes are raw, as
    hyperslabs through h5py otherwise."""

    sequential = False

    def __init__(self, path: str, dataset: str | None) -> None:
        check_readable(path)
        self.path = path
        self._file = _open_file(path, "r")
        try:
            self._ds = resolve_dataset(self._file, path, dataset)
            self.dataset = self._ds.name
            self.shape = tuple(int(n) for n in self._ds.shape)
            self.dtype = numeric_dtype(self._ds.dtype, f"{path}:{self.dataset}")
            self._raw_file = open(path, "rb")  # noqa: SIM115 - closed in close()
            self._raw = raw_layout(self._ds, self._raw_file.fileno(), f"{path}:{self.dataset}")
            if self._raw is not None:
                self._raw.check_inside(os.fstat(self._raw_file.fileno()).st_size)
                try:
                    self._raw.mapping = mmap.mmap(self._raw_file.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError):
                    pass  # positioned reads only
        except BaseException:
            self.close()
            raise

    def chunks(self) -> tuple[int, ...] | None:
        return tuple(self._ds.chunks) if self._ds.chunks else None

    def storage(self) -> dict[str, Any]:
        return {
            "format": "hdf5",
            "dataset": self.dataset,
            "chunks": list(self._ds.chunks) if self._ds.chunks else None,
            "compression": self._ds.compression,
            "data_bytes": math.prod(self.shape) * self.dtype.itemsize,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if any(len(range(*sl.indices(n))) == 0 for sl, n in zip(index, self.shape)):
            extents = tuple(len(range(*sl.indices(n))) for sl, n in zip(index, self.shape))
            return np.empty(extents, dtype=self.dtype)
        if self._raw is not None:
            box, steps = box_of(index, self.shape)
            return self._raw.read_box(tuple(slice(a, b) for a, b in box))[steps]
        try:
            return np.asarray(self._ds[index])
        except OSError as exc:
            raise FormatError(f"cannot read {self.path}:{self.dataset}: {str(exc).splitlines()[0]}") from None

    def release(self, index: tuple[slice, ...]) -> None:
        """Drop the pages of a finished block read from the map (not from the file)."""
        if self._raw is not None:
            box, _ = box_of(index, self.shape)
            self._raw.release(tuple(slice(a, b) for a, b in box))

    def close(self) -> None:
        # The map goes when the last block that uses it goes (its views hold it).
        raw_file = getattr(self, "_raw_file", None)
        if raw_file is not None:
            raw_file.close()
        self._file.close()


def auto_chunks(shape: tuple[int, ...], dtype: np.dtype, channel_axis: int) -> tuple[int, ...] | None:
    """About 1 MiB chunks of whole channel vectors (None for an empty dataset)."""
    if not shape or math.prod(shape) == 0:
        return None
    return chunk_shape(shape, dtype.itemsize, channel_axis, _CHUNK_TARGET_BYTES)


class H5Sink:
    """An HDF5 output written block by block.

    Without a dataset name the file is the unit: it is written as a temp file beside the
    target and renamed. With a dataset name the dataset is the unit: it is added to an
    existing file under a temporary name and moved into place on commit, so other datasets
    in that file are kept.
    """

    sequential = False

    def __init__(
        self,
        path: str,
        dataset: str | None,
        shape: tuple[int, ...],
        dtype: np.dtype,
        *,
        overwrite: bool,
        attrs: dict[str, Any],
        channel_axis: int,
        compression: str | None = None,
        chunks: tuple[int, ...] | str | None = "auto",
    ) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self._temp = ""
        self._file: Any = None
        self._raw: RawChunks | None = None
        self._in_place = dataset is not None and os.path.exists(path)
        self.dataset = dataset or "/data"
        if chunks == "auto":
            chunks = auto_chunks(shape, self.dtype, channel_axis)
        elif chunks == "none":
            chunks = None
        if compression and chunks is None:
            chunks = auto_chunks(shape, self.dtype, channel_axis)
        try:
            if self._in_place:
                self._file = _open_file(path, "r+")
                existing = self._file.get(self.dataset)
                if existing is not None and not overwrite:
                    raise OutputExistsError(
                        f"dataset {self.dataset!r} exists in {path!r}; pass [[overwrite!]] to replace it, "
                        "or choose another dataset name"
                    )
                self._target = self.dataset
                self._name = f"{self.dataset.rstrip('/')}.pwconv-part"
                if self._name in self._file:
                    del self._file[self._name]
            else:
                fd, self._temp = temp_path_beside(path)
                os.close(fd)
                self._file = _open_file(self._temp, "w")
                self._name = self.dataset
            opts: dict[str, Any] = {}
            if chunks:
                opts["chunks"] = tuple(chunks)
            if compression:
                opts["compression"] = compression
            direct = not self._in_place and not compression
            if direct:
                # Space for every chunk now, no fill values: the blocks are then written
                # straight into it once h5py has closed the file.
                h5py = _h5py()
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                opts.update(dcpl=dcpl, fill_time="never")
            self._ds = self._file.create_dataset(self._name, shape=shape, dtype=self.dtype, **opts)
            for key, value in attrs.items():
                self._ds.attrs[key] = value
            self._raw = raw_layout(self._ds, -1, f"{path}:{self.dataset}") if direct else None
            if self._raw is not None:
                self._file.close()
                self._file = None
                self._raw.fd = os.open(self._temp, os.O_WRONLY)
                self._raw.reserve()
        except (OSError, ValueError) as exc:
            self.abort()
            if isinstance(exc, (OutputExistsError, UsageError, FormatError)):
                raise
            raise WriteError(f"cannot create {path}:{self.dataset}: {str(exc).splitlines()[0]}") from None
        except BaseException:
            self.abort()
            raise

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if block.size and self._raw is not None:
            self._raw.write_box(index, block)
        elif block.size:
            try:
                self._ds[index] = block
            except (OSError, ValueError, RuntimeError) as exc:
                raise WriteError(
                    f"cannot write {self.path}:{self.dataset}: the file system refused it ({first_line(exc)}); "
                    "free some space, check permissions or write elsewhere"
                ) from None

    def parallel_writer(self) -> None:
        return None

    def commit(self) -> None:
        try:
            if self._raw is not None:
                os.close(self._raw.fd)
                self._raw = None
            elif self._in_place:
                if self._target in self._file:
                    del self._file[self._target]
                self._file.move(self._name, self._target)
            if self._file is not None:
                self._file.close()
            self._file = None
            if not self._in_place:
                publish(self._temp, self.path)
                self._temp = ""
        except (OSError, RuntimeError) as exc:
            self.abort()
            raise WriteError(
                f"cannot write {self.path}: the file system refused it ({first_line(exc)}); "
                "free some space, check permissions or write elsewhere"
            ) from None

    def abort(self) -> None:
        if self._raw is not None:
            if self._raw.fd >= 0:
                os.close(self._raw.fd)
            self._raw = None
        if self._file is not None:
            try:
                if self._in_place and self._name in self._file:
                    del self._file[self._name]
                self._file.close()
            except Exception:  # noqa: BLE001 - cleanup must not mask the first error
                pass
            self._file = None
        remove_quietly(self._temp)
        self._temp = ""


def open_source(spec: Spec) -> H5Source:
    return H5Source(spec.path, spec.dataset)


def open_sink(spec: Spec, request: SinkRequest) -> H5Sink:
    if not (spec.dataset and os.path.exists(spec.path)):
        check_output_path(spec.path, request.overwrite)
    return H5Sink(
        spec.path,
        spec.dataset,
        request.shape,
        request.dtype,
        overwrite=request.overwrite,
        attrs=request.attrs,
        channel_axis=request.channel_axis,
        compression=request.compression,
        chunks=request.chunks,
    )


def array_name(name: str) -> str:
    """HDF5 names are absolute: ``group/x`` is ``/group/x``."""
    return name if name.startswith("/") else "/" + name


def list_arrays(path: str) -> list[str]:
    """Every dataset in the file, depth first."""
    check_readable(path)
    with _open_file(path, "r") as handle:
        return list_datasets(handle)


def write_arrays(path: str, arrays: dict[str, np.ndarray], overwrite: bool) -> list[str]:
    """Named arrays as datasets of a new HDF5 file, written atomically."""

    def write(temp: str) -> None:
        with _h5py().File(temp, "w") as handle:
            for name, array in arrays.items():
                handle[name] = array

    write_atomically(path, overwrite, write)
    return [path]
