"""Zarr (v3) arrays: read lazily by block, written chunk by chunk into a folder renamed on commit.

An array of little-endian chunk files on a regular grid, plain or each one zstd or blosc
frame, needs no zarr at all: its ``zarr.json`` is parsed here, as strictly as zarr itself
parses it, and its chunks are read straight from their files (decoded by imagecodecs on every
core where compressed), several times faster than zarr's codec pipeline and without zarr's
import (0.15-0.4 s). An uncompressed or zstd output is written the same way. Anything else
(other codecs, sharding, big-endian data, v2 stores) goes through zarr.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.core.blocks import chunk_shape
from pwconv.errors import FormatError, InputFileError, PwconvError, UsageError, require_extra
from pwconv.io import codecs as codec_threads
from pwconv.io.atomic import FileSink, check_output_path, setting_up, write_failure
from pwconv.io.checks import check_readable, check_regular, link_leaving, numeric_dtype, refuse_external
from pwconv.io.interface import Backend, Description, SinkRequest, Source
from pwconv.io.names import pick_name, printable
from pwconv.io.rawio import BlockMemory, chunk_pieces, raw_paths_enabled, read_all, whole_slab
from pwconv.io.stores import (
    PIECE,
    MissingObject,
    RemoteObject,
    is_http,
    is_url,
    join,
    put_chunk_files,
    put_object,
    read_head,
    remote_threads,
    shown,
    zarr_store,
)

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

_CHUNK_TARGET_BYTES = 16 << 20
# Chunks of compressed outputs are cut to about this size where the blocks allow it.
_COMPRESSED_CHUNK_BYTES = 4 << 20


def _zarr() -> Any:
    return require_extra("zarr", "zarr", ".zarr files")


def _open_node(path: str) -> Any:
    zarr = _zarr()
    check_readable(path)
    try:
        if is_url(path):
            return zarr.open(store=zarr_store(path), mode="r")
        return zarr.open(path, mode="r")
    except PwconvError:
        raise
    except FileNotFoundError as exc:
        if is_url(path):
            raise InputFileError(
                f"expected a zarr store at {shown(path)!r}, found no zarr.json there; check the URL"
            ) from exc
        raise FormatError(f"expected a zarr store at {path!r}, found one zarr cannot open ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for a folder that is not zarr
        raise FormatError(
            f"expected a zarr store at {path!r}, found one zarr cannot open ({type(exc).__name__}: {exc})"
        ) from None


def _arrays_of(node: Any, path: str) -> list[str]:
    """Every array under a group, depth first, by its path inside the group. A store that
    cannot be listed (a group over plain HTTP) is a one-line error."""
    zarr = _zarr()
    try:
        return sorted(name for name, item in node.members(max_depth=None) if isinstance(item, zarr.Array))
    except Exception as exc:  # noqa: BLE001 - the store's client raises many types
        why = "a plain HTTP server, which lists no folders" if is_http(path) else type(exc).__name__
        raise InputFileError(
            f"expected a zarr group whose arrays can be listed at {shown(path)!r}, found that they cannot "
            f"be ({why}); name the array as {shown(path)}:path/in/group"
        ) from None


def open_zarr_array(path: str, member: str | None) -> Any:
    """The array at ``path`` (or ``member`` inside a group there); errors list what exists."""
    node = _open_node(path)
    if isinstance(node, _zarr().Array):
        if member:
            raise UsageError(
                f"expected a zarr group for {path}:{member}, found an array; drop the array name"
            )
        return node
    if member:  # an array named in full needs no listing of the group
        try:
            item = node[member.strip("/")]
        except (KeyError, ValueError, OSError):
            item = None
        if isinstance(item, _zarr().Array):
            return item
    return node[pick_name(path, member, _arrays_of(node, path), "array")]


def _folder_of(path: str, member: str | None) -> str | None:
    """The folder of an array inside the store (None for a name that would leave it)."""
    if not member:
        return path
    parts = member.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return join(path, "/".join(parts)) if is_url(path) else os.path.join(path, *parts)


class ZarrSource(Source):
    """A zarr array read block by block."""

    def __init__(self, path: str, member: str | None) -> None:
        self.path, self.member = path, member
        check_readable(path)
        require_extra("zarr", "zarr", ".zarr files", load=False)
        remote = is_url(path)
        leaving = None if remote else link_leaving(path)
        if leaving:
            refuse_external(path, printable(f"a link out of the store ({leaving})"))
        folder = _folder_of(path, member)
        raw = read_raw_metadata(folder, compressed=True) if folder and raw_paths_enabled() else None
        self._array: Any = open_zarr_array(path, member) if raw is None else None
        self._files = _ChunkFiles(raw) if raw is not None else None
        known: Any = raw if raw is not None else self._array
        self.shape = tuple(int(n) for n in known.shape)
        self.dtype = numeric_dtype(known.dtype, repr(path))
        reader = "zarr" if raw is None else "chunk files"
        if raw is not None and raw.compressor:
            reader = f"chunk files, {raw.compressor} by imagecodecs"
        self.description = Description(reader=reader)

    def chunks(self) -> tuple[int, ...] | None:
        return tuple(int(c) for c in (self._files or self._array).chunks)

    def decoded_piece(self) -> tuple[int, str] | None:
        if self._files is not None and self._files.meta.compressor is None:
            return None  # uncompressed chunk files: any box is read on its own
        return math.prod(self.chunks() or self.shape) * self.dtype.itemsize, "a chunk"

    def storage(self) -> dict[str, Any]:
        if self._array is not None:
            compressors = [type(c).__name__ for c in self._array.compressors]
        else:  # the chunk files' own metadata, read without zarr
            codec = self._files.meta.compressor if self._files is not None else None
            compressors = [_CODEC_CLASSES[codec]] if codec else []
        return {
            "format": f"zarr v{3 if self._array is None else self._array.metadata.zarr_format}",
            "chunks": list(self.chunks() or ()),
            "compressors": compressors,
            "data_bytes": math.prod(self.shape) * self.dtype.itemsize,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            if self._files is not None:
                direct = self._files.read_box(index)
                if direct is not None:
                    return direct
                self._array = self._array or open_zarr_array(self.path, self.member)
            return np.asarray(self._array[index])
        except PwconvError:  # pwconv's own readers' errors say what failed (a network: exit 1)
            raise
        except Exception as exc:  # noqa: BLE001 - codecs raise many types for corrupt chunks
            raise FormatError(
                f"cannot read {self.path!r}: a chunk is corrupt or unreadable ({type(exc).__name__}); "
                "write the store again"
            ) from None

    def parallel_reader(self) -> ZarrBlocks:
        return ZarrBlocks(self.path, self.member)


def zarr_chunks(shape: tuple[int, ...], dtype: np.dtype, channel_axis: int) -> tuple[int, ...]:
    """About 16 MiB chunks of whole channel vectors."""
    return chunk_shape(shape, dtype.itemsize, channel_axis, _CHUNK_TARGET_BYTES)


def _divided(block: tuple[int, ...], itemsize: int, target: int) -> tuple[int, ...]:
    """``block`` with its first axis divided by the smallest whole factor that brings it to
    ``target`` bytes or less (the block itself where none does), so that every block still
    covers whole chunks.

    >>> _divided((256, 2048, 16), 4, 4 << 20)
    (32, 2048, 16)
    >>> _divided((7, 10), 4, 30)
    (7, 10)
    """
    if not block:
        return block
    size = math.prod(block) * itemsize
    for factor in range(2, block[0] + 1):
        if block[0] % factor == 0 and size // factor <= target:
            return (block[0] // factor, *block[1:])
    return block


def _check_compression(name: str | None) -> None:
    """Refuse a compression zarr output does not take, without zarr's import (0.15-0.2 s, paid
    only where zarr itself writes the chunks)."""
    if name not in (None, "none", "zstd", "gzip"):
        raise UsageError(f"expected [[compression=zstd|gzip|none]] for zarr output, found {name!r}")


def _compressors(name: str | None, level: int | None = None) -> Any:
    _check_compression(name)
    if name in (None, "none"):
        return None
    from zarr import codecs

    if name == "zstd":
        return codecs.ZstdCodec(level=level or 0)
    return codecs.GzipCodec(level=level or 5)


class ZarrSink(FileSink):
    """A zarr v3 array written block by block into a hidden folder, renamed on commit."""

    def __init__(
        self,
        path: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        *,
        attrs: dict[str, Any],
        chunks: tuple[int, ...] | None = None,
        channel_axis: int = -1,
        compression: str | None = None,
        level: int | None = None,
    ) -> None:
        require_extra("zarr", "zarr", ".zarr files", load=False)
        _check_compression(compression)  # an unknown name fails before anything is created
        super().__init__(path, folder=True)
        self.shape, self.dtype = shape, np.dtype(dtype)
        chunks = chunks or zarr_chunks(shape, self.dtype, channel_axis % max(len(shape), 1))
        with setting_up(self, path):
            # An uncompressed array is written without zarr: its zarr.json here, whole chunks
            # straight to their files.
            raw = None
            if compression is None and raw_paths_enabled():
                raw = write_raw_metadata(self.temp.path, shape, self.dtype, chunks, attrs)
            elif compression == "zstd" and raw_paths_enabled() and codec_threads.zstd_available():
                # zarr's own metadata for zstd chunks; pwconv encodes whole chunks itself
                raw = write_raw_metadata(
                    self.temp.path, shape, self.dtype, chunks, attrs, zstd_level=level or 0
                )
            if raw is None:
                _zarr().create_array(
                    store=self.temp.path,
                    shape=shape,
                    dtype=self.dtype,
                    chunks=chunks,
                    zarr_format=3,
                    compressors=_compressors(compression, level),
                    attributes=json.loads(json.dumps(attrs, default=_json_value)),
                    overwrite=True,
                )
            self._writer = ZarrChunkWriter(self.temp.path, raw, path if is_url(path) and raw else None)
        self._chunks, self._raw = chunks, raw
        self._left: dict[tuple[int, ...], int] = {}  # at a URL: elements each chunk still awaits

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if block.size:
            remote = is_url(self.target)
            if remote and not self.temp.direct:  # an older store there goes first
                self.temp.write_directly()
            try:
                self._writer[index] = block
            except OSError as exc:
                raise write_failure(self.target, exc) from None
            if remote:
                # The chunks this block completed go up now, overlapping the next block's read
                # (whole chunks were put from memory by the writer; these are the files zarr
                # wrote). The metadata goes last, on commit, with any chunk left unfinished.
                put_chunk_files(self.temp.path, self.target, self._completed(index))

    def _completed(self, index: tuple[slice, ...]) -> set[str]:
        """The keys of the chunks whose last elements this block wrote (an engine writes each
        element once)."""
        bounds = _step1_bounds(index, self.shape)
        assert bounds is not None  # engines write step-1 boxes
        done = set()
        for piece in chunk_pieces(bounds, self._chunks):
            whole = math.prod(min(c, n - g * c) for g, c, n in zip(piece.coords, self._chunks, self.shape))
            left = self._left.pop(piece.coords, whole) - math.prod(s.stop - s.start for s in piece.inner)
            if left > 0:
                self._left[piece.coords] = left
                continue
            if self._raw is not None:
                done.add(self._raw.encode_chunk_key(piece.coords).replace(os.sep, "/"))
            else:  # zarr's default v3 keys, which the arrays it creates here use
                done.add("/".join(["c", *map(str, piece.coords)]))
        return done

    def parallel_writer(self) -> ZarrChunkWriter | ZarrObjectWriter:
        if not is_url(self.target):
            return self._writer
        # Workers may share no disk with this process: they put chunks under the URL.
        with open(os.path.join(self.temp.path, "zarr.json"), "rb") as handle:
            metadata = handle.read()
        self.temp.write_directly()
        return ZarrObjectWriter(self.target, metadata)


# The zarr v3 data types that are numpy dtypes of the same name.
_DATA_TYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
}  # fmt: skip
_SPECIAL_FLOATS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
# The fields of v3 array metadata (the spec's list); any other must say must_understand: false.
_ARRAY_FIELDS = {
    "zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding",
    "fill_value", "codecs", "attributes", "dimension_names", "storage_transformers",
}  # fmt: skip


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
        compressor: str | None = None,
        level: int = 0,
    ) -> None:
        self.folder, self.shape, self.dtype, self.chunks = folder, shape, dtype, chunks
        self.fill, self.prefix, self.separator = fill, prefix, separator
        self.compressor = compressor  # None (plain chunk files), "zstd" or (read only) "blosc"
        self.level = level

    def encode_chunk_key(self, coords: tuple[int, ...]) -> str:
        """The chunk's path relative to the array's folder (v3 "default" or "v2" encoding)."""
        parts = [str(c) for c in coords] or (["0"] if not self.prefix else [])
        key = self.separator.join(([self.prefix] if self.prefix else []) + parts)
        return key.replace("/", os.sep)


def _number(value: Any) -> Any:
    """A JSON fill value with zarr's names for NaN and infinities turned into floats."""
    return _SPECIAL_FLOATS.get(value, value) if isinstance(value, str) else value


