"""Named coefficient banks (tasseled cap, colour matrices) and `pwconv banks`.

The expected values are written here from the publications (Baig et al. 2014 for Landsat 8,
Shi and Xu 2019 for Sentinel-2) or computed by independent libraries (Pillow's colour
conversions, scikit-image's sRGB matrix), not read from pwconv's data files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_clean_error, run_cli, write_geotiff

# Landsat 8 OLI, bands 2-7 (blue, green, red, nir, swir1, swir2): brightness, greenness, wetness
BAIG_2014 = np.array(
    [
        [0.3029, 0.2786, 0.4733, 0.5599, 0.508, 0.1872],
        [-0.2941, -0.243, -0.5424, 0.7276, 0.0713, -0.1608],
        [0.1511, 0.1973, 0.3283, 0.3407, -0.7117, -0.4559],
    ]
)
# Sentinel-2 MSI by band id: brightness, greenness, wetness
SHI_XU_2019 = {
    "B01": (0.2381, -0.2266, 0.1825), "B02": (0.2569, -0.2818, 0.1763), "B03": (0.2934, -0.3020, 0.1615),
    "B04": (0.3020, -0.4283, 0.0486), "B05": (0.3099, -0.2959, 0.0170), "B06": (0.3740, 0.1602, 0.0223),
    "B07": (0.4180, 0.3127, 0.0219), "B08": (0.3580, 0.3138, -0.0755), "B8A": (0.3834, 0.4261, -0.0910),
    "B09": (0.0103, 0.1454, -0.1369), "B10": (0.0020, -0.0017, 0.0003), "B11": (0.0896, -0.1341, -0.7701),
    "B12": (0.0780, -0.2538, -0.5293),
}  # fmt: skip


def _apply(tmp_path, *args):
    proc = run_cli("apply", *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


def test_landsat8_tasseled_cap_binds_band_ids_of_a_seven_band_scene(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    x = np.random.default_rng(0).random((7, 20, 25)).astype(np.float32)  # TOA reflectance, 0-1
    write_geotiff(tmp_path / "l8.tif", x, [f"SR_B{i}" for i in range(1, 8)])  # coastal band first
    doc = _apply(tmp_path, "l8.tif", "tasseled-cap:landsat8", "-o", "tc.tif")
    assert doc["weights"]["source"] == "tasseled-cap:landsat8"
    with rasterio.open(tmp_path / "tc.tif") as src:
        got = src.read()
        assert src.descriptions[:3] == ("brightness", "greenness", "wetness") and src.count == 6
    expected = np.einsum("kc,chw->khw", BAIG_2014, x[1:].astype(np.float64))
    np.testing.assert_allclose(got[:3], expected, rtol=1e-5, atol=1e-6)


def test_sentinel2_tasseled_cap_binds_bands_by_name_in_any_order(tmp_path):
    pytest.importorskip("rasterio")
    names = list(SHI_XU_2019)
    order = np.random.default_rng(1).permutation(len(names))  # a stack in no published order
    shuffled = [names[i] for i in order]
    x = np.random.default_rng(2).random((13, 12, 10)).astype(np.float64)
    write_geotiff(tmp_path / "s2.tif", x, shuffled)
    _apply(tmp_path, "s2.tif", "tasseled-cap:sentinel2", "-o", "tc.npy")
    got = np.load(tmp_path / "tc.npy")
    coefficients = np.array([SHI_XU_2019[name] for name in shuffled]).T  # (3, 13) in the stack's order
    expected = np.einsum("kc,chw->hwk", coefficients, x)
    assert got.shape[-1] == 3
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-12)


def test_unnamed_bands_are_taken_in_order_only_when_the_count_matches(tmp_path):
    x = np.random.default_rng(3).random((8, 9, 6))
    np.save(tmp_path / "six.npy", x)
    _apply(tmp_path, "six.npy", "tasseled-cap:landsat9", "-o", "tc.npy")
    np.testing.assert_allclose(np.load(tmp_path / "tc.npy")[..., :3], x @ BAIG_2014.T, rtol=1e-12)

    seven = np.concatenate([x[..., :1], x], axis=-1)  # an extra band in front
    np.save(tmp_path / "seven.npy", seven)
    proc = run_cli("apply", "seven.npy", "tasseled-cap:landsat8", "-o", "bad.npy", cwd=tmp_path)
    assert_clean_error(
        proc, 2, "expected the 6 bands of tasseled-cap:landsat8", "found 7 unnamed bands", "--bands"
    )
    assert not (tmp_path / "bad.npy").exists()
    bound = "blue=2,green=3,red=4,nir08=5,swir16=6,swir22=7"
    _apply(tmp_path, "seven.npy", "tasseled-cap:landsat8", "--bands", bound, "-o", "tc7.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "tc7.npy"), np.load(tmp_path / "tc.npy"))


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["tasseled-cap:landsat7"], ["expected a named bank of 'tasseled-cap'", "tasseled-cap:landsat8"]),
        (["tasseled-cap"], ["expected a named bank of 'tasseled-cap'", "banks command"]),
        (
            ["tasseled-cap:landsat8", "--bands", "blue=2,green=2,red=3,nir08=4,swir16=5,swir22=6"],
            ["blue and green both bound to band 2"],
        ),
        (["tasseled-cap:landsat8", "--bands", "blue=9"], ["a band number from 1 to 6, found 9"]),
        (["1,0,0,0,0,0", "--bands", "red=1"], ["expected --index or a named bank for --bands"]),
    ],
)
def test_bad_named_bank_requests_are_one_line_errors(tmp_path, args, fragments):
    np.save(tmp_path / "six.npy", np.ones((2, 2, 6)))
    proc = run_cli("apply", "six.npy", *args, "-o", "y.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert not (tmp_path / "y.npy").exists()


def test_band_names_that_do_not_match_are_refused_unless_told(tmp_path):
    pytest.importorskip("rasterio")
    x = np.random.default_rng(4).random((6, 5, 5)).astype(np.float32)
    write_geotiff(tmp_path / "odd.tif", x, [f"band {i}" for i in range(1, 7)])
    proc = run_cli("apply", "odd.tif", "tasseled-cap:landsat8", "-o", "y.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "expected a band named 'blue' (or B2, SR_B2)", "band 1, band 2")
    _apply(tmp_path, "odd.tif", "tasseled-cap:landsat8", "--ignore-channel-names", "-o", "y.npy")
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(
        got[..., :3], np.einsum("kc,chw->hwk", BAIG_2014, x.astype(np.float64)), rtol=1e-5
    )


def test_rgb_to_ycbcr_and_grey_match_pillow(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(5).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    pil.fromarray(rgb).save(tmp_path / "rgb.png")
    _apply(tmp_path, "rgb.png", "colour:rgb-to-ycbcr", "-o", "ycc.png")
    _apply(tmp_path, "rgb.png", "colour:rgb-to-grey", "-o", "grey.png")
    with pil.open(tmp_path / "rgb.png") as image:
        want_ycc = np.asarray(image.convert("YCbCr"), dtype=np.int16)
        want_grey = np.asarray(image.convert("L"), dtype=np.int16)
    with pil.open(tmp_path / "ycc.png") as image:
        got_ycc = np.asarray(image, dtype=np.int16)
    with pil.open(tmp_path / "grey.png") as image:
        got_grey = np.asarray(image, dtype=np.int16).reshape(want_grey.shape)
    # Pillow computes in fixed point: one grey level apart at most
    assert np.abs(got_ycc - want_ycc).max() <= 1 and np.abs(got_grey - want_grey).max() <= 1

    _apply(tmp_path, "ycc.png", "colour:ycbcr-to-rgb", "-o", "back.png")  # PNG bands carry no names
    with pil.open(tmp_path / "back.png") as image:
        assert np.abs(np.asarray(image, dtype=np.int16) - rgb).max() <= 2


def test_srgb_xyz_matrices_match_scikit_image_and_invert_each_other(tmp_path):
    colorconv = pytest.importorskip("skimage.color.colorconv")
    linear = np.random.default_rng(6).random((16, 16, 3))
    np.save(tmp_path / "linear.npy", linear)
    _apply(tmp_path, "linear.npy", "colour:linear-srgb-to-xyz", "-o", "xyz.npy")
    xyz = np.load(tmp_path / "xyz.npy")
    # scikit-image keeps more digits than IEC 61966-2-1 prints: agreement to the printed 4
    np.testing.assert_allclose(xyz, linear @ colorconv.xyz_from_rgb.T, atol=3e-4)
    _apply(tmp_path, "xyz.npy", "colour:xyz-to-linear-srgb", "-o", "back.npy")
    np.testing.assert_allclose(np.load(tmp_path / "back.npy"), linear, atol=5e-4)


def test_banks_lists_every_bank_and_index_and_shows_one(tmp_path):
    proc = run_cli("banks", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    entries = {e["path"]: e for e in json.loads(proc.stdout)}
    assert {"tasseled-cap:landsat8", "tasseled-cap:sentinel2", "colour:rgb-to-ycbcr", "ndvi", "evi"} <= set(
        entries
    )
    landsat = entries["tasseled-cap:landsat8"]
    np.testing.assert_array_equal(np.array(landsat["weights"])[:3], BAIG_2014)
    assert "Baig" in landsat["source"] and "reflectance" in landsat["level"]
    sentinel = entries["tasseled-cap:sentinel2"]
    ids = [next(n for n in names if n[0] == "B" and len(n) == 3) for names in sentinel["bands"]]
    np.testing.assert_array_equal(np.array(sentinel["weights"]).T, np.array([SHI_XU_2019[b] for b in ids]))
    shown = run_cli("banks", "tasseled-cap:sentinel2", cwd=tmp_path)
    assert shown.returncode == 0 and "Shi and Xu 2019" in shown.stderr and "Level-1C" in shown.stderr
    assert_clean_error(run_cli("banks", "nope", cwd=tmp_path), 2, "expected a named bank or index", "'nope'")


def test_batch_and_explain_take_a_named_bank(tmp_path):
    x = np.random.default_rng(7).random((4, 5, 6))
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", x * (1 if name == "a" else 2))
    proc = run_cli("batch", "tasseled-cap:landsat8", "a.npy", "b.npy", "--out-dir", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, scale in (("a", 1), ("b", 2)):
        got = np.load(tmp_path / "out" / f"{name}.pw.npy")[..., :3]
        np.testing.assert_allclose(got, scale * x @ BAIG_2014.T, rtol=1e-12)
    proc = run_cli("explain", "a.npy", "tasseled-cap:landsat8", "--at", "1,2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]
    values = [f["sum"] for f in doc["results"][:3]]
    np.testing.assert_allclose(values, x[1, 2] @ BAIG_2014.T, rtol=1e-12)
