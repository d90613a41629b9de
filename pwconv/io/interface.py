"""The format interface: what every reader, writer and format offers.

Every hook exists here with a default, in the style of xarray's ``BackendEntrypoint``:
a format overrides what it does and inherits a refusal or a "no" for the rest. What a format
*can* do (writable, compressions, parallel writes, its options) is data on its registry row
(:mod:`pwconv.io.registry`), so checking a command's options imports no format module.

- :class:`Backend`: one per format (``open_source``, ``open_sink``, ``list_arrays``, ...).
- :class:`Source`: a lazy reader; shape, dtype and :class:`Description` before any data.
- :class:`Sink`: an atomic writer; nothing is visible at the target before ``commit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pwconv.errors import UsageError
from pwconv.io.names import sibling_bias

if TYPE_CHECKING:
    from pwconv.io.registry import Format
    from pwconv.io.spec import Spec


@dataclass(frozen=True)
class Description:
    """What a reader knows of its data beyond shape and dtype: one record, filled by every
    reader, never attributes that may be missing.

    >>> Description(nodata=-9999.0).nodata
    -9999.0
    """

    #: The array's full name inside its container, as the format resolved it (None: the
    #: file is the array, or it was named exactly).
    name: str | None = None
    #: The axes' names, where the format names them (NetCDF dimensions).
    dimensions: tuple[str, ...] | None = None
    #: The value that marks missing data, where the file declares one.
    nodata: float | None = None
    #: Pixels of a picture (an image output then keeps an image input's dtype).
    is_image: bool = False
    #: What the report should say about how the data was read.
    notes: tuple[str, ...] = ()
    #: Which code path reads the data (``memory map``, ``raw offsets``, ``chunk files``: pwconv's
    #: own byte-level readers; or the library's name), for ``info``.
    reader: str = ""
    #: What the reader hands on to outputs that can hold it, keyed by family: a format's
    #: name ("raster": georeferencing, "netcdf": a template) or "picture" (pwconv.io.pictures).
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: The data is placed on the Earth (a CRS or a geotransform, a CF grid mapping); only an
    #: output of the family named in ``metadata`` keeps that, and the report says so otherwise.
    georeferenced: bool = False
    #: Names of the positions along an axis, by axis: band descriptions, a NetCDF
    #: coordinate. Along the channel axis they are the channel labels.
    labels: Mapping[int, tuple[str, ...]] = field(default_factory=dict)


class Source:
    """A lazily read tensor: shape, dtype and description are known before any data is read."""

    shape: tuple[int, ...]
    dtype: np.dtype
    #: Only contiguous blocks, in order (a pipe).
    sequential: bool = False
    description: Description = Description()

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        raise NotImplementedError

    def chunks(self) -> tuple[int, ...] | None:
        """The file's own chunk shape, when blocks read best along it."""
        return None

    def storage(self) -> dict[str, Any]:
        """Storage facts for ``info`` (format, chunks, compression, ...)."""
        return {}

    def decoded_piece(self) -> tuple[int, str] | None:
        """The bytes decoded at once to read any part of the data, and what that piece is
        (a compressed chunk, a strip, the whole picture), from the file's declarations; None
        where any region is read on its own. ``--max-memory`` is checked against it."""
        return None

    def release(self, index: tuple[slice, ...]) -> None:
        """Called when the block read at ``index`` is done with (a mapped file drops its pages)."""

    def parallel_reader(self) -> Any:
        """A picklable sliceable reader for other processes, or None (the registry then
        reopens the file for every read)."""
        return None

    def output_format(self, output: Spec) -> str | None:
        """The registry name an output should be written in instead of its suffix's (a raster
        written as a raster), or None."""
        return None

    def close(self) -> None:
        pass


class BlockWriter(Protocol):
    """``writer[index] = block``: picklable, and safe to use from several processes at once."""

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None: ...


