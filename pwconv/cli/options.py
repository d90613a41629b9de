"""Every command-line option, with its flag, help and default, defined once.

Commands take their parameters from here; :meth:`ApplyOptions.pick` turns them into the
library's options, which are checked there.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pwconv.jobs.options import DEFAULT_MAX_MEMORY

LayoutOpt = Annotated[
    str,
    typer.Option(
        "--layout",
        help="Where the channels are: channels-last, channels-first, a letter string (NHWC, CHW, ...) or an axis number.",
    ),
]
WeightsLayoutOpt = Annotated[
    str, typer.Option("--weights-layout", help="How to read the filters: auto, kc, ck, oihw, hwio.")
]
BiasOpt = Annotated[Optional[str], typer.Option("--bias", help="Bias: a file or a literal such as '0.5,1'.")]
GroupsOpt = Annotated[int, typer.Option("--groups", help="Channel groups (as torch's groups).")]
StrideOpt = Annotated[int, typer.Option("--stride", help="Subsample every spatial axis by this step.")]
DtypeOpt = Annotated[
    Optional[str], typer.Option("--dtype", help="Output dtype (default: numpy's result type).")
]
DatasetOpt = Annotated[
    Optional[str], typer.Option("--dataset", help="Dataset or array inside a container input.")
]
WeightsDatasetOpt = Annotated[
    Optional[str], typer.Option("--weights-dataset", help="Dataset or array inside a container weights file.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on stderr but errors.")]
MaxMemoryOpt = Annotated[
    str,
    typer.Option(
        "--max-memory", help="Stream in blocks when the job needs more than this (512MiB, 2GB, ...)."
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
CompressionOpt = Annotated[
    Optional[str],
    typer.Option(
        "--compression", help="Output compression: gzip, lzf (HDF5), zstd, gzip (Zarr) or none (the default)."
    ),
]
ChunksOpt = Annotated[
    str, typer.Option("--chunks", help="HDF5/Zarr output chunks: auto, none or sizes like 1,64,64,16.")
]
SqueezeOpt = Annotated[bool, typer.Option("--squeeze", help="Drop a size-1 channel axis from the output.")]
EngineOpt = Annotated[
    str, typer.Option("--engine", help="numpy (default, streaming) or dask (pip install 'pwconv[dask]').")
]
SchedulerOpt = Annotated[
    str,
    typer.Option("--scheduler", help="Dask scheduler: threads, processes, synchronous or tcp://HOST:PORT."),
]

QualityOpt = Annotated[
    Optional[int], typer.Option("--quality", help="JPEG/WebP output quality, 1-100 (default 95).")
]

NodataOpt = Annotated[
    str,
    typer.Option(
        "--nodata",
        help="Input nodata: auto (the file's own: GeoTIFF nodata, NetCDF _FillValue), a number, nan or none.",
    ),
]
OutNodataOpt = Annotated[
    Optional[str],
    typer.Option("--out-nodata", help="The output's nodata value (default: the input's, or NaN)."),
]
ChannelDimOpt = Annotated[
    Optional[str],
    typer.Option("--channel-dim", help="NetCDF: the dimension that holds the channels (band, ...)."),
]
FormatOptionsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--co",
        help="An option of the output format, KEY=VALUE (repeatable), checked by that format: GDAL "
        "creation options for rasters (COMPRESS=LZW), quality=90 for JPEG/WebP.",
    ),
]

# Defaults, written once (the library's own where it has one).
MAX_MEMORY = DEFAULT_MAX_MEMORY
LAYOUT = "channels-last"
WEIGHTS_LAYOUT = "auto"
CHUNKS = "auto"
ENGINE = "numpy"
SCHEDULER = "threads"
NODATA = "auto"
