"""apply --divide-by (a ratio of two mixes) and --index (named spectral indices), against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_clean_error, run_cli

BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


def _reflectance(seed=0, shape=(30, 40)):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 10000, (*shape, 6)).astype(np.uint16)
    x[0, 0, 2:4] = 0  # red + nir = 0: NDVI's denominator is 0 here
    return x


def _ndvi(x):
    red, nir = x[..., 2].astype(np.float64), x[..., 3].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (nir - red) / (nir + red)


def _apply(tmp_path, *args):
    proc = run_cli("apply", *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


def test_divide_by_computes_the_ratio_and_writes_nan_where_the_denominator_is_zero(tmp_path):
    x = _reflectance()
    np.save(tmp_path / "x.npy", x)
    doc = _apply(tmp_path, "x.npy", "0,0,-1,1,0,0", "--divide-by", "0,0,1,1,0,0", "-o", "ndvi.npy")
    y = np.load(tmp_path / "ndvi.npy")
    assert y.dtype == np.float64 and y.shape == (30, 40, 1)
    np.testing.assert_allclose(y[..., 0], _ndvi(x), rtol=1e-12, equal_nan=True)
    assert np.isnan(y[0, 0, 0]) and doc["output"]["zero_denominators"] == 1


def test_divide_by_streams_and_runs_on_dask_to_the_same_values(tmp_path):
    pytest.importorskip("dask")
    x = _reflectance(seed=1, shape=(64, 50))
    np.save(tmp_path / "x.npy", x)
    args = ["x.npy", "0,0,-1,1,0,0;0,0,0,1,0,-1", "--divide-by", "0,0,1,1,0,0;0,0,0,1,0,1"]
    whole = _apply(tmp_path, *args, "-o", "whole.npy")
    streamed = _apply(tmp_path, *args, "--max-memory", "64KiB", "-o", "streamed.npy")
    assert (
        streamed["blocks"] > 1
        and whole["output"]["zero_denominators"] == streamed["output"]["zero_denominators"]
    )
    _apply(tmp_path, *args, "--engine", "dask", "-o", "dask.npy")
    expected = np.load(tmp_path / "whole.npy")
    red, nir, swir = (x[..., i].astype(np.float64) for i in (2, 3, 5))
    with np.errstate(divide="ignore", invalid="ignore"):
        nbr = (nir - swir) / (nir + swir)
    np.testing.assert_allclose(expected[..., 1], nbr, rtol=1e-12, equal_nan=True)
    for name in ("streamed.npy", "dask.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / name), expected)


def test_divide_by_one_denominator_serves_every_output_and_nodata_rules_hold(tmp_path):
    x = _reflectance(seed=2).astype(np.float32)
    x[5, 6, :] = -9999  # nodata in every band
    np.save(tmp_path / "x.npy", x)
    args = ["x.npy", "0,0,1,0,0,0;0,0,0,1,0,0", "--divide-by", "1,1,1,0,0,0", "--divide-by-bias", "1"]
    _apply(tmp_path, *args, "--nodata", "-9999", "--out-nodata", "-2", "-o", "y.npy")
    y = np.load(tmp_path / "y.npy")
    valid = x[..., 0] != -9999
    total = x[..., :3].astype(np.float64).sum(axis=-1) + 1
    np.testing.assert_allclose(y[valid][:, 0], (x[..., 2] / total)[valid], rtol=1e-6)
    np.testing.assert_allclose(y[valid][:, 1], (x[..., 3] / total)[valid], rtol=1e-6)
    assert np.all(y[5, 6] == -2)


def test_index_binds_bands_by_description_and_names_the_outputs(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    x = np.moveaxis(_reflectance(seed=3), -1, 0)
    with rasterio.open(
        tmp_path / "s2.tif", "w", driver="GTiff", width=40, height=30, count=6, dtype="uint16",
        crs="EPSG:32633", transform=from_origin(0, 0, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(x)
        for band, name in enumerate(BANDS, 1):
            dst.set_band_description(band, name)
    _apply(tmp_path, "s2.tif", "--index", "ndvi,evi,savi,nbr,ndwi", "--dtype", "float32", "-o", "idx.tif")
    blue, green, red, nir, _, swir22 = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = [
            (nir - red) / (nir + red),
            2.5 * (nir - red) / (nir + 6 * red - 7.5 * blue + 1),
            1.5 * (nir - red) / (nir + red + 0.5),
            (nir - swir22) / (nir + swir22),
            (green - nir) / (green + nir),
        ]
    with rasterio.open(tmp_path / "idx.tif") as src:
        assert src.descriptions == ("ndvi", "evi", "savi", "nbr", "ndwi")
        got = src.read()
    for band, want in zip(got, expected):
        np.testing.assert_allclose(band, want, rtol=1e-5, equal_nan=True)


def test_index_takes_explicit_bands_and_constants(tmp_path):
    x = _reflectance(seed=4)
    np.save(tmp_path / "x.npy", x)
    _apply(
        tmp_path, "x.npy", "--index", "savi", "--bands", "red=3,nir=4", "--constants", "L=0.25", "-o", "s.npy"
    )
    red, nir = x[..., 2].astype(np.float64), x[..., 3].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = 1.25 * (nir - red) / (nir + red + 0.25)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy")[..., 0], expected, rtol=1e-12)


def test_batch_takes_divide_by(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(2):
        np.save(tmp_path / "in" / f"x{i}.npy", _reflectance(seed=10 + i))
    proc = run_cli(
        "batch", "0,0,-1,1,0,0", "in", "--divide-by", "0,0,1,1,0,0", "--out-dir", "out", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        got = np.load(tmp_path / "out" / f"x{i}.pw.npy")[..., 0]
        np.testing.assert_allclose(
            got, _ndvi(np.load(tmp_path / "in" / f"x{i}.npy")), rtol=1e-12, equal_nan=True
        )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--index", "ndvi"], ["band named 'nir'", "6 unnamed bands", "--bands nir=N"]),
        (["--index", "nbr", "--bands", "nir=4,swir22=9"], ["swir22=", "from 1 to 6", "found 9"]),
        (["--index", "ndvx"], ["--index", "ndvi", "ndvx"]),
        (["--index", "savi", "--bands", "red=3,nir=4", "--constants", "G=2"], ["--constants", "L", "G"]),
        (["0,0,-1,1,0,0", "--index", "ndvi"], ["WEIGHTS or --index", "both"]),
        ([], ["WEIGHTS", "--index", "neither"]),
        (["0,0,-1,1,0,0", "--divide-by", "1,1"], ["denominator bank", "'1,1'"]),
        (["0,0,-1,1,0,0;1,0,0,0,0,0", "--divide-by", "1,1,1,1,1,1;1,1,1,1,1,1;0,0,0,0,0,1"], ["denominator bank of 2 filters", "found 3"]),
        (["0,0,-1,1,0,0", "--divide-by", "0,0,1,1,0,0", "--dtype", "complex128"], ["real float output"]),
    ],
)  # fmt: skip
def test_bad_ratio_and_index_requests_are_one_line_errors(tmp_path, args, fragments):
    np.save(tmp_path / "x.npy", _reflectance())
    proc = run_cli("apply", "x.npy", *args, "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert not (tmp_path / "out.npy").exists()


def test_batch_takes_index_in_place_of_weights(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(2):
        np.save(tmp_path / "in" / f"x{i}.npy", _reflectance(seed=20 + i))
    proc = run_cli(
        "batch", "--index", "ndvi", "in", "--bands", "red=3,nir=4", "--out-dir", "out", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        got = np.load(tmp_path / "out" / f"x{i}.pw.npy")[..., 0]
        np.testing.assert_allclose(
            got, _ndvi(np.load(tmp_path / "in" / f"x{i}.npy")), rtol=1e-12, equal_nan=True
        )
    one = run_cli("batch", "--index", "ndvi", "in/x0.npy", "--out-dir", "single", cwd=tmp_path)
    assert one.returncode == 2 and "band named 'nir'" in one.stderr  # the file's line names what it lacks


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_bank_file_may_hold_numerator_and_denominator(tmp_path, suffix):
    x = _reflectance(seed=4)
    np.save(tmp_path / "x.npy", x)
    arrays = {
        "numerator": np.array([[0, 0, -1, 1, 0, 0]], np.float64),
        "denominator": np.array([[0, 0, 1, 1, 0, 0]], np.float64),
        "denominator_bias": np.array([0.5]),
    }
    if suffix == ".npz":
        np.savez(tmp_path / "ratio.npz", **arrays)
    else:
        h5py = pytest.importorskip("h5py")
        with h5py.File(tmp_path / "ratio.h5", "w") as handle:
            for name, values in arrays.items():
                handle[name] = values
    doc = _apply(tmp_path, "x.npy", f"ratio{suffix}", "-o", "y.npy")
    red, nir = x[..., 2].astype(np.float64), x[..., 3].astype(np.float64)
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy")[..., 0], (nir - red) / (nir + red + 0.5), rtol=1e-12
    )
    assert doc["weights"]["denominator"].startswith(f"ratio{suffix}")
    both = run_cli(
        "apply", "x.npy", f"ratio{suffix}", "--divide-by", "1,1,1,1,1,1", "-o", "z.npy", cwd=tmp_path
    )
    assert_clean_error(both, 2, "expected one denominator", "drop --divide-by")
    assert not (tmp_path / "z.npy").exists()


def test_divide_by_file_is_not_overwritten_by_the_output(tmp_path):
    x = _reflectance(seed=5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "d.npy", np.array([[0, 0, 1, 1, 0, 0]], np.float64))
    before = (tmp_path / "d.npy").read_bytes()
    proc = run_cli(
        "apply", "x.npy", "0,0,-1,1,0,0", "--divide-by", "d.npy", "-o", "d.npy", "--overwrite", cwd=tmp_path
    )
    assert_clean_error(proc, 2, "d.npy")
    assert (tmp_path / "d.npy").read_bytes() == before
