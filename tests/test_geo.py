"""Rasters (rasterio) and NetCDF (h5netcdf): georeferencing and coordinates kept, nodata done right."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
h5netcdf = pytest.importorskip("h5netcdf")
xr = pytest.importorskip("xarray")
skimage_data = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")

from rasterio.transform import from_origin  # noqa: E402

from .conftest import assert_clean_error, cli_in_process, leftovers, modules_imported_by, run_cli  # noqa: E402

NODATA = -9999


def _geotiff(path, *, nodata=NODATA, tile=64):
    """A 4-band int16 raster from a real photo (RGB + their mean), with a corner of nodata."""
    rgb = np.asarray(Image.open(os.path.join(os.path.dirname(skimage_data.__file__), "coffee.png"))).astype(
        np.int16
    )
    bands = np.concatenate([rgb, rgb.mean(axis=2, keepdims=True).astype(np.int16)], axis=2)
    bands = np.moveaxis(bands, -1, 0).copy()
    bands[:, :20, :30] = nodata
    bands[2, 50:55, 60:70] = nodata  # nodata in one band only: the whole pixel is nodata
    profile = {
        "driver": "GTiff", "width": bands.shape[2], "height": bands.shape[1], "count": 4, "dtype": "int16",
        "crs": "EPSG:32633", "transform": from_origin(500000, 4600000, 10, 10), "nodata": nodata,
        "tiled": True, "blockxsize": tile, "blockysize": tile,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(bands)
    return np.moveaxis(bands, 0, -1), profile


def _masked(x):
    return (x == NODATA).any(axis=-1)


def test_ndvi_style_index_keeps_georeferencing_and_nodata(tmp_path):
    x, profile = _geotiff(tmp_path / "in.tif")
    proc = run_cli("apply", "in.tif", "1,0,0,-1", "--dtype", "float32", "-o", "ratio.tif", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "ratio.tif") as out:
        assert (
            out.crs == rasterio.crs.CRS.from_string(profile["crs"]) and out.transform == profile["transform"]
        )
        # A float output marks nodata with NaN: the input's -9999 could be a valid result.
        assert np.isnan(out.nodata) and out.count == 1
        data = out.read(1)
    bad = _masked(x)
    expected = (x[..., 0].astype(np.float64) - x[..., 3]).astype(np.float32)
    np.testing.assert_array_equal(data[~bad], expected[~bad])
    assert np.all(np.isnan(data[bad]))
    assert f"{int(bad.sum())} pixels" in proc.stderr


def test_a_geotiff_run_leaves_boto3_unimported(tmp_path):
    """rasterio imports boto3 where installed (as here, beside moto); pwconv keeps it out of
    its runs, GDAL reading the AWS settings itself, and a later import of boto3 works."""
    pytest.importorskip("boto3")
    x, _ = _geotiff(tmp_path / "in.tif")
    args = ["apply", "in.tif", "1,0,0,-1", "--dtype", "float32", "-o", "ratio.tif"]
    found = modules_imported_by(tmp_path, args, ("rasterio", "boto3", "botocore"), after="import boto3")
    assert found == (0, ["rasterio"])
    with rasterio.open(tmp_path / "ratio.tif") as out:
        data = out.read(1)
    good = ~_masked(x)
    np.testing.assert_array_equal(data[good], (x[..., 0].astype(np.float32) - x[..., 3])[good])


def test_pca_projection_of_a_geotiff_is_nodata_in_every_band(tmp_path):
    x, profile = _geotiff(tmp_path / "in.tif")
    proc = run_cli("fit", "pca", "in.tif", "-k", "3", "-o", "pca.npz", "--nodata", str(NODATA), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("apply", "in.tif", "pca.npz", "-o", "pc.tif", "--out-nodata", "-1e30", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "pca.npz") as bank:
        w, b = bank["weights"], bank["bias"]
    with rasterio.open(tmp_path / "pc.tif") as out:
        data = np.moveaxis(out.read(), 0, -1)
        assert out.count == 3 and out.nodata == -1e30 and out.transform == profile["transform"]
    bad = _masked(x)
    np.testing.assert_allclose(data[~bad], x[~bad] @ w.T + b, rtol=1e-9, atol=1e-6)
    assert np.all(data[bad] == -1e30)


def test_stride_scales_the_transform(tmp_path):
    _, profile = _geotiff(tmp_path / "in.tif")
    assert run_cli("apply", "in.tif", "1,1,1,1", "--stride", "2", "-o", "s.tif", cwd=tmp_path).returncode == 0
    with rasterio.open(tmp_path / "s.tif") as out:
        assert out.transform.a == 20 and out.transform.e == -20 and out.transform.c == profile["transform"].c


def test_creation_options_and_the_default_tiling(tmp_path):
    _geotiff(tmp_path / "in.tif")
    assert run_cli("apply", "in.tif", "1,1,1,1", "-o", "d.tif", cwd=tmp_path).returncode == 0
    assert (
        run_cli("apply", "in.tif", "1,1,1,1", "-o", "l.tif", "--co", "COMPRESS=LZW", cwd=tmp_path).returncode
        == 0
    )
    with rasterio.open(tmp_path / "d.tif") as default, rasterio.open(tmp_path / "l.tif") as lzw:
        assert default.profile["compress"] == "deflate" and default.profile["tiled"]
        assert default.block_shapes[0] == (64, 64)
        assert lzw.profile["compress"] == "lzw"


def _netcdf(path, nodata=-1.0):
    rng = np.random.default_rng(3)
    data = rng.random((2, 5, 30, 40)).astype("f4")
    data[0, 2, 0, :4] = nodata
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"time": 2, "band": 5, "y": 30, "x": 40}
        for dim, values in (
            ("time", [0.0, 1.0]),
            ("band", np.arange(5.0)),
            ("y", np.arange(30.0) * 10),
            ("x", np.arange(40.0) * 10),
        ):
            v = f.create_variable(dim, (dim,), data=np.asarray(values))
            v.attrs["units"] = "m" if dim in "xy" else "1"
        var = f.create_variable("refl", ("time", "band", "y", "x"), dtype="f4", fillvalue=nodata)
        var[...] = data
        f.attrs["history"] = "made by the test"
        f.attrs["Conventions"] = "CF-1.8"
    return data


def test_netcdf_variable_to_k_bands_keeps_coordinates_and_extends_history(tmp_path):
    data = _netcdf(tmp_path / "in.nc")
    w = np.random.default_rng(4).standard_normal((3, 5))
    np.save(tmp_path / "w.npy", w)
    proc = run_cli("apply", "in.nc:refl", "w.npy", "--channel-dim", "band", "-o", "out.nc", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with xr.open_dataset(tmp_path / "in.nc") as before, xr.open_dataset(tmp_path / "out.nc") as after:
        assert after["refl"].dims == ("time", "band", "y", "x") and after.sizes["band"] == 3
        for dim in ("time", "y", "x"):
            np.testing.assert_array_equal(after[dim].values, before[dim].values)
        assert after.attrs["history"].startswith("made by the test\n") and "pwconv" in after.attrs["history"]
        assert after.attrs["Conventions"] == "CF-1.8"
        out = after["refl"].values  # the fill value reads back as NaN through xarray
    bad = (data == -1).any(axis=1)
    expected = np.einsum("tcyx,kc->tkyx", data.astype(np.float64), w)
    good = np.broadcast_to(~bad[:, None], expected.shape)
    np.testing.assert_allclose(out[good], expected[good], rtol=1e-5, atol=1e-5)
    assert np.all(np.isnan(out[~good]))


def test_nodata_for_npy_with_nan_and_an_explicit_output_value(tmp_path):
    x = np.random.default_rng(5).random((6, 7, 3))
    x[1, 2, 0] = np.nan
    x[3, 3, 2] = 7.0
    np.save(tmp_path / "x.npy", x)
    proc = run_cli(
        "apply",
        "x.npy",
        "1,1,1",
        "--nodata",
        "nan",
        "--out-nodata",
        "-5",
        "-o",
        "y.npy",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    y = np.load(tmp_path / "y.npy")[..., 0]
    assert y[1, 2] == -5 and json.loads(proc.stdout)[0]["output"]["nodata"]["pixels"] == 1
    proc = run_cli("apply", "x.npy", "1,1,1", "--nodata", "7", "-o", "z.npy", cwd=tmp_path)
    z = np.load(tmp_path / "z.npy")[..., 0]
    # A float output's nodata is NaN unless --out-nodata says otherwise.
    assert np.isnan(z[3, 3]) and np.isnan(z[1, 2]) and z[0, 0] == pytest.approx(x[0, 0].sum())


def test_explain_says_a_pixel_is_nodata(tmp_path):
    _geotiff(tmp_path / "in.tif")
    proc = run_cli("explain", "in.tif", "1,0,0,-1", "--at", "0,0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "this pixel is nodata" in proc.stdout.decode()
    proc = run_cli("explain", "in.tif", "1,0,0,-1", "--at", "100,100", "--json", cwd=tmp_path)
    assert json.loads(proc.stdout)[0]["pixel"]["nodata"] is False


def test_a_large_tiled_geotiff_streams_with_bounded_memory(tmp_path):
    """256 MiB here; the README's 2 GiB figure comes from benchmarks/geo.py."""
    rows = cols = 4096
    profile = {"driver": "GTiff", "width": cols, "height": rows, "count": 4, "dtype": "float32", "tiled": True,
               "blockxsize": 512, "blockysize": 512, "crs": "EPSG:4326", "transform": from_origin(0, 10, 0.001, 0.001)}  # fmt: skip
    with rasterio.open(tmp_path / "big.tif", "w", **profile) as ds:
        from rasterio.windows import Window

        tile = np.ones((4, 512, 512), np.float32)
        for r in range(0, rows, 512):
            for c in range(0, cols, 512):
                ds.write(tile, window=Window(c, r, 512, 512))
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'pwconv', 'apply', 'big.tif', '1,1,1,1', '-o', 'y.tif',"
        " '--max-memory', '64MiB', '--co', 'COMPRESS=NONE'])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) < 250 * 1024, proc.stdout
    with rasterio.open(tmp_path / "y.tif") as out:
        assert out.read(1, window=((rows - 1, rows), (cols - 1, cols)))[0, 0] == 4.0


