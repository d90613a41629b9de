"""Every command-line option, with its flag, help and default, defined once.

Commands take their parameters from here; :meth:`ApplyOptions.pick` turns them into the
library's options, which are checked there.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pwconv.io.registry import FORMATS, bank_suffixes, formats_text
from pwconv.jobs.options import AUTO_LAYOUT, DEFAULT_MAX_MEMORY

# Help texts that list formats come from the registry, so they name what really reads and writes.
READS = formats_text()
WRITES = formats_text(writable=True)
MODELS = formats_text("model")
INPUT_HELP = f"Input tensor: {READS} (FILE:NAME picks an array inside a container), or - (npy on stdin)."
OUTPUT_HELP = f"Output: {WRITES} (FILE.h5:NAME adds a dataset to a file), or - (npy on stdout)."
WEIGHTS_HELP = (
    f"Filter bank: a data file, a model file ({MODELS}; FILE:NAME picks a tensor), "
    "or a literal such as '2,3' or '1,0;0,1'."
)
BANK_HELP = f"Filter-bank file: {bank_suffixes()} (an .npy bank keeps its bias in NAME.bias.npy)."
_COMPRESSIONS = "; ".join(f"{'|'.join(f.compressions)} ({f.title})" for f in FORMATS if f.compressions)
_FORMAT_OPTIONS = ", ".join(
    f"{f.title} ({'GDAL creation options' if '*' in f.options else ', '.join(f.options)})"
    for f in FORMATS
    if f.options
)

LayoutOpt = Annotated[
    str,
    typer.Option(
        "--layout",
        help="Where the channels are: auto (a NetCDF dimension named band, channel, wavelength, ...; else "
        "channels-last), channels-last, channels-first, a letter string (NHWC, CHW, ...) or an axis number.",
    ),
]
WeightsLayoutOpt = Annotated[
    str, typer.Option("--weights-layout", help="How to read the filters: auto, kc, ck, oihw, hwio.")
]
BiasOpt = Annotated[Optional[str], typer.Option("--bias", help="Bias: a file or a literal such as '0.5,1'.")]
DivideByOpt = Annotated[
    Optional[str],
    typer.Option(
        "--divide-by",
        help="A denominator bank (a file or a literal, as WEIGHTS): each output is WEIGHTS' mix divided by "
        "this one's, e.g. NDVI as '-1,1' / '1,1'. A zero denominator gives the output nodata (NaN).",
    ),
]
DivideByBiasOpt = Annotated[
    Optional[str], typer.Option("--divide-by-bias", help="The denominator's bias: a file or a literal.")
]
IndexOpt = Annotated[
    Optional[str],
    typer.Option(
        "--index",
        help="Named spectral indices in place of WEIGHTS, one output channel each: ndvi, ndwi, mndwi, ndmi, "
        "nbr, ndbi, savi, evi (e.g. ndvi,nbr).",
    ),
]
BandsOpt = Annotated[
    Optional[str],
    typer.Option("--bands", help="Which input band is which for --index: red=3,nir=4 (from 1) or red=B04."),
]
ConstantsOpt = Annotated[
    Optional[str], typer.Option("--constants", help="An index's constants other than the published: L=0.25.")
]
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
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the report on stdout as a JSON list of entries (path, exit_code, error, ...)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on stderr but errors.")]
AllowExternalOpt = Annotated[
    bool,
    typer.Option(
        "--allow-external",
        help="Read data an input keeps in other files (HDF5 external or virtual storage and "
        "external links, links out of a Zarr store); refused by default.",
    ),
]
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
        "--compression",
        help=f"Output compression: {_COMPRESSIONS}; NAME:LEVEL for a level (gzip:9, zstd:19); or none (the default).",
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
        help=f"An option of the output format, KEY=VALUE (repeatable), checked by that format: {_FORMAT_OPTIONS}; "
        "e.g. COMPRESS=LZW for a GeoTIFF, quality=90 for a JPEG.",
    ),
]

IgnoreChannelNamesOpt = Annotated[
    bool,
    typer.Option(
        "--ignore-channel-names",
        help="Apply a bank even where the input's channel names differ from those it was made for.",
    ),
]

# Defaults, written once (the library's own where it has one).
MAX_MEMORY = DEFAULT_MAX_MEMORY
LAYOUT = AUTO_LAYOUT
WEIGHTS_LAYOUT = "auto"
CHUNKS = "auto"
ENGINE = "numpy"
SCHEDULER = "threads"
NODATA = "auto"
