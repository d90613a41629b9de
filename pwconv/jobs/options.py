"""The options of a run, parsed and checked once, together.

Every option that takes text (sizes, compression, chunks, engine, scheduler) is checked when
:class:`ApplyOptions` is made; :func:`check_output` adds what depends on the output's format.
Either is the first place a bad combination is caught.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from pwconv.core.blocks import parse_size
from pwconv.engines.schedulers import IN_PROCESS_SCHEDULERS, check_scheduler
from pwconv.errors import UsageError
from pwconv.io.formats import all_compressions, capabilities, formats_compressed_with, writable_suffixes
from pwconv.io.spec import Spec

DEFAULT_MAX_MEMORY = "512MiB"
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


@dataclass(frozen=True)
class ApplyOptions:
    """Everything about a run except which files it reads and writes.

    >>> ApplyOptions(max_memory="1MiB").max_bytes
    1048576
    """

    layout: str = "channels-last"
    weights_layout: str = "auto"
    bias: str | None = None
    groups: int = 1
    stride: int = 1
    dtype: str | None = None
    squeeze: bool = False
    overwrite: bool = False
    max_memory: str = DEFAULT_MAX_MEMORY
    compression: str | None = None
    chunks: str = "auto"
    engine: str = "numpy"
    scheduler: str = "threads"
    quality: int | None = None
    nodata: str = "auto"  # auto (the input's own), a number, nan or none
    out_nodata: str | None = None
    channel_dim: str | None = None  # NetCDF: the channel axis by dimension name
    creation_options: tuple[str, ...] = ()  # GDAL KEY=VALUE
    # Parsed from the fields above.
    max_bytes: int = field(init=False, repr=False)
    output_chunks: str | tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UsageError(f"expected [[engine=numpy|dask]], found {self.engine!r}")
        known = all_compressions() if self.compression not in (None, "none") else ()
        if self.compression not in (None, "none", *known):
            raise UsageError(
                f"expected [[compression={'|'.join((*known, 'none'))}]], found {self.compression!r}"
            )
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise UsageError(f"expected [[quality]] from 1 to 100, found {self.quality}")
        if self.compression == "none":
            object.__setattr__(self, "compression", None)
        check_scheduler(self.scheduler)
        for name, text in (("nodata", self.nodata), ("out_nodata", self.out_nodata)):
            if text is not None and text not in ("auto", "none", "nan"):
                try:
                    float(text)
                except ValueError:
                    raise UsageError(
                        f"expected [[{name}]] as auto, a number, nan or none, found {text!r}"
                    ) from None
        if self.out_nodata in ("auto", "none"):
            raise UsageError(f"expected [[out_nodata]] as a number or nan, found {self.out_nodata!r}")
        object.__setattr__(self, "creation_options", tuple(self.creation_options))
        object.__setattr__(self, "max_bytes", parse_size(self.max_memory))
        object.__setattr__(self, "output_chunks", _parse_chunks(self.chunks))

    @classmethod
    def pick(cls, values: dict[str, Any]) -> ApplyOptions:
        """The options among ``values`` (a command's parameters); the rest keep their defaults."""
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in values.items() if k in names})


def check_output(options: ApplyOptions, output: Spec) -> None:
    """Refuse options that the output's format cannot honour."""
    can = capabilities(output)
    if not can.writable:
        raise UsageError(
            f"expected an output format pwconv writes ({writable_suffixes()} or -), found {can.title} "
            f"{output.text!r}, which it only reads; choose another output name"
        )
    if options.compression and options.compression not in can.compressions:
        takes = "|".join(can.compressions)
        others = " or ".join(formats_compressed_with(options.compression))
        fix = f"use [[compression={takes}]]" if takes else "drop the option"
        raise UsageError(
            f"expected a [[compression]] that {can.title} output takes ({takes.replace('|', ', ') or 'none'}), "
            f"found {options.compression!r}, which is for {others} output; {fix}"
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
