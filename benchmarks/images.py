"""Images against the script a user would write (numpy + Pillow / tifffile).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/images.py [--tiff-gib 2] [--repeats 2]

Cases, each command its own process (wall time and peak RSS from wait4, best of --repeats):
- an 8-bit RGB photo-sized PNG (6000x4000) to grayscale with the Rec. 601 weights;
- a large uncompressed tiled float32 TIFF (--tiff-gib, 4 channels) mixed to 2 channels,
  written as an uncompressed TIFF, with --max-memory 256MiB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import run

SCRIPT_PNG = (
    "import numpy as np, sys; from PIL import Image; "
    "x = np.asarray(Image.open(sys.argv[1])).astype(np.float64); "
    "Image.fromarray(np.clip(np.rint(x @ [0.299, 0.587, 0.114]), 0, 255).astype(np.uint8)).save(sys.argv[2])"
)
SCRIPT_TIFF = (
    "import numpy as np, sys, tifffile; "
    "x = tifffile.imread(sys.argv[1]); "
    "tifffile.imwrite(sys.argv[2], x @ np.array([[1, 1, 0, 0], [0, 0, 1, -1]], np.float32).T)"
)
MAKE = (
    "import numpy as np, sys, tifffile\n"
    "from PIL import Image\n"
    "rng = np.random.default_rng(0)\n"
    "Image.fromarray(rng.integers(0, 256, (4000, 6000, 3), dtype=np.uint8)).save('photo.png', compress_level=1)\n"
    "rows = int(float(sys.argv[1]) * 2**30 / (8192 * 4 * 4)) // 512 * 512\n"
    "tile = rng.standard_normal((512, 512, 4)).astype(np.float32)\n"
    "with tifffile.TiffWriter('big.tif', bigtiff=True) as tif:\n"
    "    tif.write((tile for _ in range(rows // 512 * 16)), shape=(rows, 8192, 4), dtype=np.float32,\n"
    "              tile=(512, 512), photometric='minisblack', planarconfig='contig')\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiff-gib", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        subprocess.run([py, "-c", MAKE, str(args.tiff_gib)], cwd=folder, check=True)
        size = (folder / "big.tif").stat().st_size / 2**30
        cases = {
            "PNG 6000x4000 RGB -> gray": (
                [py, "-c", SCRIPT_PNG, "photo.png", "s.png"],
                [py, "-m", "pwconv", "apply", "photo.png", "0.299,0.587,0.114", "-o", "p.png", "--overwrite"],
            ),
            f"TIFF {size:.1f} GiB tiled float32 4 -> 2": (
                [py, "-c", SCRIPT_TIFF, "big.tif", "s.tif"],
                [py, "-m", "pwconv", "apply", "big.tif", "1,1,0,0;0,0,1,-1", "-o", "p.tif", "--overwrite",
                 "--max-memory", "256MiB"],
            ),
        }  # fmt: skip
        print(f"best of {args.repeats}; wall time and peak RSS, each command its own process")
        for name, (script, ours) in cases.items():
            best: dict[str, tuple[float, int]] = {}
            for _ in range(args.repeats):
                for label, cmd in (("script", script), ("pwconv", ours)):
                    wall, rss = run(cmd, folder)
                    old = best.get(label, (float("inf"), 0))
                    best[label] = (min(old[0], wall), max(old[1], rss))
                for path in ("s.png", "s.tif"):
                    (folder / path).unlink(missing_ok=True)
            (sw, sr), (pw, pr) = best["script"], best["pwconv"]
            print(
                f"{name:<36} script {sw:6.2f} s {sr / 2**20:7.0f} MiB   pwconv {pw:6.2f} s {pr / 2**20:7.0f} MiB"
                f"   time {pw / sw:4.2f}x  RSS {pr / sr:4.2f}x"
            )


if __name__ == "__main__":
    main()
