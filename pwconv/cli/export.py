"""``pwconv export BANK -o OUT [INPUT]``: a bank as an ONNX model, a GDAL VRT or a bank file."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from pwconv.cli import options as o
from pwconv.cli.output import check_stdout_open, emit_json, entry, examples, guarded, print_rows

EXAMPLES = examples(
    [
        "python -m pwconv export weights.npy -o mix.onnx",
        "python -m pwconv export tasseled-cap:landsat8 -o tc.vrt scene.tif",
        "python -m pwconv export bank.npz --divide-by 0,0,1,1 -o ratio.safetensors",
    ]
)


def _rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    what = {
        "onnx": "ONNX model (1x1 Conv, NCHW)",
        "vrt": "GDAL VRT (BandAffineCombination)",
        "bank": "bank file",
    }
    rows = [
        ("bank", doc["bank"]),
        ("written", ", ".join(doc["output"]) + f" ({what[doc['as']]}, {doc['dtype']})"),
        (
            "filters",
            f"{doc['channels']} channels -> {doc['filters']}" + (", a ratio" if doc["ratio"] else ""),
        ),
    ]
    if doc["names"]:
        rows.append(("names", ", ".join(doc["names"])))
    if doc["channel_names"]:
        rows.append(("channels", ", ".join(doc["channel_names"])))
    if doc["input"]:
        rows.append(("input", doc["input"]))
    if doc["outside_folder"]:
        rows.append(("note", "the VRT names its raster by absolute path (outside the VRT's folder); "
                             "pwconv reads such a VRT with --allow-external"))  # fmt: skip
    return rows


@guarded
def export(
    bank: Annotated[str, typer.Argument(help=o.WEIGHTS_HELP)],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="model.onnx, mix.vrt (needs INPUT) or a bank file (.npz, .safetensors, .h5, .npy).",
        ),
    ],
    input: Annotated[
        Optional[str],
        typer.Argument(help="The raster a VRT reads; for any target, binds a named bank's bands to its own."),
    ] = None,
    bias: o.BiasOpt = None,
    divide_by: o.DivideByOpt = None,
    divide_by_bias: o.DivideByBiasOpt = None,
    bands: o.BandsOpt = None,
    layout: o.LayoutOpt = o.LAYOUT,
    weights_layout: o.WeightsLayoutOpt = o.WEIGHTS_LAYOUT,
    weights_dataset: o.WeightsDatasetOpt = None,
    dataset: o.DatasetOpt = None,
    dtype: Annotated[
        Optional[str],
        typer.Option(
            "--dtype",
            help="float32 or float64: the VRT's bands, a bank file's arrays (default: float32, a bank file "
            "as read); an ONNX model is float32.",
        ),
    ] = None,
    nodata: o.NodataOpt = o.NODATA,
    out_nodata: o.OutNodataOpt = None,
    ignore_channel_names: o.IgnoreChannelNamesOpt = False,
    overwrite: o.OverwriteOpt = False,
    json_report: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    allow_external: o.AllowExternalOpt = False,
) -> None:
    """Write a filter bank for other tools: an ONNX model onnxruntime runs, a GDAL VRT over a
    raster that GDAL reads, or a bank file; each carries the bank's band names."""
    from pwconv.jobs.export import ExportRequest, export_bank
    from pwconv.jobs.options import ApplyOptions

    check_stdout_open(json_report)
    options = ApplyOptions.pick(locals())
    doc = export_bank(ExportRequest(bank, output, options, input, weights_dataset, dataset))
    if json_report:
        emit_json([entry(output, doc)])
    print_rows(_rows(doc), quiet=quiet or json_report)
