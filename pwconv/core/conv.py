"""The vectorised 1x1 convolution.

:func:`plan_conv` checks shapes and dtypes once and returns a frozen :class:`ConvPlan`;
:func:`compute_block` runs the plan on an input block that already has the stride applied.
Streaming engines call the two separately; :func:`pointwise_conv` does both for an in-memory
array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pwconv.core import kernels
from pwconv.core.filters import (
    ChannelMismatch,
    FilterBank,
    normalise_bias,
    normalise_filters,
)
from pwconv.core.layout import Layout, parse_layout
from pwconv.core.words import one_of
from pwconv.errors import ShapeError, UsageError

# Largest integer every float type represents exactly (mantissa bits + 1).
_EXACT_INT_LIMIT: dict[np.dtype, int] = {np.dtype(np.float32): 2**24, np.dtype(np.float64): 2**53}

# Rows per matmul call when the input is channels-last: the block of input rows, the
# filters and the output rows stay in the L2 cache while BLAS packs them.
_TARGET_BLOCK_BYTES = 4 << 20
_MIN_BLOCK_ROWS = 4096

# Block size for in-memory inputs that need a dtype conversion (integers, float16).
_CONVERT_BLOCK_BYTES = 8 << 20

#: Makes an uninitialised array of a shape and dtype (``np.empty``'s signature).
Allocator = Callable[[tuple[int, ...], np.dtype], np.ndarray]


@dataclass(frozen=True)
class ConvPlan:
    """Everything :func:`compute_block` needs, checked once.

    ``filters`` is (K, C // groups) in ``compute_dtype``; ``bias`` is (K,) or None.
    """

    in_shape: tuple[int, ...]
    in_dtype: np.dtype
    layout: Layout
    bank: FilterBank
    filters: np.ndarray
    bias: np.ndarray | None
    groups: int
    stride: int
    out_shape: tuple[int, ...]
    out_dtype: np.dtype
    compute_dtype: np.dtype
    #: A second bank over the same input: the output is this plan's result divided by its
    #: result, channel by channel (or by its one channel), from the same read of each block.
    denominator: ConvPlan | None = None

    @property
    def channel_axis(self) -> int:
        return self.layout.channel_axis

    @property
    def in_channels(self) -> int:
        return self.in_shape[self.channel_axis]

    @property
    def out_channels(self) -> int:
        return int(self.filters.shape[0])

    @property
    def pixels(self) -> int:
        """Output positions (every axis but the channel axis)."""
        return math.prod(self.out_shape) // max(self.out_channels, 1)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two operations."""
        return 2 * self.pixels * self.out_channels * int(self.filters.shape[1])

    def strided_index(self, out_index: tuple[slice, ...] | None = None) -> tuple[slice, ...]:
        """The input region (with steps) that produces ``out_index`` of the output.

        ``out_index`` has one step-1 slice per axis; the channel axis slice is ignored.
        """
        if out_index is None:
            out_index = tuple(slice(0, n) for n in self.out_shape)
        index = []
        for axis, sl in enumerate(out_index):
            if axis == self.channel_axis:
                index.append(slice(None))
            elif axis in self.layout.spatial_axes and self.stride > 1:
                start, stop, _ = sl.indices(self.out_shape[axis])
                s = self.stride
                index.append(slice(start * s, (stop - 1) * s + 1 if stop > start else start * s, s))
            else:
                index.append(sl)
        return tuple(index)


def _compute_dtype(
    x_dtype: np.dtype, filters: np.ndarray, bias: np.ndarray | None, out_dtype: np.dtype
) -> np.dtype:
    """The dtype BLAS runs in. Integers run in a float type when every sum is exact there."""
    if out_dtype.kind == "f" and out_dtype.itemsize < 4:
        return np.dtype(np.float32)
    if out_dtype.kind not in "iu":
        return out_dtype
    if x_dtype.kind not in "biu" or filters.dtype.kind not in "biu":
        return np.dtype(np.int64)
    x_max = 1 if x_dtype.kind == "b" else max(abs(int(np.iinfo(x_dtype).min)), int(np.iinfo(x_dtype).max))
    w_sum = int(np.abs(filters.astype(np.int64)).sum(axis=1).max()) if filters.size else 0
    b_max = int(np.abs(bias.astype(np.int64)).max()) if bias is not None and bias.size else 0
    bound = x_max * w_sum + b_max
    for float_type, limit in _EXACT_INT_LIMIT.items():
        if bound < limit and filters.size and int(np.abs(filters.astype(np.int64)).max()) < limit:
            return float_type
    return np.dtype(np.int64)


def _channel_hint(x_shape: tuple[int, ...], layout: Layout, counts: set[int], groups: int) -> str:
    first = 0 if len(x_shape) <= 3 else 1
    total = {c * groups for c in counts}
    if layout.channel_axis != len(x_shape) - 1 and x_shape[-1] in total:
        return "use [[layout=channels-last]]"
    if layout.channel_axis != first and first < len(x_shape) and x_shape[first] in total:
        return "use [[layout=channels-first]]"
    for axis, n in enumerate(x_shape):
        if axis != layout.channel_axis and n in total:
            return f"use [[layout={axis}]] (axis {axis} has {n})"
    return "check that the filters belong to this input (or use [[weights_layout]])"


@dataclass(frozen=True)
class ConvSettings:
    """How to read the input and the filters, parsed once and passed as one object.

    >>> ConvSettings(layout="CHW").stride
    1
    """

    layout: str | int = "channels-last"
    groups: int = 1
    stride: int = 1
    weights_layout: str = "auto"
    dtype: np.dtype | type | str | None = None


def plan_conv(
    x_shape: tuple[int, ...],
    x_dtype: np.dtype | type,
    filters: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    layout: str | int = "channels-last",
    groups: int = 1,
    stride: int = 1,
    weights_layout: str = "auto",
    dtype: np.dtype | type | str | None = None,
) -> ConvPlan:
    """Check every argument of :func:`pointwise_conv` against an input's shape and dtype.

    >>> plan_conv((2, 2, 2), np.int64, np.array([2, 3]), layout="CHW").out_shape
    (1, 2, 2)
    """
    return plan_for(
        x_shape, x_dtype, filters, bias, ConvSettings(layout, groups, stride, weights_layout, dtype)
    )


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"expected {name} to be a positive integer, found {value!r}")
    return int(value)


