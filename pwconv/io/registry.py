"""The format registry: one row a format, saying what it can do and where its code is.

A row is data (suffixes, magic, what the writer takes), so that options are checked and help
is written without importing any format. Its code is one :class:`~pwconv.io.interface.Backend`
subclass in ``pwconv.io.formats`` or ``pwconv.io.models``, imported only when a file of that
format is used. Adding a format is a module and a row in :data:`FORMATS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import OutputExistsError, PwconvError, UsageError
from pwconv.io.checks import same_file
from pwconv.io.stores import is_url, local_copy, scrub, url_path

if TYPE_CHECKING:
    from pwconv.io.interface import Backend, Sink, SinkRequest, Source
    from pwconv.io.spec import Spec


@dataclass(frozen=True)
class Format:
    """One row of the registry: what a format is and what it can do."""

    name: str
    title: str  # as messages write it
    backend: str  # "module:Class" of its Backend
    suffixes: tuple[str, ...]
    magic: bytes = b""
    containers: bool = False  # FILE:NAME selects one array inside a file
    folder: bool = False  # stored as a directory
    # Suffixes of other formats that this one takes over when its backend's claims(path)
    # recognises the content (a legacy Keras model saved as .h5).
    claims: tuple[str, ...] = ()
    #: The suffixes pwconv writes in this format (none: read only).
    writes: tuple[str, ...] = ()
    compressions: tuple[str, ...] = ()
    parallel_write: bool = False  # several processes may write one output at once
    sequential: bool = False  # read and written front to back only (a pipe)
    banks: bool = False  # holds a filter bank (named arrays) that ``fit`` writes
    #: Format options the writer takes as ``--co KEY=VALUE``; ``*``: any (its library checks).
    options: tuple[str, ...] = ()
    extra: str | None = None  # the pip extra its library comes with
    family: str = "data"  # data, model or pipe, for help texts
    #: The format keeps channels on the last axis (TIFF samples, image and raster bands):
    #: an output whose channels are elsewhere is written with them moved there.
    channels_last: bool = False
    #: The output records which value is nodata (a GeoTIFF's nodata, NetCDF's _FillValue,
    #: an HDF5 or Zarr attribute); where it cannot, the report says what nodata pixels hold.
    records_nodata: bool = False
    #: The output records the channels' names (raster band descriptions, a NetCDF coordinate,
    #: an HDF5 or Zarr attribute).
    records_labels: bool = False
    #: The families (registry names) whose georeferencing this format's writer keeps.
    georeferencing_from: tuple[str, ...] = ()
    #: The writer keeps a picture's colour profile and resolution (pwconv.io.pictures).
    picture_metadata: bool = False
    #: The reader takes a URL itself and reads only the bytes a block needs (byte ranges,
    #: GDAL's /vsis3/); other formats read a URL through a local copy of the object.
    ranged: bool = False
    #: An output at a URL is uploaded as its blocks come, when they come front to back (the
    #: numpy engine's); otherwise it is staged in a local folder and uploaded on commit.
    streamed_at_url: bool = False

    def load(self) -> Backend:
        return _backend(self)

    def matches(self, path: str) -> bool:
        return url_path(path).lower().rstrip("/").endswith(self.suffixes)

    def writes_path(self, path: str) -> bool:
        return path.lower().rstrip("/").endswith(self.writes) or (self.sequential and path == "-")

    @property
    def writable(self) -> bool:
        return bool(self.writes)

    def claims_file(self, path: str) -> bool:
        if not (self.claims and url_path(path).lower().endswith(self.claims)):
            return False
        if is_url(path):  # decided without a request: a URL's .tif is a raster (a COG, by GDAL)
            return self.ranged
        return os.path.isfile(path) and self.load().claims(path)


@functools.cache
def _backend(row: Format) -> Backend:
    module, _, name = row.backend.partition(":")
    backend: Backend = getattr(importlib.import_module(module), name)(row)
    return backend


_H5 = (".h5", ".hdf5", ".hdf", ".he5")
_PILLOW = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
_F, _M = "pwconv.io.formats", "pwconv.io.models"

# One line a format. Order matters where suffixes overlap: the first match wins.
FORMATS: tuple[Format, ...] = (
    Format("npy", ".npy", f"{_F}.npy:NpyFormat", (".npy",), magic=b"\x93NUMPY", writes=(".npy",),
           parallel_write=True, banks=True, ranged=True, streamed_at_url=True),
    Format("keras", "Keras", f"{_M}.keras:KerasFormat", (".keras", ".weights.h5"), containers=True,
           claims=_H5, family="model"),
    Format("hdf5", "HDF5", f"{_F}.hdf5:Hdf5Format", _H5, magic=b"\x89HDF\r\n\x1a\n", containers=True,
           writes=_H5, compressions=("gzip", "lzf"), banks=True, records_nodata=True,
           records_labels=True, ranged=True),
    Format("zarr", "Zarr", f"{_F}.zarr:ZarrFormat", (".zarr",), containers=True, folder=True,
           writes=(".zarr",), compressions=("zstd", "gzip"), parallel_write=True, extra="zarr",
           records_nodata=True, records_labels=True, ranged=True),
    Format("npz", ".npz", f"{_M}.npz:NpzFormat", (".npz",), containers=True, banks=True, family="model",
           ranged=True),
    Format("safetensors", "safetensors", f"{_M}.safetensors:SafetensorsFormat", (".safetensors",),
           containers=True, banks=True, family="model", ranged=True),
    Format("torch", "PyTorch", f"{_M}.torch:TorchFormat", (".pt", ".pth", ".bin"), containers=True,
           family="model", ranged=True),
    Format("onnx", "ONNX", f"{_M}.onnx:OnnxFormat", (".onnx",), containers=True, extra="onnx",
           family="model"),
    Format("raster", "raster", f"{_F}.raster:RasterFormat", (".vrt", ".img", ".dat", ".jp2"),
           claims=(".tif", ".tiff"), writes=(".tif", ".tiff", ".img", ".dat", ".jp2"), options=("*",), extra="geo",
           channels_last=True, records_nodata=True, records_labels=True, georeferencing_from=("raster",),
           ranged=True),
    Format("netcdf", "NetCDF", f"{_F}.netcdf:NetcdfFormat", (".nc", ".nc4"), magic=b"CDF",
           containers=True, writes=(".nc", ".nc4"), compressions=("gzip",), extra="geo", records_nodata=True,
           records_labels=True, georeferencing_from=("netcdf", "raster"), ranged=True),
    Format("stac", "STAC item", f"{_F}.stac:StacFormat", (".json",), containers=True, extra="geo",
           channels_last=True, ranged=True),
    Format("image", "image", f"{_F}.image:ImageFormat", _PILLOW, magic=b"\x89PNG",
           writes=_PILLOW[:-1], options=("quality",), extra="image", channels_last=True,
           picture_metadata=True),
    Format("tiff", "TIFF", f"{_F}.tiff:TiffFormat", (".tif", ".tiff"), magic=b"II*\x00",
           writes=(".tif", ".tiff"), compressions=("deflate", "zstd", "lzw"), options=("predictor",),
           parallel_write=True, extra="image", channels_last=True, picture_metadata=True),
)  # fmt: skip

#: What joins the files of a stack (several files as the channels of one input).
JOIN = "+"
#: Files joined with ``+``: the channels of one input (read only; found by the spec parser).
STACK = Format("stack", "a stack of files", f"{_F}.stack:StackFormat", (), channels_last=True, ranged=True)

#: ``-``: an npy stream on stdin or stdout.
STREAM = Format(
    "npy stream", "an npy stream ('-')", f"{_F}.stream:StreamFormat", (), sequential=True, writes=("-",),
    family="pipe",
)  # fmt: skip

_BY_NAME = {f.name: f for f in (*FORMATS, STREAM, STACK)}


def format_named(name: str) -> Format:
    return _BY_NAME[name]


def format_of(path: str) -> Format | None:
    """The format whose suffix ``path`` has (or whose content it is, for a claimed suffix), or None."""
    for fmt in FORMATS:
        if fmt.matches(path) or fmt.claims_file(path):
            return fmt
    return None


def sniff(path: str) -> Format | None:
    """The format whose magic bytes ``path`` starts with (to explain a misnamed file)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    for fmt in FORMATS:
        if fmt.magic and head.startswith(fmt.magic):
            return fmt
    return None


