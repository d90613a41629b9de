"""``pwconv export BANK -o OUT [INPUT]``: a filter bank written for other tools.

OUT is an ONNX model (a 1x1 ``Conv`` on NCHW input, with bias), a GDAL VRT processed dataset
over INPUT (a ``BandAffineCombination`` step), or a bank file (``.npz``, ``.safetensors``,
``.h5``, ``.npy``) that pwconv reads back as WEIGHTS. Every one carries the bank's names.
INPUT, where given, binds a named bank's bands to its own (as ``apply`` does) and checks the
bank against its channels; a VRT needs it, since the VRT reads it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pwconv import __version__
from pwconv.core.conv import ConvPlan, Nodata
from pwconv.core.filters import normalise_bias, normalise_filters, reading_for
from pwconv.errors import ShapeError, UsageError
from pwconv.io.exports import (
    ExportBank,
    VrtNodata,
    gdal_band_count,
    names_relatively,
    vrt_text,
    write_onnx,
    write_vrt,
)
from pwconv.io.operands import Weights, read_weights
from pwconv.io.registry import bank_suffixes, check_distinct, format_named, open_source, write_arrays
from pwconv.io.spec import Spec, parse_spec
from pwconv.jobs.apply import (
    bound_weights,
    check_channel_names,
    make_plan,
    output_labels,
    resolve_nodata,
    with_channel_dim,
    with_divide_by,
)
from pwconv.jobs.options import ApplyOptions

_GDAL_TYPES = {"float32": "Float32", "float64": "Float64"}


@dataclass(frozen=True)
class ExportRequest:
    bank: str
    output: str
    options: ApplyOptions
    input: str | None = None
    weights_dataset: str | None = None
    dataset: str | None = None


def _kind(spec: Spec) -> str:
    if spec.format == "onnx":
        return "onnx"
    if spec.format == "raster" and spec.path.lower().endswith(".vrt"):
        return "vrt"
    if format_named(spec.format).banks:
        return "bank"
    raise UsageError(
        f"expected an export target .onnx, .vrt or a bank file ({bank_suffixes()}), found {spec.text!r}; "
        "choose one of those names"
    )


def _matrix(array: np.ndarray, weights_layout: str, said: str) -> np.ndarray:
    """A bank's (K, C) filters where no input says C: the one reading of its shape as 1x1 filters."""
    shape = tuple(int(n) for n in np.shape(array))
    channels = {shape[-1]} if len(shape) == 1 else set()
    for candidate in {n for n in shape if n > 0}:
        found = reading_for(shape, candidate)
        if found is not None and (weights_layout == "auto" or found[0] == weights_layout):
            channels.add(candidate)
    if len(shape) == 2 and weights_layout in ("auto", "kc"):
        channels = {shape[1]}
    if len(channels) != 1:
        raise ShapeError(
            f"expected filters whose shape says the channel count, found {shape} in {said!r}, which "
            f"reads as {' or '.join(map(str, sorted(channels))) or 'no'} channels; give INPUT, or "
            "[[weights_layout]]"
        )
    return np.asarray(normalise_filters(array, channels.pop(), weights_layout).matrix, dtype=np.float64)


def _denominator_matrix(ratio: Weights, filters: np.ndarray, weights_layout: str) -> np.ndarray:
    """A ratio's denominator as (K or 1, C), checked against the numerator's (K, C)."""
    said = ratio.filters.source
    denominator = _matrix(ratio.filters.array, weights_layout, said)
    if denominator.shape[1] != filters.shape[1]:
        raise ShapeError(
            f"expected a denominator bank over the numerator's {filters.shape[1]} channels, found "
            f"{denominator.shape[1]} in {said!r}"
        )
    if denominator.shape[0] not in (1, filters.shape[0]):
        raise ShapeError(
            f"expected a denominator bank of {filters.shape[0]} filters (one per output channel) or 1, found "
            f"{denominator.shape[0]} in {said!r}"
        )
    return denominator


