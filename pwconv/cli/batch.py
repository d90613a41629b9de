"""``pwconv batch WEIGHTS INPUT... --out-dir DIR``: one filter bank over many files."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

import typer

from pwconv.cli.app import (
    BiasOpt,
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
from pwconv.cli.apply import CompressionOpt, MaxMemoryOpt, OverwriteOpt, SqueezeOpt
from pwconv.cli.output import emit_json, say, seconds_text, shape_text


@app.command()
@guarded
def batch(
    weights: Annotated[str, typer.Argument(help="Filter bank: a file or a literal, loaded once.")],
    inputs: Annotated[
        list[str], typer.Argument(help="Input files (.npy, .h5[:/dataset]) or folders to walk.")
    ],
    out_dir: Annotated[str, typer.Option("--out-dir", help="Folder for the outputs (must exist).")],
    suffix: Annotated[
        str, typer.Option("--suffix", help="Added to each output's name before the extension.")
    ] = ".pw",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Files processed at once (threads).")] = 1,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed file.")] = False,
    layout: LayoutOpt = "channels-last",
    weights_layout: WeightsLayoutOpt = "auto",
    bias: BiasOpt = None,
    groups: GroupsOpt = 1,
    stride: StrideOpt = 1,
    dtype: DtypeOpt = None,
    squeeze: SqueezeOpt = False,
    overwrite: OverwriteOpt = False,
    max_memory: MaxMemoryOpt = "512MiB",
    compression: CompressionOpt = None,
    json_report: JsonOpt = False,
    quiet: QuietOpt = False,
    weights_dataset: Annotated[
        Optional[str], typer.Option("--weights-dataset", help="Dataset of an .h5 weights file.")
    ] = None,
) -> None:
    """Apply one filter bank to many files: a line per file, a summary, and no partial outputs."""
    from pwconv.jobs import ApplyOptions, FileResult, batch_exit_code, batch_files

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
    )
    quiet_lines = quiet or json_report
    start = time.perf_counter()

    def show(result: FileResult) -> None:
        if result.skipped:
            say(f"skip  {result.input}", quiet=quiet_lines)
        elif result.error is not None:
            print(f"FAIL  {result.input}: {result.error}", file=sys.stderr, flush=True)
        elif result.report is not None:
            r = result.report
            say(
                f"ok    {result.input} -> {result.output}  {shape_text(r.input['shape'])} -> "
                f"{shape_text(r.output['shape'])}  {seconds_text(r.seconds['total'])}",
                quiet=quiet_lines,
            )

    results = batch_files(
        weights,
        inputs,
        out_dir,
        options,
        suffix=suffix,
        jobs=jobs,
        fail_fast=fail_fast,
        weights_dataset=weights_dataset,
        on_result=show,
    )
    elapsed = time.perf_counter() - start
    ok = sum(1 for r in results if r.exit_code == 0 and not r.skipped)
    failed = sum(1 for r in results if r.exit_code)
    skipped = sum(1 for r in results if r.skipped)
    summary = {
        "files": len(results),
        "ok": ok,
        "failed": failed,
        "skipped": skipped,
        "seconds": round(elapsed, 6),
    }
    if json_report:
        emit_json({"summary": summary, "files": [r.as_dict() for r in results]})
    say(
        f"{len(results)} file{'s' if len(results) != 1 else ''}: {ok} ok, {failed} failed"
        + (f", {skipped} skipped" if skipped else "")
        + f" in {seconds_text(elapsed)}",
        quiet=quiet_lines,
    )
    code = batch_exit_code(results)
    if code:
        sys.exit(code)
