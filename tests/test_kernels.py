"""The optional few-filter C kernel against the reference loop and against BLAS."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pwconv import pointwise_conv
from pwconv.core import calibration, kernels
from pwconv.core.reference import reference_conv

needs_kernel = pytest.mark.skipif(
    kernels.instruction_set() == "unavailable", reason="C kernel not built or CPU without AVX2/FMA"
)


@pytest.fixture(autouse=True)
def kernel_where_cpus_disagree(monkeypatch):
    """The kernel takes the cases where CPUs disagree (BLAS does on some CPUs by default), so
    that these tests run it wherever it can run; the choice itself is test_calibration's."""
    monkeypatch.setattr(calibration, "override", True)


@pytest.fixture(params=kernels.instruction_sets() or ["unavailable"])
def path(request):
    """The test runs on each code path of the kernels this CPU has (AVX2+FMA, AVX-512)."""
    if request.param == "unavailable":
        yield request.param
        return
    before = kernels.instruction_set()
    kernels.use_instruction_set(request.param)
    yield request.param
    kernels.use_instruction_set(before)


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
def test_kernel_matches_reference_loop(dtype, c, k, path):
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
@pytest.mark.parametrize("c", [32, 40, 63])
def test_few_filters_over_32_to_63_channels_take_the_avx512_kernel_only(c, path):
    rng = np.random.default_rng(c)
    x = rng.standard_normal((37, c)).astype(np.float32)
    w = rng.standard_normal((3, c)).astype(np.float32)
    assert kernels.accepts(x, w, np.empty((37, 3), np.float32)) == (path == "avx512f")
    scale = np.abs(x).max() * np.abs(w).sum(axis=1).max()
    np.testing.assert_allclose(pointwise_conv(x, w), reference_conv(x, w), rtol=1e-5, atol=1e-5 * scale)