def known_suffixes() -> str:
    """``.npy, .h5/.hdf5/.hdf/.he5, .zarr`` for messages."""
    return ", ".join("/".join(f.suffixes) for f in FORMATS)


def data_suffixes() -> tuple[str, ...]:
    """The suffixes of the data files pwconv writes (as opposed to model files)."""
    return tuple(dict.fromkeys(s for f in FORMATS for s in f.writes))


def writable_suffixes() -> str:
    """``.npy, .h5, .zarr, ...``: every suffix pwconv writes, for messages."""
    return ", ".join(data_suffixes())


def bank_suffixes() -> str:
    return ", ".join(f.suffixes[0] for f in FORMATS if f.banks)


def formats_text(family: str = "data", *, writable: bool = False) -> str:
    """The suffixes of a family's formats, one group a format, as help texts list them.

    >>> formats_text("model")
    '.keras/.weights.h5, .npz, .safetensors, .pt/.pth/.bin, .onnx'
    """
    listed: set[str] = set()
    groups = []
    for row in FORMATS:
        if row.family == family:
            new = [s for s in (row.writes if writable else row.suffixes) if s not in listed]
            listed.update(new)
            if new:
                groups.append("/".join(new))
    return ", ".join(groups)


def backend_of(spec: Spec) -> Backend:
    return format_named(spec.format).load()


