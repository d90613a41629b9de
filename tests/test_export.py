"""`pwconv export`: banks that travel, checked by the tools that read them.

onnxruntime runs the exported ONNX models, GDAL (through rasterio) reads the exported VRTs,
and numpy's einsum over the same numbers is the reference; the bank files are read back by
the safetensors library and by pwconv itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_clean_error, leftovers, run_cli, write_geotiff

# Landsat 8 OLI brightness, greenness, wetness (Baig et al. 2014), blue..swir22
BAIG_2014 = np.array(
    [
        [0.3029, 0.2786, 0.4733, 0.5599, 0.508, 0.1872],
        [-0.2941, -0.243, -0.5424, 0.7276, 0.0713, -0.1608],
        [0.1511, 0.1973, 0.3283, 0.3407, -0.7117, -0.4559],
    ]
)
L8_NAMES = ["blue", "green", "red", "nir08", "swir16", "swir22"]


def _export(tmp_path, *args):
    proc = run_cli("export", *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


def _apply(tmp_path, *args):
    proc = run_cli("apply", *args, "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def _read_raster(path):
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path) as src:
        return src.read(), src.descriptions, src.nodata


def _session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_model_runs_in_onnxruntime_to_the_einsum_of_the_bank(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 12)), rng.normal(size=5)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "b.npy", b)
    doc = _export(tmp_path, "w.npy", "--bias", "b.npy", "-o", "mix.onnx")
    assert (doc["as"], doc["filters"], doc["channels"], doc["bias"]) == ("onnx", 5, 12, True)
    session = _session(tmp_path / "mix.onnx")
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.shape == ["N", 12, "H", "W"] and out.shape == ["N", 5, "H", "W"]
    x = rng.normal(size=(2, 12, 7, 9)).astype(np.float32)
    got = session.run(None, {inp.name: x})[0]
    want = np.einsum("kc,nchw->nkhw", w, x.astype(np.float64)) + b[None, :, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_onnx_model_agrees_with_pwconv_apply_on_channels_first_data(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.random((1, 4, 6, 5)).astype(np.float32))
    _export(tmp_path, "0.5,1,-2,3;1,1,1,1", "--bias", "0.25,-1", "-o", "m.onnx")
    _apply(tmp_path, "x.npy", "0.5,1,-2,3;1,1,1,1", "--bias", "0.25,-1", "--layout", "NCHW", "-o", "y.npy")
    got = _session(tmp_path / "m.onnx").run(None, {"input": np.load(tmp_path / "x.npy")})[0]
    np.testing.assert_allclose(got, np.load(tmp_path / "y.npy"), rtol=1e-6, atol=1e-6)


def test_onnx_ratio_divides_two_mixes_and_writes_nan_where_the_denominator_is_zero(tmp_path):
    x = np.array([[0.1, 0.3], [0.5, 0.2], [0.4, 0.0]], np.float32).T.reshape(1, 2, 1, 3)  # red, nir
    x[0, :, 0, 2] = (0.0, 0.0)  # nir + red = 0
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "nir_minus_red.npy", np.array([-1.0, 1.0]))
    doc = _export(tmp_path, "nir_minus_red.npy", "--divide-by", "1,1", "-o", "ndvi.onnx")
    assert doc["ratio"] is True
    got = _session(tmp_path / "ndvi.onnx").run(None, {"input": x})[0]
    red, nir = x[0, 0, 0].astype(np.float64), x[0, 1, 0].astype(np.float64)
    with np.errstate(invalid="ignore"):
        want = np.where(nir + red == 0, np.nan, (nir - red) / (nir + red))
    np.testing.assert_allclose(got[0, 0, 0], want, rtol=1e-6, equal_nan=True)
    _apply(
        tmp_path, "x.npy", "nir_minus_red.npy", "--divide-by", "1,1", "--layout", "NCHW", "--dtype", "float32",
        "-o", "y.npy",
    )  # fmt: skip
    np.testing.assert_allclose(got, np.load(tmp_path / "y.npy"), rtol=1e-6, equal_nan=True)


def test_onnx_export_of_a_named_bank_carries_its_names_and_pwconv_reads_them_back(tmp_path):
    doc = _export(tmp_path, "tasseled-cap:landsat8", "-o", "tc.onnx")
    assert doc["names"][:3] == ["brightness", "greenness", "wetness"]
    meta = _session(tmp_path / "tc.onnx").get_modelmeta().custom_metadata_map
    assert json.loads(meta["channel_names"]) == L8_NAMES
    assert json.loads(meta["names"])[:3] == ["brightness", "greenness", "wetness"]
    x = np.random.default_rng(2).random((6, 8, 9)).astype(np.float32)
    write_geotiff(tmp_path / "named.tif", x, L8_NAMES)
    _apply(tmp_path, "named.tif", "tc.onnx", "-o", "tc.tif")
    y, descriptions, _ = _read_raster(tmp_path / "tc.tif")
    np.testing.assert_allclose(y[:3], np.einsum("kc,chw->khw", BAIG_2014, x), rtol=1e-5, atol=1e-6)
    assert list(descriptions[:3]) == ["brightness", "greenness", "wetness"]
    write_geotiff(tmp_path / "swapped.tif", x, [L8_NAMES[1], L8_NAMES[0], *L8_NAMES[2:]])
    proc = run_cli("apply", "swapped.tif", "tc.onnx", "-o", "bad.tif", cwd=tmp_path)
    assert_clean_error(proc, 2, "expected the input channels the bank was made for", "ignore-channel-names")
    assert not (tmp_path / "bad.tif").exists()


def test_vrt_over_a_scene_binds_band_names_and_gdal_reads_the_mix_with_its_nodata(tmp_path):
    x = np.random.default_rng(3).random((7, 10, 12)).astype(np.float32)
    x[2, 4, 5] = -9999  # nodata in one band: the whole pixel is nodata
    write_geotiff(tmp_path / "l8.tif", x, [f"SR_B{i}" for i in range(1, 8)], nodata=-9999)
    doc = _export(tmp_path, "tasseled-cap:landsat8", "-o", "tc.vrt", "l8.tif")
    assert doc["as"] == "vrt" and doc["channels"] == 7 and doc["outside_folder"] is False
    y, descriptions, nodata = _read_raster(tmp_path / "tc.vrt")
    assert y.shape == (6, 10, 12) and list(descriptions[:3]) == ["brightness", "greenness", "wetness"]
    want = np.einsum("kc,chw->khw", BAIG_2014, x[1:7].astype(np.float64))
    valid = np.ones((10, 12), bool)
    valid[4, 5] = False
    np.testing.assert_allclose(y[:3][:, valid], want[:, valid], rtol=1e-5, atol=1e-6)
    assert np.isnan(y[:, 4, 5]).all() and np.isnan(nodata)
    _apply(tmp_path, "l8.tif", "tasseled-cap:landsat8", "-o", "tc.tif")
    np.testing.assert_allclose(y, _read_raster(tmp_path / "tc.tif")[0], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_vrt_with_an_output_nodata_value_and_a_bias_matches_apply(tmp_path):
    x = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    x[1, 0, 0] = 0  # the input's nodata
    write_geotiff(tmp_path / "in.tif", x, nodata=0)
    args = ("1,2,-1;0.5,0,0.25", "--bias", "3,-1", "--out-nodata", "-9999")
    _export(tmp_path, *args, "-o", "m.vrt", "in.tif")
    y, _, nodata = _read_raster(tmp_path / "m.vrt")
    assert nodata == -9999 and (y[:, 0, 0] == -9999).all()
    _apply(tmp_path, "in.tif", *args, "--dtype", "float32", "-o", "ref.tif")
    np.testing.assert_allclose(y, _read_raster(tmp_path / "ref.tif")[0], rtol=1e-6)
    want = (
        np.einsum("kc,chw->khw", np.array([[1, 2, -1], [0.5, 0, 0.25]]), x) + np.array([3, -1])[:, None, None]
    )
    np.testing.assert_allclose(y[:, 1:, :], want[:, 1:, :], rtol=1e-6)


def test_vrt_outside_the_raster_folder_names_it_absolutely(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    x = np.random.default_rng(4).random((2, 3, 4)).astype(np.float32)
    write_geotiff(tmp_path / "data" / "in.tif", x)
    doc = _export(tmp_path, "1,-1", "-o", "out/d.vrt", "data/in.tif")
    assert doc["outside_folder"] is True
    y, _, _ = _read_raster(tmp_path / "out" / "d.vrt")
    np.testing.assert_allclose(y[0], x[0] - x[1], rtol=1e-6, atol=1e-7)
    proc = run_cli("apply", "out/d.vrt", "1", "-o", "y.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "allow-external")
    _apply(tmp_path, "out/d.vrt", "1", "-o", "y.npy", "--allow-external")
    np.testing.assert_allclose(np.load(tmp_path / "y.npy")[..., 0], x[0] - x[1], rtol=1e-6, atol=1e-7)


def test_safetensors_and_npz_banks_carry_names_and_apply_like_the_named_bank(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    x = np.random.default_rng(5).random((6, 5, 4)).astype(np.float32)
    write_geotiff(tmp_path / "named.tif", x, L8_NAMES)
    _apply(tmp_path, "named.tif", "tasseled-cap:landsat8", "-o", "ref.tif")
    for name in ("tc.safetensors", "tc.npz"):
        doc = _export(tmp_path, "tasseled-cap:landsat8", "-o", name)
        assert doc["channel_names"] == L8_NAMES and doc["dtype"] == "float64"
        _apply(tmp_path, "named.tif", name, "-o", f"{name}.tif")
        got, want = _read_raster(tmp_path / f"{name}.tif")[0], _read_raster(tmp_path / "ref.tif")[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with safetensors.safe_open(str(tmp_path / "tc.safetensors"), framework="numpy") as f:
        meta = f.metadata()
        np.testing.assert_array_equal(f.get_tensor("weights")[:3], BAIG_2014)
    assert json.loads(meta["channel_names"]) == L8_NAMES
    with np.load(tmp_path / "tc.npz") as bank:
        assert list(bank["names"][:3]) == ["brightness", "greenness", "wetness"]


def test_a_ratio_bank_file_round_trips_through_export(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.random((5, 6, 3)).astype(np.float32) + 0.1
    np.save(tmp_path / "x.npy", x)
    _export(tmp_path, "1,-1,0", "--divide-by", "1,1,0", "--divide-by-bias", "0.5", "-o", "ratio.npz")
    with np.load(tmp_path / "ratio.npz") as bank:
        assert sorted(bank.files) == ["denominator", "denominator_bias", "numerator"]
    _apply(tmp_path, "x.npy", "ratio.npz", "-o", "a.npy")
    _apply(tmp_path, "x.npy", "1,-1,0", "--divide-by", "1,1,0", "--divide-by-bias", "0.5", "-o", "b.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    want = (x[..., 0] - x[..., 1]) / (x[..., 0] + x[..., 1] + 0.5)
    np.testing.assert_allclose(np.load(tmp_path / "a.npy")[..., 0], want, rtol=1e-6)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("1,2", "-o", "m.vrt"), ("expected INPUT for 'm.vrt'",)),
        (("1,2,3", "--divide-by", "1,1,1", "-o", "r.vrt", "in.tif"), ("expected one mix for a VRT",)),
        (("1,2,3", "-o", "m.tif"), ("expected an export target .onnx, .vrt or a bank file",)),
        (("1,2", "-o", "m.vrt", "in.tif"), ("channel mismatch",)),
        (("1,2,3", "-o", "m.vrt", "x.npy"), ("expected a raster GDAL opens",)),
        (("1,2,3", "--dtype", "float64", "-o", "m.onnx"), ("expected --dtype float32 for an ONNX model",)),
        (
            ("1,2,3", "--dtype", "int16", "-o", "m.vrt", "in.tif"),
            ("expected --dtype float32 or float64 for an export",),
        ),
        (("f511.npy", "-o", "m.onnx"), ("reads as 1 or 5 channels", "give INPUT")),
        (("tasseled-cap:landsat8", "--bands", "red=1", "-o", "m.onnx"), ("expected INPUT for --bands",)),
        (
            ("tasseled-cap:landsat8", "-o", "m.onnx", "in.tif"),
            ("expected the 6 bands of tasseled-cap:landsat8",),
        ),
        (("tasseled-cap:landsat8", "-o", "tc.npy"), ("an .npy holds one array", "band names")),
    ],
)
def test_bad_exports_are_one_line_errors_with_nothing_written(tmp_path, args, fragments):
    write_geotiff(tmp_path / "in.tif", np.ones((3, 2, 2), np.float32))
    np.save(tmp_path / "x.npy", np.ones((2, 2, 3), np.float32))
    np.save(tmp_path / "f511.npy", np.ones((5, 1, 1)))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("export", *args, cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not leftovers(tmp_path)


def test_an_existing_export_target_is_kept_without_overwrite(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"keep")
    proc = run_cli("export", "1,2", "-o", "m.onnx", cwd=tmp_path)
    assert_clean_error(proc, 2, "exists", "--overwrite")
    assert (tmp_path / "m.onnx").read_bytes() == b"keep"
    _export(tmp_path, "1,2", "-o", "m.onnx", "--overwrite")
    assert _session(tmp_path / "m.onnx").get_inputs()[0].shape[1] == 2


def test_bank_names_that_are_not_a_json_list_of_strings_are_a_clean_error(tmp_path):
    from safetensors.numpy import save_file

    np.save(tmp_path / "x.npy", np.ones((2, 2, 2), np.float32))
    for text in ("not json", '{"a": 1}', "[1, 2]"):
        save_file({"weights": np.eye(2)}, str(tmp_path / "bank.safetensors"), metadata={"names": text})
        proc = run_cli("apply", "x.npy", "bank.safetensors", "-o", "y.npy", cwd=tmp_path)
        assert_clean_error(proc, 2, "bank.safetensors:names", "JSON list of strings")
        assert not (tmp_path / "y.npy").exists()
