"""The format registry: which module reads and writes which files.

Each format is one module (``pwconv.io.npy``, ``pwconv.io.hdf5``, ...) that offers

- ``open_source(spec) -> Source``: a lazy reader (shape and dtype before any data);
- ``open_sink(spec, request) -> Sink``: an atomic writer (``commit``/``abort``);
- ``list_arrays(path) -> list[str]`` and ``array_name(name) -> str`` (containers only): the
  arrays a container holds, and a user's name for one in the module's own spelling;
- ``COMPRESSIONS``: the output compressions it takes; ``PARALLEL_WRITE``: whether several
  processes may write one output at once (the dask engine's process schedulers).

A format that is only read (model files) has no ``open_sink``.

A format is found here by its suffix (or, to explain a wrong name, its magic bytes) and its
module is imported only when a file of that format is used. Nothing outside its module and
this table names a format: adding one is a module and a line in :data:`FORMATS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import OutputExistsError, UsageError
from pwconv.io.base import Sink, SinkRequest, Source, same_file

if TYPE_CHECKING:
    from pwconv.io.spec import Spec


@dataclass(frozen=True)
class Format:
    """One row of the registry."""

    name: str
    title: str  # as messages write it
    module: str
    suffixes: tuple[str, ...]
    magic: bytes = b""
    containers: bool = False  # FILE:NAME selects one array inside a file
    folder: bool = False  # stored as a directory
    # Suffixes of other formats that this one takes over when its module's claims(path)
    # recognises the content (a legacy Keras model saved as .h5).
    claims: tuple[str, ...] = ()

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def matches(self, path: str) -> bool:
        return path.lower().rstrip("/").endswith(self.suffixes)

    def claims_file(self, path: str) -> bool:
        return (
            bool(self.claims)
            and path.lower().endswith(self.claims)
            and os.path.isfile(path)
            and bool(self.load().claims(path))
        )


_H5 = (".h5", ".hdf5", ".hdf", ".he5")
_PILLOW = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")

# One line a format. Order matters where suffixes overlap: the first match wins.
FORMATS: tuple[Format, ...] = (
    Format("npy", ".npy", "pwconv.io.npy", (".npy",), magic=b"\x93NUMPY"),
    Format("keras", "Keras", "pwconv.io.keras_file", (".keras", ".weights.h5"), containers=True, claims=_H5),
    Format("hdf5", "HDF5", "pwconv.io.hdf5", _H5, magic=b"\x89HDF\r\n\x1a\n", containers=True),
    Format("zarr", "Zarr", "pwconv.io.zarr_store", (".zarr",), containers=True, folder=True),
    Format("npz", ".npz", "pwconv.io.npz", (".npz",), containers=True),
    Format("safetensors", "safetensors", "pwconv.io.safetensors_file", (".safetensors",), containers=True),
    Format("torch", "PyTorch", "pwconv.io.torch_file", (".pt", ".pth", ".bin"), containers=True),
    Format("onnx", "ONNX", "pwconv.io.onnx_file", (".onnx",), containers=True),
    Format(
        "raster", "raster", "pwconv.io.raster", (".vrt", ".img", ".dat", ".jp2"), claims=(".tif", ".tiff")
    ),
    Format("netcdf", "NetCDF", "pwconv.io.netcdf", (".nc", ".nc4"), magic=b"CDF", containers=True),
    Format("image", "image", "pwconv.io.image", _PILLOW, magic=b"\x89PNG"),
    Format("tiff", "TIFF", "pwconv.io.tiff", (".tif", ".tiff"), magic=b"II*\x00"),
)

#: ``-``: an npy stream on stdin or stdout.
STREAM = Format("npy stream", "an npy stream ('-')", "pwconv.io.stream", ())

_BY_NAME = {f.name: f for f in (*FORMATS, STREAM)}


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
    """The suffixes of the formats pwconv writes too (data, as opposed to model files)."""
    return tuple(s for f in FORMATS if hasattr(f.load(), "open_sink") for s in f.suffixes)


def module_of(spec: Spec) -> ModuleType:
    return format_named(spec.format).load()


def open_source(spec: Spec) -> Source:
    """A lazy reader for ``spec`` (a :class:`~pwconv.io.spec.Spec`); only the header is read."""
    source: Source = module_of(spec).open_source(spec)
    return source


def open_sink(spec: Spec, request: SinkRequest) -> Sink:
    """A writer that makes the output visible only when it is complete."""
    sink: Sink = module_of(spec).open_sink(spec, request)
    return sink


@dataclass(frozen=True)
class Capabilities:
    """What a format's writer can do, for checking options before anything is opened."""

    title: str
    writable: bool
    compressions: tuple[str, ...]
    parallel_write: bool  # several processes may write one output at once
    sequential: bool  # written front to back only (a pipe)