def readable(spec: Spec) -> Spec:
    """``spec`` as its format's reader takes it: a URL of a format that reads only files
    becomes a local copy of the object (fetched once per process)."""
    if not is_url(spec.path) or format_named(spec.format).ranged:
        return spec
    return dataclasses.replace(spec, path=local_copy(spec.path))


@contextlib.contextmanager
def named_as_given(spec: Spec, used: Spec) -> Iterator[None]:
    """Errors about a local copy (``used``) name the URL the user gave (``spec``)."""
    try:
        yield
    except PwconvError as exc:
        if used.path != spec.path:
            exc.template = exc.template.replace(used.path, scrub(spec.path))
        raise


def read_labels(spec: Spec, name: str) -> tuple[str, ...] | None:
    """The text array ``name`` of the container at ``spec`` (a bank's filter names), if any."""
    used = readable(spec)
    with named_as_given(spec, used):
        return backend_of(spec).read_labels(used.path, name)


def list_arrays(spec: Spec) -> list[str]:
    """The arrays of the container at ``spec`` (see Backend.list_arrays)."""
    used = readable(spec)
    with named_as_given(spec, used):
        return backend_of(spec).list_arrays(used.path)


def open_source(spec: Spec) -> Source:
    """A lazy reader for ``spec`` (a :class:`~pwconv.io.spec.Spec`); only the header is read."""
    used = readable(spec)
    with named_as_given(spec, used):
        return backend_of(spec).open_source(used)


def open_sink(spec: Spec, request: SinkRequest) -> Sink:
    """A writer that makes the output visible only when it is complete."""
    return backend_of(spec).open_sink(spec, request)


# Whether the user set GDAL's block cache (read when this module is first imported, before
# any raster module sets its own default).
_USER_GDAL_CACHE = "GDAL_CACHEMAX" in os.environ


