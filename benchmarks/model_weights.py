"""Reading one tensor of a large model file reads only that tensor.

    python benchmarks/model_weights.py [--size-gib 1]

Writes a model of --size-gib (one large tensor plus a 1x1 conv layer) as .safetensors and as
a PyTorch .pt state dict, then runs `pwconv apply x.npy MODEL:conv.weight --bias auto` and the
same run with the layer saved as .npy files. Each run is its own process; peak RSS (wait4) is
the largest over --repeats runs. The goal: a model run stays under 150 MiB above the .npy run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from measure import run


def make_files(folder: Path, gib: float) -> None:
    import torch
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    big = np.zeros((int(gib * (1 << 30)) // (4 * 4096), 4096), np.float32)
    weight = rng.standard_normal((16, 64, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    np.save(folder / "x.npy", rng.standard_normal((256, 256, 64)).astype(np.float32))
    np.save(folder / "w.npy", weight)
    np.save(folder / "b.npy", bias)
    tensors = {"embedding.weight": big, "conv.weight": weight, "conv.bias": bias}
    save_file(tensors, str(folder / "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "model.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--make", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_files(Path(args.make), args.size_gib)
        return
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        # Written by a child process: a forked child starts with its parent's peak RSS.
        subprocess.run(
            [sys.executable, __file__, "--make", tmp, "--size-gib", str(args.size_gib)], check=True
        )
        py = [sys.executable, "-m", "pwconv", "apply", "x.npy"]
        runs = {
            ".npy weights": py + ["w.npy", "--bias", "b.npy", "-o", "y.npy", "--overwrite"],
            ".safetensors": py
            + ["model.safetensors:conv.weight", "--bias", "auto", "-o", "y.npy", "--overwrite"],
            ".pt": py + ["model.pt:conv.weight", "--bias", "auto", "-o", "y.npy", "--overwrite"],
        }
        peaks = {name: 0 for name in runs}
        for _ in range(args.repeats):
            for name, cmd in runs.items():
                peaks[name] = max(peaks[name], run(cmd, folder)[1])
        size = (folder / "model.safetensors").stat().st_size / (1 << 30)
        base = peaks[".npy weights"]
        print(
            f"model files of {size:.2f} GiB; input 256x256x64 float32 -> 16 filters; peak RSS, worst of {args.repeats}"
        )
        for name, peak in peaks.items():
            extra = (
                ""
                if name == ".npy weights"
                else f"  (+{(peak - base) / (1 << 20):.0f} MiB, goal <= +150 MiB)"
            )
            print(f"  {name:<14} {peak / (1 << 20):7.0f} MiB{extra}")


if __name__ == "__main__":
    main()
