"""``pwconv explain INPUT WEIGHTS``: the real calculation for one pixel."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from pwconv.cli.app import (
    BiasOpt,
    DatasetOpt,
    GroupsOpt,
    JsonOpt,
    LayoutOpt,
    StrideOpt,
    WeightsLayoutOpt,
    app,
    guarded,
)
from pwconv.cli.output import emit_json


@app.command()
@guarded
def explain(
    input: Annotated[str, typer.Argument(help="Input tensor: .npy, .h5[:/dataset], .zarr or - (stdin).")],
    weights: Annotated[str, typer.Argument(help="Filter bank: a file or a literal such as '2,3'.")],
    at: Annotated[
        Optional[str],
        typer.Option("--at", help="Output pixel: Y,X or N,Y,X (every non-channel axis). Default: the first."),
    ] = None,
    filters: Annotated[
        Optional[str], typer.Option("--filters", help="Filters to show, e.g. 0,3 (default: the first 4).")
    ] = None,
    max_terms: Annotated[
        int, typer.Option("--max-terms", help="Products shown before eliding the middle.")
    ] = 8,
    layout: LayoutOpt = "channels-last",
    weights_layout: WeightsLayoutOpt = "auto",
    bias: BiasOpt = None,
    groups: GroupsOpt = 1,
    stride: StrideOpt = 1,
    dataset: DatasetOpt = None,
    json_report: JsonOpt = False,
) -> None:
    """Show, for one pixel, every product and sum the 1x1 convolution computes, and check the fast path."""
    from pwconv.explain import ExplainRequest, render_text
    from pwconv.explain import explain as run_explain
    from pwconv.jobs import ApplyOptions

    options = ApplyOptions(
        layout=layout, weights_layout=weights_layout, bias=bias, groups=groups, stride=stride
    )
    request = ExplainRequest(
        input, weights, options, at=at, filters=filters, max_terms=max_terms, dataset=dataset
    )
    doc = run_explain(request)
    if json_report:
        emit_json(doc)
    else:
        sections = render_text(doc, max_terms)
        if sys.stdout.isatty():
            from rich.console import Console

            console = Console(highlight=False)
            for title, lines in sections:
                console.print(f"[bold cyan]{title}[/]")
                for line in lines:
                    console.print("  " + line, markup=False)
        else:
            for title, lines in sections:
                print(title)
                for line in lines:
                    print("  " + line)
    if not doc["ok"]:
        from pwconv.cli.output import error

        error("the fast path differs from the reference beyond float tolerance; this is a pwconv bug")
        sys.exit(1)
