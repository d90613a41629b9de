"""Streaming a file larger than --max-memory, against the script a user would write.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/streaming.py [--size-gib 1] [--repeats 2]

Input: float32 (2048, 2048, 64) per GiB -> 16 filters. Each command runs as its own process;
wall time and peak RSS (wait4) are taken per run, best of --repeats, runs interleaved.
The scripts are what a user would write: np.save(out, np.load(inp) @ np.load(w).T), its
h5py equivalent, and for a pipe the same reading stdin into memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCRIPT_NPY = "import numpy as np, sys; np.save(sys.argv[3], np.load(sys.argv[1]) @ np.load(sys.argv[2]).T)"
SCRIPT_H5 = (
    "import h5py, numpy as np, sys\n"
    "with h5py.File(sys.argv[1]) as f: x = f['x'][...]\n"
    "y = x @ np.load(sys.argv[2]).T\n"
    "with h5py.File(sys.argv[3], 'w') as f: f['data'] = y"
)
SCRIPT_PIPE = (
    "import io, numpy as np, sys; "
    "x = np.load(io.BytesIO(sys.stdin.buffer.read())); "
    "np.save(sys.stdout.buffer, x @ np.load(sys.argv[1]).T)"
)


def run(cmd: list[str] | str, cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes (largest process, pipelines included)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        shell=isinstance(cmd, str),
        executable="/bin/bash" if isinstance(cmd, str) else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err}")
    return wall, usage.ru_maxrss * 1024


def make_data(folder: Path, gib: float) -> None:
    rows = int(2048 * gib)
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(folder / "in.npy", mode="w+", dtype=np.float32, shape=(rows, 2048, 64))
    for start in range(0, rows, 128):
        x[start : start + 128] = rng.standard_normal((min(128, rows - start), 2048, 64), dtype=np.float32)
    x.flush()
    np.save(folder / "w.npy", rng.standard_normal((16, 64), dtype=np.float32))
    import h5py

    with h5py.File(folder / "in.h5", "w") as handle:
        ds = handle.create_dataset("x", shape=x.shape, dtype=x.dtype, chunks=(16, 2048, 64))
        for start in range(0, rows, 128):
            ds[start : start + 128] = x[start : start + 128]
    del x


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", help="work folder (default: a temp folder)")
    parser.add_argument("--make-data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_data:
        make_data(Path(args.make_data), args.size_gib)
        return
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        # In a child process: a forked child's peak RSS counts the parent's pages up to exec.
        subprocess.run(
            [py, __file__, "--make-data", str(folder), "--size-gib", str(args.size_gib)], check=True
        )
        pw = [py, "-m", "pwconv", "apply", "-q", "--overwrite"]
        cases = {
            "npy -> npy": (
                [py, "-c", SCRIPT_NPY, "in.npy", "w.npy", "script.npy"],
                pw[:4] + ["in.npy", "w.npy", "-o", "pw.npy"] + pw[4:],
            ),
            "h5 -> h5": (
                [py, "-c", SCRIPT_H5, "in.h5", "w.npy", "script.h5"],
                pw[:4] + ["in.h5", "w.npy", "-o", "pw.h5"] + pw[4:],
            ),
            "stdin -> stdout": (
                f"cat in.npy | {py} -c '{SCRIPT_PIPE}' w.npy > script_pipe.npy",
                f"cat in.npy | {py} -m pwconv apply -q - w.npy -o - > pw_pipe.npy",
            ),
        }
        for cmd in (cases["npy -> npy"][0],):
            run(cmd, folder)  # warm the page cache
        print(
            f"input {args.size_gib:g} GiB float32 ({int(2048 * args.size_gib)}x2048x64) -> 16 filters; "
            f"best of {args.repeats}"
        )
        print(
            f"{'case':16s} {'script s':>9s} {'pwconv s':>9s} {'time ratio':>10s} "
            f"{'script RSS':>11s} {'pwconv RSS':>11s} {'RSS ratio':>9s}"
        )
        for name, (script, ours) in cases.items():
            best = {"script": (1e9, 0), "pwconv": (1e9, 0)}
            for _ in range(args.repeats):
                for label, cmd in (("script", script), ("pwconv", ours)):
                    wall, rss = run(cmd, folder)
                    best[label] = (min(best[label][0], wall), max(best[label][1], rss))
            (ts, rs), (tp, rp) = best["script"], best["pwconv"]
            print(
                f"{name:16s} {ts:9.2f} {tp:9.2f} {tp / ts:9.2f}x {rs / 2**20:9.0f}Mi {rp / 2**20:9.0f}Mi {rp / rs:8.2f}x",
                flush=True,
            )
        check = (
            "import numpy as np; a = np.load('script.npy', mmap_mode='r'); b = np.load('pw.npy', mmap_mode='r'); "
            "print(f'max |script - pwconv| = {max(float(abs(a[i:i+256] - b[i:i+256]).max()) "
            "for i in range(0, a.shape[0], 256)):.2e}')"
        )
        subprocess.run([py, "-c", check], cwd=folder, check=True)


if __name__ == "__main__":
    main()
