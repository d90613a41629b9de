"""Streaming a file larger than --max-memory, against the script a user would write.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/streaming.py [--size-gib 1] [--repeats 2]

Input: float32 (2048, 2048, 64) per GiB -> 16 filters. Each command runs as its own process;
every figure is also given as a ratio to the copy floor (see FLOOR) measured in the same run;
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
from pathlib import Path

import numpy as np
from measure import run

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
# The copy floor: read the input front to back into one reused 8 MiB buffer and write as many
# bytes as the output has from a reused buffer; numpy is not imported. Nothing does the job faster.
FLOOR = (
    "import sys\n"
    "src = sys.stdin.buffer if sys.argv[1] == '-' else open(sys.argv[1], 'rb', buffering=0)\n"
    "dst = sys.stdout.buffer if sys.argv[3] == '-' else open(sys.argv[3], 'wb', buffering=0)\n"
    "buf = bytearray(8 << 20); view = memoryview(buf)\n"
    "while src.readinto(buf):\n"
    "    pass\n"
    "left = int(sys.argv[2])\n"
    "while left:\n"
    "    n = min(left, len(buf)); dst.write(view[:n]); left -= n\n"
    "dst.flush()\n"
)


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
        for cmd in (cases["npy -> npy"][0], cases["npy -> npy"][1], cases["h5 -> h5"][1]):
            run(cmd, folder)  # warm the page cache, and make the outputs whose sizes the floors copy
        out_bytes = {
            name: (folder / out).stat().st_size for name, out in (("npy", "pw.npy"), ("h5", "pw.h5"))
        }
        floors = {
            "npy -> npy": [py, "-c", FLOOR, "in.npy", str(out_bytes["npy"]), "floor.out"],
            "h5 -> h5": [py, "-c", FLOOR, "in.h5", str(out_bytes["h5"]), "floor.out"],
            "stdin -> stdout": f'cat in.npy | {py} -c "$FLOOR" - {out_bytes["npy"]} - > floor_pipe.out',
        }
        os.environ["FLOOR"] = FLOOR
        print(
            f"input {args.size_gib:g} GiB float32 ({int(2048 * args.size_gib)}x2048x64) -> 16 filters; "
            f"best of {args.repeats}"
        )
        print(
            f"{'case':16s} {'floor s':>8s} {'script s':>9s} {'pwconv s':>9s} {'/floor':>7s} {'/script':>8s} "
            f"{'floor RSS':>10s} {'script RSS':>11s} {'pwconv RSS':>11s} {'RSS ratio':>9s}"
        )
        for name, (script, ours) in cases.items():
            best = {"floor": (1e9, 0), "script": (1e9, 0), "pwconv": (1e9, 0)}
            for _ in range(args.repeats):
                for label, cmd in (("floor", floors[name]), ("script", script), ("pwconv", ours)):
                    wall, rss = run(cmd, folder)
                    best[label] = (min(best[label][0], wall), max(best[label][1], rss))
            (tf, rf), (ts, rs), (tp, rp) = best["floor"], best["script"], best["pwconv"]
            print(
                f"{name:16s} {tf:8.2f} {ts:9.2f} {tp:9.2f} {tp / tf:6.2f}x {tp / ts:7.2f}x "
                f"{rf / 2**20:8.0f}Mi {rs / 2**20:9.0f}Mi {rp / 2**20:9.0f}Mi {rp / rs:8.2f}x",
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
