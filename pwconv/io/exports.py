"""A filter bank written for other tools: an ONNX model, a GDAL VRT over a raster.

Both carry the bank's names: the ONNX model in its metadata (``names``, ``channel_names``,
read back by pwconv as a bank's labels), the VRT as its bands' descriptions. Both are
written atomically, like every output.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

from pwconv.errors import UsageError, require_extra
from pwconv.io.atomic import write_bytes_atomically
from pwconv.io.stores import gdal_open_settings, gdal_path, is_url, shown, url_path

#: The ONNX operator set the models use: Conv, Div, Equal and Where as onnxruntime 1.14+ runs them.
ONNX_OPSET = 17
_ONNX_IR_VERSION = 8


@dataclass(frozen=True)
class ExportBank:
    """A bank as the exporters take it: (K, C) filters and what goes with them."""

    filters: np.ndarray
    bias: np.ndarray | None
    names: tuple[str, ...] | None  # one per filter: the output channels
    channel_names: tuple[str, ...] | None  # one per input channel
    source: str  # where the bank came from, as the report names it
    denominator: np.ndarray | None = None  # (K or 1, C): a ratio of two mixes
    denominator_bias: np.ndarray | None = None

    @property
    def out_channels(self) -> int:
        return int(self.filters.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.filters.shape[1])


def _metadata(bank: ExportBank) -> dict[str, str]:
    doc = {"source": bank.source, "producer": "pwconv"}
    if bank.names:
        doc["names"] = json.dumps(list(bank.names))
    if bank.channel_names:
        doc["channel_names"] = json.dumps(list(bank.channel_names))
    return doc


def onnx_model(bank: ExportBank) -> bytes:
    """The bank as a serialised float32 ONNX model: ``input`` (N, C, H, W) -> ``output`` (N, K, H, W),
    one 1x1 Conv with bias; a ratio divides two Convs and writes NaN where the denominator is 0."""
    onnx = require_extra("onnx", "onnx", "ONNX export")
    from onnx import TensorProto, helper, numpy_helper

    element = TensorProto.FLOAT

    def tensor(name: str, values: np.ndarray, conv: bool = True) -> TensorProto:
        shaped = values.reshape(*values.shape, 1, 1) if conv else values
        return numpy_helper.from_array(np.ascontiguousarray(shaped, dtype=np.float32), name)

    numerator = "weights" if bank.denominator is None else "numerator"
    initializers = [tensor(numerator, bank.filters)]
    inputs = ["input", numerator]
    if bank.bias is not None:
        initializers.append(tensor("bias", bank.bias, conv=False))
        inputs.append("bias")
    last = "output" if bank.denominator is None else "mix"
    nodes = [helper.make_node("Conv", inputs, [last], name="pointwise", kernel_shape=[1, 1])]
    if bank.denominator is not None:
        den_inputs = ["input", "denominator"]
        initializers.append(tensor("denominator", bank.denominator))
        if bank.denominator_bias is not None:
            initializers.append(tensor("denominator_bias", bank.denominator_bias, conv=False))
            den_inputs.append("denominator_bias")
        zero = tensor("zero", np.zeros(()), conv=False)
        nan = tensor("nan", np.full((), np.nan), conv=False)
        initializers += [zero, nan]
        nodes += [
            helper.make_node("Conv", den_inputs, ["divisor"], name="denominator_mix", kernel_shape=[1, 1]),
            helper.make_node("Div", ["mix", "divisor"], ["ratio"], name="ratio"),
            helper.make_node("Equal", ["divisor", "zero"], ["divisor_is_zero"], name="divisor_is_zero"),
            helper.make_node("Where", ["divisor_is_zero", "nan", "ratio"], ["output"], name="zero_to_nan"),
        ]
    graph = helper.make_graph(
        nodes,
        "pwconv_bank",
        [helper.make_tensor_value_info("input", element, ["N", bank.in_channels, "H", "W"])],
        [helper.make_tensor_value_info("output", element, ["N", bank.out_channels, "H", "W"])],
        initializers,
    )
    graph.doc_string = (
        f"1x1 convolution: {bank.in_channels} channels -> {bank.out_channels}, from {bank.source}"
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="pwconv"
    )
    model.ir_version = _ONNX_IR_VERSION
    helper.set_model_props(model, _metadata(bank))
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def write_onnx(path: str, bank: ExportBank, overwrite: bool) -> list[str]:
    """Write :func:`onnx_model` at ``path`` atomically; returns the paths written."""
    write_bytes_atomically(path, onnx_model(bank), overwrite)
    return [path]


@dataclass(frozen=True)
class VrtNodata:
    """What the VRT passes to GDAL: the input's nodata (None: GDAL's own reading of the
    file), and the output's value with the one written instead of a computed collision."""

    source: float | None
    output: float  # NaN: GDAL's default for a float output
    replacement: float | None


