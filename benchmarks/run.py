"""pwconv speed against the numpy script a user would write (and torch, when installed).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py [--repeats 7] [--json FILE]

Every case runs each implementation in the same process, interleaved, ``--repeats`` times;
the table shows best and median milliseconds, the ratio to the raw matmul (best), and
GFLOP/s or GB/s. Memory-bound cases are also compared with the read floor: the time to read
the input once (``x.reshape(-1, C) @ numpy.ones(C)``, a BLAS matrix-vector product).
Not part of the test suite: timings are machine-dependent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pwconv import pointwise_conv
from pwconv.core import calibration, kernels

try:
    import torch
except ImportError:  # torch is optional
    torch = None


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    k: int
    layout: str  # NHWC or NCHW or HWC
    goal: str


CASES = [
    Case("compute-bound, channels-last", (16, 128, 128, 256), 64, "NHWC", "<= 1.05x best reference"),
    Case("compute-bound, channels-first", (16, 256, 128, 128), 64, "NCHW", "<= 1.05x best reference"),
    Case("large C and K", (4, 64, 64, 1024), 1024, "NHWC", ">= 90% of sgemm peak"),
    Case("small tensor", (28, 28, 192), 64, "HWC", "<= 1.2x raw matmul"),
    Case("few filters, channels-last", (8, 128, 128, 256), 8, "NHWC", ">= 75% of read floor speed"),
    Case("few filters, channels-first", (8, 256, 128, 128), 8, "NCHW", ">= 75% of read floor speed"),
    Case("one filter, channels-last", (8, 128, 128, 256), 1, "NHWC", ">= 95% of read floor speed"),
    Case("one filter, channels-first", (8, 256, 128, 128), 1, "NCHW", ">= 95% of read floor speed"),
]


def environment() -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
        "pwconv_kernel": kernels.instruction_set() if kernels.enabled else "disabled",
        "kernel_or_blas": calibration.describe(),
        "torch": getattr(torch, "__version__", "not installed"),
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: pool.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for pool in threadpool_info()
            if pool.get("user_api") == "blas"
        ]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    return info


def sgemm_peak(repeats: int = 3) -> float:
    a = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
    best = min(_time(lambda: a @ a) for _ in range(repeats))
    return 2 * 4096**3 / best / 1e9


def _time(fn: Callable[[], object], calls: int = 1) -> float:
    """Seconds per call, over ``calls`` back-to-back calls (small cases need many)."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


STREAM_DIR: str | None = None


def _streamed(case: Case, x: np.ndarray, w: np.ndarray) -> Callable[[], object]:
    """pwconv apply from an .npy file to an .npy file in 64 MiB blocks (page-cached files)."""
    import tempfile

    from pwconv.jobs.apply import apply_file
    from pwconv.jobs.options import ApplyOptions

    folder = tempfile.mkdtemp(prefix="pwconv-bench-", dir=STREAM_DIR)
    np.save(os.path.join(folder, "x.npy"), x)
    np.save(os.path.join(folder, "w.npy"), w)
    options = ApplyOptions(layout=case.layout, overwrite=True, max_memory="64MiB")
    src, weights, dst = (os.path.join(folder, n) for n in ("x.npy", "w.npy", "y.npy"))
    return lambda: apply_file(src, weights, dst, options)


def implementations(
    case: Case, x: np.ndarray, w: np.ndarray, streamed: bool = False
) -> dict[str, Callable[[], object]]:
    c = w.shape[1]
    impls: dict[str, Callable[[], object]] = {"pwconv": lambda: pointwise_conv(x, w, layout=case.layout)}
    if streamed and x.nbytes > 64 << 20:
        impls["pwconv streamed file"] = _streamed(case, x, w)
    if case.layout == "NCHW":
        n = x.shape[0]
        x3 = x.reshape(n, c, -1)
        impls["raw matmul"] = lambda: np.matmul(w, x3)
        impls["einsum"] = lambda: np.einsum("kc,ncp->nkp", w, x3, optimize=True)
        impls["tensordot"] = lambda: np.tensordot(w, x3, axes=([1], [1]))
    else:
        x2 = x.reshape(-1, c)
        impls["raw matmul"] = lambda: x2 @ w.T
        impls["einsum"] = lambda: np.einsum("pc,kc->pk", x2, w, optimize=True)
        impls["tensordot"] = lambda: np.tensordot(x2, w, axes=([1], [1]))
    if "floor" in case.goal:
        ones = np.ones(c, dtype=x.dtype)
        flat = x.reshape(-1, c)
        impls["read floor"] = lambda: flat @ ones
    if torch is not None and x.ndim == 4:
        weight = torch.from_numpy(w).reshape(w.shape[0], c, 1, 1)
        if case.layout == "NCHW":
            nchw = torch.from_numpy(x)
            cl = nchw.contiguous(memory_format=torch.channels_last)
        else:
            cl = torch.from_numpy(x).permute(0, 3, 1, 2)  # channels_last memory, no copy
            nchw = cl.contiguous()

        def run_torch(t: object) -> Callable[[], object]:
            def go() -> object:
                with torch.no_grad():
                    return torch.nn.functional.conv2d(t, weight)

            return go

        impls["torch channels_last"] = run_torch(cl)
        impls["torch NCHW"] = run_torch(nchw)
    return impls


