"""Between formats: what the data means survives the trip (the channel axis, georeferencing,
nodata, sidecar files), each file read back with the format's own library."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from .conftest import assert_clean_error, run_cli

rasterio = pytest.importorskip("rasterio")
tifffile = pytest.importorskip("tifffile")
from rasterio.transform import from_origin  # noqa: E402

CHW = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) / 3
IDENTITY = "1,0,0;0,1,0;0,0,1"
TRANSFORM = from_origin(500000, 4600000, 10, 10)


def _geotiff(path, bands: np.ndarray, nodata: float | None = None) -> None:
    profile = {"driver": "GTiff", "width": bands.shape[2], "height": bands.shape[1], "count": bands.shape[0]}
    with rasterio.open(
        path, "w", dtype=bands.dtype.name, crs="EPSG:32633", transform=TRANSFORM, nodata=nodata, **profile
    ) as ds:
        ds.write(bands)


@pytest.mark.parametrize("output", ["c.tif", "c.png"])
def test_a_channels_first_result_is_stored_with_the_channels_where_the_format_keeps_them(tmp_path, output):
    data = CHW if output.endswith(".tif") else (CHW * 3).astype(np.uint8)
    np.save(tmp_path / "chw.npy", data)
    proc = run_cli("apply", "chw.npy", IDENTITY, "--layout", "CHW", "-o", output, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)[0]["output"]
    assert report["shape"] == [4, 5, 3] and any("channels moved from axis 0" in n for n in report["notes"])
    if output.endswith(".tif"):
        stored = tifffile.imread(tmp_path / output)
    else:
        from PIL import Image

        stored = np.asarray(Image.open(tmp_path / output))
    np.testing.assert_array_equal(stored, np.moveaxis(data, 0, -1))


def test_a_netcdf_band_variable_written_as_tiff_keeps_bands_as_samples(tmp_path):
    h5netcdf = pytest.importorskip("h5netcdf")
    with h5netcdf.File(tmp_path / "cube.nc", "w") as handle:
        handle.dimensions = {"band": 3, "y": 4, "x": 5}
        handle.create_variable("refl", ("band", "y", "x"), data=CHW)
    proc = run_cli("apply", "cube.nc:refl", IDENTITY, "--channel-dim", "band", "-o", "r.tif", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "r.tif"), np.moveaxis(CHW, 0, -1))


def test_an_envi_output_is_published_with_its_header(tmp_path):
    _geotiff(tmp_path / "in.tif", CHW)
    proc = run_cli("apply", "in.tif", "1,0,0;0,1,1", "-o", "out.img", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.tif", "out.hdr", "out.img"]  # nothing hidden left
    with rasterio.open(tmp_path / "out.img") as ds:
        assert (
            ds.driver == "ENVI" and ds.count == 2 and ds.transform == TRANSFORM and ds.crs.to_epsg() == 32633
        )
        np.testing.assert_allclose(ds.read(2), CHW[1] + CHW[2], rtol=1e-6)


def test_overwriting_an_envi_output_replaces_its_header(tmp_path):
    _geotiff(tmp_path / "in.tif", CHW)
    assert run_cli("apply", "in.tif", IDENTITY, "-o", "out.img", cwd=tmp_path).returncode == 0
    proc = run_cli("apply", "in.tif", "1,1,1", "-o", "out.img", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "out.img") as ds:
        assert ds.count == 1
    assert sorted(os.listdir(tmp_path)) == ["in.tif", "out.hdr", "out.img"]


@pytest.mark.parametrize(
    "output, extra, fix",
    [("out.jp2", [], "--dtype int32"), ("o.tif", ["--dtype", "int64"], "--dtype float32")],
)
def test_a_dtype_the_raster_driver_cannot_store_is_exit_2_before_any_work(tmp_path, output, extra, fix):
    _geotiff(tmp_path / "in.tif", CHW)
    proc = run_cli("apply", "in.tif", IDENTITY, "-o", output, *extra, cwd=tmp_path)
    assert_clean_error(proc, 2, "stores", fix)
    assert os.listdir(tmp_path) == ["in.tif"]


def test_integer_band_math_on_a_geotiff_is_stored_in_a_dtype_gis_tools_read(tmp_path):
    _geotiff(tmp_path / "in.tif", (CHW * 3).astype(np.uint16))
    proc = run_cli("apply", "in.tif", "1,0,-1", "-o", "d.tif", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "d.tif") as ds:
        assert ds.dtypes == ("float64",)
        np.testing.assert_array_equal(
            ds.read(1), (CHW[0] * 3).astype(np.uint16) - (CHW[2] * 3).astype(np.uint16).astype(np.float64)
        )


def test_valid_zeros_of_a_float_output_are_not_turned_into_nodata(tmp_path):
    bands = np.ones((2, 6, 7), np.int16)
    bands[1, :3] = 2  # band 0 - band 1 is 0 in the lower half: valid zeros
    bands[:, 0, :2] = 0  # 2 pixels of nodata (the file's nodata is 0)
    _geotiff(tmp_path / "in.tif", bands, nodata=0)
    proc = run_cli("apply", "in.tif", "1,-1", "--dtype", "float32", "-o", "d.tif", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "d.tif") as ds:
        assert np.isnan(ds.nodata)
        data = ds.read(1)
    assert int(np.isnan(data).sum()) == 2 and int((data == 0).sum()) == 3 * 7
    assert json.loads(proc.stdout)[0]["output"]["nodata"]["pixels"] == 2


def test_a_computed_value_equal_to_an_integer_output_nodata_is_replaced_and_counted(tmp_path):
    bands = np.full((2, 4, 5), 3, np.uint8)
    bands[1, 2:] = 3  # 3 - 3 = 0 there: a valid result that would read back as nodata 0
    bands[1, :2] = 1
    bands[:, 0, 0] = 0  # one pixel of nodata
    _geotiff(tmp_path / "in.tif", bands, nodata=0)
    proc = run_cli("apply", "in.tif", "1,-1", "--dtype", "uint8", "-o", "d.tif", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]["output"]["nodata"]
    with rasterio.open(tmp_path / "d.tif") as ds:
        data = ds.read(1)
        assert ds.nodata == 0
    assert int((data == 0).sum()) == 1 and doc["pixels"] == 1  # only the input's nodata pixel
    assert doc["replaced"] == 10 and np.all(data[2:] == 1)  # 0 written as the next value, 1


def _cube(path, nodata=-1.0):
    """A (time, band, y, x) NetCDF variable with a _FillValue and one nodata pixel."""
    h5netcdf = pytest.importorskip("h5netcdf")
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    data[:, 1] = data[:, 0] * 2 + 0.1 * data[:, 1]  # correlated bands: a clear first component
    data[1, 2, 3, 4] = nodata
    with h5netcdf.File(path, "w") as handle:
        handle.dimensions = {"time": 2, "band": 4, "y": 6, "x": 5}
        handle.create_variable("refl", ("time", "band", "y", "x"), data=data, fillvalue=nodata)
    return data


def test_fit_takes_the_channel_dimension_and_the_files_own_nodata(tmp_path):
    from sklearn.decomposition import PCA

    data = _cube(tmp_path / "cube.nc")
    proc = run_cli(
        "fit", "pca", "cube.nc", "--dataset", "refl", "--channel-dim", "band", "-k", "2", "-o", "pca.npz",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]
    assert doc["pixels"]["read"] == 2 * 6 * 5 and doc["pixels"]["nodata"] == 1  # -1 left out by default
    rows = np.moveaxis(data, 1, -1).reshape(-1, 4)
    rows = rows[~(rows == -1.0).any(axis=1)].astype(np.float64)
    reference = PCA(2).fit(rows)
    with np.load(tmp_path / "pca.npz") as bank:
        np.testing.assert_allclose(
            np.abs(bank["weights"]), np.abs(reference.components_), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(bank["explained_variance"], reference.explained_variance_, rtol=1e-4)
    assert "--channel-dim band" in doc["apply"] and "--dataset refl" in doc["apply"]


def test_an_npy_bank_hint_applies_its_bias_and_names_the_program_as_run(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((5, 6, 3)).astype(np.float32))
    proc = run_cli("fit", "pca", "x.npy", "-k", "2", "-o", "bank.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (hint,) = [line for line in proc.stderr.splitlines() if line.startswith("apply")]
    command = hint.split(maxsplit=1)[1]
    assert command.startswith("python -m pwconv apply x.npy bank.npy --bias bank.bias.npy")
    ran = run_cli(*command.split()[3:-1], "y.npy", cwd=tmp_path)  # the hint, run as printed
    assert ran.returncode == 0, ran.stderr
    centred = np.load(tmp_path / "y.npy").reshape(-1, 2).mean(axis=0)
    np.testing.assert_allclose(centred, 0, atol=1e-5)  # the bias was applied: projections are centred


@pytest.mark.parametrize("name", ["missing.npy", "missing.dat2", "missing"])
def test_a_missing_input_says_it_does_not_exist(tmp_path, name):
    proc = run_cli("apply", name, "1,2", "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "found no file at", name)
    assert "rename" not in proc.stderr and ".zarr" not in proc.stderr  # not a list of suffixes


@pytest.mark.parametrize(
    "output, notes",
    [
        ("o.png", ["georeferencing dropped: PNG output has none", "nodata not recorded: PNG"]),
        ("o.npy", ["georeferencing dropped: NPY output has none", "nodata not recorded: NPY"]),
        ("o.nc", []),  # CF grid mapping: kept
        ("o.tif", []),
    ],
)
def test_the_report_says_once_what_the_output_cannot_hold(tmp_path, output, notes):
    bands = np.full((3, 4, 5), 7, np.uint8)
    bands[:, 0, 0] = 0
    _geotiff(tmp_path / "in.tif", bands, nodata=0)
    proc = run_cli("apply", "in.tif", IDENTITY, "--dtype", "uint8", "-o", output, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    said = json.loads(proc.stdout)[0]["output"]["notes"]
    for note in notes:
        assert sum(note in s for s in said) == 1, (note, said)
    assert not any("dropped" in s or "not recorded" in s for s in said) if not notes else True


def _named_geotiff(path, names=("B2", "B3", "B4", "B8"), seed=0):
    bands = np.random.default_rng(seed).standard_normal((4, 9, 8)).astype(np.float32)
    _geotiff(path, bands)
    with rasterio.open(path, "r+") as ds:
        for band, name in enumerate(names, start=1):
            ds.set_band_description(band, name)
    return bands


def test_info_shows_band_descriptions_and_netcdf_coordinates(tmp_path):
    h5netcdf = pytest.importorskip("h5netcdf")
    _named_geotiff(tmp_path / "in.tif")
    with h5netcdf.File(tmp_path / "c.nc", "w") as handle:
        handle.dimensions = {"wavelength": 3, "y": 2}
        handle.create_variable("wavelength", ("wavelength",), data=np.array([450.0, 550.5, 650.0]))
        handle.create_variable("refl", ("wavelength", "y"), data=np.ones((3, 2), np.float32))
    proc = run_cli("info", "in.tif", "c.nc", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tif, nc = json.loads(proc.stdout)
    assert tif["labels"] == {"2": ["B2", "B3", "B4", "B8"]}
    assert nc["labels"] == {"0": ["450", "550.5", "650"]} and nc["dimensions"] == ["wavelength", "y"]
    assert "axis 2   B2, B3, B4, B8" in run_cli("info", "in.tif", cwd=tmp_path).stderr


@pytest.mark.parametrize("bank", ["pca.npz", "pca.h5"])
def test_a_fitted_bank_names_its_components_and_the_channels_it_was_fitted_on(tmp_path, bank):
    _named_geotiff(tmp_path / "in.tif")
    assert run_cli("fit", "pca", "in.tif", "-k", "2", "-o", bank, cwd=tmp_path).returncode == 0
    assert run_cli("apply", "in.tif", bank, "-o", "pc.tif", cwd=tmp_path).returncode == 0
    with rasterio.open(tmp_path / "pc.tif") as ds:
        assert ds.descriptions == ("pc1", "pc2")
    _named_geotiff(tmp_path / "swapped.tif", ("B3", "B2", "B4", "B8"), seed=1)
    proc = run_cli("apply", "swapped.tif", bank, "-o", "out.tif", cwd=tmp_path)
    assert_clean_error(proc, 2, "B2, B3, B4, B8", "B3, B2, B4, B8", "--ignore-channel-names")
    assert not (tmp_path / "out.tif").exists()
    proc = run_cli("apply", "swapped.tif", bank, "-o", "out.tif", "--ignore-channel-names", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_output_channel_names_reach_netcdf_hdf5_and_zarr_and_the_report_names_a_drop(tmp_path):
    import h5py
    import xarray as xr
    import zarr

    _named_geotiff(tmp_path / "in.tif")
    assert run_cli("fit", "pca", "in.tif", "-k", "2", "-o", "pca.npz", cwd=tmp_path).returncode == 0
    for name in ("pc.nc", "pc.h5", "pc.zarr", "pc.npy"):
        proc = run_cli("apply", "in.tif", "pca.npz", "-o", name, "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        notes = json.loads(proc.stdout)[0]["output"]["notes"]
        assert any("channel names dropped: NPY" in n for n in notes) == (name == "pc.npy"), notes
    with xr.open_dataset(tmp_path / "pc.nc", engine="h5netcdf") as ds:
        assert list(ds["band"].values) == ["pc1", "pc2"]  # a raster's bands: CF's y, x, band
    with h5py.File(tmp_path / "pc.h5") as handle:
        assert list(handle["data"].attrs["channel_names"]) == ["pc1", "pc2"]
    assert zarr.open_array(str(tmp_path / "pc.zarr"), mode="r").attrs["channel_names"] == ["pc1", "pc2"]


def test_a_bank_format_without_text_still_applies(tmp_path):
    _named_geotiff(tmp_path / "in.tif")
    assert run_cli("fit", "pca", "in.tif", "-k", "2", "-o", "pca.npy", cwd=tmp_path).returncode == 0
    _named_geotiff(tmp_path / "swapped.tif", ("B3", "B2", "B4", "B8"))
    proc = run_cli("apply", "swapped.tif", "pca.npy", "--bias", "pca.bias.npy", "-o", "out.tif", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # an .npy keeps no names, so there are none to check


def test_a_safetensors_bank_keeps_its_channel_names_in_the_header_metadata(tmp_path):
    _named_geotiff(tmp_path / "in.tif")
    assert run_cli("fit", "pca", "in.tif", "-k", "2", "-o", "pca.safetensors", cwd=tmp_path).returncode == 0
    _named_geotiff(tmp_path / "swapped.tif", ("B3", "B2", "B4", "B8"))
    proc = run_cli("apply", "swapped.tif", "pca.safetensors", "-o", "out.tif", cwd=tmp_path)
    assert_clean_error(proc, 2, "made for (B2, B3, B4, B8), found B3, B2, B4, B8")
    proc = run_cli(
        "apply", "swapped.tif", "pca.safetensors", "-o", "out.tif", "--ignore-channel-names", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr


def test_a_netcdf_band_dimension_is_the_channel_axis_unless_told_otherwise(tmp_path):
    from sklearn.decomposition import PCA

    data = _cube(tmp_path / "cube.nc")
    proc = run_cli("fit", "pca", "cube.nc", "-k", "2", "-o", "pca.npz", "--nodata", "none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reference = PCA(2).fit(np.moveaxis(data, 1, -1).reshape(-1, 4).astype(np.float64))
    with np.load(tmp_path / "pca.npz") as bank:
        np.testing.assert_allclose(bank["explained_variance"], reference.explained_variance_, rtol=1e-4)
    proc = run_cli("apply", "cube.nc", "1,1,1,1", "-o", "s.nc", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["output"]["shape"] == [2, 1, 6, 5]
    assert "channels on 'band' (axis 1)" in run_cli("info", "cube.nc", cwd=tmp_path).stderr
    proc = run_cli("apply", "cube.nc", "1,1,1,1,1", "--layout", "channels-last", "-o", "t.nc", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # told otherwise: x (5 long) is the channel axis


def test_a_geotiff_written_as_netcdf_keeps_its_crs_and_transform_as_cf_grid_mapping(tmp_path):
    _named_geotiff(tmp_path / "in.tif")
    proc = run_cli("apply", "in.tif", "1,0,0,0;0,1,0,0", "-o", "g.nc", "--stride", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open("netcdf:" + str(tmp_path / "g.nc") + ":data") as ds:  # GDAL's own reading
        assert ds.crs.to_epsg() == 32633 and ds.count == 2
        assert ds.transform == TRANSFORM * TRANSFORM.scale(2) and ds.shape == (5, 4)


# --- every pair: each input format written as each output format ------------------------

PIXELS = (np.arange(6 * 5 * 3).reshape(6, 5, 3) * 7 % 250 + 3).astype(np.uint8)  # no zeros
PIXELS[0, 0] = 0  # one pixel of nodata (0) for the inputs that declare nodata


def _write_input(kind: str, folder) -> tuple[str, bool, bool]:
    """(input argument, georeferenced, declares nodata 0) for a file of ``kind`` holding PIXELS."""
    import h5py
    import zarr
    from PIL import Image

    if kind in ("npy", "stdin"):
        np.save(folder / "in.npy", PIXELS)
        return ("in.npy" if kind == "npy" else "-"), False, False
    if kind == "h5":
        with h5py.File(folder / "in.h5", "w") as handle:
            handle["x"] = PIXELS
        return "in.h5", False, False
    if kind == "zarr":
        zarr.create_array(store=str(folder / "in.zarr"), data=PIXELS, compressors=None)
        return "in.zarr", False, False
    if kind == "tiff":
        tifffile.imwrite(folder / "in.tif", PIXELS, photometric="rgb")
        return "in.tif", False, False
    if kind == "png":
        Image.fromarray(PIXELS).save(folder / "in.png")
        return "in.png", False, False
    if kind in ("geotiff", "envi"):
        name = "in.tif" if kind == "geotiff" else "in.img"
        driver = "GTiff" if kind == "geotiff" else "ENVI"
        with rasterio.open(
            folder / name, "w", driver=driver, width=5, height=6, count=3, dtype="uint8",
            crs="EPSG:32633", transform=TRANSFORM, nodata=0,
        ) as ds:  # fmt: skip
            ds.write(np.moveaxis(PIXELS, -1, 0))
        return name, True, True
    h5netcdf = pytest.importorskip("h5netcdf")
    with h5netcdf.File(folder / "in.nc", "w") as handle:
        handle.dimensions = {"y": 6, "x": 5, "band": 3}
        handle.create_variable("v", ("y", "x", "band"), data=PIXELS, fillvalue=np.uint8(0))
    return "in.nc", False, True


def _read_output(name: str, folder, stdout: bytes) -> tuple[np.ndarray, object]:
    """(the output as (H, W, C), its CRS or None), read with the format's own library."""
    import io

    import h5netcdf
    import h5py
    import zarr
    from PIL import Image

    path = folder / name
    if name == "-":
        return np.load(io.BytesIO(stdout)), None
    if name.endswith(".npy"):
        return np.load(path), None
    if name.endswith(".h5"):
        with h5py.File(path) as handle:
            return handle["data"][...], None
    if name.endswith(".zarr"):
        return np.asarray(zarr.open_array(str(path), mode="r")[...]), None
    if name.endswith(".png"):
        return np.asarray(Image.open(path)), None
    if name.endswith(".nc"):
        with h5netcdf.File(path) as handle:
            (var,) = [v for v in handle.variables if v not in handle.dimensions and v != "spatial_ref"]
            data = np.asarray(handle.variables[var][...])
            geo = "spatial_ref" in handle.variables
        crs = rasterio.open(f"netcdf:{path}:{var}").crs if geo else None
        return data, crs
    with rasterio.open(path) as ds:  # .tif and .img: GDAL reads plain TIFFs too
        return np.moveaxis(ds.read(), 0, -1), ds.crs


