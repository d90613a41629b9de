"""Zarr (v3) arrays: read lazily by block, written chunk by chunk into a folder renamed on commit."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.core.blocks import chunk_shape
from pwconv.errors import FormatError, InputFileError, UsageError, WriteError, require_extra
from pwconv.io.base import SinkRequest, check_output_path, check_readable, numeric_dtype, temp_dir_beside

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

COMPRESSIONS = ("zstd", "gzip")
# Whole chunks go straight to their own files: any number of processes can write at once.
PARALLEL_WRITE = True

_CHUNK_TARGET_BYTES = 16 << 20


def _zarr() -> Any:
    return require_extra("zarr", "dask", ".zarr files")


def open_zarr_array(path: str, dataset: str | None) -> Any:
    """The array at ``path`` (or ``dataset`` inside a group there); errors list what exists."""
    zarr = _zarr()
    check_readable(path)
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is not zarr
        raise FormatError(
            f"expected a zarr store at {path!r}, found one zarr cannot open ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(node, zarr.Array):
        if dataset:
            raise UsageError(
                f"expected a zarr group for {path}:{dataset}, found an array; drop the dataset name"
            )
        return node
    names = sorted(name for name, item in node.arrays())
    if dataset is None:
        if len(names) == 1:
            return node[names[0]]
        raise UsageError(
            f"expected one array in the zarr group {path!r} or an array name, found {len(names)}: "
            f"{', '.join(names[:10]) or 'none'}; name one as {path}:{names[0] if names else 'NAME'}"
        )
    key = dataset.strip("/")
    if key not in node or not isinstance(node[key], zarr.Array):
        raise InputFileError(
            f"expected an array {dataset!r} in {path!r}, found none; arrays there: {', '.join(names) or 'none'}"
        )
    return node[key]


class ZarrSource:
    """A zarr array read block by block."""

    sequential = False

    def __init__(self, path: str, dataset: str | None) -> None:
        self.path = path
        self.dataset = dataset
        # A v3 array of plain little-endian chunk files needs no zarr at all: its metadata is
        # read here and its chunks straight from their files, several times faster than
        # zarr's codec pipeline (and without zarr's import, about 0.4 s).
        check_readable(path)
        require_extra("zarr", "dask", ".zarr files", load=False)
        raw = read_raw_metadata(path) if not dataset else None
        self._array: Any = None
        if raw is None:
            self._array = open_zarr_array(path, dataset)
        self._files = _ChunkFiles(self._array, raw)
        self.shape = self._files.shape
        self.dtype = numeric_dtype(raw.dtype if raw is not None else self._array.dtype, repr(path))

    def chunks(self) -> tuple[int, ...] | None:
        return self._files.chunks

    def storage(self) -> dict[str, Any]:
        compressors = [] if self._array is None else getattr(self._array, "compressors", ())
        return {
            "format": f"zarr v{3 if self._array is None else self._array.metadata.zarr_format}",
            "chunks": list(self.chunks() or ()),
            "compressors": [type(c).__name__ for c in compressors],
            "data_bytes": math.prod(self.shape) * self.dtype.itemsize,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            direct = self._files.read_box(index)
            if direct is not None:
                return direct
            if self._array is None:
                self._array = open_zarr_array(self.path, self.dataset)
            return np.asarray(self._array[index])
        except FormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - codecs raise many types for corrupt chunks
            raise FormatError(
                f"cannot read {self.path!r}: a chunk is corrupt or unreadable ({type(exc).__name__}); "
                "write the store again"
            ) from None

    def parallel_reader(self) -> ZarrBlocks:
        return ZarrBlocks(self.path, self.dataset)

    def close(self) -> None:
        pass


def zarr_chunks(shape: tuple[int, ...], dtype: np.dtype, channel_axis: int) -> tuple[int, ...]:
    """About 16 MiB chunks of whole channel vectors."""
    return chunk_shape(shape, dtype.itemsize, channel_axis, _CHUNK_TARGET_BYTES)


def _compressors(name: str | None) -> Any:
    if name in (None, "none"):
        return None
    from zarr import codecs

    if name == "zstd":
        return codecs.ZstdCodec()
    if name == "gzip":
        return codecs.GzipCodec()
    raise UsageError(f"expected [[compression=zstd|gzip|none]] for zarr output, found {name!r}")


def publish_dir(temp: str, final: str) -> None:
    """Move a finished store into place; an old store (overwritten) is removed only after."""
    final = final.rstrip("/")
    old = None
    if os.path.exists(final):
        old = temp + ".old"
        os.rename(final, old)
    os.rename(temp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


class ZarrSink:
    """A zarr v3 array written block by block into a hidden folder, renamed on commit."""

    sequential = False

    def __init__(
        self,
        path: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        *,
        overwrite: bool,
        attrs: dict[str, Any],
        chunks: tuple[int, ...] | None = None,
        channel_axis: int = -1,
        compression: str | None = None,
    ) -> None:
        require_extra("zarr", "dask", ".zarr files", load=False)
        if compression not in (None, "none"):
            _compressors(compression)  # an unknown name fails before anything is created
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        chunks = chunks or zarr_chunks(shape, self.dtype, channel_axis % max(len(shape), 1))
        self._temp = temp_dir_beside(path)
        try:
            # An uncompressed array is written without zarr: its zarr.json here, whole chunks
            # straight to their files.
            raw = (
                None
                if compression not in (None, "none")
                else write_raw_metadata(self._temp, shape, self.dtype, chunks, attrs)
            )
            if raw is None:
                _zarr().create_array(
                    store=self._temp,
                    shape=shape,
                    dtype=self.dtype,
                    chunks=chunks,
                    zarr_format=3,
                    compressors=_compressors(compression),
                    attributes={k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()},
                    overwrite=True,
                )
            self._writer = ZarrChunkWriter(self._temp, raw)
        except BaseException:
            self.abort()
            raise

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if block.size:
            try:
                self._writer[index] = block
            except OSError as exc:
                raise WriteError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def parallel_writer(self) -> ZarrChunkWriter:
        return self._writer

    def commit(self) -> None:
        try:
            publish_dir(self._temp, self.path)
            self._temp = ""
        except OSError as exc:
            self.abort()
            raise WriteError(f"cannot finish {self.path}: {exc.strerror or exc}") from None

    def abort(self) -> None:
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = ""


# The zarr v3 data types that are numpy dtypes of the same name.
_DATA_TYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
}  # fmt: skip
_SPECIAL_FLOATS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class RawMetadata:
    """What a v3 array of plain little-endian chunk files needs: where its chunks are, their
    shape, dtype and key encoding, and the fill value of chunks never written."""

    def __init__(
        self,
        folder: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        fill: Any,
        prefix: str = "c",
        separator: str = "/",
    ) -> None:
        self.folder, self.shape, self.dtype, self.chunks = folder, shape, dtype, chunks
        self.fill, self.prefix, self.separator = fill, prefix, separator

    def encode_chunk_key(self, coords: tuple[int, ...]) -> str:
        """The chunk's path relative to the array's folder (v3 "default" or "v2" encoding)."""
        parts = [str(c) for c in coords] or (["0"] if not self.prefix else [])
        key = self.separator.join(([self.prefix] if self.prefix else []) + parts)
        return key.replace("/", os.sep)


def _number(value: Any) -> Any:
    """A JSON fill value with zarr's names for NaN and infinities turned into floats."""
    return _SPECIAL_FLOATS.get(value, value) if isinstance(value, str) else value


