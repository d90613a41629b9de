"""The optional few-filter C kernel against the reference loop and against BLAS."""

from __future__ import annotations

import numpy as np
import pytest

from pwconv import pointwise_conv
from pwconv.core import kernels
from pwconv.core.reference import reference_conv

needs_kernel = pytest.mark.skipif(
    kernels.instruction_set() == "unavailable", reason="C kernel not built or CPU without AVX2/FMA"
)


_SHAPES = [
    (64, 2),
    (65, 3),
    (100, 4),
    (3, 5),
    (8, 7),
    (64, 8),
    (200, 6),
    (128, 16),
    (257, 13),
    (1024, 5),
    (40, 15),
]


@needs_kernel
@pytest.mark.parametrize(
    ("dtype", "c", "k"),
    [(np.float32, c, k) for c, k in _SHAPES]
    + [(np.float64, c, k) for c, k in _SHAPES]
    + [(np.float64, 33, 9), (np.float64, 40, 12)]  # float64 tiles hold 16
    + [(np.float32, 17, 24), (np.float32, 64, 32), (np.float32, 256, 29)],  # float32 tiles hold 32
)
def test_kernel_matches_reference_loop(dtype, c, k):
    rng = np.random.default_rng(c * 100 + k)
    # 21 rows: whole tiles of 8, 6, 4 and 3 rows and rows left over after them.
    x = rng.standard_normal((7, 3, c)).astype(dtype)
    w = rng.standard_normal((k, c)).astype(dtype)
    x2, out2 = x.reshape(-1, c), np.empty((21, k), dtype)
    assert kernels.accepts(x2, w, out2)
    result = pointwise_conv(x, w)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    scale = np.abs(x).max() * np.abs(w).sum(axis=1).max()
    np.testing.assert_allclose(result, reference_conv(x, w), rtol=tol, atol=tol * scale)


@needs_kernel
def test_kernel_split_over_threads_equals_blas(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20000, 256)).astype(np.float32)  # 20 MB: split across threads
    w = rng.standard_normal((8, 256)).astype(np.float32)
    fast = pointwise_conv(x, w)
    monkeypatch.setattr(kernels, "enabled", False)
    blas = pointwise_conv(x, w)
    np.testing.assert_allclose(fast, blas, rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("k", [3, 16])
def test_kernel_split_does_not_change_a_bit(monkeypatch, k):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40001, 64)).astype(np.float32)  # 10 MB: up to 5 shares of 2 MiB
    w = rng.standard_normal((k, 64)).astype(np.float32)
    monkeypatch.setattr(kernels, "threads", 1)
    one = np.empty((40001, k), np.float32)
    kernels.apply_rows(x, w, one)
    monkeypatch.setattr(kernels, "threads", 3)
    three = np.empty((40001, k), np.float32)
    kernels.apply_rows(x, w, three)
    np.testing.assert_array_equal(one, three)


@needs_kernel
@pytest.mark.parametrize("k", [4, 8, 13, 16, 32])
def test_kernel_rows_do_not_depend_on_blocking(k):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    w = rng.standard_normal((k, 64)).astype(np.float32)
    whole = pointwise_conv(x, w)
    # 777 rows: blocks that end inside a tile, so their last rows run one at a time.
    parts = np.concatenate([pointwise_conv(x[i : i + 777], w) for i in range(0, 3000, 777)])
    np.testing.assert_array_equal(whole, parts)


def test_kernel_is_not_used_where_blas_is_faster():
    x2 = np.zeros((10, 16), np.float32)
    assert not kernels.accepts(
        x2, np.zeros((4, 16), np.float32), np.zeros((10, 4), np.float32)
    )  # few channels
    x2 = np.zeros((10, 256), np.float32)
    assert not kernels.accepts(
        x2, np.zeros((64, 256), np.float32), np.zeros((10, 64), np.float32)
    )  # many filters
    assert not kernels.accepts(
        x2.astype(np.float64), np.zeros((24, 256)), np.zeros((10, 24))
    )  # more float64 filters than one tile holds
    assert not kernels.accepts(
        x2, np.zeros((10, 256), np.float32), np.zeros((10, 10), np.float32)
    )  # a last vector of filters mostly padding
    assert not kernels.accepts(x2, np.zeros((1, 256), np.float32), np.zeros((10, 1), np.float32))  # matvec
    assert not kernels.accepts(x2.astype(np.int32), np.zeros((4, 256), np.int32), np.zeros((10, 4), np.int32))


def test_blas_fallback_when_disabled(monkeypatch):
    monkeypatch.setattr(kernels, "enabled", False)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 64)).astype(np.float32)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    np.testing.assert_allclose(pointwise_conv(x, w), reference_conv(x, w), rtol=1e-5, atol=1e-4)


def test_large_integer_input_is_converted_in_blocks():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 255, size=(3000, 3000, 3), dtype=np.uint8)  # 27 MB: above the block size
    w = np.array([[1, 2, 3]])
    out = pointwise_conv(x, w)
    assert out.dtype == np.int64
    expected = x.astype(np.int64) @ w.T
    np.testing.assert_array_equal(out, expected)
