"""The options of a run, parsed and checked once, together.

Every option that takes text (sizes, compression, chunks, engine, scheduler) is checked when
:class:`ApplyOptions` is made; :func:`check_output` adds what depends on the output's format.
Either is the first place a bad combination is caught.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from pwconv.core.blocks import parse_size, size_text
from pwconv.core.conv import ConvSettings
from pwconv.engines.schedulers import IN_PROCESS_SCHEDULERS, check_scheduler
from pwconv.errors import UsageError
from pwconv.io.codecs import LEVELS
from pwconv.io.interface import Source
from pwconv.io.registry import (
    all_compressions,
    check_writable,
    encodes_whole,
    formats_compressed_with,
    formats_taking,
)
from pwconv.io.spec import Spec

DEFAULT_MAX_MEMORY = "512MiB"
#: The default layout: a dimension named like a band axis where the format names its
#: dimensions (NetCDF), else channels-last.
AUTO_LAYOUT = "auto"
BAND_DIMENSIONS = (
    "band", "bands", "channel", "channels", "wavelength", "wavelengths", "spectral_band", "spectrum",
)  # fmt: skip
ENGINES = ("numpy", "dask")


def _parse_chunks(text: str) -> str | tuple[int, ...]:
    if text in ("auto", "none"):
        return text
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(c < 1 for c in sizes):
        raise UsageError(f"expected [[chunks]] auto, none or positive comma-separated sizes, found {text!r}")
    return sizes


def parse_nodata(text: str, name: str, words: tuple[str, ...]) -> float | str:
    """A nodata option: a number, ``nan``, or one of ``words`` (``auto``, ``none``) as itself.

    >>> parse_nodata("-9999", "nodata", ("auto", "none"))
    -9999.0
    """
    if text in words:
        return text
    try:
        return float(text)  # "nan" included
    except ValueError:
        items = [w for w in words if w == "auto"] + ["a number", "nan"] + [w for w in words if w != "auto"]
        choices = ", ".join(items[:-1]) + " or " + items[-1]
        raise UsageError(f"expected [[{name}]] as {choices}, found {text!r}") from None


def nodata_value(text: str, declared: float | None) -> float | None:
    """The input's nodata for the option ``text``: ``auto`` is the file's own (``declared``),
    ``none`` is none, else the number (or NaN) given."""
    value = parse_nodata(text, "nodata", ("auto", "none"))
    if value == "auto":
        return None if declared is None else float(declared)
    return None if value == "none" else float(value)


def band_dimension(dimensions: tuple[str, ...] | None) -> str | None:
    """The first dimension named like a band axis, if the input names its dimensions.

    >>> band_dimension(("time", "band", "y", "x"))
    'band'
    """
    return next((d for d in dimensions or () if d.lower() in BAND_DIMENSIONS), None)


def resolved_layout(layout: str, channel_dim: str | None, dimensions: tuple[str, ...] | None) -> str:
    """The layout an input is read with: ``channel_dim`` if given, and for ``auto`` a
    band-like dimension or channels-last."""
    if channel_dim is not None:
        return str(channel_dim_axis(dimensions, channel_dim))
    if layout != AUTO_LAYOUT:
        return layout
    band = band_dimension(dimensions)
    return "channels-last" if band is None or dimensions is None else str(dimensions.index(band))


def channel_dim_axis(dimensions: tuple[str, ...] | None, name: str) -> int:
    """The axis of the dimension ``name`` (``--channel-dim``), for an input whose format
    names its dimensions."""
    if dimensions is None:
        raise UsageError(
            "expected an input with named dimensions (NetCDF) for [[channel_dim]], found none; use [[layout]]"
        )
    if name not in dimensions:
        raise UsageError(
            f"expected [[channel_dim]] among the dimensions {', '.join(dimensions)}, found {name!r}"
        )
    return dimensions.index(name)


def _parse_format_options(items: tuple[str, ...], quality: int | None) -> Mapping[str, str]:
    """``KEY=VALUE`` items as one mapping (``quality`` joins it as ``quality=N``)."""
    parsed: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not key.strip() or not equals:
            raise UsageError(f"expected [[co]] as KEY=VALUE, found {item!r}")
        parsed[key.strip()] = value.strip()
    if quality is not None:
        parsed["quality"] = str(quality)
    return parsed


@dataclass(frozen=True)
class ApplyOptions:
    """Everything about a run except which files it reads and writes.

    >>> ApplyOptions(max_memory="1MiB").max_bytes
    1048576
    """

    layout: str = AUTO_LAYOUT  # auto: a band-like named dimension, else channels-last
    weights_layout: str = "auto"
    bias: str | None = None
    # The denominator bank of a ratio of two mixes (a file or a literal, as WEIGHTS), and its bias.
    divide_by: str | None = None
    divide_by_bias: str | None = None
    # Named spectral indices in place of WEIGHTS, the input's bands they use, their constants.
    index: str | None = None
    bands: str | None = None
    constants: str | None = None
    groups: int = 1
    stride: int = 1
    dtype: str | None = None
    squeeze: bool = False
    overwrite: bool = False
    max_memory: str = DEFAULT_MAX_MEMORY
    compression: str | None = None  # NAME or NAME:LEVEL; parsed into the name and the level
    compression_level: int | None = None
    chunks: str = "auto"
    engine: str = "numpy"
    scheduler: str = "threads"
    quality: int | None = None
    nodata: str = "auto"  # auto (the input's own), a number, nan or none
    out_nodata: str | None = None
    channel_dim: str | None = None  # NetCDF: the channel axis by dimension name
    # The output format's own options, KEY=VALUE (GDAL creation options, quality, ...): they
    # travel to the format as one mapping, checked against the formats that take them.
    format_options: tuple[str, ...] = ()
    # A bank that names the channels it was made for is checked against the input's names.
    ignore_channel_names: bool = False
    # Parsed from the fields above.
    max_bytes: int = field(init=False, repr=False)
    output_chunks: str | tuple[int, ...] = field(init=False, repr=False)
    writer_options: Mapping[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UsageError(f"expected [[engine=numpy|dask]], found {self.engine!r}")
        name, level = _parse_compression(self.compression)
        object.__setattr__(self, "compression", name)
        if level is not None or name is None:  # a copy of parsed options keeps its level
            object.__setattr__(self, "compression_level", level)
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise UsageError(f"expected [[quality]] from 1 to 100, found {self.quality}")
        check_scheduler(self.scheduler)
        parse_nodata(self.nodata, "nodata", ("auto", "none"))
        if self.out_nodata is not None:
            parse_nodata(self.out_nodata, "out_nodata", ())
        object.__setattr__(self, "format_options", tuple(self.format_options))
        object.__setattr__(self, "writer_options", _parse_format_options(self.format_options, self.quality))
        object.__setattr__(self, "max_bytes", parse_size(self.max_memory))
        object.__setattr__(self, "output_chunks", _parse_chunks(self.chunks))

    @property
    def conv(self) -> ConvSettings:
        """How to read the input and the filters, as the planner takes them."""
        return ConvSettings(self.layout, self.groups, self.stride, self.weights_layout, self.dtype)

    @classmethod
    def pick(cls, values: dict[str, Any]) -> ApplyOptions:
        """The options among ``values`` (a command's parameters); the rest keep their defaults."""
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in values.items() if k in names})