def _bank_for(
    w: np.ndarray, x_shape: tuple[int, ...], lay: Layout, groups: int, weights_layout: str
) -> FilterBank:
    """The filters read for the input's channels per group; a mismatch says what would fit."""
    c = x_shape[lay.channel_axis]
    try:
        return normalise_filters(w, c // groups, weights_layout)
    except ChannelMismatch as exc:
        # Said again with what only the input knows: its shape, layout, and a better layout.
        per = f"{c // groups} per group, " if groups > 1 else ""
        raise ShapeError(
            f"channel mismatch: filters of shape {tuple(w.shape)} take "
            f"{one_of(exc.counts)} input channels, found {per}{c} on axis "
            f"{lay.channel_axis} of the input {x_shape} (layout {lay.name}); "
            + _channel_hint(x_shape, lay, exc.counts, groups)
        ) from None


def output_dtype(value: object) -> np.dtype:
    """A requested output dtype, checked: a numpy name of a numeric type.

    >>> output_dtype("float32")
    dtype('float32')
    """
    try:
        found = np.dtype(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"expected a numpy dtype name such as float32, found {value!r}") from None
    if found.kind not in "iufc" or found.shape or found.fields:
        raise UsageError(f"expected a numeric output dtype, found {found}")
    return found


def _output_dtype(x_dtype: np.dtype, bank: FilterBank, dtype: np.dtype | type | str | None) -> np.dtype:
    if dtype is None:
        out_dtype = np.result_type(x_dtype, bank.matrix.dtype)
        return np.dtype(np.int64) if out_dtype.kind in "biu" else out_dtype
    return output_dtype(dtype)


def plan_for(
    x_shape: tuple[int, ...],
    x_dtype: np.dtype | type,
    filters: np.ndarray,
    bias: np.ndarray | None,
    settings: ConvSettings,
) -> ConvPlan:
    """:func:`plan_conv` with the settings as one object (what the jobs pass)."""
    x_shape = tuple(int(n) for n in x_shape)
    x_dtype = np.dtype(x_dtype)
    if x_dtype.hasobject or x_dtype.kind not in "biufc":
        raise ShapeError(
            f"expected a numeric input, found dtype {x_dtype}; convert the data to a numeric type"
        )
    lay = parse_layout(settings.layout, len(x_shape))
    groups, stride = _positive(settings.groups, "groups"), _positive(settings.stride, "stride")
    c = x_shape[lay.channel_axis]
    if c == 0:
        raise ShapeError(
            f"expected at least one input channel, found 0 on axis {lay.channel_axis} of shape {x_shape}"
        )
    if c % groups:
        raise ShapeError(
            f"groups={groups} must divide the {c} input channels; use a divisor of {c} as [[groups]]"
        )
    bank = _bank_for(np.asarray(filters), x_shape, lay, groups, settings.weights_layout)
    k = bank.matrix.shape[0]
    if k % groups:
        raise ShapeError(f"groups={groups} must divide the {k} filters; use a divisor of {k} as [[groups]]")
    b = normalise_bias(bias, k)
    out_dtype = _output_dtype(x_dtype, bank, settings.dtype)
    if b is not None and out_dtype.kind in "iu" and b.dtype.kind in "fc":
        raise ShapeError(
            f"expected an integer bias for integer output {out_dtype}, found {b.dtype}; "
            "use [[dtype=float32]] or an integer bias"
        )
    compute = _compute_dtype(x_dtype, bank.matrix, b, out_dtype)
    out_shape = list(x_shape)
    for axis in lay.spatial_axes:
        out_shape[axis] = -(-x_shape[axis] // stride)
    out_shape[lay.channel_axis] = k
    return ConvPlan(
        in_shape=x_shape,
        in_dtype=x_dtype,
        layout=lay,
        bank=bank,
        filters=np.ascontiguousarray(bank.matrix, dtype=compute),
        bias=None if b is None else b.astype(compute),
        groups=groups,
        stride=stride,
        out_shape=tuple(out_shape),
        out_dtype=out_dtype,
        compute_dtype=compute,
    )


def _as_3d(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    return (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))


def _channels_last(x2: np.ndarray, w: np.ndarray, out2: np.ndarray) -> None:
    """out2 = x2 @ w.T for a (rows, C) input: the C kernel, a matrix-vector product, or GEMM."""
    if kernels.accepts(x2, w, out2):
        kernels.apply_rows(x2, w, out2)
    elif w.shape[0] == 1 and out2.flags.c_contiguous:
        # One filter: a matrix-vector product reads the input once, at memory bandwidth.
        np.matmul(x2, w[0], out=out2.reshape(-1))
    else:
        _matmul_rows(x2, w.T, out2)


def _channels_first(x3: np.ndarray, w: np.ndarray, out3: np.ndarray) -> None:
    """``out3[n] = w @ x3[n]`` for (images, C, pixels) input (in shares of pixels on the
    kernel's threads where BLAS is kept to one thread)."""
    parts = kernels.blas_shares(x3.nbytes)
    if kernels.accepts_planes(x3, w, out3):
        kernels.apply_planes(x3, w, out3)
    elif parts > 1 and x3.shape[2] >= parts:

        def share(start: int, stop: int) -> None:
            np.matmul(w, x3[:, :, start:stop], out=out3[:, :, start:stop])

        kernels.run_shares(share, x3.shape[2], parts)
    elif x3.shape[0] == 1:
        np.matmul(w, x3[0], out=out3[0])
    else:
        np.matmul(w, x3, out=out3)


def _matmul_rows(x2: np.ndarray, wt: np.ndarray, out2: np.ndarray) -> None:
    """out2 = x2 @ wt, in row blocks that keep the working set in cache (in shares on the
    kernel's threads where BLAS is kept to one thread)."""
    parts = kernels.blas_shares(x2.nbytes)
    if parts > 1:

        def share(start: int, stop: int) -> None:
            _matmul_rows_here(x2[start:stop], wt, out2[start:stop])

        kernels.run_shares(share, x2.shape[0], parts)
        return
    _matmul_rows_here(x2, wt, out2)


def _matmul_rows_here(x2: np.ndarray, wt: np.ndarray, out2: np.ndarray) -> None:
    """out2 = x2 @ wt on this thread (and BLAS's), in row blocks."""
    rows = x2.shape[0]
    row_bytes = (x2.shape[1] + out2.shape[1]) * x2.itemsize
    block = max(_MIN_BLOCK_ROWS, _TARGET_BLOCK_BYTES // max(row_bytes, 1))
    if rows <= block * 2:
        np.matmul(x2, wt, out=out2)
        return
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        np.matmul(x2[start:stop], wt, out=out2[start:stop])


def compute_block(
    plan: ConvPlan, xs: np.ndarray, out: np.ndarray | None = None, empty: Allocator | None = None
) -> np.ndarray:
    """Apply ``plan`` to ``xs``, a block of the input with the stride already applied.

    ``xs`` may have any extent on non-channel axes; the result has the same extents and
    ``plan.out_channels`` on the channel axis, in ``plan.out_dtype`` (or written into ``out``).
    ``empty`` allocates the result where no ``out`` is given (a streaming engine's reused
    buffers; ``np.empty`` otherwise).
    """
    axis = plan.channel_axis
    if xs.shape[axis] != plan.in_channels:
        raise ShapeError(f"expected {plan.in_channels} channels on axis {axis}, found shape {xs.shape}")
    out_shape = xs.shape[:axis] + (plan.out_channels,) + xs.shape[axis + 1 :]
    if out is None:
        if plan.groups == 1 and xs.size and _bands_outermost(xs, axis):
            return _compute_bands_first(plan, xs)
        out = (empty or np.empty)(out_shape, np.dtype(plan.out_dtype))
    elif out.shape != out_shape:
        raise ShapeError(f"expected out of shape {out_shape}, found {out.shape}")
    elif not np.can_cast(plan.out_dtype, out.dtype, casting="same_kind"):
        raise ShapeError(
            f"expected out with a dtype that {plan.out_dtype} casts to, found {out.dtype}; "
            f"pass an out array of dtype {plan.out_dtype}"
        )
    if out.size == 0:
        return out
    compute = plan.compute_dtype
    k = plan.out_channels
    if (
        plan.groups == 1
        and axis == xs.ndim - 1
        and xs.dtype == compute
        and out.dtype == compute
        and xs.flags.c_contiguous
        and out.flags.c_contiguous
    ):
        # The common case (channels-last, one group, no conversion), kept short: small
        # tensors spend more time here than in BLAS.
        out2 = out.reshape(-1, k)
        _channels_last(xs.reshape(-1, plan.in_channels), plan.filters, out2)
        if plan.bias is not None:
            out2 += plan.bias
        return out
    x = xs if xs.dtype == compute else xs.astype(compute)
    a, c, b = _as_3d(x.shape, axis)
    x3 = x.reshape(a, c, b)
    direct = out.dtype == compute and out.flags.c_contiguous
    target = out if direct else np.empty(out_shape, dtype=compute)
    y3 = target.reshape(a, k, b)
    g = plan.groups
    cg, kg = c // g, k // g
    for gi in range(g):
        w = plan.filters[gi * kg : (gi + 1) * kg]
        xg = x3[:, gi * cg : (gi + 1) * cg, :]
        yg = y3[:, gi * kg : (gi + 1) * kg, :]
        if b == 1:
            _channels_last(xg[:, :, 0], w, yg[:, :, 0])
        else:
            _channels_first(xg, w, yg)
    if plan.bias is not None:
        y3 += plan.bias.reshape(1, k, 1)
    if not direct:
        np.copyto(out, target, casting="unsafe")
    return out


def _bands_outermost(xs: np.ndarray, axis: int) -> bool:
    """Whether the channels of ``xs`` are its outermost axis in memory though not its first
    axis: a raster's bands read whole and seen channels-last. A C-contiguous block is not
    (asked first: the view costs a small tensor's call several microseconds)."""
    if axis == 0 or xs.ndim < 2 or xs.flags.c_contiguous:
        return False
    return np.moveaxis(xs, axis, 0).flags.c_contiguous


def _compute_bands_first(plan: ConvPlan, xs: np.ndarray) -> np.ndarray:
    """:func:`compute_block` for an input whose bands are outermost in memory, in that order:
    ``filters @ bands`` over (C, pixels), so each band is read once, and the result is given
    back with its output bands outermost too (a view with ``xs``'s axis order), which a
    band-sequential writer takes without a copy. Measured here against the channels-last
    view's GEMM: 2-3x faster from 16 channels up, the same at 4."""
    axis, k = plan.channel_axis, plan.out_channels
    planes = np.moveaxis(xs, axis, 0)
    bands = planes.reshape(planes.shape[0], -1)
    if bands.dtype != plan.compute_dtype:
        bands = bands.astype(plan.compute_dtype)
    result = np.empty((k, bands.shape[1]), dtype=plan.compute_dtype)
    _channels_first(bands[None], plan.filters, result[None])
    if plan.bias is not None:
        result += plan.bias[:, None]
    if plan.out_dtype != plan.compute_dtype:
        cast = np.empty(result.shape, dtype=plan.out_dtype)
        np.copyto(cast, result, casting="unsafe")
        result = cast
    return np.moveaxis(result.reshape((k, *planes.shape[1:])), 0, axis)


def apply_stride(plan: ConvPlan, x: np.ndarray) -> np.ndarray:
    """The strided view of ``x`` that :func:`compute_block` expects."""
    if plan.stride == 1:
        return x
    return x[plan.strided_index()]


# Plans of recent calls. Repeated calls on small tensors would otherwise spend as long
# checking arguments as BLAS spends computing. A plan is reused only while it holds the
# caller's own filters array (no copy was made), so changes to that array stay visible.
_PLAN_CACHE: dict[tuple[object, ...], ConvPlan] = {}
_PLAN_CACHE_SIZE = 16
_PLAN_CACHE_MAX_FILTER_BYTES = 1 << 20


def _cached_plan(
    x: np.ndarray, filters: np.ndarray, bias: np.ndarray | None, settings: ConvSettings
) -> ConvPlan:
    cacheable = (
        type(filters) is np.ndarray
        and bias is None
        and filters.nbytes <= _PLAN_CACHE_MAX_FILTER_BYTES
        and isinstance(settings.layout, (str, int))
        and (settings.dtype is None or isinstance(settings.dtype, str))
    )
    key: tuple[object, ...] = ()
    if cacheable:
        key = (x.shape, x.dtype, id(filters), filters.shape, filters.dtype, settings)
        plan = _PLAN_CACHE.get(key)
        if plan is not None and _holds(plan, filters):
            return plan
    plan = plan_for(x.shape, x.dtype, filters, bias, settings)
    if cacheable and _holds(plan, filters):
        if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
            try:
                _PLAN_CACHE.pop(next(iter(_PLAN_CACHE)), None)
            except (RuntimeError, StopIteration):  # another thread changed it meanwhile
                pass
        _PLAN_CACHE[key] = plan
    return plan


def _holds(plan: ConvPlan, filters: np.ndarray) -> bool:
    """Whether the plan computes with the caller's filters array itself (or a view of it)."""
    return plan.filters is filters or plan.filters.base is filters


def pointwise_conv(
    x: np.ndarray,
    filters: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    layout: str | int = "channels-last",
    groups: int = 1,
    stride: int = 1,
    weights_layout: str = "auto",
    dtype: np.dtype | type | str | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Apply a 1x1 convolution: every pixel's channel vector times each filter.

    ``x`` has any number of axes, one of them channels (``layout``); ``filters`` is (K, C)
    or any shape listed in :mod:`pwconv.core.filters`. The output keeps the channel axis
    where the input had it, with K channels.

    >>> m = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    >>> pointwise_conv(m, np.array([2, 3]), layout="channels-first").tolist()
    [[[17, 22], [27, 32]]]
    """
    x = np.asarray(x)
    plan = _cached_plan(x, filters, bias, ConvSettings(layout, groups, stride, weights_layout, dtype))
    xs = apply_stride(plan, x)
    converts = xs.dtype != plan.compute_dtype or plan.out_dtype != plan.compute_dtype
    if not converts or xs.nbytes <= 2 * _CONVERT_BLOCK_BYTES:
        return compute_block(plan, xs, out)
    # Convert (integers, float16) block by block: the temporaries stay small and in cache.
    from pwconv.core.blocks import plan_blocks

    if out is None:
        out = np.empty(plan.out_shape, dtype=plan.out_dtype)
    elif out.shape != plan.out_shape:
        raise ShapeError(f"expected out of shape {plan.out_shape}, found {out.shape}")
    axis = plan.channel_axis
    per_pixel = plan.in_channels * plan.compute_dtype.itemsize + plan.out_channels * out.itemsize
    for index in plan_blocks(plan.out_shape, axis, per_pixel, _CONVERT_BLOCK_BYTES):
        x_index = index[:axis] + (slice(None),) + index[axis + 1 :]
        compute_block(plan, xs[x_index], out[index])
    return out


def saturate(block: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, int, int]:
    """``block`` rounded to nearest and clipped into the integer ``dtype``, never wrapped.

    Returns the converted block and how many values were clipped low and high (NaN counts as
    low and becomes the smallest value).

    >>> saturate(np.array([-3.0, 1.5, 2.5, 300.0]), np.dtype(np.uint8))
    (array([  0,   2,   2, 255], dtype=uint8), 1, 1)
    """
    info = np.iinfo(dtype)
    values = np.rint(block) if block.dtype.kind == "f" else block
    if values.dtype.kind == "f":
        nan = np.isnan(values)
        if nan.any():
            values = np.where(nan, -np.inf, values)
    low = int(np.count_nonzero(values < info.min))
    high = int(np.count_nonzero(values > info.max))
    if low or high:
        values = np.clip(values, info.min, info.max)
    return values.astype(dtype), low, high


@dataclass(frozen=True)
class Nodata:
    """Pixels to leave out: any input channel equal to ``value`` (or NaN, with ``nan``) makes
    the output pixel ``out_value`` in every output channel.

    A computed value that would be stored as ``out_value`` would read back as nodata: it is
    written as the nearest value that is not (GDAL's ``replacement_nodata``) and counted.
    ``stored`` is the dtype the output is written in, when it is not the computed one (an
    integer output of a float result: values are compared as they will be rounded).
    """

    value: float | None  # None: only NaN marks nodata
    nan: bool
    out_value: float
    stored: np.dtype | None = None

    def mask(self, xs: np.ndarray, axis: int) -> np.ndarray:
        """True where a pixel of the block ``xs`` is nodata (the channel axis reduced away)."""
        bad = np.zeros(xs.shape[:axis] + xs.shape[axis + 1 :], bool)
        if self.value is not None:
            bad |= np.any(xs == self.value, axis=axis)
        if self.nan and xs.dtype.kind in "fc":
            bad |= np.any(np.isnan(xs), axis=axis)
        return bad

    def fill(self, out: np.ndarray, bad: np.ndarray, axis: int) -> int:
        """Set every channel of the nodata pixels of ``out``; returns how many pixels."""
        count = int(np.count_nonzero(bad))
        if count:
            np.moveaxis(out, axis, -1)[bad] = self.out_value
        return count

    def replacement(self, dtype: np.dtype) -> float:
        """The value written instead of a computed ``out_value``: the next one up (down at
        the top of an integer range).

        >>> Nodata(0.0, False, 0.0).replacement(np.dtype(np.uint8))
        1.0
        """
        if dtype.kind in "iu":
            top = np.iinfo(dtype).max
            return self.out_value + 1 if self.out_value < top else self.out_value - 1
        return float(np.nextafter(dtype.type(self.out_value), dtype.type(np.inf)))

    def replace_collisions(self, out: np.ndarray, bad: np.ndarray, axis: int) -> int:
        """Replace computed values of valid pixels (not ``bad``) that would be stored as
        ``out_value``; returns how many values."""
        if math.isnan(self.out_value) or out.dtype.kind == "c":
            return 0
        stored = self.stored or out.dtype
        seen = np.rint(out) if stored.kind in "iu" and out.dtype.kind == "f" else out
        hits = (seen == self.out_value) & ~np.expand_dims(bad, axis)
        count = int(np.count_nonzero(hits))
        if count:
            out[hits] = self.replacement(stored)
        return count


@dataclass
class Masked:
    """How many pixels of a block were nodata, and how many computed values were replaced
    because they equalled the output's nodata."""

    pixels: int = 0
    replaced: int = 0
    zero_denominators: int = 0  # output values whose denominator was 0, written as nodata


def compute_masked(
    plan: ConvPlan,
    xs: np.ndarray,
    nodata: Nodata | None,
    out: np.ndarray | None = None,
    empty: Allocator | None = None,
) -> tuple[np.ndarray, Masked]:
    """:func:`compute_block` with nodata pixels filled with the output's nodata, and computed
    values equal to it replaced; (result, counts)."""
    result = compute_block(plan, xs, out, empty)
    zero = None
    if plan.denominator is not None:
        zero = _divide(result, compute_block(plan.denominator, xs))
    if nodata is None:
        if zero is not None:
            np.copyto(result, math.nan, where=zero)
        return result, Masked(zero_denominators=_count(zero))
    axis = plan.channel_axis
    bad = nodata.mask(xs, axis)
    replaced = nodata.replace_collisions(result, bad, axis)
    if zero is not None:  # after the collisions: these values are meant to read as nodata
        np.copyto(result, nodata.out_value, where=zero)
    return result, Masked(nodata.fill(result, bad, axis), replaced, _count(zero))


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` in place where the denominator is not 0; returns where it
    is (broadcast to the numerator's shape: one denominator may serve every channel)."""
    is_zero = denominator == 0
    zero = np.broadcast_to(is_zero, numerator.shape)
    if not zero.any():  # the usual case: a plain division, no masked one
        np.divide(numerator, denominator, out=numerator)
        return zero
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(numerator, np.where(is_zero, 1, denominator), out=numerator)
    return zero


def _count(mask: np.ndarray | None) -> int:
    return 0 if mask is None else int(np.count_nonzero(mask))