def _unbound_bank(weights: Weights, options: ApplyOptions) -> ExportBank:
    """The bank as it stands, for no input: a named table keeps its own band order."""
    if options.bands is not None:
        raise UsageError(
            "expected INPUT for [[bands]] (it binds a named bank to an input's bands), found none"
        )
    table = weights.table
    filters = _matrix(weights.filters.array, options.weights_layout, weights.filters.source)
    channel_names = table.band_names if table is not None else weights.channel_names
    ratio = weights.denominator
    denominator = None if ratio is None else _denominator_matrix(ratio, filters, options.weights_layout)

    def bias(w: Weights | None, count: int) -> np.ndarray | None:
        return None if w is None or w.bias is None else normalise_bias(w.bias.array, count)

    return ExportBank(
        filters,
        bias(weights, filters.shape[0]),
        weights.names if weights.names and len(weights.names) == filters.shape[0] else None,
        tuple(channel_names) if channel_names and len(channel_names) == filters.shape[1] else None,
        weights.filters.source,
        denominator,
        None if denominator is None else bias(ratio, denominator.shape[0]),
    )


def _planned_bank(weights: Weights, plan: ConvPlan, labels: tuple[str, ...] | None) -> ExportBank:
    if plan.groups != 1 or plan.stride != 1:
        raise UsageError(
            "expected [[groups]] and [[stride]] 1 for an export, found others; export the full bank"
        )
    ratio = plan.denominator
    return ExportBank(
        np.asarray(plan.filters, dtype=np.float64),
        None if plan.bias is None else np.asarray(plan.bias, dtype=np.float64),
        output_labels(weights, plan),
        labels if labels else weights.channel_names,
        weights.filters.source,
        None if ratio is None else np.asarray(ratio.filters, dtype=np.float64),
        None if ratio is None or ratio.bias is None else np.asarray(ratio.bias, dtype=np.float64),
    )


def _vrt_nodata(options: ApplyOptions, nodata: Nodata | None, dtype: np.dtype) -> VrtNodata | None:
    if options.nodata == "none":
        raise UsageError(
            "expected [[nodata]] auto or a value for a VRT, found none; GDAL applies the raster's own "
            "nodata, which a VRT cannot turn off"
        )
    if nodata is None:
        return None
    replacement = None if math.isnan(nodata.out_value) else nodata.replacement(dtype)
    return VrtNodata(nodata.value, nodata.out_value, replacement)


def _arrays(bank: ExportBank, dtype: np.dtype) -> dict[str, np.ndarray]:
    ratio = bank.denominator is not None
    arrays = {("numerator" if ratio else "weights"): bank.filters.astype(dtype)}
    if bank.bias is not None:
        arrays["bias"] = bank.bias.astype(dtype)
    if bank.denominator is not None:
        arrays["denominator"] = bank.denominator.astype(dtype)
        if bank.denominator_bias is not None:
            arrays["denominator_bias"] = bank.denominator_bias.astype(dtype)
    if bank.names:
        arrays["names"] = np.array(bank.names)
    if bank.channel_names:
        arrays["channel_names"] = np.array(bank.channel_names)
    return arrays


def _dtype(options: ApplyOptions, kind: str, own: np.dtype | None = None) -> np.dtype:
    name = options.dtype or "float32"
    if name not in _GDAL_TYPES:
        raise UsageError(
            f"expected [[dtype=float32|float64]] for an export, found {name!r}; the exported bank computes in floats"
        )
    if kind == "onnx" and name != "float32":
        raise UsageError(
            f"expected [[dtype=float32]] for an ONNX model, found {name!r}; ONNX runtimes run a float32 Conv "
            "everywhere, a float64 one rarely"
        )
    if kind == "bank" and options.dtype is None:  # a bank file keeps the bank's own precision
        return np.dtype(np.float32) if own == np.float32 else np.dtype(np.float64)
    return np.dtype(name)