def capabilities(spec: Spec) -> Capabilities:
    module = module_of(spec)
    return Capabilities(
        title=format_named(spec.format).title,
        writable=hasattr(module, "open_sink"),
        compressions=tuple(getattr(module, "COMPRESSIONS", ())),
        parallel_write=bool(getattr(module, "PARALLEL_WRITE", False)),
        sequential=spec.format == STREAM.name,
    )


def write_arrays(spec: Spec, arrays: dict[str, np.ndarray], overwrite: bool) -> list[str]:
    """Write named arrays (a filter bank) atomically, in the format of ``spec``; returns the paths."""
    writer = getattr(module_of(spec), "write_arrays", None)
    if writer is None:
        takes = ", ".join(f.suffixes[0] for f in FORMATS if hasattr(f.load(), "write_arrays"))
        raise UsageError(
            f"expected a filter-bank file ({takes}), found {format_named(spec.format).title} {spec.text!r}"
        )
    written: list[str] = writer(spec.path, arrays, overwrite)
    return written


def writable_suffixes() -> str:
    """``.npy, .h5, .zarr``: the formats pwconv writes, for messages."""
    return ", ".join(f.suffixes[0] for f in FORMATS if hasattr(f.load(), "open_sink"))


def retarget_output(spec: Spec, source: Source) -> Spec:
    """The output in the input's own format where its module asks (a raster written as a raster)."""
    choose = getattr(source, "output_format", None)
    name = choose(spec) if choose is not None else None
    return dataclasses.replace(spec, format=name) if name else spec


def default_output_dtype(spec: Spec, input_dtype: np.dtype, input_is_image: bool) -> np.dtype | None:
    """The dtype an output of this format takes when none is asked for (None: numpy's rule)."""
    rule = getattr(module_of(spec), "default_dtype", None)
    return None if rule is None else rule(input_dtype, input_is_image)


def all_compressions() -> tuple[str, ...]:
    """Every output compression some format takes."""
    return tuple(dict.fromkeys(c for f in FORMATS for c in getattr(f.load(), "COMPRESSIONS", ())))


def formats_compressed_with(compression: str) -> list[str]:
    """The titles of the formats whose outputs take ``compression``."""
    return [f.title for f in FORMATS if compression in getattr(f.load(), "COMPRESSIONS", ())]


def array_specs(spec: Spec) -> list[Spec]:
    """Every array that ``spec`` stands for: itself, or each array of a container it names whole."""
    fmt = format_named(spec.format)
    if not fmt.containers or spec.dataset:
        return [spec]
    names = fmt.load().list_arrays(spec.path)
    return [dataclasses.replace(spec, dataset=name) for name in names] or [spec]


def check_distinct(output: Spec, *inputs: Spec) -> None:
    """OUTPUT may never be one of the files read (it would be destroyed while read)."""
    if output.format == STREAM.name:
        return
    for other in inputs:
        if other.format == STREAM.name:
            continue
        if os.path.abspath(output.path) == os.path.abspath(other.path) or (
            os.path.exists(output.path) and same_file(output.path, other.path)
        ):
            raise OutputExistsError(
                f"output {output.text!r} is the same file as {other.text!r}, which is read; "
                "write to another file"
            )


class ReopeningReader:
    """A file's array that another process can slice: it opens the file for every read.

    Only the spec travels (no data, no open handle), so it pickles to dask workers.
    """

    def __init__(self, spec: Spec, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.spec, self.shape, self.dtype, self.ndim = spec, shape, np.dtype(dtype), len(shape)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        source = open_source(self.spec)
        try:
            return np.asarray(source.read(index))
        finally:
            source.close()


def parallel_reader(spec: Spec, source: Source) -> Any:
    """A picklable sliceable view of ``source`` for readers in other processes.

    A format may offer a faster one (``source.parallel_reader()``); paths are made absolute,
    since workers may run in another folder.
    """
    if source.sequential:
        raise UsageError("expected a file input for [[engine=dask]], found '-'; pipes use the numpy engine")
    own = getattr(source, "parallel_reader", None)
    if own is not None:
        return own()
    absolute = dataclasses.replace(spec, path=os.path.abspath(spec.path))
    return ReopeningReader(absolute, tuple(source.shape), source.dtype)