@needs_kernel
def test_kernel_split_over_threads_equals_blas(monkeypatch, path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20000, 256)).astype(np.float32)  # 20 MB: split across threads
    w = rng.standard_normal((8, 256)).astype(np.float32)
    fast = pointwise_conv(x, w)
    monkeypatch.setattr(kernels, "enabled", False)
    blas = pointwise_conv(x, w)
    np.testing.assert_allclose(fast, blas, rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("k", [3, 16])
def test_kernel_split_does_not_change_a_bit(monkeypatch, k, path):
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
def test_kernel_rows_do_not_depend_on_blocking(k, path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    w = rng.standard_normal((k, 64)).astype(np.float32)
    whole = pointwise_conv(x, w)
    # 777 rows: blocks that end inside a tile, so their last rows run one at a time.
    parts = np.concatenate([pointwise_conv(x[i : i + 777], w) for i in range(0, 3000, 777)])
    np.testing.assert_array_equal(whole, parts)


def test_kernel_is_not_used_where_blas_is_faster(path):
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
    mostly_padding = kernels.accepts(x2, np.zeros((10, 256), np.float32), np.zeros((10, 10), np.float32))
    assert mostly_padding == (path == "avx512f")  # 10 of 16 lanes; 10 of 8 + 8 on AVX2
    assert not kernels.accepts(x2, np.zeros((1, 256), np.float32), np.zeros((10, 1), np.float32))  # matvec
    assert not kernels.accepts(x2.astype(np.int32), np.zeros((4, 256), np.int32), np.zeros((10, 4), np.int32))


# Channels-first: (images, channels, pixels, filters). Pixels: under one span of 1024, spans
# with a ragged end, and rows that end inside a vector; channels: under, at and over the
# 8-row blocks; filters: every group size up to 8, and two to four groups.
_PLANES = [
    (1, 3, 64, 2),
    (2, 8, 100, 3),
    (1, 9, 1000, 4),
    (3, 17, 1043, 5),
    (1, 64, 2085, 6),
    (2, 5, 333, 7),
    (1, 256, 1040, 8),
    (2, 33, 777, 9),
    (1, 16, 1500, 13),
    (1, 40, 300, 16),
    (1, 64, 300, 12),
    (1, 12, 200, 24),
    (1, 7, 150, 32),
    (1, 100, 130, 64),
]


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("a", "c", "b", "k"), _PLANES)
def test_planes_kernel_matches_reference_loop(dtype, a, c, b, k, path):
    rng = np.random.default_rng(a * 1000 + c * 10 + k)
    x = rng.standard_normal((a, c, b)).astype(dtype)
    w = rng.standard_normal((k, c)).astype(dtype)
    out = np.full((a, k, b), np.nan, dtype)
    if (k > 8 and c >= 64 and path != "avx512f") or k > 32 and path != "avx512f":
        assert not kernels.accepts_planes(x, w, out)
        return
    assert kernels.accepts_planes(x, w, out)
    result = pointwise_conv(x[..., None], w, layout="NCHW")[..., 0]
    expected = reference_conv(x[..., None], w, layout="NCHW")[..., 0]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    scale = np.abs(x).max() * np.abs(w).sum(axis=1).max()
    np.testing.assert_allclose(result, expected, rtol=tol, atol=tol * scale)
    kernels.apply_planes(x, w, out)
    np.testing.assert_array_equal(out, result)


@needs_kernel
@pytest.mark.parametrize("a", [1, 5])
def test_planes_kernel_split_does_not_change_a_bit(monkeypatch, a, path):
    rng = np.random.default_rng(a)
    x = rng.standard_normal((a, 40, 40000 // a + 13)).astype(np.float32)  # 6 MB: up to 3 shares
    w = rng.standard_normal((8, 40)).astype(np.float32)
    monkeypatch.setattr(kernels, "threads", 1)
    one = np.empty((a, 8, x.shape[2]), np.float32)
    kernels.apply_planes(x, w, one)
    monkeypatch.setattr(kernels, "threads", 3)
    three = np.empty_like(one)
    kernels.apply_planes(x, w, three)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_allclose(one, np.matmul(w, x), rtol=1e-5, atol=1e-4)


@needs_kernel
def test_bands_outermost_raster_block_goes_through_the_planes_kernel(monkeypatch):
    rng = np.random.default_rng(9)
    bands = rng.standard_normal((6, 50, 70)).astype(np.float32)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    calls = []
    real = kernels.apply_planes
    monkeypatch.setattr(kernels, "apply_planes", lambda *args: (calls.append(1), real(*args)))
    result = pointwise_conv(np.moveaxis(bands, 0, -1), w)  # a band-sequential block seen channels-last
    assert calls
    np.testing.assert_allclose(result, reference_conv(np.moveaxis(bands, 0, -1), w), rtol=1e-5, atol=1e-4)


def test_planes_kernel_is_not_used_where_blas_is_faster(path):
    x = np.zeros((2, 16, 256), np.float32)

    def takes(k: int, xs: np.ndarray = x) -> bool:
        w = np.zeros((k, xs.shape[1]), xs.dtype)
        return kernels.accepts_planes(xs, w, np.zeros((xs.shape[0], k, xs.shape[2]), xs.dtype))

    assert not takes(1)  # a matrix-vector product
    assert not takes(65)  # compute-bound
    assert takes(64) == (kernels.instruction_set() == "avx512f")
    assert not takes(33, np.zeros((1, 512, 64), np.float32))
    assert not takes(4, np.zeros((2, 16, 63), np.float32))  # short rows
    assert not takes(4, np.zeros((2, 16, 256), np.int32))
    assert not takes(4, np.zeros((2, 16, 512), np.float32)[:, :, ::2])  # not contiguous


def test_blas_fallback_when_disabled(monkeypatch):
    monkeypatch.setattr(kernels, "enabled", False)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 64)).astype(np.float32)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    np.testing.assert_allclose(pointwise_conv(x, w), reference_conv(x, w), rtol=1e-5, atol=1e-4)


def test_products_split_over_the_kernel_threads_beside_codecs_equal_blas():
    """While BLAS is kept to one thread (codec threads decoding beside it), a channels-last
    product BLAS runs is split over pwconv's threads: the same result, BLAS back after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from pwconv.engines.base import blas_beside_codecs

    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 400, 16)).astype(np.float32)  # 7.3 MiB: a share per thread
    w = rng.standard_normal((4, 16)).astype(np.float32)  # 4 over 16: BLAS, not the kernel
    expected = np.einsum("hwc,kc->hwk", x.astype(np.float64), w.astype(np.float64))
    before = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    with blas_beside_codecs():
        assert kernels.blas_in_one_thread and kernels.blas_shares(x.nbytes) == min(kernels.threads, 3)
        inside = [
            pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"
        ]
        got = pointwise_conv(x, w)
    after = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    assert set(inside) == {1} and after == before and not kernels.blas_in_one_thread
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_channels_first_products_split_beside_codecs_equal_blas():
    pytest.importorskip("threadpoolctl")
    from pwconv.engines.base import blas_beside_codecs

    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 8, 300, 410)).astype(np.float32)  # (N, C, H, W): 7.5 MiB
    w = rng.standard_normal((70, 8)).astype(np.float32)  # more filters than the planes kernel takes
    expected = np.einsum("nchw,kc->nkhw", x.astype(np.float64), w.astype(np.float64))
    with blas_beside_codecs():
        got = pointwise_conv(x, w, layout="channels-first")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_large_integer_input_is_converted_in_blocks():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 255, size=(3000, 3000, 3), dtype=np.uint8)  # 27 MB: above the block size
    w = np.array([[1, 2, 3]])
    out = pointwise_conv(x, w)
    assert out.dtype == np.int64
    expected = x.astype(np.int64) @ w.T
    np.testing.assert_array_equal(out, expected)


needs_scatter = pytest.mark.skipif(
    kernels.scatter_instruction_set() == "unavailable",
    reason="the scatter kernel was not built or has no path here",
)


@needs_scatter
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [1, 3, 7, 8, 9, 16, 17, 64, 100])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000])
def test_scatter_kernel_equals_float64_blas(dtype, c, n):
    rng = np.random.default_rng(c * 1000 + n)
    rows = (rng.normal(size=(n, c)) * 3 + 5).astype(dtype)
    shift = rng.normal(size=c) + 5
    products, sums = np.full((c, c), 0.5), np.full(c, -1.0)  # added to, not replaced
    assert kernels.add_scatter(rows, shift, products, sums)
    shifted = rows.astype(np.float64) - shift
    np.testing.assert_allclose(products, shifted.T @ shifted + 0.5, rtol=1e-12, atol=1e-12 * n)
    np.testing.assert_allclose(sums, shifted.sum(axis=0) - 1.0, rtol=1e-12, atol=1e-12 * n)
    assert np.array_equal(products, products.T)


@needs_scatter
def test_scatter_kernel_split_over_threads_equals_one_thread(monkeypatch):
    rows = np.random.default_rng(1).random((200_000, 24), dtype=np.float32)  # 19 MB: split in parts
    shift = rows[:10].mean(axis=0, dtype=np.float64)
    results = []
    for count in (1, 2, 3):
        monkeypatch.setattr(kernels, "threads", count)
        products, sums = np.zeros((24, 24)), np.zeros(24)
        assert kernels.add_scatter(rows, shift, products, sums)
        results.append((products, sums))
    for products, sums in results[1:]:
        np.testing.assert_allclose(products, results[0][0], rtol=1e-12)
        np.testing.assert_allclose(sums, results[0][1], rtol=1e-9, atol=1e-9)


def test_scatter_kernel_declines_what_it_does_not_take(monkeypatch):
    shift, products, sums = np.zeros(4), np.zeros((4, 4)), np.zeros(4)
    assert not kernels.add_scatter(np.ones((10, 4), np.int16), shift, products, sums)
    assert not kernels.add_scatter(np.ones((4, 10), np.float32).T, shift, products, sums)  # not C-contiguous
    monkeypatch.setattr(kernels, "enabled", False)
    assert not kernels.add_scatter(np.ones((10, 4), np.float32), shift, products, sums)
    assert not products.any() and not sums.any()


def test_fit_gives_the_same_bank_with_and_without_the_scatter_kernel(tmp_path):
    import subprocess
    import sys

    x = np.random.default_rng(2).normal(size=(40, 50, 12)).astype(np.float32) @ np.random.default_rng(
        3
    ).normal(size=(12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    banks = []
    for setting in ("auto", "blas"):
        env = {**os.environ, "PWCONV_KERNEL": setting}
        for method in ("pca", "mnf"):
            out = f"{method}-{setting}.npz"
            proc = subprocess.run(
                [sys.executable, "-m", "pwconv", "fit", method, "x.npy", "-k", "4", "-o", out],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            with np.load(tmp_path / out) as bank:
                banks.append(
                    (
                        method,
                        setting,
                        bank["weights"].astype(np.float64),
                        bank["eigenvalues"] if method == "mnf" else bank["explained_variance"],
                    )
                )
    by = {(m, s): (w, e) for m, s, w, e in banks}
    for method in ("pca", "mnf"):
        np.testing.assert_allclose(by[(method, "auto")][1], by[(method, "blas")][1], rtol=1e-10)
        np.testing.assert_allclose(by[(method, "auto")][0], by[(method, "blas")][0], rtol=1e-5, atol=1e-6)


@needs_scatter
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("step", [(1, 1), (1, -1), (0, 1), (1, 0), (2, 3)])
@pytest.mark.parametrize("c", [1, 5, 16, 33])
def test_difference_kernel_equals_float64_differences(dtype, step, c):
    rng = np.random.default_rng(c + 7 * step[0] + step[1])
    image = (rng.normal(size=(9, 70, c)) * 100).astype(dtype)
    dr, dc = step
    first = image[: 9 - dr, max(0, -dc) : 70 - max(0, dc)].astype(np.float64)
    second = image[dr:, max(0, dc) : 70 + min(0, dc)].astype(np.float64)
    shift = rng.normal(size=c)
    d = (first - second).reshape(-1, c) - shift
    products, sums = np.zeros((c, c)), np.zeros(c)
    assert kernels.add_differences(image, step, shift, products, sums)
    np.testing.assert_allclose(products, d.T @ d, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(sums, d.sum(axis=0), rtol=1e-10, atol=1e-9)


@pytest.mark.skipif("avx512f" not in kernels.instruction_sets(), reason="CPU without AVX-512F")
def test_kernel_setting_avx2_keeps_an_avx512_cpu_on_the_avx2_code():
    import json
    import subprocess
    import sys

    for setting, expected in (("auto", "avx512f"), ("avx2", "avx2+fma"), ("blas", "avx512f")):
        proc = subprocess.run(
            [sys.executable, "-m", "pwconv", "info", "--system", "--json"],
            env={**os.environ, "PWCONV_KERNEL": setting}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (doc,) = json.loads(proc.stdout)
        assert doc["few_filter_kernel"] == expected
        assert doc["kernels_enabled"] == (setting != "blas")