def _parse_compression(text: str | None) -> tuple[str | None, int | None]:
    """``--compression NAME[:LEVEL]`` as (name or None, level or None), checked."""
    if text in (None, "none"):
        return None, None
    known = all_compressions()
    name, _, level_text = text.partition(":")
    if name not in known:
        raise UsageError(
            f"expected [[compression={'|'.join((*known, 'none'))}]] (NAME or NAME:LEVEL), found {text!r}"
        )
    if not level_text:
        return name, None
    levels = LEVELS.get(name)
    if levels is None:
        raise UsageError(f"expected [[compression={name}]] without a level ({name} has none), found {text!r}")
    low, high, usual = levels
    try:
        level = int(level_text)
    except ValueError:
        level = low - 1
    if not low <= level <= high:
        raise UsageError(
            f"expected a {name} level from {low} to {high} in [[compression]] (e.g. {name}:{usual}), found {text!r}"
        )
    return name, level


def check_decoded_piece(source: Source, max_bytes: int, where: str) -> None:
    """Refuse, before any work, an input whose smallest readable piece (a compressed chunk,
    strip or tile, a whole picture: what its header declares) does not fit in ``max_bytes``:
    decoding it would break the ``--max-memory`` promise."""
    piece = source.decoded_piece()
    if piece is None or piece[0] <= max_bytes:
        return
    size, kind = piece
    raise UsageError(
        f"expected every piece of {where!r} to fit in [[max_memory]] ({size_text(max_bytes)}), found "
        f"{kind} of {size_text(size)} that is decoded whole; pass [[max_memory]] {size_text(2 * size).replace(' ', '')} "
        "or more, or rewrite the file in smaller chunks or tiles"
    )


def held_output_bytes(output: Spec, shape: tuple[int, ...], dtype: Any, options: ApplyOptions) -> int:
    """The bytes of an output its writer holds whole until the end (a picture, a compressed
    TIFF, JPEG 2000), 0 for one written block by block. It must fit in ``--max-memory`` with
    as much again left for the blocks; else the run is refused before any work."""
    if not encodes_whole(output, options.compression):
        return 0
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if 2 * size > options.max_bytes:
        raise UsageError(
            f"expected an output that fits in [[max_memory]] ({size_text(options.max_bytes)}) beside its "
            f"blocks, found {output.text!r}, which is held whole until it is encoded: {size_text(size)}; "
            f"pass [[max_memory]] {size_text(2 * size).replace(' ', '')} or more, or write .npy, .zarr "
            "or an uncompressed .tif, which are written block by block"
        )
    return size


def check_output(options: ApplyOptions, output: Spec, *, format_options: bool = True) -> None:
    """Refuse options that the output's format cannot honour (``format_options=False``: all
    but the format's own options, for an output whose format the input may still change)."""
    can = check_writable(output)
    if options.compression and options.compression not in can.compressions:
        takes = "|".join(can.compressions)
        others = " or ".join(formats_compressed_with(options.compression))
        fix = f"use [[compression={takes}]]" if takes else "drop the option"
        raise UsageError(
            f"expected a [[compression]] that {can.title} output takes ({takes.replace('|', ', ') or 'none'}), "
            f"found {options.compression!r}, which is for {others} output; {fix}"
        )
    for key in options.writer_options if format_options else ():
        if "*" not in can.options and key.lower() not in can.options:
            others = " or ".join(formats_taking(key))
            takes = ", ".join(can.options) or "none"
            raise UsageError(
                f"expected [[co]] options that {can.title} output takes ({takes}), found {key!r}, which is "
                f"for {others} output; drop it or choose another output format"
            )
    if options.engine == "dask":
        if can.sequential:
            raise UsageError(
                "expected a file output for [[engine=dask]], found '-'; pipes use the numpy engine"
            )
        if not can.parallel_write and options.scheduler not in IN_PROCESS_SCHEDULERS:
            raise UsageError(
                f"expected [[scheduler=threads|synchronous]] for {can.title} output, found {options.scheduler}; "
                f"{can.title} files cannot be written from several processes: write .zarr or .npy instead"
            )