def _number(value: float) -> str:
    return repr(float(value))


def names_relatively(vrt_path: str, raster_path: str) -> bool:
    """Whether a VRT at ``vrt_path`` names ``raster_path`` relative to itself: where the
    raster lies in the VRT's folder or below (else by its absolute path); for URLs, under
    the VRT's prefix."""
    if is_url(vrt_path) or is_url(raster_path):
        prefix = url_path(vrt_path).rpartition("/")[0] + "/"
        return is_url(vrt_path) and url_path(raster_path).startswith(prefix)
    folder = os.path.dirname(os.path.abspath(vrt_path))
    return os.path.abspath(raster_path).startswith(folder + os.sep)


def vrt_text(
    vrt_path: str, raster_path: str, bank: ExportBank, data_type: str, nodata: VrtNodata | None
) -> str:
    """A GDAL VRT processed dataset applying ``bank`` to ``raster_path`` with one
    ``BandAffineCombination`` step (GDAL >= 3.9). The raster is named relative to the VRT
    when it lies in the VRT's folder or below, else by its absolute path."""
    relative = names_relatively(vrt_path, raster_path)
    if is_url(raster_path):  # by GDAL's own path (/vsis3/...), or relative within the prefix
        cut = len(url_path(vrt_path).rpartition("/")[0]) + 1
        name = url_path(raster_path)[cut:] if relative else gdal_path(raster_path)
    else:
        folder = os.path.dirname(os.path.abspath(vrt_path))
        target = os.path.abspath(raster_path)
        name = os.path.relpath(target, folder) if relative else target
    bias = np.zeros(bank.out_channels) if bank.bias is None else bank.bias
    arguments = [
        (f"coefficients_{k + 1}", ",".join(_number(v) for v in (bias[k], *bank.filters[k])))
        for k in range(bank.out_channels)
    ]
    if nodata is not None:
        if nodata.source is not None:
            arguments.append(("src_nodata", _number(nodata.source)))
        if not math.isnan(nodata.output):
            arguments.append(("dst_nodata", _number(nodata.output)))
        if nodata.replacement is not None:
            arguments.append(("replacement_nodata", _number(nodata.replacement)))
    lines = [
        '<VRTDataset subClass="VRTProcessedDataset">',
        f'  <Input><SourceFilename relativeToVRT="{int(relative)}">{escape(name)}</SourceFilename></Input>',
        "  <ProcessingSteps>",
        '    <Step name="pwconv">',
        "      <Algorithm>BandAffineCombination</Algorithm>",
        *(f'      <Argument name="{key}">{value}</Argument>' for key, value in arguments),
        "    </Step>",
        "  </ProcessingSteps>",
        '  <Metadata domain="">',
        *(f'    <MDI key="pwconv_{key}">{escape(value)}</MDI>' for key, value in _metadata(bank).items()),
        "  </Metadata>",
    ]
    for k in range(bank.out_channels):
        band = [f'  <VRTRasterBand band="{k + 1}" subClass="VRTProcessedRasterBand" dataType="{data_type}">']
        if bank.names:
            band.append(f"    <Description>{escape(bank.names[k])}</Description>")
        if nodata is not None:
            band.append(
                f"    <NoDataValue>{'nan' if math.isnan(nodata.output) else _number(nodata.output)}</NoDataValue>"
            )
        lines += [*band, "  </VRTRasterBand>"]
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def gdal_band_count(path: str) -> int:
    """The bands GDAL sees in ``path`` (the raster a VRT reads), or a usage error where GDAL
    does not open it."""
    from pwconv.io.gdal import rasterio_module

    rasterio = rasterio_module("VRT export")
    settings = gdal_open_settings(path) if is_url(path) else {}
    try:
        with rasterio.Env(**settings), rasterio.open(gdal_path(path) if is_url(path) else path) as dataset:
            return int(dataset.count)
    except Exception:  # noqa: BLE001 - rasterio raises its own error types for files it cannot open
        raise UsageError(
            f"expected a raster GDAL opens as the input of a VRT, found {shown(path)!r}; convert it to a GeoTIFF first"
        ) from None


def write_vrt(path: str, text: str, overwrite: bool) -> list[str]:
    """Write a VRT's XML at ``path`` atomically; returns the paths written."""
    write_bytes_atomically(path, text.encode("utf-8"), overwrite)
    return [path]
