"""The dask engine on a local 2-worker cluster against the numpy streaming engine.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/dask_engine.py [--size-gib 2]

Input: float32 (2048 * size, 2048, 64) -> 16 filters, as uncompressed Zarr (64 MiB chunks)
for dask and as .npy for the numpy engine. Throughput = input bytes / (time of the big run -
time of a tiny run), so start-up is not counted; start-up is reported separately. Peak RSS
of each worker is sampled with psutil during the big run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_data(folder: Path, rows: int, name: str) -> None:
    import zarr

    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=(rows, 2048, 64))
    z = zarr.create_array(
        store=str(folder / f"{name}.zarr"),
        shape=x.shape,
        dtype=np.float32,
        chunks=(min(rows, 128), 2048, 64),
        compressors=None,
        zarr_format=3,
    )
    for start in range(0, rows, 128):
        block = rng.standard_normal((min(128, rows - start), 2048, 64), dtype=np.float32)
        x[start : start + len(block)] = block
        z[start : start + len(block)] = block
    x.flush()


def timed(cmd: list[str], cwd: Path, watch: list[int] | None = None) -> tuple[float, float]:
    """Wall seconds, and the peak RSS (bytes) seen in the watched processes."""
    import psutil

    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        procs = [psutil.Process(pid) for pid in watch or []]
        while not done.is_set():
            for proc in procs:
                try:
                    peak = max(peak, proc.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    return wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from distributed import LocalCluster

    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run(
            [
                py,
                "-c",
                f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"import dask_engine as b; from pathlib import Path; "
                f"b.make_data(Path({tmp!r}), {int(2048 * args.size_gib)}, 'big'); "
                f"b.make_data(Path({tmp!r}), 8, 'tiny')",
            ],
            check=True,
        )
        np.save(folder / "w.npy", np.random.default_rng(1).standard_normal((16, 64), dtype=np.float32))
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster:
            address = cluster.scheduler_address
            pids = [w.process.process.pid for w in cluster.workers.values()]
            base = [py, "-m", "pwconv", "apply", "-q", "--overwrite"]
            results: dict[str, list[float]] = {
                k: [] for k in ("dask big", "dask tiny", "numpy big", "numpy tiny")
            }
            peaks = []
            for _ in range(args.repeats):
                for name in ("big", "tiny"):
                    wall, peak = timed(
                        base
                        + [
                            f"{name}.zarr",
                            "w.npy",
                            "-o",
                            f"{name}_out.zarr",
                            "--engine",
                            "dask",
                            "--scheduler",
                            address,
                        ],
                        folder,
                        pids,
                    )
                    results[f"dask {name}"].append(wall)
                    if name == "big":
                        peaks.append(peak)
                    wall, _ = timed(base + [f"{name}.npy", "w.npy", "-o", f"{name}_out.npy"], folder)
                    results[f"numpy {name}"].append(wall)
        size = args.size_gib * 2**30
        best = {k: min(v) for k, v in results.items()}
        dask_rate = size / (best["dask big"] - best["dask tiny"]) / 1e9
        numpy_rate = size / (best["numpy big"] - best["numpy tiny"]) / 1e9
        print(f"input {args.size_gib:g} GiB float32 -> 16 filters, best of {args.repeats}")
        for key, value in best.items():
            print(f"  {key:11s} {value:7.2f} s")
        print(
            f"  throughput: dask (2 workers, zarr) {dask_rate:.2f} GB/s, numpy engine (npy) {numpy_rate:.2f} GB/s, "
            f"ratio {dask_rate / numpy_rate:.2f}x"
        )
        print(f"  start-up: dask {best['dask tiny']:.2f} s, numpy {best['numpy tiny']:.2f} s")
        print(
            f"  peak RSS per worker: {max(peaks) / 2**20:.0f} MiB (chunk budget 100 MB, input chunks 64 MiB)"
        )


if __name__ == "__main__":
    main()