# --- refused: exit 2, one line, no output ------------------------------------------------------


def _refused(tmp_path, args, output, *fragments):
    proc = run_cli(*args, cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert not (tmp_path / output).exists() and leftovers(tmp_path) == []


def test_weights_for_another_band_count(tmp_path):
    _geotiff(tmp_path / "in.tif")
    _refused(tmp_path, ["apply", "in.tif", "1,1,1", "-o", "o.tif"], "o.tif", "3", "4")


def test_a_nodata_value_the_output_cannot_hold(tmp_path):
    _geotiff(tmp_path / "in.tif")
    _refused(
        tmp_path,
        ["apply", "in.tif", "1,0,0,0", "--dtype", "uint8", "-o", "o.tif"],
        "o.tif",
        "uint8",
        "-9999",
        "--out-nodata",
    )


def test_classic_netcdf3_is_refused_with_the_conversion(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    with scipy_io.netcdf_file(tmp_path / "old.nc", "w") as f:
        f.createDimension("band", 3)
        f.createVariable("v", "f4", ("band",))[:] = [1, 2, 3]
    _refused(tmp_path, ["apply", "old.nc:v", "1", "-o", "o.npy"], "o.npy", "NetCDF-3", "nccopy -k nc4")


def test_a_missing_variable_lists_the_variables(tmp_path):
    _netcdf(tmp_path / "in.nc")
    _refused(
        tmp_path,
        ["apply", "in.nc:reflectance", "1,1,1,1,1", "--channel-dim", "band", "-o", "o.nc"],
        "o.nc",
        "refl",
    )


def test_an_unknown_creation_option(tmp_path):
    _geotiff(tmp_path / "in.tif")
    _refused(
        tmp_path,
        ["apply", "in.tif", "1,1,1,1", "-o", "o.tif", "--co", "NOT_AN_OPTION=1"],
        "o.tif",
        "NOT_AN_OPTION",
        "--co",
    )


def test_a_geotiff_without_the_extra_is_refused_not_stripped(tmp_path):
    _geotiff(tmp_path / "in.tif")
    proc = cli_in_process(tmp_path, ["rasterio"], ["apply", "in.tif", "1,1,1,1", "-o", "o.tif"])
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'pwconv[geo]'" in proc.stderr.splitlines()[0]
    assert not (tmp_path / "o.tif").exists()
