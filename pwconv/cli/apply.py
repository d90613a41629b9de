"""``pwconv apply INPUT WEIGHTS -o OUTPUT``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pwconv.cli.app import (
    BiasOpt,
    DatasetOpt,
    DtypeOpt,
    GroupsOpt,
    JsonOpt,
    LayoutOpt,
    QuietOpt,
    StrideOpt,
    WeightsLayoutOpt,
    app,
    guarded,
)
from pwconv.cli.output import Progress, emit_json, print_rows, report_lines
from pwconv.errors import UsageError

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


def check_stdout_use(output: str, json_report: bool) -> None:
    """stdout carries either the data or the JSON report, and never binary data to a terminal."""
    import sys

    if output == "-" and json_report:
        raise UsageError(
            "expected either '-o -' or --json (both use stdout), found both; write the data to a file"
        )
    if output == "-" and sys.stdout.isatty():
        raise UsageError(
            "expected stdout to be a pipe or file for '-o -', found a terminal; redirect it (> out.npy)"
        )


@app.command()
@guarded
def apply(
    input: Annotated[str, typer.Argument(help="Input tensor: .npy, .h5[:/dataset], .zarr or - (stdin).")],
    weights: Annotated[
        str, typer.Argument(help="Filter bank: a file, or a literal such as '2,3' or '1,0;0,1'.")
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Output: .npy, .h5[:/dataset], .zarr or - (stdout).")
    ],
    layout: LayoutOpt = "channels-last",
    weights_layout: WeightsLayoutOpt = "auto",
    bias: BiasOpt = None,
    groups: GroupsOpt = 1,
    stride: StrideOpt = 1,
    dtype: DtypeOpt = None,
    dataset: DatasetOpt = None,
    squeeze: SqueezeOpt = False,
    overwrite: OverwriteOpt = False,
    max_memory: MaxMemoryOpt = "512MiB",
    compression: CompressionOpt = None,
    chunks: ChunksOpt = "auto",
    engine: EngineOpt = "numpy",
    scheduler: SchedulerOpt = "threads",
    json_report: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Apply the filters to every pixel of INPUT and write OUTPUT (H x W x C -> H x W x K)."""
    from pwconv.jobs import ApplyOptions, apply_file

    check_stdout_use(output, json_report)
    options = ApplyOptions(
        layout=layout,
        weights_layout=weights_layout,
        bias=bias,
        groups=groups,
        stride=stride,
        dtype=dtype,
        squeeze=squeeze,
        overwrite=overwrite,
        max_memory=max_memory,
        compression=compression,
        chunks=chunks,
        engine=engine,
        scheduler=scheduler,
    )
    with Progress("pwconv apply", enabled=not quiet and not json_report) as progress:
        report = apply_file(input, weights, output, options, dataset=dataset, progress=progress)
    document = report.as_dict()
    if json_report:
        emit_json(document)
    print_rows(report_lines(document), quiet=quiet or json_report)