INPUTS = ["npy", "h5", "zarr", "tiff", "png", "geotiff", "envi", "nc", "stdin"]
OUTPUTS = ["o.npy", "o.h5", "o.zarr", "o.tif", "o.png", "o.img", "o.nc", "-"]
GEO_OUTPUTS = (".tif", ".img", ".nc")  # keep a raster input's georeferencing
NODATA_OUTPUTS = (".h5", ".zarr", ".img", ".nc")  # record which value is nodata (and a GeoTIFF)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("kind", INPUTS)
def test_every_pair_keeps_values_channels_georeferencing_and_says_what_it_drops(tmp_path, kind, output):
    argument, georeferenced, declares_nodata = _write_input(kind, tmp_path)
    stdin = (tmp_path / "in.npy").read_bytes() if argument == "-" else None
    proc = run_cli(
        "apply", argument, "1,0,0;0,1,0;0,0,1", "--dtype", "uint8", "-o", output, *([] if output == "-" else ["--json"]),
        stdin=stdin, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data, crs = _read_output(output, tmp_path, proc.stdout)
    np.testing.assert_array_equal(data, PIXELS)  # values, with the channels on the last axis
    if output == "-":
        return
    notes = json.loads(proc.stdout)[0]["output"]["notes"]
    keeps_geo = georeferenced and output.endswith(GEO_OUTPUTS)
    assert (crs is not None and crs.to_epsg() == 32633) == keeps_geo, (crs, notes)
    assert any("georeferencing dropped" in n for n in notes) == (georeferenced and not keeps_geo), notes
    records_nodata = output.endswith(NODATA_OUTPUTS) or (output == "o.tif" and georeferenced)
    assert any("nodata not recorded" in n for n in notes) == (declares_nodata and not records_nodata), notes


# --- a picture's own metadata: colour profile, resolution, EXIF --------------------------


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "pwconv tests"  # Make
    return exif.tobytes()


@pytest.mark.parametrize("output", ["o.png", "o.jpg", "o.tif"])
def test_a_picture_keeps_its_profile_resolution_and_exif_where_the_output_holds_them(tmp_path, output):
    from PIL import Image

    profile = _srgb_profile()
    Image.fromarray(PIXELS).save(tmp_path / "in.jpg", icc_profile=profile, dpi=(300, 300), exif=_exif())
    proc = run_cli(
        "apply", "in.jpg", "0,0,1;0,1,0;1,0,0", "-o", output, "--stride", "2", "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert not [n for n in json.loads(proc.stdout)[0]["output"]["notes"] if "dropped" in n]
    if output.endswith(".tif"):
        with tifffile.TiffFile(tmp_path / output) as tif:
            page = tif.pages[0]
            assert bytes(page.tags[34675].value) == profile
            xn, xd = page.tags[282].value
            assert xn / xd == pytest.approx(150)
        return
    with Image.open(tmp_path / output) as image:
        assert image.info["icc_profile"] == profile
        assert tuple(round(v) for v in image.info["dpi"]) == (150, 150)  # halved with the stride
        assert image.getexif()[0x010F] == "pwconv tests"


def test_a_profile_is_dropped_when_the_channels_change_and_the_report_says_so(tmp_path):
    from PIL import Image

    Image.fromarray(PIXELS).save(tmp_path / "in.png", icc_profile=_srgb_profile(), dpi=(300, 300))
    proc = run_cli("apply", "in.png", "0.299,0.587,0.114", "-o", "grey.png", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = json.loads(proc.stdout)[0]["output"]["notes"]
    assert any("colour profile dropped: it describes 3 channels, the output has 1" in n for n in notes), notes
    with Image.open(tmp_path / "grey.png") as image:
        assert "icc_profile" not in image.info and tuple(round(v) for v in image.info["dpi"]) == (300, 300)
    proc = run_cli("apply", "in.png", "0.299,0.587,0.114", "-o", "grey.npy", "--json", cwd=tmp_path)
    notes = json.loads(proc.stdout)[0]["output"]["notes"]
    assert any("colour profile, resolution dropped" in n for n in notes), notes


def test_info_takes_the_channel_dimension_as_apply_does(tmp_path):
    _cube(tmp_path / "cube.nc")
    proc = run_cli("info", "cube.nc", "--channel-dim", "time", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["channel_dimension"] == "time"
    assert_clean_error(run_cli("info", "cube.nc", "--channel-dim", "bnad", cwd=tmp_path), 2, "bnad", "band")


def test_ome_channel_names_are_the_channel_labels(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    tifffile.imwrite(
        tmp_path / "x.ome.tif", data, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP", "RFP"]}}
    )
    proc = run_cli("info", "x.ome.tif", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["labels"] == {"2": ["DAPI", "GFP", "RFP"]}
    assert run_cli("fit", "pca", "x.ome.tif", "-k", "2", "-o", "b.npz", cwd=tmp_path).returncode == 0
    with np.load(tmp_path / "b.npz") as bank:
        assert list(bank["channel_names"]) == ["DAPI", "GFP", "RFP"]


def test_a_geotiff_survives_a_trip_through_netcdf(tmp_path):
    _named_geotiff(tmp_path / "in.tif")
    assert run_cli("apply", "in.tif", "1,0,0,0;0,1,0,0", "-o", "g.nc", cwd=tmp_path).returncode == 0
    info = json.loads(run_cli("info", "g.nc", "--json", cwd=tmp_path).stdout)[0]
    assert info["path"] == "g.nc:data" and "0" not in info["labels"]  # the grid mapping is no variable
    proc = run_cli("apply", "g.nc", "1,1", "-o", "back.tif", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not [n for n in json.loads(proc.stdout)[0]["output"]["notes"] if "georeferencing" in n]
    with rasterio.open(tmp_path / "back.tif") as ds:
        assert ds.crs.to_epsg() == 32633 and ds.transform == TRANSFORM
