"""``pwconv fit pca|mnf|lstsq``: learn a filter bank from the data, for ``pwconv apply``."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from pwconv.cli import options as o
from pwconv.cli.output import (
    check_stdout_open,
    emit_json,
    entry,
    examples,
    guarded,
    print_rows,
    program_as_run,
    seconds_text,
)

fit_app = typer.Typer(
    name="fit",
    help="Learn a filter bank from data in one streamed pass: pca (and whitening), mnf or lstsq.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

ReportOpt = Annotated[
    Optional[str],
    typer.Option(
        "--report",
        help="Also write an HTML page of the fit: the spectrum with the chosen k, the bank as a heat map, "
        "the components on the input (lstsq: predicted against target); pwconv[report].",
    ),
]
BankOpt = Annotated[
    str,
    typer.Option("--output", "-o", help=o.BANK_HELP),
]
NodataOpt = Annotated[
    str,
    typer.Option(
        "--nodata",
        help="Pixels left out: auto (each file's own: GeoTIFF nodata, NetCDF _FillValue), a value in any "
        "channel, nan or none. NaN is always left out.",
    ),
]
ComponentsOpt = Annotated[
    Optional[float],
    typer.Option("-k", "--components", help="Components to keep, or a fraction of the variance (0.99)."),
]
ReconstructOpt = Annotated[
    Optional[int],
    typer.Option(
        "--reconstruct",
        help="Write the C x C bank that projects onto this many components and back (denoising); "
        "it stands for -k.",
    ),
]
SampleOpt = Annotated[
    Optional[int], typer.Option("--sample", help="Fit on a seeded random subset of N pixels.")
]


def _options(values: dict[str, Any]) -> Any:
    from pwconv.cli import native
    from pwconv.jobs.fit import FitOptions

    options = FitOptions(
        layout=values["layout"],
        nodata=values["nodata"],
        sample=values["sample"],
        max_memory=values["max_memory"],
        overwrite=values["overwrite"],
        channel_dim=values["channel_dim"],
        dataset=values["dataset"],
        report=values["report"],
    )
    native.return_large_blocks(options.max_bytes)
    return options


def _report(bank: str, doc: dict[str, Any], json_report: bool, quiet: bool) -> None:
    doc["apply"] = program_as_run() + doc["apply"].removeprefix("pwconv")
    if json_report:
        emit_json([entry(bank, doc)])
        return
    pixels = doc["pixels"]
    rows = [
        ("fit", f"{doc['method']} of {', '.join(doc['inputs'])}" + (f" onto {doc['target']}" if "target" in doc else "")),
        ("pixels", f"{pixels['used']} used of {pixels['read']} read, {pixels['nodata']} nodata or NaN left out"
         + (" (a random sample)" if pixels["sampled"] else "")),
    ]  # fmt: skip
    if pixels["note"]:
        rows.append(("note", pixels["note"]))
    if "snr" in doc:
        snr = ", ".join(f"{v:.4g}" for v in doc["snr"][:8]) + (" ..." if len(doc["snr"]) > 8 else "")
        rows.append(("snr", f"{doc['components']} components, signal-to-noise {snr} "
                     f"(noise from {doc['noise_pairs']} neighbour pairs)"))  # fmt: skip
    elif "explained_variance_ratio" in doc:
        ratios = ", ".join(f"{r:.4f}" for r in doc["explained_variance_ratio"][:8])
        more = " ..." if len(doc["explained_variance_ratio"]) > 8 else ""
        rows.append(
            ("explained", f"{doc['explained_total']:.4%} by {doc['components']} components ({ratios}{more})")
        )
    else:
        rms = ", ".join(f"{v:.4g}" for v in doc["rms"][:8])
        r2 = ", ".join(f"{v:.4f}" for v in doc["r2"][:8])
        rows.append(("residual", f"RMS {rms}; R² {r2}; condition number {doc['condition']:.3g}"))
    made = doc["bank"]
    rows.append(("bank", f"{', '.join(doc['output'])}  weights {'x'.join(map(str, made['weights']))} {made['dtype']}"
                 + (" + bias" if made["bias"] else "")))  # fmt: skip
    rows.append(("time", seconds_text(doc["seconds"])))
    rows.append(("apply", doc["apply"]))  # written as the program was run
    if doc.get("report"):
        rows.append(("report", f"{doc['report']['path']} ({doc['report']['bytes']:,} B)"))
    if "inverse" in doc:
        rows.append(("inverse", f"apply the outputs with {doc['inverse']} to map them back to the channels"))
    if "forward" in doc:
        rows.append(("forward", f"{doc['forward']} projects onto the components alone"))
    print_rows(rows, quiet=quiet)


@fit_app.command(
    "pca",
    epilog=examples(
        [
            "python -m pwconv fit pca cube.npy -k 3 -o pca.npz",
            "python -m pwconv fit pca scene.tif -k 0.99 --whiten -o white.npz",
        ]
    ),
)
@guarded
def fit_pca(
    inputs: Annotated[
        list[str], typer.Argument(help="Input tensors (same channel count); all their pixels are used.")
    ],
    output: BankOpt,
    k: ComponentsOpt = None,
    whiten: Annotated[bool, typer.Option("--whiten", help="Scale each component to unit variance.")] = False,
    reconstruct: ReconstructOpt = None,
    layout: o.LayoutOpt = o.LAYOUT,
    nodata: NodataOpt = o.NODATA,
    channel_dim: o.ChannelDimOpt = None,
    dataset: o.DatasetOpt = None,
    sample: SampleOpt = None,
    max_memory: o.MaxMemoryOpt = o.MAX_MEMORY,
    overwrite: o.OverwriteOpt = False,
    report: ReportOpt = None,
    json_report: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    allow_external: o.AllowExternalOpt = False,
) -> None:
    """Principal components of the channel vectors: a bank whose outputs are centred projections."""
    from pwconv.jobs.fit import fit_pca as run

    check_stdout_open(json_report)
    doc = run(inputs, output, k, _options(locals()), whiten=whiten, reconstruct=reconstruct)
    _report(output, doc, json_report, quiet)


@fit_app.command(
    "mnf",
    epilog=examples(
        [
            "python -m pwconv fit mnf cube.npy -k 10 -o mnf.npz",
            "python -m pwconv fit mnf cube.envi.img --reconstruct 10 -o denoise.npz",
        ]
    ),
)
@guarded
def fit_mnf(
    inputs: Annotated[
        list[str], typer.Argument(help="Input images (same channel count); all their pixels are used.")
    ],
    output: BankOpt,
    k: ComponentsOpt = None,
    noise_from: Annotated[
        str,
        typer.Option(
            "--noise-from",
            help="The neighbour each pixel's noise is estimated against: lowerright (default), lowerleft, "
            "right or lower.",
        ),
    ] = "lowerright",
    reconstruct: ReconstructOpt = None,
    layout: o.LayoutOpt = o.LAYOUT,
    nodata: NodataOpt = o.NODATA,
    channel_dim: o.ChannelDimOpt = None,
    dataset: o.DatasetOpt = None,
    max_memory: o.MaxMemoryOpt = o.MAX_MEMORY,
    overwrite: o.OverwriteOpt = False,
    report: ReportOpt = None,
    json_report: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    allow_external: o.AllowExternalOpt = False,
) -> None:
    """Minimum noise fraction: components ordered by signal-to-noise ratio, the noise estimated
    from differences of neighbouring pixels (as ENVI and Spectral Python)."""
    from pwconv.jobs.fit import fit_mnf as run

    check_stdout_open(json_report)
    doc = run(
        inputs,
        output,
        k,
        _options(locals() | {"sample": None}),
        noise_from=noise_from,
        reconstruct=reconstruct,
    )
    _report(output, doc, json_report, quiet)


@fit_app.command(
    "lstsq",
    epilog=examples(
        [
            "python -m pwconv fit lstsq rgb.npy xyz.npy -o rgb_to_xyz.npz",
            "python -m pwconv fit lstsq bands.tif reference.tif --ridge 1e-3 -o calib.npz",
        ]
    ),
)
@guarded
def fit_lstsq(
    input: Annotated[str, typer.Argument(help="Input tensor (C channels).")],
    target: Annotated[str, typer.Argument(help="Target tensor: the same pixels, K channels.")],
    output: BankOpt,
    no_bias: Annotated[bool, typer.Option("--no-bias", help="Fit weights only (no offset).")] = False,
    ridge: Annotated[float, typer.Option("--ridge", help="Tikhonov regularisation (added to X^T X).")] = 0.0,
    layout: o.LayoutOpt = o.LAYOUT,
    target_layout: Annotated[
        Optional[str],
        typer.Option("--target-layout", help="Where the target's channels are (default: --layout)."),
    ] = None,
    nodata: NodataOpt = o.NODATA,
    channel_dim: o.ChannelDimOpt = None,
    dataset: o.DatasetOpt = None,
    sample: SampleOpt = None,
    max_memory: o.MaxMemoryOpt = o.MAX_MEMORY,
    overwrite: o.OverwriteOpt = False,
    report: ReportOpt = None,
    json_report: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    allow_external: o.AllowExternalOpt = False,
) -> None:
    """The K x C bank (plus bias) minimising the squared error between apply(INPUT) and TARGET."""
    from pwconv.jobs.fit import fit_lstsq as run

    check_stdout_open(json_report)
    doc = run(
        input, target, output, _options(locals()), target_layout=target_layout, bias=not no_bias, ridge=ridge
    )
    _report(output, doc, json_report, quiet)
