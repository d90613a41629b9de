"""Property tests: the fast path against the per-pixel reference loop, and algebraic laws."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pwconv import pointwise_conv
from pwconv.core.layout import parse_layout
from pwconv.core.reference import reference_conv

# Tolerances per input dtype: relative to the sum of |terms| (the reference sums in float64).
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5, np.float16: 2e-3}
DTYPES = [np.float64, np.float32, np.float16, np.int16, np.uint8, np.int32]


@st.composite
def problems(draw):
    ndim = draw(st.integers(1, 4))
    shape = list(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(0, ndim - 1))
    groups = draw(st.sampled_from([1, 2, 3]))
    cg = draw(st.integers(1, 3))
    shape[axis] = groups * cg
    k = groups * draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    stride = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        x = rng.uniform(-2, 2, size=shape).astype(dtype)
        w = rng.uniform(-1, 1, size=(k, cg)).astype(dtype)
        bias = rng.uniform(-1, 1, size=k) if draw(st.booleans()) else None
    else:
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(dtype)
        w = rng.integers(-5, 5, size=(k, cg), endpoint=True).astype(dtype if info.min < 0 else np.int16)
        bias = rng.integers(-3, 3, size=k) if draw(st.booleans()) else None
    layout = draw(st.sampled_from(["int", "letters"]))
    if layout == "int":
        spec: object = axis
    else:
        letters = "DHWL"[: ndim - 1]
        spec = letters[:axis] + "C" + letters[axis:]
    return x, w, bias, spec, groups, stride


def _check_close(actual, expected, x, w):
    if actual.dtype.kind in "iu":
        np.testing.assert_array_equal(actual, expected)
        return
    tol = TOLERANCE[x.dtype.type]
    scale = float(np.abs(x).max(initial=0)) * float(np.abs(w).sum(axis=1).max(initial=0)) + 1.0
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), rtol=tol, atol=tol * scale
    )


@settings(max_examples=150, deadline=None)
@given(problems())
def test_fast_path_matches_reference_loop(problem):
    x, w, bias, layout, groups, stride = problem
    fast = pointwise_conv(x, w, bias, layout=layout, groups=groups, stride=stride)
    slow = reference_conv(x, w, bias, layout=layout, groups=groups, stride=stride)
    assert fast.shape == slow.shape
    assert fast.dtype == slow.dtype
    _check_close(fast, slow, x, w)


@settings(max_examples=60, deadline=None)
@given(problems(), st.floats(-3, 3), st.floats(-3, 3))
def test_linearity(problem, a, b):
    x, w, _, layout, groups, stride = problem
    x1 = x.astype(np.float64)
    x2 = np.roll(x1, 1)
    w = w.astype(np.float64)
    lhs = pointwise_conv(a * x1 + b * x2, w, layout=layout, groups=groups, stride=stride)
    rhs = a * pointwise_conv(x1, w, layout=layout, groups=groups, stride=stride) + b * pointwise_conv(
        x2, w, layout=layout, groups=groups, stride=stride
    )
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-9 * (1 + np.abs(lhs).max(initial=0)))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 5),
    st.sampled_from([np.float32, np.int32, np.float64]),
)
def test_identity_filters_return_the_input(c, h, w, dtype):
    x = (np.arange(h * w * c).reshape(h, w, c) % 7).astype(dtype)
    out = pointwise_conv(x, np.eye(c, dtype=dtype))
    np.testing.assert_array_equal(out, x)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(0, 2**32 - 1),
)
def test_channels_first_equals_transposed_channels_last(n, h, w, c, k, stride, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    f = rng.standard_normal((k, c)).astype(np.float32)
    last = pointwise_conv(x, f, layout="NHWC", stride=stride)
    first = pointwise_conv(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), f, layout="NCHW", stride=stride)
    np.testing.assert_allclose(first.transpose(0, 2, 3, 1), last, rtol=1e-5, atol=1e-5)


@settings(max_examples=80, deadline=None)
@given(problems())
def test_bands_outermost_in_memory_match_reference_loop(problem):
    """A raster's bands read whole and seen channels-last (the channel axis outermost in
    memory) take their own path; it agrees with the loop and keeps that memory order. An input
    that is also C-contiguous (one band, or every other axis of length 1) is channels-last in
    memory as well, and takes the channels-last path: its output is in C order."""
    x, w, bias, layout, groups, stride = problem
    axis = parse_layout(layout, x.ndim).channel_axis
    x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, axis, 0)), 0, axis)  # same values, bands outermost
    fast = pointwise_conv(x, w, bias, layout=layout, groups=groups, stride=stride)
    slow = reference_conv(x, w, bias, layout=layout, groups=groups, stride=stride)
    assert fast.shape == slow.shape and fast.dtype == slow.dtype
    _check_close(fast, slow, x, w)
    bands_path = axis > 0 and groups == 1 and stride == 1 and not x.flags.c_contiguous
    if bands_path and fast.shape[axis] > 1 and fast.size > fast.shape[axis]:
        assert np.moveaxis(fast, axis, 0).flags.c_contiguous


def test_out_argument_is_written_in_place():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5, 8)).astype(np.float32)
    f = rng.standard_normal((3, 8)).astype(np.float32)
    out = np.empty((6, 5, 3), np.float32)
    result = pointwise_conv(x, f, out=out)
    assert result is out
    np.testing.assert_allclose(out, reference_conv(x, f), rtol=1e-5, atol=1e-5)


def test_float16_accumulates_in_float32():
    # 4096 terms of 1.0 + 2**-11 each: float16 running sums would stall at 2048.
    x = np.ones((1, 4096), np.float16)
    f = np.ones((1, 4096), np.float16)
    out = pointwise_conv(x, f, dtype=np.float32)
    assert out[0, 0] == 4096.0


def test_integer_inputs_are_exact_in_int64():
    x = np.full((2, 3), np.iinfo(np.int32).max, dtype=np.int32)
    f = np.array([[1, 1, 1]], dtype=np.int32)
    out = pointwise_conv(x, f)
    assert out.dtype == np.int64
    assert out[0, 0] == 3 * int(np.iinfo(np.int32).max)


def test_large_integer_weights_fall_back_to_exact_int64():
    x = np.array([[2**40, 3]], dtype=np.int64)
    f = np.array([[2**12 + 1, 1]], dtype=np.int64)
    assert pointwise_conv(x, f)[0, 0] == 2**40 * (2**12 + 1) + 3


def test_repeated_calls_see_changes_to_the_filters():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    w = np.ones((2, 4), np.float32)
    first = pointwise_conv(x, w)
    w[1] = 2.0  # changed in place between calls
    second = pointwise_conv(x, w)
    np.testing.assert_allclose(second[..., 0], first[..., 0])
    np.testing.assert_allclose(second[..., 1], 2 * first[..., 1])
    w16 = np.ones((2, 4), np.float16)  # converted to float32 in the plan: a copy, not kept
    before = pointwise_conv(x, w16)
    w16[0] = 3.0
    np.testing.assert_allclose(pointwise_conv(x, w16)[..., 0], 3 * before[..., 0])