def _with_input(
    in_spec: Spec, weights: Weights, options: ApplyOptions, kind: str, dtype: np.dtype
) -> tuple[ExportBank, VrtNodata | None, dict]:
    source = open_source(in_spec)
    try:
        options = with_channel_dim(options, source)
        bound = bound_weights(weights, source, options)
        plan, _ = make_plan(source, bound, options)
        check_channel_names(bound, source, plan, options)
        labels = source.description.labels.get(plan.channel_axis)
        bank = _planned_bank(bound, plan, tuple(labels) if labels else None)
        vrt_nodata = (
            _vrt_nodata(options, resolve_nodata(options, source, dtype), dtype) if kind == "vrt" else None
        )
        info = {"input": in_spec.text, "input_shape": list(plan.in_shape)}
    finally:
        source.close()
    return bank, vrt_nodata, info


def _check_single_array(spec: Spec, bank: ExportBank) -> None:
    """An ``.npy`` holds the filters alone (its bias beside it): a ratio or names need more."""
    if spec.format != "npy":
        return
    if bank.denominator is not None or bank.names or bank.channel_names:
        what = "a ratio" if bank.denominator is not None else "band names"
        raise UsageError(
            f"expected a bank without names or denominator for {spec.text!r} (an .npy holds one array), found "
            f"{what} in {bank.source!r}; write .npz or .safetensors to keep them"
        )


def export_bank(request: ExportRequest) -> dict[str, Any]:
    """Write the bank ``request.bank`` as ``request.output``; returns the report."""
    start = time.perf_counter()
    options = request.options
    out_spec = parse_spec(request.output, what="output")
    kind = _kind(out_spec)
    if kind == "vrt" and request.input is None:
        raise UsageError(
            f"expected INPUT for {out_spec.text!r} (the raster the VRT reads), found none; "
            "give it after the bank: export BANK -o mix.vrt RASTER"
        )
    weights = with_divide_by(
        read_weights(request.bank, options.bias, member=request.weights_dataset), options
    )
    inputs = [parse_spec(request.input, request.dataset)] if request.input else []
    check_distinct(out_spec, *inputs, *weights.specs)
    dtype = _dtype(options, kind, weights.filters.array.dtype)
    if not inputs:
        bank, nodata, info = _unbound_bank(weights, options), None, {"input": None}
    else:
        bank, nodata, info = _with_input(inputs[0], weights, options, kind, dtype)
    if kind == "vrt":
        if bank.denominator is not None:
            raise UsageError(
                f"expected one mix for a VRT, found a ratio in {bank.source!r}; GDAL's BandAffineCombination "
                "has no division: export it as .onnx or a bank file"
            )
        count = gdal_band_count(inputs[0].path)
        if count != bank.in_channels:
            raise ShapeError(
                f"expected {bank.in_channels} bands in {inputs[0].text!r} (the bank's channels), found {count}; "
                "a VRT reads GDAL's bands, one per channel"
            )
        text = vrt_text(out_spec.path, inputs[0].path, bank, _GDAL_TYPES[dtype.name], nodata)
        written = write_vrt(out_spec.path, text, options.overwrite)
    elif kind == "onnx":
        written = write_onnx(out_spec.path, bank, options.overwrite)
    else:
        _check_single_array(out_spec, bank)
        written = write_arrays(out_spec, _arrays(bank, dtype), options.overwrite)
    return {
        "pwconv": __version__,
        "bank": bank.source,
        "output": written,
        "as": kind,
        "filters": bank.out_channels,
        "channels": bank.in_channels,
        "ratio": bank.denominator is not None,
        "bias": bank.bias is not None,
        "dtype": dtype.name,
        "names": list(bank.names) if bank.names else None,
        "channel_names": list(bank.channel_names) if bank.channel_names else None,
        **info,
        "outside_folder": kind == "vrt" and not names_relatively(out_spec.path, inputs[0].path),
        "seconds": round(time.perf_counter() - start, 6),
    }
