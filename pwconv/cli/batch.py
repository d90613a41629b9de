"""``pwconv batch WEIGHTS INPUT... --out-dir DIR``: one filter bank over many files."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from pwconv.cli import native
from pwconv.cli import options as o
from pwconv.cli.output import check_stdout_open, emit_json, examples, guarded, say, seconds_text, shape_text
from pwconv.io.stores import scrub

EXAMPLES = examples(
    [
        "python -m pwconv batch pca.npz scenes/ --out-dir projected",
        'python -m pwconv batch "0.299,0.587,0.114" photos/*.png --out-dir grey --jobs 2',
    ]
)


@guarded
def batch(
    out_dir: Annotated[str, typer.Option("--out-dir", help="Folder for the outputs (created if missing).")],
    weights: Annotated[
        str,
        typer.Argument(help="Filter bank: a file or a literal, loaded once (with --index: the first input)."),
    ],
    inputs: Annotated[
        Optional[list[str]], typer.Argument(help=f"Input files, or folders to walk for {o.WRITES} files.")
    ] = None,
    suffix: Annotated[
        str, typer.Option("--suffix", help="Added to each output's name before the extension.")
    ] = ".pw",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Files processed at once (threads).")] = 1,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="Start no new file once one has failed.")
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Skip inputs whose output exists (complete: outputs appear whole), to resume a run.",
        ),
    ] = False,
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
    squeeze: o.SqueezeOpt = False,
    overwrite: o.OverwriteOpt = False,
    max_memory: o.MaxMemoryOpt = o.MAX_MEMORY,
    compression: o.CompressionOpt = None,
    quality: o.QualityOpt = None,
    nodata: o.NodataOpt = o.NODATA,
    out_nodata: o.OutNodataOpt = None,
    channel_dim: o.ChannelDimOpt = None,
    format_options: o.FormatOptionsOpt = None,
    ignore_channel_names: o.IgnoreChannelNamesOpt = False,
    output_format: Annotated[
        Optional[str],
        typer.Option(
            "--format", help="Output format by suffix (png, tif, npy, ...); default: each input's own."
        ),
    ] = None,
    json_report: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    allow_external: o.AllowExternalOpt = False,
    weights_dataset: o.WeightsDatasetOpt = None,
    dataset: o.DatasetOpt = None,
) -> None:
    """Apply one filter bank to many files: a line per file, a summary, and no partial outputs."""
    from pwconv.jobs.batch import FileResult, batch_files, exit_code
    from pwconv.jobs.options import ApplyOptions

    check_stdout_open(json_report)

    options = ApplyOptions.pick({**locals(), "format_options": tuple(format_options or ())})
    native.return_large_blocks(options.max_bytes)
    quiet_lines = quiet or json_report
    start = time.perf_counter()

    def show(result: FileResult) -> None:
        if result.skipped:
            say(f"skip  {result.input} ({result.why_skipped})", quiet=quiet_lines)
        elif result.failure is not None:
            print(scrub(f"FAIL  {result.input}: {result.failure.for_cli()}"), file=sys.stderr, flush=True)
        elif result.report is not None:
            r = result.report
            say(
                f"ok    {result.input} -> {result.output}  {shape_text(r.input['shape'])} -> "
                f"{shape_text(r.output['shape'])}  {seconds_text(r.seconds['total'])}",
                quiet=quiet_lines,
            )

    # --index stands for WEIGHTS: the first argument is then an input
    weights_arg, paths = (None, [weights, *(inputs or [])]) if index is not None else (weights, inputs or [])
    results = batch_files(
        weights_arg,
        paths,
        out_dir,
        options,
        suffix=suffix,
        output_format=output_format,
        jobs=jobs,
        fail_fast=fail_fast,
        skip_existing=skip_existing,
        weights_dataset=weights_dataset,
        dataset=dataset,
        on_result=show,
    )
    elapsed = time.perf_counter() - start
    ok = sum(1 for r in results if r.exit_code == 0 and not r.skipped)
    failed = sum(1 for r in results if r.exit_code)
    skipped = sum(1 for r in results if r.skipped)
    if json_report:
        emit_json([r.as_dict() for r in results])
    say(
        f"{len(results)} file{'s' if len(results) != 1 else ''}: {ok} ok, {failed} failed"
        + (f", {skipped} skipped" if skipped else "")
        + f" in {seconds_text(elapsed)}",
        quiet=quiet,  # with --json too: the summary is not in the JSON list
    )
    code = exit_code([r.exit_code for r in results])
    if code:
        sys.exit(code)