def limit_library_caches(max_bytes: int) -> None:
    """Give the libraries' own caches a share of ``--max-memory`` before any file is opened:
    GDAL's block cache a quarter of it, 8 to 64 MB (a GDAL_CACHEMAX the user set wins)."""
    if not _USER_GDAL_CACHE:
        os.environ["GDAL_CACHEMAX"] = str(max(8, min(64, (max_bytes // 4) >> 20)))


def encodes_whole(spec: Spec, compression: str | None) -> bool:
    """Whether ``spec``'s writer holds the whole output in memory (see Backend.encodes_whole)."""
    return backend_of(spec).encodes_whole(spec, compression)


def check_writable(spec: Spec) -> Format:
    """The output's row, or exit 2 naming the suffixes pwconv writes."""
    row = format_named(spec.format)
    if not row.writes_path(spec.path):
        raise UsageError(
            f"expected an output format pwconv writes ({writable_suffixes()} or -), found {row.title} "
            f"{spec.text!r}, which it only reads; choose another output name"
        )
    return row


def write_arrays(spec: Spec, arrays: dict[str, np.ndarray], overwrite: bool) -> list[str]:
    """Write named arrays (a filter bank) atomically, in the format of ``spec``; returns the paths."""
    row = format_named(spec.format)
    if not row.banks:
        raise UsageError(
            f"expected a filter-bank file ({bank_suffixes()}), found {row.title} {spec.text!r}; "
            "choose one of those names"
        )
    return row.load().write_arrays(spec.path, arrays, overwrite)


def bank_specs(spec: Spec) -> list[Spec]:
    """Every file a bank written at ``spec`` consists of (an .npy bank's bias file too)."""
    return [dataclasses.replace(spec, path=path) for path in backend_of(spec).bank_files(spec.path)]


def retarget_output(spec: Spec, source: Source) -> Spec:
    """The output in the input's own format where its reader asks (a raster written as a raster)."""
    name = source.output_format(spec)
    return dataclasses.replace(spec, format=name) if name else spec


def default_output_dtype(spec: Spec, input_dtype: np.dtype, input_is_image: bool) -> np.dtype | None:
    """The dtype an output of this format takes when none is asked for (None: numpy's rule)."""
    return backend_of(spec).default_dtype(input_dtype, input_is_image)


def stored_output_dtype(spec: Spec, dtype: np.dtype) -> np.dtype:
    """The dtype an output of this format stores a result of ``dtype`` in, unless told."""
    return backend_of(spec).stored_dtype(dtype)


def all_compressions() -> tuple[str, ...]:
    """Every output compression some format takes."""
    return tuple(dict.fromkeys(c for f in FORMATS for c in f.compressions))


def formats_compressed_with(compression: str) -> list[str]:
    """The titles of the formats whose outputs take ``compression``."""
    return [f.title for f in FORMATS if compression in f.compressions]


def formats_taking(option: str) -> list[str]:
    """The titles of the formats whose writers take the format option ``option``."""
    return [f.title for f in FORMATS if option.lower() in f.options or "*" in f.options]


def array_specs(spec: Spec) -> list[Spec]:
    """Every array that ``spec`` stands for: itself, or each array of a container it names whole."""
    fmt = format_named(spec.format)
    if not fmt.containers or spec.member:
        return [spec]
    names = list_arrays(spec)
    return [dataclasses.replace(spec, member=name) for name in names] or [spec]


def companion_bias(spec: Spec) -> str | None:
    """The name of the bias that belongs to the tensor ``spec`` names, if its file has one."""
    if not format_named(spec.format).containers or spec.member is None:
        return None
    used = readable(spec)
    with named_as_given(spec, used):
        return backend_of(spec).companion_bias(used.path, spec.member)


def _files(spec: Spec) -> list[str]:
    """The files a spec reads: each file of a stack, else its own path."""
    return spec.path.split(JOIN) if spec.format == STACK.name else [spec.path]


def check_distinct(output: Spec, *inputs: Spec) -> None:
    """OUTPUT may never be one of the files read (it would be destroyed while read)."""
    if output.format == STREAM.name:
        return
    for other, path in ((o, p) for o in inputs for p in _files(o)):
        if other.format == STREAM.name:
            continue
        if is_url(output.path) or is_url(path):
            same = url_path(output.path).rstrip("/") == url_path(path).rstrip("/")
        else:
            same = os.path.abspath(output.path) == os.path.abspath(path) or (
                os.path.exists(output.path) and same_file(output.path, path)
            )
        if same:
            raise OutputExistsError(
                f"output {output.text!r} is the same file as {other.text!r}, which is read; "
                "write to another file"
            )


class ReopeningReader:
    """A file's array that another process can slice: it opens the file for every read.

    Only the spec travels (no data, no open handle), so it pickles to dask workers.
    """

    chunks = None

    def __init__(self, spec: Spec, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.spec, self.shape, self.dtype, self.ndim = spec, shape, np.dtype(dtype), len(shape)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        source = open_source(self.spec)
        try:
            block = np.asarray(source.read(index))
            if not block.flags.owndata:  # a view of a mapped file: the block gets its own
                block = np.array(block)  # memory and the file's pages are dropped, or every
                source.release(index)  # page read would stay resident until the mapping goes
            return block
        finally:
            source.close()


def parallel_reader(spec: Spec, source: Source) -> Any:
    """A picklable sliceable view of ``source`` for readers in other processes.

    A format may offer a faster one (``source.parallel_reader()``); paths are made absolute,
    since workers may run in another folder.
    """
    if source.sequential:
        raise UsageError("expected a file input for [[engine=dask]], found '-'; pipes use the numpy engine")
    own = source.parallel_reader()
    if own is not None:
        return own
    absolute = (
        spec
        if spec.format == STACK.name or is_url(spec.path)
        else dataclasses.replace(spec, path=os.path.abspath(spec.path))
    )
    return ReopeningReader(absolute, tuple(source.shape), source.dtype)
