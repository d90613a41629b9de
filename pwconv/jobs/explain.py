"""``pwconv explain``: the calculation behind one output pixel, term by term.

Reads only the line of input that holds the pixel, computes the pixel with the reference
loop (Python numbers: exact for integers) and with the fast path on that line, and says how
far apart they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pwconv.core.conv import ConvPlan, compute_block, saturate
from pwconv.core.reference import pixel_terms, pixel_value
from pwconv.core.words import counted
from pwconv.errors import UsageError
from pwconv.io.interface import Source
from pwconv.io.operands import read_weights
from pwconv.io.registry import STREAM, backend_of, open_source
from pwconv.io.spec import parse_spec
from pwconv.jobs.apply import bound_weights, make_plan, resolve_nodata, with_channel_dim
from pwconv.jobs.options import ApplyOptions
from pwconv.jobs.report import describe_bias, describe_input, describe_weights

# Positions of the line read around the pixel (bounds memory on huge axes).
_LINE_CAP = 4096


@dataclass(frozen=True)
class ExplainRequest:
    input: str
    weights: str
    options: ApplyOptions
    at: str | None = None
    filters: str | None = None
    max_terms: int = 8
    dataset: str | None = None
    code: tuple[str, ...] = ()  # explain --code: the snippets to write (numpy, torch, keras)


def axis_names(plan: ConvPlan, dimensions: tuple[str, ...] | None = None) -> list[str]:
    """A name per input axis: the input's own dimension names (NetCDF, Zarr, labelled
    HDF5), else the user's letters, else N/C and H, W (D, L) for the rest."""
    layout = plan.layout
    if dimensions and len(dimensions) == layout.ndim and len(set(dimensions)) == layout.ndim:
        return list(dimensions)
    if layout.name.isalpha() and layout.name.isupper() and len(layout.name) == layout.ndim:
        return list(layout.name)
    spatial = {1: ["L"], 2: ["H", "W"], 3: ["D", "H", "W"]}.get(
        len(layout.spatial_axes), [f"S{i}" for i in range(len(layout.spatial_axes))]
    )
    names = []
    for axis in range(layout.ndim):
        if axis == layout.channel_axis:
            names.append("C")
        elif axis in layout.batch_axes:
            names.append("N" if len(layout.batch_axes) == 1 else f"N{layout.batch_axes.index(axis)}")
        else:
            names.append(spatial[layout.spatial_axes.index(axis)])
    return names


