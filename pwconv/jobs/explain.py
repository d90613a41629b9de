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
from pwconv.io.registry import STREAM, list_arrays, open_source
from pwconv.io.spec import parse_spec
from pwconv.jobs.apply import bound_weights, make_plan, output_labels, resolve_nodata, with_channel_dim
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
    pictures: bool = False  # read the region around the pixel that a figure shows


#: Positions shown around the pixel along a picture's rows and columns.
PICTURE_WINDOW = 32


@dataclass(frozen=True)
class Neighbourhood:
    """What a figure of the calculation shows besides the numbers: the input and output
    around the pixel, as (rows, columns, channels) planes of the last two non-channel axes."""

    inputs: np.ndarray  # (rows, columns, C)
    outputs: np.ndarray  # (rows, columns, K), as written (rounded and clipped for integers)
    nodata: np.ndarray | None  # (rows, columns): pixels apply writes as nodata
    pixel: tuple[int, int]  # the explained pixel inside the planes
    channel_names: tuple[str, ...] | None
    filter_names: tuple[str, ...] | None


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


def _read_around(
    source: Source, plan: ConvPlan, coords: tuple[int, ...], window: int | None = None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The input around the pixel and the pixel's place in it (one offset per non-channel
    axis). Without ``window``: the line along the innermost non-channel axis (up to
    ``_LINE_CAP`` positions, which bounds memory on huge axes). With it: up to ``window``
    positions along each of the last two non-channel axes (a picture's rows and columns)."""
    axes = [a for a in range(len(plan.out_shape)) if a != plan.channel_axis]
    spans = (
        {axes[-1]: _LINE_CAP} if window is None and axes else {a: window for a in axes[-2:]} if window else {}
    )
    out_index: list[slice] = [slice(0, n) for n in plan.out_shape]
    offsets = []
    for axis, value in zip(axes, coords):
        span = spans.get(axis, 1)
        start = max(0, min(value - span // 2, plan.out_shape[axis] - span))
        out_index[axis] = slice(start, min(plan.out_shape[axis], start + span))
        offsets.append(value - start)
    index = plan.strided_index(tuple(out_index))
    if source.sequential and axes and axes[-1] > plan.channel_axis:
        # A pipe is read front to back: take the contiguous stretch that holds the region.
        wide = tuple(sl if a < plan.channel_axis else slice(None) for a, sl in enumerate(index))
        block = source.read(wide)
        narrow = tuple(slice(None) if a < plan.channel_axis else sl for a, sl in enumerate(index))
        return block[narrow], tuple(offsets)
    return source.read(index), tuple(offsets)


def json_number(value: Any) -> Any:
    """A Python number as the JSON document holds it (complex: [re, im]; not finite: None)."""
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


def _pixel_of(block: np.ndarray, axis: int, offsets: tuple[int, ...]) -> tuple[Any, ...]:
    """The index of the explained pixel's channel vector inside the block read around it."""
    pixel_at: list[Any] = list(offsets)
    pixel_at.insert(axis, slice(None))
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
        "terms": [[json_number(v), json_number(w), json_number(v * w)] for v, w in terms],
        "bias": json_number(bias),
        "sum": json_number(total),
        "fast_path": json_number(fast_value),
        "written": None
        if saturate_to is None
        else saturate(np.array([fast_value]), saturate_to)[0][0].item(),
        "difference": json_number(difference),
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


def _planes(block: np.ndarray, axis: int, offsets: tuple[int, ...]) -> np.ndarray:
    """A block as (rows, columns, channels) over its last two non-channel axes (the others
    are one position wide around the pixel)."""
    moved = np.moveaxis(block, axis, -1)
    picture = moved[tuple(0 for _ in range(max(0, len(offsets) - 2)))] if len(offsets) > 2 else moved
    while picture.ndim < 3:
        picture = picture[np.newaxis]
    return picture


def _neighbourhood(
    plan: ConvPlan, block: np.ndarray, computed: np.ndarray, offsets: tuple[int, ...], nodata: Any,
    saturate_to: np.dtype | None, labels: Any, filter_names: Any,
) -> Neighbourhood:  # fmt: skip
    axis = plan.channel_axis
    written = computed if saturate_to is None else saturate(computed, saturate_to)[0]
    mask = None if nodata is None else nodata.mask(block, axis)
    shown = offsets[-2:]
    pixel = (0, shown[0]) if len(shown) == 1 else (shown[0], shown[1]) if shown else (0, 0)
    bad = None
    if mask is not None:
        bad = _planes(mask[..., np.newaxis], mask.ndim, offsets)[..., 0]
    return Neighbourhood(
        np.asarray(_planes(block, axis, offsets)), np.asarray(_planes(written, axis, offsets)), bad,
        pixel, tuple(labels) if labels else None,
        tuple(filter_names) if filter_names else None,
    )  # fmt: skip


def explain(request: ExplainRequest) -> dict[str, Any]:
    """The explanation as a JSON-ready document (see :func:`render_text` for the text form)."""
    return explain_with_neighbourhood(request)[0]


def explain_with_neighbourhood(request: ExplainRequest) -> tuple[dict[str, Any], Neighbourhood | None]:
    """:func:`explain`, and with ``request.pictures`` the region a figure of it shows."""
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
        labels = None
        if loaded.denominator is not None:
            raise UsageError(
                f"expected one mix for explain, found a ratio (denominator {loaded.denominator.filters.source!r}); "
                "explain the numerator and the denominator banks one at a time"
            )
        plan, saturate_to = make_plan(source, loaded, options)
        nodata = resolve_nodata(options, source, np.dtype(np.float64))
        names = axis_names(plan, source.description.dimensions)
        coords = _position(plan, request.at, names)
        block, offsets = _read_around(source, plan, coords, PICTURE_WINDOW if request.pictures else None)
        labels = source.description.labels.get(plan.channel_axis)
    finally:
        source.close()
    axis = plan.channel_axis
    where = _pixel_of(block, axis, offsets)
    pixel = block[where].reshape(-1)
    computed = compute_block(plan, block)
    fast = computed[where].reshape(-1)
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
            "channels": [json_number(v.item()) for v in pixel],
            # the pixel's row in the matrix view (output positions in C order, channels left out)
            "flat_index": int(np.ravel_multi_index(tuple(coords), [plan.out_shape[a] for a in out_positions]))
            if out_positions
            else 0,
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
    if not request.pictures:
        return doc, None
    return doc, _neighbourhood(
        plan, block, computed, offsets, nodata, saturate_to, labels, output_labels(loaded, plan)
    )


def _only_array(spec: Any) -> str | None:
    """The one array of a container named without a member (what pwconv reads then)."""
    arrays = list_arrays(spec)
    return arrays[0] if len(arrays) == 1 else None


def format_value(value: Any) -> str:
    """A number of the explanation as the text shows it (negative ones in brackets).

    >>> format_value(-2), format_value(0.1 + 0.2)
    ('(-2)', '0.3')
    """
    if value is None:
        return "nan"
    if isinstance(value, list):
        return f"({format_value(value[0])}{'+' if value[1] >= 0 else '-'}{format_value(abs(value[1]))}j)"
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
    shown = elided([format_value(v) for v in channels], max_terms, "values")
    pixel_lines = [f"input channels at ({src}): [{', '.join(shown)}]"]
    if px.get("nodata"):
        pixel_lines.append(
            "this pixel is nodata (a channel holds the input's nodata value): apply writes the output's "
            "nodata in every channel here; the sums below are what the filters would give"
        )
    for item in doc["results"]:
        products = [f"{format_value(v)}*{format_value(w)}" for v, w, _ in item["terms"]]
        text = " + ".join(elided(products, max_terms, "terms"))
        if item["bias"] is not None:
            text += f" + {format_value(item['bias'])} (bias)"
        label = f"filter {item['filter']}"
        if matrix["groups"] > 1:
            lo, hi = item["channels"]
            label += f" (group {item['group']}, channels {lo}-{hi - 1})"
        written = item.get("written")
        stored = (
            "" if written is None else f" -> {format_value(written)} in {out['dtype']} (rounded, clipped)"
        )
        pixel_lines.append(f"{label}:  {text} = {format_value(item['sum'])}{stored}")
        verdict = "ok" if item["ok"] else "MISMATCH (a pwconv bug: please report it)"
        pixel_lines.append(
            f"    fast path: {format_value(item['fast_path'])}   difference {item['difference']:.3g}"
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


def elided(items: list[str], max_terms: int, what: str) -> list[str]:
    """``items``, or its first and last ones around a line saying how many are left out."""
    if len(items) <= max_terms:
        return items
    head = max_terms // 2
    tail = max_terms - head
    return items[:head] + [f"... {len(items) - max_terms} more {what} ..."] + items[-tail:]