def read_raw_metadata(path: str) -> RawMetadata | None:
    """The array at ``path`` when its ``zarr.json`` describes plain little-endian chunk
    files on a regular grid; None for anything else (zarr then reads it)."""
    try:
        with open(os.path.join(path, "zarr.json"), "rb") as handle:
            meta = json.loads(handle.read(1 << 20))
        if (
            not isinstance(meta, dict)
            or meta.get("zarr_format") != 3
            or meta.get("node_type") != "array"
            or meta.get("storage_transformers", [])
            or meta.get("data_type") not in _DATA_TYPES
        ):
            return None
        dtype = np.dtype(meta["data_type"])
        shape = tuple(meta["shape"])
        grid = meta["chunk_grid"]
        chunks = tuple(grid["configuration"]["chunk_shape"])
        codecs = meta["codecs"]
        if (
            grid.get("name") != "regular"
            or len(chunks) != len(shape)
            or not all(isinstance(n, int) and n >= 0 for n in shape)
            or not all(isinstance(c, int) and c > 0 for c in chunks)
            or len(codecs) != 1
            or codecs[0].get("name") != "bytes"
            or (dtype.itemsize > 1 and codecs[0].get("configuration", {}).get("endian", "little") != "little")
        ):
            return None
        encoding = meta.get("chunk_key_encoding", {"name": "default"})
        name = encoding.get("name")
        separator = encoding.get("configuration", {}).get("separator", "/" if name == "default" else ".")
        if name not in ("default", "v2") or separator not in ("/", "."):
            return None
        fill: Any = _number(meta.get("fill_value", 0))
        if isinstance(fill, list) and len(fill) == 2 and dtype.kind == "c":
            fill = complex(_number(fill[0]), _number(fill[1]))
        if (isinstance(fill, bool) and dtype.kind != "b") or not isinstance(
            fill, (bool, int, float, complex)
        ):
            return None
        np.array(fill).astype(dtype)  # a fill value the dtype cannot hold goes to zarr
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None
    return RawMetadata(
        os.path.abspath(path), shape, dtype, chunks, fill, "c" if name == "default" else "", separator
    )