class Sink:
    """A tensor being written; invisible under its final name until :meth:`commit`.

    :meth:`write` is for the process that opened the sink, one block at a time.
    :meth:`parallel_writer` hands out a writer that other processes may use at the same
    time, or None when the format cannot be written that way (HDF5, a pipe).
    """

    #: Written front to back only (a pipe).
    sequential: bool = False
    #: Which code path writes the data (as :attr:`Description.reader` for readers).
    writer: str = ""

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        raise NotImplementedError

    def parallel_writer(self) -> BlockWriter | None:
        return None

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    @property
    def notes(self) -> list[str]:
        """What the report should say about the output (a lossy format, say)."""
        return []

    def clipped(self) -> dict[str, int] | None:
        """Values clipped into an integer output's range, where they were counted."""
        return None


@dataclass(frozen=True)
class SinkRequest:
    """What an output must hold, and how the writer should lay it out.

    ``chunks`` is ``auto``, ``none`` or one size per axis; ``block_shape`` is the shape of
    the blocks an engine will write, for formats that chunk best along them. ``options``
    are the format's own options (``quality``, GDAL creation options), already checked
    against the formats that take them.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    channel_axis: int
    overwrite: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)
    compression: str | None = None
    compression_level: int | None = None  # None: the format library's default
    chunks: str | tuple[int, ...] = "auto"
    block_shape: tuple[int, ...] | None = None
    nodata: float | None = None  # the output's nodata value, for formats that record one
    stride: int = 1
    options: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # what the input's format passes on
    channel_labels: tuple[str, ...] | None = None  # one name per output channel (a bank's names)
    #: The engine writes the blocks front to back, one at a time, each contiguous in C order:
    #: a format that can may stream them (a ``.npy`` object uploaded as it is written).
    in_order: bool = False
    #: What such a streamed writer may buffer beside the blocks (bytes; 0: its own default):
    #: an upload keeps as many parts in flight as fit.
    buffer_bytes: int = 0


class Backend:
    """One format's code. A format overrides the hooks it has; the others refuse or say no.

    The registry makes one per format with its row (``self.row``), the place for the
    format's name and title in messages.
    """

    def __init__(self, row: Format) -> None:
        self.row = row

    def open_source(self, spec: Spec) -> Source:
        raise NotImplementedError

    def open_sink(self, spec: Spec, request: SinkRequest) -> Sink:
        raise UsageError(
            f"expected an output format pwconv writes, found {self.row.title} {spec.text!r}, "
            "which it only reads; choose another output name"
        )

    def list_arrays(self, path: str) -> list[str]:
        """The arrays a container holds, depth first; ``[]`` where the file is the one array."""
        return []

    def array_name(self, name: str) -> str:
        """A user's name for an array in the format's own spelling (``x`` is ``/x`` in HDF5)."""
        return name

    def claims(self, path: str) -> bool:
        """Whether a file of another format's suffix is really this format's (a legacy Keras
        model saved as ``.h5``)."""
        return False

    def write_arrays(self, path: str, arrays: dict[str, np.ndarray], overwrite: bool) -> list[str]:
        """Write named arrays (a filter bank) atomically; returns the paths written."""
        raise UsageError(f"expected a filter-bank file, found {self.row.title} {path!r}; write .npz or .h5")

    def bank_files(self, path: str) -> list[str]:
        """Every file :meth:`write_arrays` writes for a bank at ``path``."""
        return [path]

    def default_dtype(self, input_dtype: np.dtype, input_is_image: bool) -> np.dtype | None:
        """The dtype an output takes when none is asked for (None: numpy's rule)."""
        return None

    def encodes_whole(self, spec: Spec, compression: str | None) -> bool:
        """Whether the output is held whole in memory and encoded at the end (a picture, a
        JPEG 2000), so that it takes its share of ``--max-memory``."""
        return False

    def read_labels(self, path: str, name: str) -> tuple[str, ...] | None:
        """The text array ``name`` of a container (a bank's ``names``), or None where the file
        has none or the format holds no text."""
        return None

    def stored_dtype(self, dtype: np.dtype) -> np.dtype:
        """The dtype a result of ``dtype`` is written in when none was asked for (a format
        whose readers cannot take 64-bit integers stores them as float64)."""
        return dtype

    def companion_bias(self, path: str, name: str) -> str | None:
        """The bias that belongs to tensor ``name`` (``x.weight`` -> ``x.bias``), if the file has one."""
        return sibling_bias(name, self.list_arrays(path))
