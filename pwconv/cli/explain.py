"""``pwconv explain INPUT WEIGHTS``: the real calculation for one pixel."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from pwconv.cli import options as o
from pwconv.cli.output import check_stdout_open, emit_json, entry, error, examples, guarded

EXAMPLES = examples(
    [
        "python -m pwconv explain input.npy weights.npy --at 3,4",
        'python -m pwconv explain chw.npy "2,3" --layout CHW --at 1,1',
        "python -m pwconv explain input.npy weights.npy --code torch > snippet.py && python snippet.py",
        "python -m pwconv explain sample_data/example_M.npy 2,3 --layout CHW --html explain.html",
    ]
)


@guarded
def explain(
    input: Annotated[str, typer.Argument(help=o.INPUT_HELP)],
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
    layout: o.LayoutOpt = o.LAYOUT,
    weights_layout: o.WeightsLayoutOpt = o.WEIGHTS_LAYOUT,
    bias: o.BiasOpt = None,
    groups: o.GroupsOpt = 1,
    stride: o.StrideOpt = 1,
    dataset: o.DatasetOpt = None,
    nodata: o.NodataOpt = o.NODATA,
    channel_dim: o.ChannelDimOpt = None,
    dtype: o.DtypeOpt = None,
    code: Annotated[
        Optional[list[str]],
        typer.Option(
            "--code",
            help="Write the run as a program instead: numpy, torch, keras or all (repeatable). "
            "stdout then carries the program alone.",
        ),
    ] = None,
    html: Annotated[
        Optional[str],
        typer.Option(
            "--html", help="Also write the calculation as a self-contained HTML page (pwconv[report])."
        ),
    ] = None,
    png: Annotated[
        Optional[str], typer.Option("--png", help="Also write the figure as a PNG (1400 x 900).")
    ] = None,
    svg: Annotated[Optional[str], typer.Option("--svg", help="Also write the figure as an SVG.")] = None,
    overwrite: o.OverwriteOpt = False,
    json_report: o.JsonOpt = False,
    allow_external: o.AllowExternalOpt = False,
) -> None:
    """Show, for one pixel, every product and sum the 1x1 convolution computes, and check the fast path."""
    from pwconv.jobs.explain import ExplainRequest, render_text
    from pwconv.jobs.explain import explain as run_explain
    from pwconv.jobs.options import ApplyOptions

    check_stdout_open(True, "explain's report")
    options = ApplyOptions.pick(locals())
    from pwconv.jobs.snippets import joined, parse_targets

    targets = tuple(parse_targets(code))
    request = ExplainRequest(
        input, weights, options, at=at, filters=filters, max_terms=max_terms, dataset=dataset, code=targets
    )
    from pwconv.jobs.figures import PictureTargets

    pictures = PictureTargets(html, png, svg, overwrite)
    if pictures.any:
        from pwconv.jobs.figures import explain_with_pictures

        doc = explain_with_pictures(request, pictures)
    else:
        doc = run_explain(request)
    mismatch = "the fast path differs from the reference beyond float tolerance; this is a pwconv bug"
    if json_report:
        emit_json([entry(input, doc, exit_code=0 if doc["ok"] else 1, error=None if doc["ok"] else mismatch)])
    elif targets:
        sys.stdout.write(joined(doc["code"]))
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
    for picture in doc.get("pictures", []):
        size = f", {picture['width']} x {picture['height']}" if "width" in picture else ""
        sys.stderr.write(f"wrote {picture['path']} ({picture['format']}, {picture['bytes']:,} B{size})\n")
    if not doc["ok"]:
        error(mismatch)
        sys.exit(1)
