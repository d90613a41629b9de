"""Which few-filter product wins where: the C kernels against BLAS, one thread each.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/kernels.py \
        [--layout rows|planes] [--path avx2+fma|avx512f] [--dtype float32] [--mib 64]

``--layout rows`` (channels-last): for each (channels C, filters K) the same (rows, C)
input of --mib MiB is multiplied by the (K, C) filters with ``numpy.matmul`` (BLAS) and
with ``pwconv.core.kernels.apply_rows``. ``--layout planes`` (channels-first): the input is
(4 images, C, pixels), ``filters @ x`` against ``kernels.apply_planes``. Both on one thread,
best of --repeats, interleaved. The last column says whether ``kernels.accepts`` (or
``accepts_planes``) picks the kernel there; their rules come from these tables. The header
prints the CPU, the kernels' code path (``--path`` runs a lower one than the CPU's best)
and the BLAS kernel.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from pwconv.core import calibration, kernels


def best_ms(call: Callable[..., object], args: tuple[object, ...], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(*args)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", default="8,16,32,64,128,256,512,2048")
    parser.add_argument("--filters", default="2,3,4,5,8,12,16,24,32")
    parser.add_argument("--layout", default="rows", choices=["rows", "planes"])
    parser.add_argument(
        "--path", help="the kernels' code path: avx2+fma or avx512f (default: the CPU's best)"
    )
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    if args.path:
        kernels.use_instruction_set(args.path)
    blas = [(i["internal_api"], i.get("architecture")) for i in threadpool_info()]
    print(f"CPU {calibration.cpu_model()}; {dtype}, {args.mib} MiB inputs, {args.layout}, one thread")
    print(f"BLAS {blas}; kernel {kernels.instruction_set()}; picked by {calibration.describe()}")
    if args.layout == "planes":
        planes(args, dtype)
        return
    print(f"{'C':>5s} {'K':>3s} {'BLAS ms':>8s} {'kernel ms':>9s} {'ratio':>6s}  picked")
    rng = np.random.default_rng(0)
    kernels.threads = 1
    limit = 16 if dtype.itemsize == 8 else 32
    with threadpool_limits(1):
        for c in (int(v) for v in args.channels.split(",")):
            rows = (args.mib << 20) // (dtype.itemsize * c)
            x = rng.standard_normal((rows, c)).astype(dtype)
            for k in (int(v) for v in args.filters.split(",")):
                if k > limit:
                    continue
                w = rng.standard_normal((k, c)).astype(dtype)
                out = np.empty((rows, k), dtype)
                compare(args.repeats, (np.matmul, (x, w.T, out)), kernels.apply_rows, kernels.accepts, (x, w))


def compare(
    repeats: int,
    blas: tuple[Callable[..., object], tuple[object, ...]],
    kernel: Callable[..., object],
    accepts: Callable[..., bool],
    operands: tuple[np.ndarray, np.ndarray],
) -> None:
    """Time BLAS's call and the kernel on the same operands (x, w), check they agree, and
    print a row: channels, filters, both times, their ratio and which one pwconv picks."""
    x, w = operands
    out = blas[1][2]
    assert isinstance(out, np.ndarray)
    ours = np.empty_like(out)
    t_blas = best_ms(blas[0], blas[1], repeats)
    t_kernel = best_ms(kernel, (x, w, ours), repeats)
    c, k = w.shape[1], w.shape[0]
    np.testing.assert_allclose(ours, out, rtol=1e-4, atol=1e-3 * np.sqrt(c))
    picked = "kernel" if accepts(x, w, ours) else "BLAS"
    print(f"{c:5d} {k:3d} {t_blas:8.1f} {t_kernel:9.1f} {t_kernel / t_blas:5.2f}x  {picked}", flush=True)


def planes(args: argparse.Namespace, dtype: np.dtype) -> None:
    print(f"{'C':>5s} {'K':>3s} {'BLAS ms':>8s} {'kernel ms':>9s} {'ratio':>6s}  picked")
    rng = np.random.default_rng(0)
    kernels.threads = 1
    with threadpool_limits(1):
        for c in (int(v) for v in args.channels.split(",")):
            pixels = (args.mib << 20) // (dtype.itemsize * c * 4)
            x = rng.standard_normal((4, c, pixels)).astype(dtype)
            for k in (int(v) for v in args.filters.split(",")):
                w = rng.standard_normal((k, c)).astype(dtype)
                out = np.empty((4, k, pixels), dtype)
                compare(
                    args.repeats,
                    (np.matmul, (w, x, out)),
                    kernels.apply_planes,
                    kernels.accepts_planes,
                    (x, w),
                )


if __name__ == "__main__":
    main()