def _json_value(value: Any) -> Any:
    """An attribute value as JSON, numpy scalars and arrays included."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def write_raw_metadata(
    folder: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], attrs: dict[str, Any]
) -> RawMetadata | None:
    """Write the ``zarr.json`` of an uncompressed v3 array (what zarr itself writes for one),
    or None when zarr must create the array (a dtype or attribute JSON cannot hold)."""
    if dtype.name not in _DATA_TYPES:
        return None
    fill: Any = (
        False
        if dtype.kind == "b"
        else (0.0 if dtype.kind in "f" else ([0.0, 0.0] if dtype.kind == "c" else 0))
    )
    meta = {
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": attrs,
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    try:
        text = json.dumps(meta, indent=2, default=_json_value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    with open(os.path.join(folder, "zarr.json"), "w", encoding="utf-8") as handle:
        handle.write(text)
    return RawMetadata(os.path.abspath(folder), shape, dtype, chunks, 0 if dtype.kind != "c" else 0j)


def raw_chunk_layout(array: Any) -> tuple[str, Any] | None:
    """(store folder, metadata) when chunks are plain little-endian bytes files, else None.

    Such chunks can be read straight from their files, several times faster than through
    zarr's generic codec pipeline.
    """
    metadata = getattr(array, "metadata", None)
    if metadata is None or getattr(metadata, "zarr_format", 2) != 3:
        return None
    codecs: Any = getattr(metadata, "codecs", ())
    if len(codecs) != 1 or type(codecs[0]).__name__ != "BytesCodec":
        return None
    endian = getattr(getattr(codecs[0], "endian", None), "value", "little")
    dtype = np.dtype(array.dtype)
    if dtype.itemsize > 1 and (endian or "little") != "little":
        return None
    root = getattr(array.store, "root", None)
    if root is None or type(array.store).__name__ != "LocalStore":
        return None
    folder = os.path.join(str(root), array.path) if getattr(array, "path", "") else str(root)
    return folder, metadata


def whole_chunk(
    index: tuple[slice, ...], shape: tuple[int, ...], chunks: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The chunk coordinates when ``index`` covers exactly one whole chunk, else None.

    >>> whole_chunk((slice(4, 8), slice(0, 3)), (10, 3), (4, 3))
    (1, 0)
    """
    coords = []
    for sl, n, c in zip(index, shape, chunks):
        start, stop, step = sl.indices(n)
        if step != 1 or start % c or stop != min(start + c, n):
            return None
        coords.append(start // c)
    return tuple(coords)


class _ChunkFiles:
    """Shape, chunks and, for a bytes-only local array, where each chunk's file is; from a
    zarr array, or from :class:`RawMetadata` read without zarr."""

    def __init__(self, array: Any, meta: RawMetadata | None = None) -> None:
        source = meta if meta is not None else array
        self.shape = tuple(int(n) for n in source.shape)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(c) for c in source.chunks)
        # Both ways admit only little-endian chunk files.
        self.dtype = np.dtype(source.dtype).newbyteorder("<")
        if meta is not None:
            self._folder: str | None = meta.folder
            self._keys: Any = meta
            self._fill: Any = meta.fill
            return
        raw = raw_chunk_layout(array)
        self._folder = os.path.abspath(raw[0]) if raw else None
        self._keys = raw[1] if raw else None
        self._fill = array.metadata.fill_value if raw else None

    def chunk_file(self, index: tuple[slice, ...]) -> str | None:
        """The file of the one whole chunk ``index`` covers, when it can be used directly."""
        if self._folder is None:
            return None
        coords = whole_chunk(index, self.shape, self.chunks)
        return None if coords is None else os.path.join(self._folder, self._keys.encode_chunk_key(coords))

    def read_box(self, index: tuple[slice, ...]) -> np.ndarray | None:
        """A step-1 box assembled straight from the chunk files it meets (a map of each, no
        codec pipeline), or None where that cannot be done."""
        bounds = [sl.indices(n) for sl, n in zip(index, self.shape)]
        if self._folder is None or any(step != 1 for _, _, step in bounds):
            return None
        whole = self.chunk_file(index)
        if (
            whole is not None
            and os.path.exists(whole)
            and all(c == n for c, n in zip(self.chunks, self._extents(bounds)))
        ):
            # Exactly one whole chunk: a read-only map of its file, no copy (as for .npy).
            return self._mapped(whole)
        out = np.empty(tuple(max(0, stop - start) for start, stop, _ in bounds), self.dtype)
        if out.size == 0:
            return out
        grids = [range(start // c, (stop - 1) // c + 1) for (start, stop, _), c in zip(bounds, self.chunks)]
        for coords in itertools.product(*grids):
            low = [k * c for k, c in zip(coords, self.chunks)]
            inside = [
                (max(start, lo), min(stop, lo + c))
                for (start, stop, _), lo, c in zip(bounds, low, self.chunks)
            ]
            source = tuple(slice(a - lo, b - lo) for (a, b), lo in zip(inside, low))
            target = tuple(slice(a - start, b - start) for (a, b), (start, _, _) in zip(inside, bounds))
            path = os.path.join(self._folder, self._keys.encode_chunk_key(coords))
            if not os.path.exists(path):
                out[target] = self._fill
                continue
            out[target] = self._mapped(path)[source]
        return out

    @staticmethod
    def _extents(bounds: list[tuple[int, int, int]]) -> tuple[int, ...]:
        return tuple(max(0, stop - start) for start, stop, _ in bounds)

    def _mapped(self, path: str) -> np.ndarray:
        """A read-only map of one chunk file, whose size is checked first."""
        expected = math.prod(self.chunks) * self.dtype.itemsize
        size = os.path.getsize(path)
        if size != expected:
            raise FormatError(
                f"expected chunk files of {expected} bytes in {self._folder!r}, found {path!r} of "
                f"{size}; the store is damaged, write it again"
            )
        return np.memmap(path, dtype=self.dtype, mode="r", shape=self.chunks)


class ZarrBlocks(_ChunkFiles):
    """A zarr array that dask slices chunk by chunk; picklable, it opens the store per read."""

    def __init__(self, path: str, dataset: str | None) -> None:
        super().__init__(open_zarr_array(path, dataset))
        self.path, self.dataset = os.path.abspath(path), dataset

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        path = self.chunk_file(index)
        if path is None:
            return np.asarray(open_zarr_array(self.path, self.dataset)[index])
        extents = tuple(len(range(*sl.indices(n))) for sl, n in zip(index, self.shape))
        if not os.path.exists(path):
            return np.full(extents, self._fill, dtype=self.dtype)
        # A read-only map of the chunk file: the kernel reads the page cache with no copy.
        chunk = np.memmap(path, dtype=self.dtype, mode="r", shape=self.chunks)
        return np.asarray(chunk[tuple(slice(0, e) for e in extents)])


class ZarrChunkWriter(_ChunkFiles):
    """``target[index] = block`` for ``dask.array.store``: whole chunks of a bytes-only array
    are written straight to their files; anything else goes through zarr."""

    def __init__(self, folder: str, meta: RawMetadata | None = None) -> None:
        super().__init__(None if meta is not None else _zarr().open_array(folder, mode="r"), meta)
        self.folder = os.path.abspath(folder)

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        bounds = [sl.indices(n) for sl, n in zip(index, self.shape)]
        if self._folder is not None and all(step == 1 for _, _, step in bounds) and block.size:
            # Split the block at chunk boundaries: whole chunks go to their files.
            grids = [
                range(start // c, (stop - 1) // c + 1) for (start, stop, _), c in zip(bounds, self.chunks)
            ]
            for coords in itertools.product(*grids):
                low = [k * c for k, c in zip(coords, self.chunks)]
                part = tuple(
                    slice(max(start, lo), min(stop, lo + c))
                    for (start, stop, _), lo, c in zip(bounds, low, self.chunks)
                )
                inner = tuple(
                    slice(p.start - start, p.stop - start) for p, (start, _, _) in zip(part, bounds)
                )
                self._write_one(part, block[inner])
            return
        _zarr().open_array(self.folder, mode="r+")[index] = block

    def _write_one(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        path = self.chunk_file(index)
        if path is None:
            _zarr().open_array(self.folder, mode="r+")[index] = block
            return
        data = np.ascontiguousarray(block, dtype=self.dtype)
        if data.shape != self.chunks:  # edge chunks are stored at full size
            full = np.full(self.chunks, self._fill, dtype=data.dtype)
            full[tuple(slice(0, e) for e in data.shape)] = data
            data = full
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data.tofile(path)


def open_source(spec: Spec) -> ZarrSource:
    return ZarrSource(spec.path, spec.dataset)


def open_sink(spec: Spec, request: SinkRequest) -> ZarrSink:
    check_output_path(spec.path, request.overwrite)
    if spec.dataset:
        raise UsageError(
            f"expected a zarr output without an array name, found {spec.text!r}; write to {spec.path}"
        )
    # Engines that write blocks in parallel get one chunk per block: each writes whole chunks.
    chunks = request.block_shape or (request.chunks if isinstance(request.chunks, tuple) else None)
    return ZarrSink(
        spec.path,
        request.shape,
        request.dtype,
        overwrite=request.overwrite,
        attrs=request.attrs,
        chunks=chunks,
        channel_axis=request.channel_axis,
        compression=request.compression,
    )


def array_name(name: str) -> str:
    return name.strip("/")


def list_arrays(path: str) -> list[str]:
    """The arrays of a group (every array, depth first), or ``[]`` for a store that is one array."""
    zarr = _zarr()
    check_readable(path)
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a folder that is not zarr
        raise FormatError(
            f"expected a zarr store at {path!r}, found one zarr cannot open ({type(exc).__name__})"
        ) from None
    if isinstance(node, zarr.Array):
        return []
    return sorted(name for name, _ in node.arrays())