def _check_fields(meta: dict[str, Any], where: str) -> None:
    """Refuse a metadata field the v3 spec does not define unless it says it may be ignored."""
    for key, value in meta.items():
        if key not in _ARRAY_FIELDS and not (
            isinstance(value, dict) and value.get("must_understand") is False
        ):
            raise FormatError(
                f"expected Zarr v3 array metadata in {where}, found the field {key!r}, which pwconv does "
                "not understand and which is not marked must_understand: false; write the store again"
            )


# The compressors whose chunks pwconv decodes itself, and the configuration keys each may have
# (a blosc frame says its own shuffle, type size and codec in its header).
_CHUNK_CODECS = {
    "zstd": {"level", "checksum"},
    "blosc": {"cname", "clevel", "shuffle", "typesize", "blocksize"},
}


# zarr's class for each of them, as info names the compressors of an array zarr opened.
_CODEC_CLASSES = {"zstd": "ZstdCodec", "blosc": "BloscCodec"}


def _chunk_compressor(codecs: Any, dtype: np.dtype) -> str | None:
    """ "none" when the codecs are the bytes codec alone, storing little-endian values; the
    compressor's name when one of :data:`_CHUNK_CODECS` follows it and pwconv can decode it
    itself; None for anything else."""
    if isinstance(codecs, list) and len(codecs) == 2 and isinstance(codecs[1], dict):
        name, config = codecs[1].get("name"), codecs[1].get("configuration", {})
        known = (
            name in _CHUNK_CODECS
            and isinstance(config, dict)
            and not set(config) - _CHUNK_CODECS[name]
            and codec_threads.can_decode(name)
        )
        return name if known and _bytes_codec_little(codecs[:1], dtype) else None
    return "none" if _bytes_codec_little(codecs, dtype) else None


