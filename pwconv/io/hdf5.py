"""HDF5 datasets read by hyperslab and written chunk-aligned (h5py is imported only here)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.core.blocks import chunk_shape
from pwconv.errors import FormatError, InputFileError, OutputExistsError, UsageError, WriteError
from pwconv.io.base import (
    SinkRequest,
    check_output_path,
    check_readable,
    first_line,
    numeric_dtype,
    publish,
    remove_quietly,
    temp_path_beside,
    write_atomically,
)

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

COMPRESSIONS = ("gzip", "lzf")
# HDF5 files cannot be written from several processes at once.
PARALLEL_WRITE = False

_CHUNK_TARGET_BYTES = 1 << 20


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


class H5Source:
    """An HDF5 dataset; blocks are read as hyperslabs."""

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
        except BaseException:
            self._file.close()
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
        try:
            return np.asarray(self._ds[index])
        except OSError as exc:
            raise FormatError(f"cannot read {self.path}:{self.dataset}: {str(exc).splitlines()[0]}") from None

    def close(self) -> None:
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
            self._ds = self._file.create_dataset(self._name, shape=shape, dtype=self.dtype, **opts)
            for key, value in attrs.items():
                self._ds.attrs[key] = value
        except (OSError, ValueError) as exc:
            self.abort()
            if isinstance(exc, (OutputExistsError, UsageError, FormatError)):
                raise
            raise WriteError(f"cannot create {path}:{self.dataset}: {str(exc).splitlines()[0]}") from None
        except BaseException:
            self.abort()
            raise

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if block.size:
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
            if self._in_place:
                if self._target in self._file:
                    del self._file[self._target]
                self._file.move(self._name, self._target)
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
