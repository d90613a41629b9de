"""`pwconv fit pca` and `fit mnf` on a large file against `pwconv apply` on it, scikit-learn's
PCA().fit and Spectral Python's mnf.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/fit.py [--size-gib 1] [--repeats 2]

Input: float32 (2048, 2048, 64) per GiB, 10 components. Each command is its own process;
wall time and peak RSS (wait4), best of --repeats. The scikit-learn script loads the array
and fits PCA(n_components=10) on its (pixels, 64) view, as a user would; the Spectral
Python script loads it and runs calc_stats, noise_from_diffs and mnf (each only if installed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import best_of

MAKE = (
    "import numpy as np, sys\n"
    "rows = int(2048 * float(sys.argv[1]))\n"
    "rng = np.random.default_rng(0)\n"
    "mix = rng.standard_normal((64, 64)).astype(np.float32)\n"
    "x = np.lib.format.open_memmap('in.npy', mode='w+', dtype=np.float32, shape=(rows, 2048, 64))\n"
    "for s in range(0, rows, 128):\n"
    "    x[s:s + 128] = rng.standard_normal((min(128, rows - s), 2048, 64), dtype=np.float32) @ mix\n"
    "x.flush()\n"
    "np.save('w.npy', rng.standard_normal((16, 64)).astype(np.float32))\n"
)
SKLEARN = (
    "import numpy as np; from sklearn.decomposition import PCA; "
    "x = np.load('in.npy'); PCA(n_components=10).fit(x.reshape(-1, x.shape[-1]))"
)

SPECTRAL = (
    "import numpy as np, spectral; x = np.load('in.npy'); "
    "spectral.mnf(spectral.calc_stats(x), spectral.noise_from_diffs(x)).get_reduction_transform(num=10)"
)


def _installed(name: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        subprocess.run([py, "-c", MAKE, str(args.size_gib)], cwd=folder, check=True)
        commands = {
            "pwconv fit pca -k 10": [py, "-m", "pwconv", "fit", "pca", "in.npy", "-k", "10", "-o", "bank.npz", "--overwrite"],
            "pwconv apply (64 -> 16)": [py, "-m", "pwconv", "apply", "in.npy", "w.npy", "-o", "y.npy", "--overwrite"],
            "pwconv fit mnf -k 10": [py, "-m", "pwconv", "fit", "mnf", "in.npy", "-k", "10", "-o", "mnf.npz", "--overwrite"],
            "scikit-learn PCA().fit": [py, "-c", SKLEARN],
            "Spectral Python mnf": [py, "-c", SPECTRAL],
        }  # fmt: skip
        for name, module in (("scikit-learn PCA().fit", "sklearn"), ("Spectral Python mnf", "spectral")):
            if not _installed(module):
                del commands[name]
        best = best_of(commands, folder, args.repeats)
        apply_time = best["pwconv apply (64 -> 16)"][0]
        print(f"{args.size_gib:g} GiB float32 (2048x2048x64 per GiB); best of {args.repeats}, peak RSS")
        for name, (wall, rss) in best.items():
            print(
                f"  {name:<26} {wall:6.2f} s  {rss / 2**20:6.0f} MiB   this / apply: {wall / apply_time:4.2f}x"
            )


if __name__ == "__main__":
    main()