def run_case(case: Case, repeats: int, peak: float, streamed: bool = False) -> dict[str, object]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(case.shape, dtype=np.float32)
    c = case.shape[1] if case.layout == "NCHW" else case.shape[-1]
    w = rng.standard_normal((case.k, c), dtype=np.float32)
    impls = implementations(case, x, w, streamed)
    for fn in impls.values():  # warm-up: first-touch, thread pools, caches
        fn()
    # Enough calls per sample that one sample takes about 20 ms (timer and noise).
    calls = max(1, int(0.02 / max(_time(impls["raw matmul"]), 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for repeat in range(repeats):
        # Rotate the order every repeat so no implementation always follows the same one.
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            # Let the previous library's worker threads (OpenMP, OpenBLAS) stop spinning,
            # so no implementation is measured while another one's threads hold the cores.
            time.sleep(0.1)
            times[name].append(_time(impls[name], calls))
    flops = 2 * x.size // c * case.k * c
    rows = {}
    for name, samples in times.items():
        best, median = min(samples), statistics.median(samples)
        rows[name] = {
            "best_ms": best * 1e3,
            "median_ms": median * 1e3,
            "gflops": flops / best / 1e9 if name != "read floor" else None,
            "gbps": x.nbytes / best / 1e9,
        }
    raw = rows["raw matmul"]["best_ms"]
    for row in rows.values():
        row["vs_matmul"] = row["best_ms"] / raw
    result: dict[str, object] = {
        "case": case.name,
        "shape": case.shape,
        "k": case.k,
        "layout": case.layout,
        "goal": case.goal,
        "rows": rows,
    }
    pw = rows["pwconv"]["best_ms"]
    if "pwconv streamed file" in rows:
        result["streamed"] = (
            f"streamed file -> file: {rows['pwconv streamed file']['best_ms'] / pw:.2f}x in-memory pwconv, "
            f"{rows['pwconv streamed file']['vs_matmul']:.2f}x raw matmul"
        )
    if "floor" in case.goal:
        ratio = pw / rows["read floor"]["best_ms"]
        share = 0.95 if case.k == 1 else 0.75
        result["measure"] = f"{ratio:.2f}x read floor ({1 / ratio:.0%} of floor speed)"
        result["met"] = 1 / ratio >= share
    elif "peak" in case.goal:
        share = rows["pwconv"]["gflops"] / peak
        result["measure"] = f"{share:.0%} of sgemm peak ({peak:.0f} GFLOP/s)"
        result["met"] = share >= 0.9
    elif "raw matmul" in case.goal:
        result["measure"] = f"{pw / raw:.2f}x raw matmul"
        result["met"] = pw / raw <= 1.2
    else:
        refs = {
            n: r["best_ms"]
            for n, r in rows.items()
            if n in ("raw matmul", "torch channels_last", "torch NCHW")
        }
        best_ref = min(refs, key=refs.get)  # type: ignore[arg-type]
        result["measure"] = f"{pw / refs[best_ref]:.2f}x {best_ref}"
        result["met"] = pw / refs[best_ref] <= 1.05
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument(
        "--streamed", action="store_true", help="also time file -> file runs in 64 MiB blocks"
    )
    args = parser.parse_args()
    env = environment()
    print("environment:", json.dumps(env))
    peak = sgemm_peak()
    print(f"sgemm peak (4096^3, best of 3): {peak:.0f} GFLOP/s\n")
    results = []
    for case in CASES:
        if args.only and args.only not in case.name:
            continue
        result = run_case(case, args.repeats, peak, args.streamed)
        results.append(result)
        shape = "x".join(map(str, case.shape))
        print(
            f"{case.name}: {shape} -> {case.k} ({case.layout})   goal {case.goal}: "
            f"{result['measure']}  {'MET' if result['met'] else 'NOT MET'}"
        )
        print(
            f"  {'implementation':22s} {'best ms':>9s} {'median ms':>10s} {'vs matmul':>10s} {'GFLOP/s':>8s} {'GB/s':>7s}"
        )
        for name, row in result["rows"].items():  # type: ignore[union-attr]
            gf = f"{row['gflops']:8.1f}" if row["gflops"] is not None else f"{'':8s}"
            print(
                f"  {name:22s} {row['best_ms']:9.2f} {row['median_ms']:10.2f} {row['vs_matmul']:9.2f}x {gf} {row['gbps']:7.1f}"
            )
        print()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"environment": env, "sgemm_peak_gflops": peak, "cases": results}, handle, indent=2)


if __name__ == "__main__":
    main()
