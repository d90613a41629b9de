"""How the work is split over threads: a sweep over thread counts, small inputs to large.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/threads.py [--threads 1,2,4,8,16]

For each input size (channels-last float32, 64 -> 16 filters through the C kernel, and
256 -> 64 through BLAS) ``pointwise_conv`` runs with the kernel's split and BLAS limited to
N threads (threadpoolctl), N from --threads up to the cores this process may use; best of
--repeats, interleaved. Each figure is given as a speed-up over one thread. The split gives
every thread at least ``kernels._SPLIT_BYTES`` of input, so a small input runs on fewer
threads than the machine has and is never slower than on one.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from pwconv import pointwise_conv
from pwconv.core import kernels

SIZES_MIB = (0.25, 1, 4, 32, 256)
CASES = ((64, 16, "C kernel"), (256, 64, "BLAS"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    counts = [n for n in (int(v) for v in args.threads.split(",")) if n <= cores]
    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()]
    print(f"{cores} cores; BLAS {blas}; kernel {kernels.instruction_set()}; best of {args.repeats}")
    header = " ".join(f"{f'{n} thr':>16s}" for n in counts)
    print(f"{'case':>22s} {'MiB':>6s} {header}")
    rng = np.random.default_rng(0)
    for c, k, path in CASES:
        for mib in SIZES_MIB:
            rows = max(1, int(mib * (1 << 20)) // (4 * c))
            x = rng.standard_normal((rows, c), dtype=np.float32)
            w = rng.standard_normal((k, c), dtype=np.float32)
            pointwise_conv(x, w)  # warm: plan cache, thread pool
            best = {n: 1e9 for n in counts}
            for _ in range(args.repeats):
                for n in counts:
                    kernels.threads = n
                    with threadpool_limits(n):
                        start = time.perf_counter()
                        pointwise_conv(x, w)
                        best[n] = min(best[n], time.perf_counter() - start)
            one = best[counts[0]]
            cells = " ".join(f"{best[n] * 1e3:8.2f} ms {one / best[n]:4.1f}x" for n in counts)
            print(f"{f'{c} -> {k} ({path})':>22s} {mib:6g} {cells}", flush=True)


if __name__ == "__main__":
    main()