def _parse_list(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UsageError(f"expected whole numbers separated by commas for {what}, found {text!r}") from None


def _position(plan: ConvPlan, at: str | None, names: list[str]) -> tuple[int, ...]:
    """Output coordinates of every non-channel axis; batch axes may be left out (0)."""
    axes = [a for a in range(len(plan.out_shape)) if a != plan.channel_axis]
    if at is None:
        return tuple(0 for _ in axes)
    values = _parse_list(at, "--at")
    if len(values) == len(axes):
        coords = values
    elif len(values) == len(plan.layout.spatial_axes):
        coords = [0 if a in plan.layout.batch_axes else values.pop(0) for a in axes]
    else:
        expect = ",".join(names[a] for a in axes)
        raise UsageError(
            f"expected --at with {len(axes)} coordinates ({expect}), found {len(values)} in {at!r}"
        )
    for axis, value in zip(axes, coords):
        if not 0 <= value < plan.out_shape[axis]:
            raise UsageError(
                f"expected --at inside the output ({names[axis]} from 0 to "
                f"{plan.out_shape[axis] - 1}), found {value}"
            )
    return tuple(coords)


def _read_line(source: Source, plan: ConvPlan, coords: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """The input line (innermost non-channel axis) through the pixel, and the pixel's place in it."""
    axes = [a for a in range(len(plan.out_shape)) if a != plan.channel_axis]
    line_axis = axes[-1] if axes else None
    out_index: list[slice] = [slice(0, n) for n in plan.out_shape]
    offset = 0
    for axis, value in zip(axes, coords):
        if axis == line_axis:
            start = max(0, min(value - _LINE_CAP // 2, plan.out_shape[axis] - _LINE_CAP))
            out_index[axis] = slice(start, min(plan.out_shape[axis], start + _LINE_CAP))
            offset = value - start
        else:
            out_index[axis] = slice(value, value + 1)
    index = plan.strided_index(tuple(out_index))
    if source.sequential and line_axis is not None and line_axis > plan.channel_axis:
        # A pipe is read front to back: take the contiguous stretch that holds the line.
        wide = tuple(sl if a < plan.channel_axis else slice(None) for a, sl in enumerate(index))
        block = source.read(wide)
        narrow = tuple(slice(None) if a < plan.channel_axis else sl for a, sl in enumerate(index))
        return block[narrow], offset
    return source.read(index), offset


def _number(value: Any) -> Any:
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tolerance(plan: ConvPlan, terms: list[tuple[Any, Any]], bias: Any) -> float:
    if plan.out_dtype.kind in "iu":
        return 0.0
    magnitude = sum(abs(v * w) for v, w in terms) + (abs(bias) if bias is not None else 0)
    compute_eps = float(np.finfo(plan.compute_dtype).eps)
    out_eps = float(np.finfo(plan.out_dtype).eps)
    return 4 * compute_eps * math.sqrt(len(terms) + 1) * magnitude + out_eps * magnitude


def _pixel_of(line: np.ndarray, axis: int, offset: int) -> tuple[Any, ...]:
    """The index of the explained pixel's channel vector inside the line read around it."""
    pixel_at: list[Any] = [0] * line.ndim
    axes = [a for a in range(line.ndim) if a != axis]
    if axes:
        pixel_at[axes[-1]] = offset
    pixel_at[axis] = slice(None)
    return tuple(pixel_at)


def _filter_doc(
    plan: ConvPlan, pixel: np.ndarray, fast: np.ndarray, k: int, saturate_to: np.dtype | None
) -> dict[str, Any]:
    """Filter ``k`` at the pixel, term by term, against the fast path's value, and the value
    written where the output's integers hold the result rounded and clipped."""
    terms = pixel_terms(plan, pixel, k)
    bias = plan.bias[k].item() if plan.bias is not None else None
    total = pixel_value(plan, pixel, k)
    fast_value = fast[k].item()
    difference = abs(fast_value - total)
    tolerance = _tolerance(plan, terms, bias)
    ok = difference <= tolerance or (isinstance(total, float) and not math.isfinite(total))
    group = k // (plan.out_channels // plan.groups)
    cg = plan.filters.shape[1]
    return {
        "filter": k,
        "group": group,
        "channels": [group * cg, (group + 1) * cg],
        "terms": [[_number(v), _number(w), _number(v * w)] for v, w in terms],
        "bias": _number(bias),
        "sum": _number(total),
        "fast_path": _number(fast_value),
        "written": None
        if saturate_to is None
        else saturate(np.array([fast_value]), saturate_to)[0][0].item(),
        "difference": _number(difference),
        "tolerance": tolerance,
        "ok": bool(ok),
    }


def _matrix_doc(plan: ConvPlan, written: np.dtype) -> dict[str, Any]:
    """The whole run as one matrix product: its sizes and costs."""
    return {
        "pixels": plan.pixels,
        "channels": plan.in_channels,
        "filters": plan.out_channels,
        "groups": plan.groups,
        "multiply_adds": plan.pixels * plan.out_channels * plan.filters.shape[1],
        "flops": plan.flops,
        "bytes": {
            "input": math.prod(plan.in_shape) * plan.in_dtype.itemsize,
            "weights": plan.bank.matrix.nbytes,
            "output": math.prod(plan.out_shape) * written.itemsize,
        },
    }


def _chosen_filters(plan: ConvPlan, text: str | None) -> list[int]:
    k_total = plan.out_channels
    chosen = _parse_list(text, "--filters") if text else list(range(min(k_total, 4)))
    for k in chosen:
        if not 0 <= k < k_total:
            raise UsageError(f"expected --filters between 0 and {k_total - 1}, found {k}")
    return chosen


def explain(request: ExplainRequest) -> dict[str, Any]:
    """The explanation as a JSON-ready document (see :func:`render_text` for the text form)."""
    if request.max_terms < 2:
        raise UsageError(f"expected --max-terms of at least 2, found {request.max_terms}")
    spec = parse_spec(request.input, request.dataset)
    loaded = read_weights(request.weights, request.options.bias)
    if request.code and spec.format == STREAM.name:
        raise UsageError(
            "expected a file input for --code (the snippet loads it), found '-'; save the stream to a file first"
        )
    source = open_source(spec)
    try:
        options = with_channel_dim(request.options, source)
        loaded = bound_weights(loaded, source, options)
        if loaded.denominator is not None:
            raise UsageError(
                f"expected one mix for explain, found a ratio (denominator {loaded.denominator.filters.source!r}); "
                "explain the numerator and the denominator banks one at a time"
            )
        plan, saturate_to = make_plan(source, loaded, options)
        nodata = resolve_nodata(options, source, np.dtype(np.float64))
        names = axis_names(plan, source.description.dimensions)
        coords = _position(plan, request.at, names)
        line, offset = _read_line(source, plan, coords)
    finally:
        source.close()
    axis = plan.channel_axis
    where = _pixel_of(line, axis, offset)
    pixel = line[where].reshape(-1)
    fast = compute_block(plan, line)[where].reshape(-1)
    chosen = _chosen_filters(plan, request.filters)
    filters_doc = [_filter_doc(plan, pixel, fast, k, saturate_to) for k in chosen]
    out_positions = [a for a in range(len(plan.out_shape)) if a != axis]
    in_coords = [
        c * plan.stride if a in plan.layout.spatial_axes else c for a, c in zip(out_positions, coords)
    ]
    doc: dict[str, Any] = {
        "input": {**describe_input(spec.text, plan), "axes": names},
        "weights": describe_weights(loaded, plan),
        "bias": describe_bias(loaded),
        "groups": plan.groups,
        "stride": plan.stride,
        "output": {
            "shape": list(plan.out_shape),
            "dtype": (saturate_to or plan.out_dtype).name,
            # integers from a float result: rounded to nearest and clipped, as apply writes them
            "computed_in": plan.out_dtype.name,
        },
        "pixel": {
            "output_index": {names[a]: v for a, v in zip(out_positions, coords)},
            "input_index": {names[a]: v for a, v in zip(out_positions, in_coords)},
            "channels": [_number(v.item()) for v in pixel],
            "nodata": bool(nodata is not None and nodata.mask(pixel.reshape(1, -1), 1)[0]),
        },
        "results": filters_doc,
        "filters_not_shown": plan.out_channels - len(chosen),
        "matrix": _matrix_doc(plan, saturate_to or plan.out_dtype),
        "ok": all(item["ok"] for item in filters_doc),
    }
    if request.code:
        from pwconv.jobs.snippets import Case, snippets

        member = spec.member or _only_array(spec)
        doc["code"] = snippets(
            Case(spec, member, loaded, plan, tuple(coords), chosen[0], saturate_to), list(request.code)
        )
    return doc


def _only_array(spec: Any) -> str | None:
    """The one array of a container named without a member (what pwconv reads then)."""
    arrays = backend_of(spec).list_arrays(spec.path)
    return arrays[0] if len(arrays) == 1 else None


def _fmt(value: Any) -> str:
    if value is None:
        return "nan"
    if isinstance(value, list):
        return f"({_fmt(value[0])}{'+' if value[1] >= 0 else '-'}{_fmt(abs(value[1]))}j)"
    if isinstance(value, float):
        text = f"{value:.6g}"
        return f"({text})" if text.startswith("-") else text
    return f"({value})" if value < 0 else str(value)


def _shape(dims: list[int], names: list[str]) -> str:
    return "x".join(str(n) for n in dims) + f" ({', '.join(names)})"


def render_text(doc: dict[str, Any], max_terms: int = 8) -> list[tuple[str, list[str]]]:
    """The explanation as titled sections of plain lines."""
    inp, filt, out, matrix = doc["input"], doc["weights"], doc["output"], doc["matrix"]
    names = inp["axes"]
    axis = inp["channel_axis"]
    out_names = names[:axis] + ["K"] + names[axis + 1 :]
    c, k = matrix["channels"], matrix["filters"]
    cg = filt["matrix_shape"][1]
    shapes = [
        f"input    {_shape(inp['shape'], names)}  {inp['dtype']}, layout {inp['layout']}: C = {counted(c, 'channel')} on axis {axis}",
        f"filters  {k} x {cg} (K x C{'/groups' if matrix['groups'] > 1 else ''}), {filt['interpretation']}",
        f"output   {_shape(out['shape'], out_names)}  {out['dtype']}",
        f"Each output value is one dot product: a pixel's {cg} channel values times one filter's {cg} weights"
        + (" plus its bias." if doc["bias"] else "."),
        f"So the channel axis ({c}) disappears and K = {k} value{'s' if k != 1 else ''} per pixel take"
        f"{'' if k != 1 else 's'} its place.",
    ]
    if matrix["groups"] > 1:
        shapes.append(f"groups {matrix['groups']}: filter k sees only the {cg} channels of its group.")
    if doc["stride"] > 1:
        shapes.append(f"stride {doc['stride']}: every {doc['stride']}th position along each spatial axis.")
    px = doc["pixel"]
    where = ", ".join(f"{n}={v}" for n, v in px["output_index"].items())
    src = ", ".join(f"{n}={v}" for n, v in px["input_index"].items())
    channels = px["channels"]
    shown = _elide([_fmt(v) for v in channels], max_terms, "values")
    pixel_lines = [f"input channels at ({src}): [{', '.join(shown)}]"]
    if px.get("nodata"):
        pixel_lines.append(
            "this pixel is nodata (a channel holds the input's nodata value): apply writes the output's "
            "nodata in every channel here; the sums below are what the filters would give"
        )
    for item in doc["results"]:
        products = [f"{_fmt(v)}*{_fmt(w)}" for v, w, _ in item["terms"]]
        text = " + ".join(_elide(products, max_terms, "terms"))
        if item["bias"] is not None:
            text += f" + {_fmt(item['bias'])} (bias)"
        label = f"filter {item['filter']}"
        if matrix["groups"] > 1:
            lo, hi = item["channels"]
            label += f" (group {item['group']}, channels {lo}-{hi - 1})"
        written = item.get("written")
        stored = "" if written is None else f" -> {_fmt(written)} in {out['dtype']} (rounded, clipped)"
        pixel_lines.append(f"{label}:  {text} = {_fmt(item['sum'])}{stored}")
        verdict = "ok" if item["ok"] else "MISMATCH (a pwconv bug: please report it)"
        pixel_lines.append(
            f"    fast path: {_fmt(item['fast_path'])}   difference {item['difference']:.3g}"
            f" (tolerance {item['tolerance']:.3g}) {verdict}"
        )
    if doc["filters_not_shown"]:
        pixel_lines.append(f"({doc['filters_not_shown']} more filters not shown; choose some with --filters)")
    spatial = " * ".join(str(n) for i, n in enumerate(out["shape"]) if i != axis) or "1"
    b = matrix["bytes"]
    matrix_lines = [
        f"({spatial}) x {c}  @  {c} x {k}  =  ({spatial}) x {k}",
        f"i.e. {matrix['pixels']} x {c} times {c} x {k}: one row per pixel, one column per filter"
        + (f" (block-diagonal: {matrix['groups']} groups)" if matrix["groups"] > 1 else ""),
        f"{matrix['multiply_adds']:,} multiply-adds = {matrix['flops']:,} FLOPs; "
        f"reads {b['input']:,} B of input and {b['weights']:,} B of filters, writes {b['output']:,} B",
    ]
    return [("shapes", shapes), (f"pixel ({where})", pixel_lines), ("matrix view", matrix_lines)]


def _elide(items: list[str], max_terms: int, what: str) -> list[str]:
    if len(items) <= max_terms:
        return items
    head = max_terms // 2
    tail = max_terms - head
    return items[:head] + [f"... {len(items) - max_terms} more {what} ..."] + items[-tail:]
