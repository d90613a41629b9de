"""Which few-filter product wins where: the C kernels against BLAS, one thread each.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/kernels.py [--dtype float32] [--mib 64]

For each (channels C, filters K) the same (rows, C) input of --mib MiB is multiplied by
the (K, C) filters with ``numpy.matmul`` (BLAS) and with ``pwconv.core.kernels.apply_rows``,
both on one thread, best of --repeats, interleaved. The last column says whether
``kernels.accepts`` picks the kernel there; the rules in ``accepts`` come from this table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from pwconv.core import kernels


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
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    blas = [(i["internal_api"], i.get("architecture")) for i in threadpool_info()]
    print(f"{dtype}, {args.mib} MiB inputs, one thread; BLAS {blas}; kernel {kernels.instruction_set()}")
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
                ours = np.empty((rows, k), dtype)
                t_blas = best_ms(np.matmul, (x, w.T, out), args.repeats)
                t_kernel = best_ms(kernels.apply_rows, (x, w, ours), args.repeats)
                np.testing.assert_allclose(ours, out, rtol=1e-4, atol=1e-3 * np.sqrt(c))
                picked = "kernel" if kernels.accepts(x, w, ours) else "BLAS"
                print(
                    f"{c:5d} {k:3d} {t_blas:8.1f} {t_kernel:9.1f} {t_kernel / t_blas:5.2f}x  {picked}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
