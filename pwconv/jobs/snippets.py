"""``explain --code``: the run as a short program in numpy, PyTorch or Keras.

Each snippet loads the same files with their format's own reader (pwconv's public helpers
where that reader would need pwconv's own rules), reads the filters the way pwconv read
them, computes the whole output, prints its shape, and checks one output value against the
dot product of that pixel's channels with one filter: the calculation ``explain`` shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pwconv.core.conv import ConvPlan
from pwconv.errors import UsageError
from pwconv.io.operands import Operand, Weights
from pwconv.io.spec import Spec
from pwconv.io.stores import is_url, shown

TARGETS = ("numpy", "torch", "keras")

# How pwconv read the filters' source shape as a (K, C/groups) matrix, as code on ``w``.
_READINGS = {
    "kc": ("", "rows are filters: (K, C) as it is"),
    "ck": ("w = w.T", "columns are filters: (C, K) turned to (K, C)"),
    "c": ("w = w.reshape(1, -1)", "one filter of C weights: (1, C)"),
    "oihw": (
        "w = w.reshape(w.shape[0], w.shape[1])",
        "(K, C, 1, 1) as PyTorch stores it: the 1x1 kernel dropped",
    ),
    "hwio": (
        "w = w.reshape(w.shape[-2], w.shape[-1]).T",
        "(1, 1, C, K) as Keras/TensorFlow store it: the 1x1 kernel dropped, then one row per filter",
    ),
}


def parse_targets(values: list[str] | None) -> list[str]:
    """The targets ``--code`` names (repeatable; ``all`` for every one), in a fixed order."""
    chosen: set[str] = set()
    for value in values or []:
        for name in value.replace(" ", "").split(","):
            if name == "all":
                chosen.update(TARGETS)
            elif name in TARGETS:
                chosen.add(name)
            else:
                raise UsageError(
                    f"expected --code {'|'.join(TARGETS)}|all, found {name!r}; e.g. --code torch"
                )
    return [t for t in TARGETS if t in chosen]


@dataclass(frozen=True)
class Case:
    """What a snippet needs: the input and where it came from, the filters, the plan, the
    output value it checks (its output index and filter)."""

    spec: Spec
    member: str | None  # the input's array inside a container, resolved
    weights: Weights
    plan: ConvPlan
    out_index: tuple[int, ...]  # every non-channel output axis
    filter: int
    saturate_to: np.dtype | None = None  # integers written from a float result (--dtype uint8)


def _url_call(function: str, url: str, member: str | None) -> str:
    """``pwconv.FUNCTION(url[, member])`` with the URL as messages show it: without its query
    string (a presigned URL's signature), which nothing pwconv prints ever holds."""
    named = f", {member!r}" if member else ""
    note = "  # the URL's query string is not shown: put it back to run this" if "?" in url else ""
    return f"pwconv.{function}({shown(url)!r}{named}){note}"


def _array_literal(array: np.ndarray) -> str:
    text = np.array2string(array, separator=", ", threshold=10**9, max_line_width=10**9, floatmode="unique")
    return f"np.array({text}, dtype=np.{array.dtype.name})"


def _load_input(case: Case) -> tuple[list[str], list[str]]:
    """The imports and the lines that load the input as ``x``."""
    spec, path = case.spec, repr(case.spec.path)
    member = f", {case.member!r}" if case.member else ""
    if is_url(spec.path):  # numpy, h5py and zarr take no URL; pwconv reads it by ranges
        return ["import pwconv"], [f"x = {_url_call('load_array', spec.path, case.member)}"]
    if spec.format == "npy":
        return [], [f"x = np.load({path})"]
    if spec.format in ("hdf5", "netcdf") and case.member:
        return ["import h5py"], [f"with h5py.File({path}, 'r') as f:", f"    x = f[{case.member!r}][...]"]
    if spec.format == "zarr":
        opened = (
            f"zarr.open_group({path}, mode='r')[{case.member!r}]"
            if case.member
            else f"zarr.open_array({path}, mode='r')"
        )
        return ["import zarr"], [f"x = {opened}[...]"]
    if spec.format == "raster":
        return ["import rasterio"], [
            f"with rasterio.open({path}) as ds:",
            "    x = np.moveaxis(ds.read(), 0, -1)  # bands last: (rows, cols, bands), as pwconv reads a raster",
        ]
    return ["import pwconv"], [
        f"x = pwconv.load_array({path}{member})  # read as pwconv reads it: {case.plan.in_shape}"
    ]


def _load_operand(operand: Operand, name: str) -> tuple[list[str], list[str]]:
    """The imports and the lines that load filters or a bias as ``name``."""
    if operand.spec is None:
        said = operand.source
        said = (
            f"the literal {said[len('literal ') :]}"
            if said.startswith("literal ")
            else f"{said}, as bound to the input"
        )
        return [], [f"{name} = {_array_literal(operand.array)}  # {said}"]
    spec, path, member = operand.spec, repr(operand.spec.path), operand.spec.member
    if is_url(spec.path):
        return ["import pwconv"], [f"{name} = {_url_call('load_weights', spec.path, member)}"]
    if spec.format == "npy":
        return [], [f"{name} = np.load({path})"]
    if spec.format == "npz" and member:
        return [], [f"{name} = np.load({path})[{member!r}]"]
    if spec.format == "safetensors" and member:
        return ["from safetensors.numpy import load_file"], [f"{name} = load_file({path})[{member!r}]"]
    if spec.format == "hdf5" and member:
        return ["import h5py"], [f"with h5py.File({path}, 'r') as f:", f"    {name} = f[{member!r}][...]"]
    tensor = f", {member!r}" if member else ""
    return ["import pwconv"], [f"{name} = pwconv.load_weights({path}{tensor})"]


def _header(case: Case, target: str, imports: tuple[str, ...] = ()) -> list[str]:
    """The comment, the imports, and the lines that load ``x``, ``w`` (as pwconv read it) and
    ``b``; ``x0`` keeps the input as loaded for the check at the end."""
    plan = case.plan
    k, c = plan.out_channels, plan.in_channels
    reading, why = _READINGS[plan.bank.reading]
    loads = [_load_input(case), _load_operand(case.weights.filters, "w")]
    if case.weights.bias is not None:
        loads.append(_load_operand(case.weights.bias, "b"))
    needed = list(dict.fromkeys(line for wanted, _ in loads for line in wanted))
    lines = [
        f"# pwconv's run as {target}: {'x'.join(map(str, plan.in_shape))} in, "
        f"{'x'.join(map(str, plan.out_shape))} out.",
        "# A 1x1 convolution is one dot product per pixel and filter: each pixel's C channel values",
        "# times the filter's C weights, summed. Multiplying elementwise would keep all C channels;",
        f"# the sum over the channel axis is what turns C = {c} values into one per filter (K = {k}).",
        "import numpy as np",
        *needed,
        *imports,
        "",
        *loads[0][1],
        *loads[1][1],
        f"# the filters as pwconv read them, {why}",
        *([reading] if reading else []),
        f"assert w.shape == ({k}, {plan.filters.shape[1]})",
    ]
    if case.weights.bias is not None:
        lines += [*loads[2][1], f"b = b.reshape(-1)  # one bias per filter: ({k},)"]
    return [*lines, "", "x0 = x  # as loaded, for the check at the end"]


def _stride_lines(plan: ConvPlan, name: str) -> list[str]:
    if plan.stride == 1:
        return []
    steps = ", ".join(
        f"::{plan.stride}" if a in plan.layout.spatial_axes else ":" for a in range(len(plan.in_shape))
    )
    return [
        f"{name} = {name}[{steps}]  # stride {plan.stride}: every {plan.stride}th position of each spatial axis"
    ]


def _finish_lines(case: Case) -> list[str]:
    """The output in pwconv's dtype, its shape, the check by hand, and small outputs shown."""
    plan = case.plan
    out_dtype = plan.out_dtype.name
    lines = []
    if case.saturate_to is not None:
        info = np.iinfo(case.saturate_to)
        lines.append(
            f"y = np.clip(np.rint(y), {info.min}, {info.max}).astype(np.{case.saturate_to.name})"
            "  # as pwconv writes it: rounded to nearest, clipped"
        )
    elif plan.out_dtype.kind in "iu":
        lines.append(f"y = np.rint(y).astype(np.{out_dtype})  # integer data: the sums are whole numbers")
    else:
        lines.append(f"y = y.astype(np.{out_dtype})")
    lines.append('print("output shape", y.shape)')
    lines += _check_lines(case)
    lines += ["if y.size <= 64:", "    print(np.squeeze(y))"]
    return lines


def _check_lines(case: Case) -> list[str]:
    """The output value at the chosen pixel and filter, against its dot product."""
    plan = case.plan
    axis = plan.channel_axis
    out_positions = [a for a in range(len(plan.out_shape)) if a != axis]
    out_at: list[Any] = [0] * len(plan.out_shape)
    in_at: list[Any] = [0] * len(plan.in_shape)
    for a, value in zip(out_positions, case.out_index):
        out_at[a] = value
        in_at[a] = value * plan.stride if a in plan.layout.spatial_axes else value
    k = case.filter
    cg = plan.filters.shape[1]
    group = k // (plan.out_channels // plan.groups)
    out_at[axis] = k
    in_at[axis] = f"{group * cg}:{(group + 1) * cg}"
    out_text = ", ".join(map(str, out_at))
    in_text = ", ".join(map(str, in_at))
    bias = f" + b[{k}]" if case.weights.bias is not None else ""
    rounded = []
    if case.saturate_to is not None:
        info = np.iinfo(case.saturate_to)
        rounded = [f"by_hand = float(np.clip(np.rint(by_hand), {info.min}, {info.max}))"]
    return [
        f"# one value, by hand: output [{out_text}] is input [{in_text}] (its channels) . filter {k}",
        f"by_hand = np.dot(x0[{in_text}].astype(np.float64), w[{k}].astype(np.float64)){bias}",
        *rounded,
        f'print("y[{out_text}] =", y[{out_text}], " x[{in_text}] . w[{k}] =", by_hand)',
        f"assert np.isclose(float(y[{out_text}]), by_hand, rtol=1e-5, atol=1e-6 * (1 + abs(by_hand)))",
    ]


def numpy_snippet(case: Case) -> str:
    plan = case.plan
    channel = plan.channel_axis
    c, k, g = plan.in_channels, plan.out_channels, plan.groups
    lines = _header(case, "numpy") + _stride_lines(plan, "x")
    if channel != len(plan.in_shape) - 1:
        lines.append(f"x = np.moveaxis(x, {channel}, -1)  # channels last: each pixel's C values contiguous")
    lines += [
        f"pixels = x.reshape(-1, {c}).astype(np.float64)  # one row per pixel, one column per channel",
    ]
    if g == 1:
        lines.append(
            "y = pixels @ w.T.astype(np.float64)  # (pixels, C) @ (C, K): the channel axis is summed away"
        )
    else:
        cg, kg = c // g, k // g
        lines += [
            f"# groups {g}: filters {kg} at a time see only their group's {cg} channels",
            f"y = np.concatenate([pixels[:, i * {cg}:(i + 1) * {cg}] @ w[i * {kg}:(i + 1) * {kg}].T.astype(np.float64)",
            f"                    for i in range({g})], axis=1)",
        ]
    if case.weights.bias is not None:
        lines.append("y = y + b.astype(np.float64)")
    lines.append(f"y = y.reshape(*x.shape[:-1], {k})")
    if channel != len(plan.in_shape) - 1:
        lines.append(f"y = np.moveaxis(y, -1, {channel})  # back to the input's layout, K where C was")
    lines += _finish_lines(case)
    return "\n".join(lines) + "\n"


def _framework_layout(plan: ConvPlan, channels_first: bool) -> tuple[list[str], list[str], int]:
    """Lines that bring ``x`` to (N, C, spatial...) or (N, spatial..., C), the lines that bring
    ``y`` back, and the number of spatial axes the framework's convolution sees."""
    batch, channel, spatial = (
        list(plan.layout.batch_axes),
        [plan.channel_axis],
        list(plan.layout.spatial_axes),
    )
    order = batch + (channel + spatial if channels_first else spatial + channel)
    to, back = [], []
    if order != list(range(len(order))):
        where = "C, then the spatial axes" if channels_first else "the spatial axes, then C"
        to.append(f"x = np.transpose(x, {tuple(order)})  # {'batch axes, ' if batch else ''}{where}")
    if batch:
        to += [
            f"batch_shape = x.shape[:{len(batch)}]",
            f"x = x.reshape(-1, *x.shape[{len(batch)}:])  # the batch axes as one N",
        ]
    else:
        to.append("x = x[None]  # a batch of one: the convolution takes (N, ...)")
    if not spatial:  # a bare vector of channels: one position
        to.append("x = x[:, :, None]" if channels_first else "x = x[:, None, :]")
        back.append("y = y[:, :, 0]" if channels_first else "y = y[:, 0, :]")
    back.append("y = y.reshape(*batch_shape, *y.shape[1:])" if batch else "y = y[0]")
    inverse = tuple(int(i) for i in np.argsort(order))
    if inverse != tuple(range(len(order))):
        back.append(f"y = np.transpose(y, {inverse})  # back to the input's layout, K where C was")
    return to, back, max(len(spatial), 1)


def _framework_start(
    case: Case, target: str, imports: tuple[str, ...], *, channels_first: bool, flag: str, convs: str
) -> tuple[list[str], list[str], int]:
    """A framework snippet's header and the lines that bring ``x`` to its layout; the lines
    that bring ``y`` back; the number of spatial axes (``convs``: its 1-D to 3-D layers)."""
    to, back, dims = _framework_layout(case.plan, channels_first)
    if dims > 3:
        raise UsageError(f"expected at most 3 spatial axes for --code {flag} ({convs}), found {dims}")
    return _header(case, target, imports) + to, back, dims


def torch_snippet(case: Case) -> str:
    plan = case.plan
    k, g, cg = plan.out_channels, plan.groups, plan.filters.shape[1]
    lines, back, dims = _framework_start(
        case, "PyTorch", ("import torch",), channels_first=True, flag="torch", convs="conv1d-3d"
    )
    ones = ", ".join(["1"] * dims)
    lines += [
        "xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))",
        f"# conv{dims}d's weight is (out channels, in channels / groups, 1x1 kernel): (K, C/G{', 1' * dims})",
        f"wt = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64)).reshape({k}, {cg}, {ones})",
    ]
    bias = "None"
    if case.weights.bias is not None:
        lines.append("bt = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))")
        bias = "bt"
    lines.append(
        f"yt = torch.nn.functional.conv{dims}d(xt, wt, bias={bias}, stride={plan.stride}, groups={g})"
    )
    lines.append("y = yt.numpy()")
    lines += back
    lines += _finish_lines(case)
    return "\n".join(lines) + "\n"


def keras_snippet(case: Case) -> str:
    plan = case.plan
    k, g, cg = plan.out_channels, plan.groups, plan.filters.shape[1]
    imports = (
        "import os",
        "",
        'os.environ.setdefault("KERAS_BACKEND", "torch")  # any backend computes the same',
        "import keras",
    )
    lines, back, dims = _framework_start(
        case, "Keras", imports, channels_first=False, flag="keras", convs="Conv1D-3D"
    )
    layer = {1: "Conv1D", 2: "Conv2D", 3: "Conv3D"}[dims]
    use_bias = case.weights.bias is not None
    lines += [
        f"layer = keras.layers.{layer}({k}, 1, strides={plan.stride}, groups={g}, use_bias={use_bias}, dtype='float64')",
        "layer.build((None, *x.shape[1:]))",
        "# Keras keeps the kernel as (1x1, C/G, K): the transpose of pwconv's (K, C/G) matrix",
        f"kernel = np.asarray(w, dtype=np.float64).T.reshape({', '.join(['1'] * dims)}, {cg}, {k})",
        "layer.set_weights([kernel" + (", np.asarray(b, dtype=np.float64)])" if use_bias else "])"),
        "y = keras.ops.convert_to_numpy(layer(np.asarray(x, dtype=np.float64)))",
    ]
    lines += back
    lines += _finish_lines(case)
    return "\n".join(lines) + "\n"


def snippets(case: Case, targets: list[str]) -> dict[str, str]:
    makers = {"numpy": numpy_snippet, "torch": torch_snippet, "keras": keras_snippet}
    return {t: makers[t](case) for t in targets}


def joined(code: dict[str, str]) -> str:
    """Several snippets as one program (each runs on its own)."""
    parts = [text if len(code) == 1 else f"# ---- {name} ----\n{text}" for name, text in code.items()]
    return "\n\n".join(parts)