def _bytes_codec_little(codecs: Any, dtype: np.dtype) -> bool:
    """Whether the codecs are the bytes codec alone, storing little-endian values."""
    if not isinstance(codecs, list) or len(codecs) != 1 or not isinstance(codecs[0], dict):
        return False
    codec = codecs[0]
    config = codec.get("configuration", {})
    if codec.get("name") != "bytes" or not isinstance(config, dict) or set(config) - {"endian"}:
        return False
    return dtype.itemsize == 1 or config.get("endian") == "little"


def _fill_value(meta: dict[str, Any], dtype: np.dtype) -> Any:
    """The fill value as a Python number, or None where pwconv does not read it (a hex string)."""
    fill: Any = _number(meta.get("fill_value", 0))
    if isinstance(fill, list) and len(fill) == 2 and dtype.kind == "c":
        fill = complex(_number(fill[0]), _number(fill[1]))
    if (isinstance(fill, bool) and dtype.kind != "b") or not isinstance(fill, (bool, int, float, complex)):
        return None
    np.array(fill).astype(dtype)  # a fill value the dtype cannot hold goes to zarr
    return fill


def read_raw_metadata(path: str, compressed: bool = False) -> RawMetadata | None:
    """The array at ``path`` when its ``zarr.json`` describes plain little-endian chunk
    files on a regular grid (or, with ``compressed``, such files each compressed with zstd or
    blosc);
    None for anything else (zarr then reads it). A field the spec does not define is
    refused, as zarr refuses it."""
    try:
        text = _metadata_text(path)
        if text is None:
            return None
        try:
            meta = json.loads(text)
        except RecursionError:  # zarr's own reader would fail the same way
            raise FormatError(
                f"expected a zarr.json that parses as JSON in {path!r}, found nesting deeper than "
                "Python's JSON reader takes; check the store's metadata"
            ) from None
        if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            return None
        _check_fields(meta, repr(path))
        if meta.get("storage_transformers", []) or meta.get("data_type") not in _DATA_TYPES:
            return None
        dtype = np.dtype(meta["data_type"])
        shape = tuple(meta["shape"])
        grid = meta["chunk_grid"]
        chunks = tuple(grid["configuration"]["chunk_shape"])
        if (
            grid.get("name") != "regular"
            or len(chunks) != len(shape)
            or not all(type(n) is int and n >= 0 for n in shape)
            or not all(type(c) is int and c > 0 for c in chunks)
        ):
            return None
        compressor = _chunk_compressor(meta["codecs"], dtype)
        if compressor is None or (compressor != "none" and not compressed):
            return None
        level = meta["codecs"][1].get("configuration", {}).get("level", 0) if compressor == "zstd" else 0
        if type(level) is not int:
            return None
        encoding = meta.get("chunk_key_encoding", {"name": "default"})
        name = encoding.get("name")
        separator = encoding.get("configuration", {}).get("separator", "/" if name == "default" else ".")
        if name not in ("default", "v2") or separator not in ("/", "."):
            return None
        fill = _fill_value(meta, dtype)
    except PwconvError:  # a refused field or a special file: not for zarr to open either
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None
    if fill is None:
        return None
    return RawMetadata(
        path if is_url(path) else os.path.abspath(path), shape, dtype, chunks, fill,
        "c" if name == "default" else "", separator, None if compressor == "none" else compressor, level,
    )  # fmt: skip


