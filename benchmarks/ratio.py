"""`apply --divide-by` and `--index` against a plain `apply` with the same number of outputs.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ratio.py [--gib 1] [--repeats 2]

Inputs of --gib: a tiled float32 GeoTIFF with 4 bands described blue, green, red, nir
(512x512 blocks), and a float32 .npy of 16 channels. Each is run three ways with 2 outputs:
a plain apply of the two numerators, the same with --divide-by two denominators, and (the
GeoTIFF) --index ndvi,evi. Each command its own process; wall time best of --repeats, peak
RSS the largest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import best_of

MAKE = (
    "import numpy as np, rasterio, sys\n"
    "from rasterio.transform import from_origin\n"
    "from rasterio.windows import Window\n"
    "gib = float(sys.argv[1])\n"
    "side = int((gib * 2**30 / 16) ** 0.5) // 512 * 512\n"
    "profile = dict(driver='GTiff', width=side, height=side, count=4, dtype='float32', tiled=True,\n"
    "               blockxsize=512, blockysize=512, crs='EPSG:32633', transform=from_origin(5e5, 4.6e6, 10, 10))\n"
    "rng = np.random.default_rng(0)\n"
    "tile = rng.random((4, 512, 512)).astype('float32')\n"
    "with rasterio.open('big.tif', 'w', **profile) as ds:\n"
    "    for r in range(0, side, 512):\n"
    "        for c in range(0, side, 512):\n"
    "            ds.write(tile, window=Window(c, r, 512, 512))\n"
    "    for i, name in enumerate(['blue', 'green', 'red', 'nir'], 1):\n"
    "        ds.set_band_description(i, name)\n"
    "rows = int(gib * 2**30 / (4096 * 16 * 4))\n"
    "x = np.lib.format.open_memmap('big.npy', mode='w+', dtype=np.float32, shape=(rows, 4096, 16))\n"
    "for s in range(0, rows, 256):\n"
    "    x[s:s + 256] = rng.random((min(256, rows - s), 4096, 16), dtype=np.float32)\n"
    "x.flush()\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    py = [sys.executable, "-m", "pwconv", "apply"]
    raster = ["big.tif", "0,0,-1,1;0,0,-2.5,2.5", "--dtype", "float32", "--overwrite", "-q"]
    npy = ["big.npy", "1,-1" + ",0" * 14 + ";0,0,1,-1" + ",0" * 12, "--dtype", "float32", "--overwrite", "-q"]
    raster_den = ["--divide-by", "0,0,1,1;-7.5,0,6,1", "--divide-by-bias", "0,1"]
    npy_den = ["--divide-by", "1,1" + ",0" * 14 + ";0,0,1,1" + ",0" * 12]
    commands = {
        "GeoTIFF plain apply, 2 outputs": [*py, *raster, "-o", "plain.tif"],
        "GeoTIFF --divide-by": [*py, *raster, *raster_den, "-o", "ratio.tif"],
        "GeoTIFF --index ndvi,evi": [*py, "big.tif", "--index", "ndvi,evi", "--dtype", "float32", "--overwrite", "-q", "-o", "index.tif"],
        ".npy plain apply, 2 outputs": [*py, *npy, "-o", "plain.npy"],
        ".npy --divide-by": [*py, *npy, *npy_den, "-o", "ratio.npy"],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, "-c", MAKE, str(args.gib)], cwd=folder, check=True)
        best = best_of(commands, folder, args.repeats)
    print(
        f"{args.gib:g} GiB inputs; best of {args.repeats}, peak RSS; ratio against the plain apply of its input"
    )
    for name, (wall, rss) in best.items():
        base = best[
            "GeoTIFF plain apply, 2 outputs" if name.startswith("GeoTIFF") else ".npy plain apply, 2 outputs"
        ][0]
        print(f"  {name:<32} {wall:6.2f} s  {rss / 2**20:6.0f} MiB  {wall / base:5.2f}x")


if __name__ == "__main__":
    main()
