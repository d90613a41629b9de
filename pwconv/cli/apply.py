"""``pwconv apply INPUT WEIGHTS -o OUTPUT``."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from pwconv.cli import native
from pwconv.cli import options as o
from pwconv.cli.output import (
    Progress,
    check_stdout_open,
    emit_json,
    entry,
    examples,
    guarded,
    print_rows,
    report_lines,
)
from pwconv.errors import UsageError


def check_stdout_use(output: str, json_report: bool) -> None:
    """stdout carries either the data or the JSON report, and never binary data to a terminal."""
    if output == "-" and json_report:
        raise UsageError(
            "expected either '-o -' or --json (both use stdout), found both; write the data to a file"
        )
    check_stdout_open(output == "-" or json_report, "-o -" if output == "-" else "--json")
    if output == "-" and sys.stdout.isatty():
        raise UsageError(
            "expected stdout to be a pipe or file for '-o -', found a terminal; redirect it (> out.npy)"
        )


EXAMPLES = examples(
    [
        "python -m pwconv apply input.npy weights.npy -o out.npy",
        'python -m pwconv apply scene.tif "1,0,0,-1" --dtype float32 -o index.tif',
    ]
)


@guarded
def apply(
    input: Annotated[str, typer.Argument(help=o.INPUT_HELP)],
    output: Annotated[str, typer.Option("--output", "-o", help=o.OUTPUT_HELP)],
    weights: Annotated[Optional[str], typer.Argument(help=o.WEIGHTS_HELP + " Not with --index.")] = None,
    layout: o.LayoutOpt = o.LAYOUT,
    weights_layout: o.WeightsLayoutOpt = o.WEIGHTS_LAYOUT,
    bias: o.BiasOpt = None,
    divide_by: o.DivideByOpt = None,
    divide_by_bias: o.DivideByBiasOpt = None,
    index: o.IndexOpt = None,
    bands: o.BandsOpt = None,
    constants: o.ConstantsOpt = None,
    groups: o.GroupsOpt = 1,
    stride: o.StrideOpt = 1,
    dtype: o.DtypeOpt = None,
    dataset: o.DatasetOpt = None,
    squeeze: o.SqueezeOpt = False,
    overwrite: o.OverwriteOpt = False,
    max_memory: o.MaxMemoryOpt = o.MAX_MEMORY,
    compression: o.CompressionOpt = None,
    chunks: o.ChunksOpt = o.CHUNKS,
    engine: o.EngineOpt = o.ENGINE,
    scheduler: o.SchedulerOpt = o.SCHEDULER,
    quality: o.QualityOpt = None,
    nodata: o.NodataOpt = o.NODATA,
    out_nodata: o.OutNodataOpt = None,
    channel_dim: o.ChannelDimOpt = None,
    format_options: o.FormatOptionsOpt = None,
    ignore_channel_names: o.IgnoreChannelNamesOpt = False,
    json_report: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    allow_external: o.AllowExternalOpt = False,
) -> None:
    """Apply the filters to every pixel of INPUT and write OUTPUT (H x W x C -> H x W x K)."""
    from pwconv.jobs.apply import apply_file
    from pwconv.jobs.options import ApplyOptions

    options = ApplyOptions.pick({**locals(), "format_options": tuple(format_options or ())})
    native.return_large_blocks(options.max_bytes)
    check_stdout_use(output, json_report)
    with Progress("pwconv apply", enabled=not quiet and not json_report) as progress:
        report = apply_file(input, weights, output, options, dataset=dataset, progress=progress)
    document = report.as_dict()
    if json_report:
        emit_json([entry(input, document)])
    print_rows(report_lines(document), quiet=quiet or json_report)