def _metadata_text(path: str) -> bytes | None:
    """The first MiB of the array's ``zarr.json`` (a folder's, or an object's under a URL);
    None where there is none."""
    if is_url(path):
        try:
            return bytes(read_head(join(path, "zarr.json"), 1 << 20))
        except MissingObject:
            return None
    metadata_file = os.path.join(path, "zarr.json")
    if os.path.exists(metadata_file):
        check_regular(metadata_file)  # a FIFO here would block the open for ever
    with open(metadata_file, "rb") as handle:
        return handle.read(1 << 20)


def _one_array(path: str) -> bool:
    """Whether the store at ``path`` is one zarr v3 array, by its ``zarr.json``."""
    try:
        text = _metadata_text(path)
        return text is not None and json.loads(text).get("node_type") == "array"
    except (ValueError, AttributeError):  # not JSON, or not an object: zarr's open says what it is
        return False


def _json_value(value: Any) -> Any:
    """An attribute value as JSON, numpy scalars and arrays included."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def write_raw_metadata(
    folder: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    attrs: dict[str, Any],
    zstd_level: int | None = None,
) -> RawMetadata | None:
    """Write the ``zarr.json`` of an uncompressed v3 array, or with ``zstd_level`` of one
    whose chunks are zstd frames (what zarr itself writes for either), or None when zarr
    must create the array (a dtype or attribute JSON cannot hold)."""
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
    if zstd_level is not None:
        meta["codecs"] = [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": zstd_level, "checksum": False}},
        ]
    try:
        text = json.dumps(meta, indent=2, default=_json_value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    with open(os.path.join(folder, "zarr.json"), "w", encoding="utf-8") as handle:
        handle.write(text)
    fill = 0 if dtype.kind != "c" else 0j
    compressor = None if zstd_level is None else "zstd"
    return RawMetadata(
        os.path.abspath(folder), shape, dtype, chunks, fill, compressor=compressor, level=zstd_level or 0
    )


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


def _step1_bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    bounds = [sl.indices(n) for sl, n in zip(index, shape)]
    if any(step != 1 for _, _, step in bounds):
        return None
    return [(start, max(start, stop)) for start, stop, _ in bounds]


class _ChunkFiles:
    """Where each chunk file of a bytes-only array is, from its :class:`RawMetadata`."""

    def __init__(self, meta: RawMetadata) -> None:
        self.meta = meta
        self.shape, self.chunks, self.ndim = meta.shape, meta.chunks, len(meta.shape)
        # Only little-endian chunk files are read this way.
        self.dtype = np.dtype(meta.dtype).newbyteorder("<")
        self._fill = meta.fill
        self.remote = is_url(meta.folder)
        self._stored = math.prod(self.chunks) * self.dtype.itemsize  # an uncompressed chunk's bytes
        # Boxes of local chunk files are assembled in two kept buffers (see BlockMemory).
        self._memory = BlockMemory(keep=2)

    def chunk_path(self, coords: tuple[int, ...]) -> str:
        key = self.meta.encode_chunk_key(coords)
        if self.remote:
            return join(self.meta.folder, key.replace(os.sep, "/"))
        return os.path.join(self.meta.folder, key)

    def chunk_file(self, index: tuple[slice, ...]) -> str | None:
        """The file of the one whole chunk ``index`` covers, or None."""
        coords = whole_chunk(index, self.shape, self.chunks)
        return None if coords is None else self.chunk_path(coords)

    def read_box(self, index: tuple[slice, ...]) -> np.ndarray | None:
        """A step-1 box assembled straight from the chunk files it meets (a map of each, no
        codec pipeline), or None for a strided selection."""
        bounds = _step1_bounds(index, self.shape)
        if bounds is None:
            return None
        extents = tuple(stop - start for start, stop in bounds)
        if self.remote:
            return self._fetched_box(bounds, extents)
        whole = self.chunk_file(index)
        compressed = self.meta.compressor is not None
        if whole is not None and os.path.exists(whole) and extents == self.chunks and not compressed:
            return self._mapped(whole)  # exactly one whole chunk: a read-only map, no copy
        out = self._memory.empty(extents, self.dtype)
        if out.size == 0:
            return out
        load = self._decoded if compressed else self._mapped

        def one(piece: Any) -> None:
            path = self.chunk_path(piece.coords)
            if not os.path.exists(path):
                out[piece.outer] = self._fill
            elif compressed and (slab := whole_slab(out, piece, self.chunks)) is not None:
                self._decoded(path, into=slab)
            else:
                out[piece.outer] = load(path)[piece.inner]

        if compressed:  # decoded on every core
            codec_threads.in_parallel(one, chunk_pieces(bounds, self.chunks))
        else:
            for piece in chunk_pieces(bounds, self.chunks):
                one(piece)
        return out

    def _fetched_box(self, bounds: list[tuple[int, int]], extents: tuple[int, ...]) -> np.ndarray:
        """A box from the chunk objects under a URL, fetched several at a time: plain chunks in
        pieces of a known size (straight into the box where a whole chunk is one run of it),
        compressed ones whole and then decoded on every core. A chunk never written reads
        as the fill value."""
        out = np.empty(extents, self.dtype)
        if out.size == 0:
            return out
        pieces = list(chunk_pieces(bounds, self.chunks))
        if self.meta.compressor is not None:
            limit = 2 * self._stored + (1 << 16)  # a stored chunk is never much larger
            stored = list(remote_threads().map(lambda p: self._fetched(p.coords, limit), pieces))

            def decode(item: tuple[Any, Any]) -> None:
                piece, data = item
                where = shown(self.chunk_path(piece.coords))
                if data is None:
                    out[piece.outer] = self._fill
                elif (slab := whole_slab(out, piece, self.chunks)) is not None:
                    self._decode(data, where, into=slab)
                else:
                    out[piece.outer] = self._decode(data, where)[piece.inner]

            codec_threads.in_parallel(decode, list(zip(pieces, stored)))
            return out
        targets, direct = [], []  # per chunk: where its bytes go; whether that is in the box
        for piece in pieces:
            place = out[piece.outer]
            whole = all(s.stop - s.start == c for s, c in zip(piece.inner, self.chunks))
            direct.append(whole and place.flags.c_contiguous)
            targets.append(place if direct[-1] else np.empty(self.chunks, self.dtype))
        runs = [
            (i, at, min(PIECE, self._stored - at))
            for i in range(len(pieces))
            for at in range(0, self._stored, PIECE)
        ]  # fmt: skip
        missing: set[int] = set()

        def fetch(run: tuple[int, int, int]) -> None:
            i, at, count = run
            remote = RemoteObject(self.chunk_path(pieces[i].coords), size=self._stored)
            try:
                remote.read_range_into(at, targets[i].reshape(-1).view(np.uint8).data[at : at + count])
            except MissingObject:
                missing.add(i)

        for done in remote_threads().map(fetch, runs):
            del done
        for i, piece in enumerate(pieces):
            if i in missing:
                out[piece.outer] = self._fill
            elif not direct[i]:
                out[piece.outer] = targets[i][piece.inner]
        return out

    def _fetched(self, coords: tuple[int, ...], limit: int) -> Any:
        """A compressed chunk's stored bytes (at most ``limit``), or None where it was never
        written."""
        try:
            return read_head(self.chunk_path(coords), limit)
        except MissingObject:
            return None

    def _decoded(self, path: str, into: np.ndarray | None = None) -> np.ndarray:
        """One compressed chunk file, decoded (its size bounded by the chunk's), into
        ``into`` where given (a whole chunk's run of a box)."""
        check_regular(path)
        with open(path, "rb", buffering=0) as handle:
            fd = handle.fileno()
            # a stored chunk is never much larger than a raw one
            buffer = codec_threads.read_buffer(min(os.fstat(fd).st_size, 2 * self._stored + (1 << 16)))
            read_all(fd, buffer.data, 0, repr(path))
        return self._decode(buffer, path, into)

    def _decode(self, data: Any, where: str, into: np.ndarray | None = None) -> np.ndarray:
        """A compressed chunk's bytes, decoded to exactly one chunk (into ``into`` where given)."""
        expected, codec = self._stored, str(self.meta.compressor)
        if into is not None:
            codec_threads.decode_into(codec, data, into, repr(where), holder="store")
            return into
        raw = codec_threads.decode_between(codec, data, expected, expected, repr(where), holder="store")
        return np.frombuffer(raw, self.dtype).reshape(self.chunks)

    def _mapped(self, path: str) -> np.ndarray:
        """A read-only map of one chunk file, whose size is checked first."""
        expected = math.prod(self.chunks) * self.dtype.itemsize
        size = os.path.getsize(path)
        if size != expected:
            raise FormatError(
                f"expected chunk files of {expected} bytes in {self.meta.folder!r}, found {path!r} of "
                f"{size}; the store is damaged, write it again"
            )
        return np.memmap(path, dtype=self.dtype, mode="r", shape=self.chunks)


class ZarrBlocks:
    """A zarr array that dask slices chunk by chunk; picklable, it opens the store per read."""

    def __init__(self, path: str, member: str | None) -> None:
        remote = is_url(path)
        self.path, self.member = path if remote else os.path.abspath(path), member
        folder = _folder_of(self.path, member)
        meta = read_raw_metadata(folder) if folder and raw_paths_enabled() else None
        self._files = _ChunkFiles(meta) if meta is not None else None
        array = open_zarr_array(self.path, member) if meta is None else meta
        self.shape, self.dtype = tuple(int(n) for n in array.shape), np.dtype(array.dtype)
        self.chunks, self.ndim = tuple(int(c) for c in array.chunks), len(self.shape)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        block = self._files.read_box(index) if self._files is not None else None
        if block is None:
            return np.asarray(open_zarr_array(self.path, self.member)[index])
        return np.asarray(block)


class ZarrChunkWriter:
    """``target[index] = block`` for ``dask.array.store``: whole chunks of a bytes-only array
    are written straight to their files; anything else goes through zarr."""

    def __init__(self, folder: str, meta: RawMetadata | None = None, url: str | None = None) -> None:
        """``url``: where a store at a URL goes; its whole chunks are put there from memory
        (several in flight) instead of being written into ``folder``."""
        self.folder = os.path.abspath(folder)
        self._files = _ChunkFiles(meta) if meta is not None else None
        self.url = url

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        files = self._files
        bounds = None if files is None else _step1_bounds(index, files.shape)
        if files is None or bounds is None:
            _zarr().open_array(self.folder, mode="r+")[index] = block
            return
        whole: list[tuple[str, np.ndarray]] = []
        for piece in chunk_pieces(bounds, files.chunks):
            where = tuple(
                slice(start + p.start, start + p.stop) for p, (start, _) in zip(piece.outer, bounds)
            )
            path = files.chunk_file(where)
            if path is None:  # part of a chunk: zarr reads, merges and writes it
                _zarr().open_array(self.folder, mode="r+")[where] = block[piece.outer]
                continue
            whole.append((path, block[piece.outer]))
        if self.url is not None:
            self._put(whole)
            return
        if files.meta.compressor is not None and len(whole) > 1:
            codec_threads.in_parallel(self._store, whole, later=True)  # encoded on every core
            return
        for item in whole:
            self._store(item)

    def _stored(self, part: np.ndarray) -> Any:
        """One whole chunk's bytes as stored: at full size (edge chunks too), zstd-encoded
        where the array says so."""
        files = self._files
        assert files is not None
        zstd = files.meta.compressor == "zstd"
        # staged in this thread's kept buffer only when it is encoded at once: plain chunks'
        # bytes are returned (and may be held, several at a time, for an upload)
        data = (
            codec_threads.staged(part, files.dtype) if zstd else np.ascontiguousarray(part, dtype=files.dtype)
        )
        if data.shape != files.chunks:  # edge chunks are stored at full size
            full = np.full(files.chunks, files.meta.fill, dtype=data.dtype)
            full[tuple(slice(0, e) for e in data.shape)] = data
            data = full
        if zstd:
            return codec_threads.zstd(data, files.meta.level)
        return data.reshape(-1).view(np.uint8).data

    def _store(self, item: tuple[str, np.ndarray]) -> None:
        """One whole chunk to its file."""
        path, part = item
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(self._stored(part))

    def _put(self, whole: list[tuple[str, np.ndarray]]) -> None:
        """A block's whole chunks put under the URL: encoded on every core where compressed,
        then sent several at a time."""
        assert self.url is not None and self._files is not None
        parts = [part for _, part in whole]
        if self._files.meta.compressor is not None and len(parts) > 1:
            stored = codec_threads.in_parallel(self._stored, parts, later=True)
        else:
            stored = [self._stored(part) for part in parts]
        keys = [os.path.relpath(path, self.folder).replace(os.sep, "/") for path, _ in whole]
        url = self.url
        codec_threads.in_parallel(
            lambda item: put_object(join(url, item[0]), item[1]),
            list(zip(keys, stored)),
            threads=remote_threads(),
        )


class ZarrObjectWriter:
    """``target[index] = block`` for a store at a URL, from any process on any machine: zarr
    encodes the block's whole chunks in memory with the store's own metadata, and each chunk
    is put under the URL (the metadata itself is put last, on commit). Only the URL and the
    metadata travel."""

    def __init__(self, url: str, metadata: bytes) -> None:
        self.url, self.metadata = url, metadata

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        zarr = _zarr()
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        held = {"zarr.json": default_buffer_prototype().buffer.from_bytes(self.metadata)}
        zarr.open_array(MemoryStore(held), mode="r+")[index] = block
        for key, value in held.items():
            if key != "zarr.json":
                put_object(join(self.url, key), value.to_bytes())


class ZarrFormat(Backend):
    """Zarr v3 stores: an array, or a group whose arrays are named as ``store.zarr:path``."""

    def open_source(self, spec: Spec) -> ZarrSource:
        return ZarrSource(spec.path, spec.member)

    def open_sink(self, spec: Spec, request: SinkRequest) -> ZarrSink:
        check_output_path(spec.path, request.overwrite)
        if spec.member:
            raise UsageError(
                f"expected a zarr output without an array name, found {spec.text!r}; write to {spec.path}"
            )
        # Engines that write blocks in parallel get one chunk per block: each writes whole chunks.
        # A compressed block is cut into a few chunks along its first axis, so that every core
        # encodes a part of it.
        chunks = request.block_shape or (request.chunks if isinstance(request.chunks, tuple) else None)
        if request.block_shape and request.compression:
            chunks = _divided(request.block_shape, np.dtype(request.dtype).itemsize, _COMPRESSED_CHUNK_BYTES)
        return ZarrSink(
            spec.path,
            request.shape,
            request.dtype,
            attrs=request.attrs,
            chunks=chunks,
            channel_axis=request.channel_axis,
            compression=request.compression,
            level=request.compression_level,
        )

    def array_name(self, name: str) -> str:
        return name.strip("/")

    def list_arrays(self, path: str) -> list[str]:
        """Every array of a group, depth first, or ``[]`` for a store that is one array (at a
        URL told by its ``zarr.json`` alone: zarr's open asked for three objects more)."""
        if is_url(path) and _one_array(path):
            return []
        node = _open_node(path)
        return [] if isinstance(node, _zarr().Array) else _arrays_of(node, path)
