"""Several files as the channels of one input: `B2.tif+B3.tif+...` (one file per band).

The reference is the same bands written as one multi-band GeoTIFF (or stacked by numpy),
applied or fitted the same way.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_clean_error, run_cli, write_geotiff

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

# Landsat 8 OLI brightness, greenness, wetness (Baig et al. 2014), bands 2-7
BAIG_2014 = np.array(
    [
        [0.3029, 0.2786, 0.4733, 0.5599, 0.508, 0.1872],
        [-0.2941, -0.243, -0.5424, 0.7276, 0.0713, -0.1608],
        [0.1511, 0.1973, 0.3283, 0.3407, -0.7117, -0.4559],
    ]
)


def _scene(tmp_path, bands=(2, 3, 4, 5, 6, 7), shape=(12, 15), nodata=None):
    data = np.random.default_rng(0).random((len(bands), *shape)).astype(np.float32)
    names = [f"LC08_L2SP_044034_20230101_SR_B{b}.tif" for b in bands]
    for name, band in zip(names, data):
        write_geotiff(tmp_path / name, band[None], nodata=nodata)
    return data, "+".join(names)


def _run(tmp_path, *args):
    proc = run_cli(*args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform, src.descriptions


def test_a_stack_applies_as_the_multiband_file_of_the_same_bands(tmp_path):
    data, stack = _scene(tmp_path, bands=(2, 3, 4, 5))
    write_geotiff(tmp_path / "all.tif", data)
    weights = "0.5,1,-1,2;0,0,-1,1"
    doc = _run(tmp_path, "apply", stack, weights, "-o", "from_stack.tif")
    assert doc["input"]["shape"] == [12, 15, 4]
    _run(tmp_path, "apply", "all.tif", weights, "-o", "from_file.tif")
    got, crs, transform, _ = _read(tmp_path / "from_stack.tif")
    want, want_crs, want_transform, _ = _read(tmp_path / "from_file.tif")
    np.testing.assert_array_equal(got, want)
    assert crs == want_crs and transform == want_transform  # the georeferencing is kept
    reference = np.einsum("kc,chw->khw", np.array([[0.5, 1, -1, 2], [0, 0, -1, 1]]), data.astype(np.float64))
    np.testing.assert_allclose(got, reference, rtol=1e-6)


def test_file_names_bind_a_named_bank_by_band_id(tmp_path):
    data, stack = _scene(tmp_path)
    doc = _run(tmp_path, "info", stack)
    assert doc["labels"]["2"][0] == "LC08_L2SP_044034_20230101_SR_B2"
    _run(tmp_path, "apply", stack, "tasseled-cap:landsat8", "-o", "tc.tif")
    got, _, _, descriptions = _read(tmp_path / "tc.tif")
    np.testing.assert_allclose(got[:3], np.einsum("kc,chw->khw", BAIG_2014, data), rtol=1e-5, atol=1e-6)
    assert descriptions[:3] == ("brightness", "greenness", "wetness")


def test_fit_and_explain_read_a_stack_like_one_input(tmp_path):
    data, stack = _scene(tmp_path, bands=(2, 3, 4))
    np.save(tmp_path / "cube.npy", np.moveaxis(data, 0, -1))
    a = _run(tmp_path, "fit", "pca", stack, "-k", "2", "-o", "a.npz")
    b = _run(tmp_path, "fit", "pca", "cube.npy", "-k", "2", "-o", "b.npz")
    np.testing.assert_allclose(a["explained_variance"], b["explained_variance"], rtol=1e-9)
    doc = _run(tmp_path, "explain", stack, "1,2,3", "--at", "4,7")
    np.testing.assert_allclose(doc["pixel"]["channels"], data[:, 4, 7], rtol=1e-7)
    assert doc["results"][0]["sum"] == pytest.approx(float(data[:, 4, 7].astype(np.float64) @ [1, 2, 3]))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"shape": (12, 14)}, "share their pixels"),
        ({"transform": from_origin(500030, 4200000, 30, 30)}, "share their CRS and transform"),
        ({"nodata": -1.0}, "share their nodata"),
    ],
)
def test_files_that_do_not_share_a_grid_are_refused(tmp_path, change, fragment):
    _, stack = _scene(tmp_path, bands=(2, 3))
    odd = np.ones((1, *change.get("shape", (12, 15))), np.float32)
    write_geotiff(tmp_path / "odd.tif", odd, transform=change.get("transform"), nodata=change.get("nodata"))
    proc = run_cli("apply", f"{stack}+odd.tif", "1,1,1", "-o", "out.tif", cwd=tmp_path)
    assert_clean_error(proc, 2, fragment)
    assert not (tmp_path / "out.tif").exists()


def test_an_output_that_is_one_of_the_stacks_files_is_refused(tmp_path):
    _, stack = _scene(tmp_path, bands=(2, 3))
    first = stack.split("+")[0]
    before = (tmp_path / first).read_bytes()
    proc = run_cli("apply", stack, "1,1", "-o", first, "--overwrite", cwd=tmp_path)
    assert_clean_error(proc, 2, "is the same file as", first)
    assert (tmp_path / first).read_bytes() == before


def test_a_file_whose_name_holds_a_plus_is_one_file(tmp_path):
    np.save(tmp_path / "a+b.npy", np.ones((2, 2, 3), np.float32))
    doc = _run(tmp_path, "apply", "a+b.npy", "1,2,3", "-o", "y.npy")
    assert doc["input"]["shape"] == [2, 2, 3]
    proc = run_cli("apply", "a.npy+b.npy", "1,2", "-o", "z.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "a.npy")


def _item(tmp_path, assets, name="item.json", version="1.0.0"):
    item = {
        "type": "Feature", "stac_version": version, "id": "scene", "geometry": None, "links": [],
        "properties": {"datetime": "2023-01-01T00:00:00Z"}, "assets": assets,
    }  # fmt: skip
    (tmp_path / name).write_text(json.dumps(item))
    return name


def _landsat_item(tmp_path):
    data, stack = _scene(tmp_path, bands=(2, 3, 4, 5))
    common = {2: "blue", 3: "green", 4: "red", 5: "nir08"}
    assets = {
        f"SR_B{b}": {"href": f"./{f}", "type": "image/tiff; application=geotiff", "eo:bands": [{"name": f"SR_B{b}", "common_name": common[b]}]}
        for b, f in zip((2, 3, 4, 5), stack.split("+"))
    }  # fmt: skip
    return data, _item(tmp_path, assets)


def test_a_stac_item_names_its_assets_by_key_or_common_name(tmp_path):
    pytest.importorskip("pystac")
    data, item = _landsat_item(tmp_path)
    doc = _run(tmp_path, "info", f"{item}:nir08,SR_B4")
    assert doc["shape"] == [12, 15, 2] and doc["labels"]["2"] == ["nir08", "red"]
    _run(tmp_path, "apply", f"{item}:red,nir08", "1,-1", "-o", "d.tif")
    np.testing.assert_allclose(_read(tmp_path / "d.tif")[0][0], data[2] - data[3], rtol=1e-6)


def test_an_index_binds_to_a_stac_items_common_names(tmp_path):
    pytest.importorskip("pystac")
    data, item = _landsat_item(tmp_path)
    _run(tmp_path, "apply", f"{item}:blue,green,red,nir08", "--index", "ndvi", "-o", "ndvi.tif")
    red, nir = data[2].astype(np.float64), data[3].astype(np.float64)
    np.testing.assert_allclose(_read(tmp_path / "ndvi.tif")[0][0], (nir - red) / (nir + red), rtol=1e-6)


def test_stac_items_that_cannot_be_read_are_one_line_errors(tmp_path):
    pytest.importorskip("pystac")
    _, item = _landsat_item(tmp_path)
    (tmp_path / "outside").mkdir()
    write_geotiff(tmp_path / "far.tif", np.ones((1, 12, 15), np.float32))
    _item(tmp_path / "outside", {"x": {"href": "../far.tif"}}, "out.json")
    _item(tmp_path, {"x": {"href": "https://example.com/B4.tif"}}, "remote.json")
    (tmp_path / "broken.json").write_text('{"type": "Feature", "assets": ')
    for spec, fragment in (
        (f"{item}:swir16", "expected one asset of 'item.json' named 'swir16'"),
        (item, "expected the assets to read from the STAC item"),
        ("outside/out.json:x", "--allow-external"),
        ("remote.json:x", "an asset outside its folder ('x')"),
        ("broken.json:x", "expected a STAC item at 'broken.json'"),
    ):
        proc = run_cli("apply", spec, "1", "-o", "y.npy", cwd=tmp_path)
        assert_clean_error(proc, 2, fragment)
        assert not (tmp_path / "y.npy").exists()


def test_parts_opened_at_once_report_the_first_bad_part_in_order(tmp_path):
    """Parts are opened together: with two bad parts the error names the first given, every
    time, and nothing is written."""
    _, stack = _scene(tmp_path, bands=(2, 3, 4))
    names = stack.split("+")
    (tmp_path / "damaged.tif").write_bytes(b"II*\x00" + bytes(60))
    order = "+".join([names[0], "missing.tif", names[1], "damaged.tif", names[2]])
    for _ in range(3):
        proc = run_cli("apply", order, "1,1,1,1,1", "-o", "out.npy", cwd=tmp_path)
        assert_clean_error(proc, 2, "missing.tif")
        assert "damaged.tif" not in proc.stderr
    swapped = "+".join([names[0], "damaged.tif", names[1], "missing.tif"])
    proc = run_cli("apply", swapped, "1,1,1,1", "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode != 0 and "damaged.tif" in proc.stderr and "missing.tif" not in proc.stderr
    assert not (tmp_path / "out.npy").exists()
