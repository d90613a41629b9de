"""Rasters against the rasterio script a user would write, and the cost of nodata masking.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/geo.py [--gib 2] [--repeats 2]

1. A --gib tiled float32 GeoTIFF (4 bands, 512x512 blocks) -> 2 bands: `pwconv apply`
   against a script that reads every band with rasterio, computes with numpy and writes a
   GeoTIFF with the same profile. Each command its own process; wall time and peak RSS.
2. Masking: a 1 GiB float32 .npy (2048x2048x64) -> 16 filters with 10% of the pixels nodata,
   `--nodata -9999` against `--nodata none`, in-process, best of --repeats.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import best_of

MAKE = (
    "import numpy as np, rasterio, sys\n"
    "from rasterio.transform import from_origin\n"
    "from rasterio.windows import Window\n"
    "side = int((float(sys.argv[1]) * 2**30 / 16) ** 0.5) // 512 * 512\n"
    "profile = dict(driver='GTiff', width=side, height=side, count=4, dtype='float32', tiled=True,\n"
    "               blockxsize=512, blockysize=512, crs='EPSG:32633', transform=from_origin(5e5, 4.6e6, 10, 10))\n"
    "tile = np.random.default_rng(0).random((4, 512, 512)).astype('float32')\n"
    "with rasterio.open('big.tif', 'w', **profile) as ds:\n"
    "    for r in range(0, side, 512):\n"
    "        for c in range(0, side, 512):\n"
    "            ds.write(tile, window=Window(c, r, 512, 512))\n"
)
SCRIPT = (
    "import numpy as np, rasterio\n"
    "with rasterio.open('big.tif') as src:\n"
    "    x = src.read(); profile = src.profile\n"
    "w = np.array([[1, 1, 0, 0], [0, 0, 1, -1]], np.float32)\n"
    "y = np.einsum('kc,chw->khw', w, x)\n"
    "profile.update(count=2)\n"
    "with rasterio.open('s.tif', 'w', **profile) as dst:\n"
    "    dst.write(y)\n"
)


def masking(folder: Path, repeats: int) -> None:
    from pwconv.jobs.apply import apply_file
    from pwconv.jobs.options import ApplyOptions

    rng = np.random.default_rng(1)
    x = np.lib.format.open_memmap(folder / "m.npy", mode="w+", dtype=np.float32, shape=(2048, 2048, 64))
    for s in range(0, 2048, 256):
        block = rng.standard_normal((256, 2048, 64), dtype=np.float32)
        block[rng.random((256, 2048)) < 0.1, 5] = -9999
        x[s : s + 256] = block
    x.flush()
    del x
    np.save(folder / "w.npy", rng.standard_normal((16, 64)).astype(np.float32))
    best = {"none": float("inf"), "-9999": float("inf")}
    for _ in range(repeats):
        for nodata in best:
            options = ApplyOptions(nodata=nodata, overwrite=True)
            start = time.perf_counter()
            apply_file(str(folder / "m.npy"), str(folder / "w.npy"), str(folder / "out.npy"), options)
            best[nodata] = min(best[nodata], time.perf_counter() - start)
    print(
        f"masking, 1 GiB npy, 10% nodata: {best['-9999']:.2f} s against {best['none']:.2f} s unmasked "
        f"({best['-9999'] / best['none']:.2f}x, goal <= 1.3x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        subprocess.run([py, "-c", MAKE, str(args.gib)], cwd=folder, check=True)
        size = (folder / "big.tif").stat().st_size / 2**30
        cmds = {
            "rasterio script": [py, "-c", SCRIPT],
            "pwconv apply": [py, "-m", "pwconv", "apply", "big.tif", "1,1,0,0;0,0,1,-1", "-o", "p.tif",
                             "--overwrite", "--co", "COMPRESS=NONE", "--max-memory", "256MiB"],
            "pwconv apply (deflate)": [py, "-m", "pwconv", "apply", "big.tif", "1,1,0,0;0,0,1,-1", "-o", "d.tif",
                                       "--overwrite", "--max-memory", "256MiB"],
        }  # fmt: skip
        best = best_of(cmds, folder, args.repeats)
        sw, sr = best["rasterio script"]
        print(
            f"GeoTIFF {size:.2f} GiB tiled float32, 4 -> 2 bands, best of {args.repeats} (script: uncompressed):"
        )
        for name, (wall, rss) in best.items():
            print(
                f"  {name:<24} {wall:6.2f} s {rss / 2**20:6.0f} MiB   time {wall / sw:.2f}x  RSS {rss / sr:.2f}x"
            )
        masking(folder, args.repeats)


if __name__ == "__main__":
    main()
