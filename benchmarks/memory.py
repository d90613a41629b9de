"""Peak RSS against --max-memory, for every input format, every output format and the options
that change how data moves: the memory promise of the README's "Reliability" section.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/memory.py [--size-mib 256]

Every run is its own process; its peak RSS comes from wait4. The inputs are float32
(rows, 2048, 16) of --size-mib each, in every format pwconv reads them from; outputs are 4
channels (3 uint8 channels for pictures). Each case runs with --max-memory 32MiB and 128MiB:
"over" is peak RSS minus the limit, the overhead the README states as fixed. "base" is the
same command on a 64x64 input (the interpreter, numpy and the format's libraries, no data),
measured in the same run, so "over - base" is what the data itself costs beyond the limit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from measure import run

PWCONV = [sys.executable, "-m", "pwconv"]
MIX4 = ";".join(",".join("1" if j % 4 == i else "0" for j in range(16)) for i in range(4))
MIX3 = ";".join(",".join("1" if j % 3 == i else "0" for j in range(16)) for i in range(3))


def _inputs(folder: Path, rows: int) -> dict[str, str]:
    """The same float32 data in each input format; returns name -> path."""
    import h5netcdf
    import h5py
    import rasterio
    import tifffile
    import zarr
    from rasterio.transform import from_origin

    shape = (rows, 2048, 16)
    data = np.lib.format.open_memmap(folder / "in.npy", "w+", np.float32, shape)
    for start in range(0, rows, 256):
        data[start : start + 256] = np.random.default_rng(start).random((min(256, rows - start), 2048, 16))
    data.flush()
    with h5py.File(folder / "in.h5", "w") as f:
        ds = f.create_dataset("x", shape, np.float32, chunks=(64, 2048, 16))
        for start in range(0, rows, 256):
            ds[start : start + 256] = data[start : start + 256]
    store = zarr.create_array(str(folder / "in.zarr"), shape=shape, chunks=(64, 2048, 16), dtype="float32")
    for start in range(0, rows, 256):
        store[start : start + 256] = data[start : start + 256]
    tifffile.imwrite(
        folder / "in.tif", data, tile=(256, 256), photometric="minisblack", planarconfig="contig"
    )
    tifffile.imwrite(
        folder / "deflate.tif", data, tile=(256, 256), photometric="minisblack", planarconfig="contig",
        compression="zlib",
    )  # fmt: skip
    profile = {"width": 2048, "height": rows, "count": 16, "dtype": "float32", "crs": "EPSG:32633"}
    for name, driver, extra in (("geo.tif", "GTiff", {"tiled": True}), ("envi.img", "ENVI", {})):
        with rasterio.open(
            folder / name, "w", driver=driver, transform=from_origin(5e5, 4.6e6, 10, 10), **profile, **extra
        ) as ds:
            for start in range(0, rows, 256):
                block = np.moveaxis(np.asarray(data[start : start + 256]), -1, 0)
                ds.write(block, window=((start, start + block.shape[1]), (0, 2048)))
    with h5netcdf.File(folder / "in.nc", "w") as f:
        f.dimensions = {"y": rows, "x": 2048, "band": 16}
        var = f.create_variable("v", ("y", "x", "band"), np.float32, chunks=(64, 2048, 16))
        for start in range(0, rows, 256):
            var[start : start + 256] = data[start : start + 256]
    return INPUTS


INPUTS = {
    "npy": "in.npy", "hdf5": "in.h5", "zarr": "in.zarr", "tiff": "in.tif", "tiff deflate": "deflate.tif",
    "geotiff": "geo.tif", "envi": "envi.img", "netcdf": "in.nc",
}  # fmt: skip


OUTPUTS = {  # name -> (output, mix, extra options)
    "npy": ("o.npy", MIX4, []),
    "hdf5": ("o.h5", MIX4, []),
    "hdf5 gzip": ("o.h5", MIX4, ["--compression", "gzip"]),
    "zarr": ("o.zarr", MIX4, []),
    "zarr zstd": ("o.zarr", MIX4, ["--compression", "zstd"]),
    "tiff": ("o.tif", MIX4, []),
    "tiff deflate": ("o.tif", MIX4, ["--compression", "deflate"]),
    "envi": ("o.img", MIX4, []),
    "netcdf": ("o.nc", MIX4, []),
    "netcdf gzip": ("o.nc", MIX4, ["--compression", "gzip"]),
    "png": ("o.png", MIX3, ["--dtype", "u1"]),
    "jpeg": ("o.jpg", MIX3, ["--dtype", "u1"]),
    "jpeg2000": ("o.jp2", MIX3, ["--dtype", "u1"]),
    "pipe": ("-", MIX4, []),
}
OPTIONS = {  # name -> extra options on npy -> npy
    "--stride 2": ["--stride", "2"],
    "--engine dask": ["--engine", "dask"],
    "--bias": ["--bias", "1,2,3,4"],
}


def _cases(inputs: dict[str, str]) -> list[tuple[str, list[str]]]:
    cases = [(f"read {name}", ["apply", path, MIX4, "-o", "o.npy"]) for name, path in inputs.items()]
    cases += [
        (f"write {name}", ["apply", "in.npy", mix, "-o", out, *extra])
        for name, (out, mix, extra) in OUTPUTS.items()
    ]
    cases += [
        (f"option {name}", ["apply", "in.npy", MIX4, "-o", "o.npy", *extra])
        for name, extra in OPTIONS.items()
    ]
    cases += [("fit pca", ["fit", "pca", "in.npy", "-k", "4", "-o", "bank.npz"])]
    cases += [("geotiff -> geotiff", ["apply", "geo.tif", MIX4, "-o", "o.tif"])]
    return cases


def _clean(folder: Path) -> None:
    import shutil

    for name in os.listdir(folder):
        if name.startswith(("o.", "bank.")):
            path = folder / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--make", nargs=2, metavar=("FOLDER", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:  # in a child: a process's peak RSS is passed on to the processes it starts
        _inputs(Path(args.make[0]), int(args.make[1]))
        return
    import subprocess

    from threadpoolctl import threadpool_info

    print("BLAS:", [(i.get("internal_api"), i.get("architecture")) for i in threadpool_info()])
    rows = args.size_mib * (1 << 20) // (2048 * 16 * 4)
    with tempfile.TemporaryDirectory() as big, tempfile.TemporaryDirectory() as small:
        for folder, count in ((big, rows), (small, 64)):
            subprocess.run([sys.executable, __file__, "--make", folder, str(count)], check=True)
        inputs = INPUTS
        print(f"inputs: float32 ({rows}, 2048, 16), {args.size_mib} MiB each")
        print(f"{'case':24} {'limit':>6} {'peak MiB':>9} {'over':>6} {'base':>6} {'over-base':>9}")
        for name, command in _cases(inputs):
            _clean(Path(small))
            _, base = run([*PWCONV, *command], Path(small))
            for limit in (32, 128):
                _clean(Path(big))
                tail = [] if command[0] == "fit" else ["--overwrite"]
                try:
                    _, peak = run([*PWCONV, *command, "--max-memory", f"{limit}MiB", *tail], Path(big))
                except RuntimeError as exc:
                    said = str(exc).split(" failed: ", 1)[-1].strip().splitlines()[-1]
                    print(f"{name:24} {limit:>6} refused: {said[:110]}")
                    continue
                over = peak / 2**20 - limit
                print(
                    f"{name:24} {limit:>6} {peak / 2**20:>9.0f} {over:>6.0f} {base / 2**20:>6.0f} {over - base / 2**20:>9.0f}"
                )


if __name__ == "__main__":
    main()
