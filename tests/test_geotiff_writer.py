"""GeoTIFF outputs pwconv writes itself (tiled deflate, zstd, LZW) against the same run
written by GDAL (``PWCONV_RAW_IO=0``): the same pixels and, read back by GDAL, the same
georeferencing, nodata, band descriptions, photometric interpretation, tiles and codec."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import assert_clean_error, raster_facts, run_cli

rasterio = pytest.importorskip("rasterio")
tifffile = pytest.importorskip("tifffile")
from rasterio.transform import from_origin  # noqa: E402

TRANSFORM = from_origin(500000, 4600000, 10, 10)
# tifffile always writes a resolution tag (unitless 1:1), which GDAL lists as metadata; it
# also tells that pwconv wrote the file.
_RESOLUTION = {"TIFFTAG_XRESOLUTION", "TIFFTAG_YRESOLUTION", "TIFFTAG_RESOLUTIONUNIT"}


def _input(path, bands: np.ndarray, nodata=None, names=None) -> None:
    with rasterio.open(
        path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
        dtype=bands.dtype.name, crs="EPSG:32633", transform=TRANSFORM, nodata=nodata,
        tiled=True, blockxsize=32, blockysize=16,
    ) as ds:  # fmt: skip
        ds.write(bands)
        for band, name in enumerate(names or (), start=1):
            ds.set_band_description(band, name)


def _facts(path) -> dict:
    """GDAL's reading of the file, the resolution tags apart; "own": they are there."""
    facts = raster_facts(path)
    facts["own"] = _RESOLUTION <= facts["tags"].keys()
    facts["tags"] = {k: v for k, v in facts["tags"].items() if k not in _RESOLUTION}
    return facts


CASES = {
    # weights, input dtype, output options, input nodata
    "float32 deflate default": ("1,2,3;0,1,0;3,2,1;1,1,1", np.float32, [], None),
    "rgb uint8 zstd level 3": ("1,0,0;0,1,0;0,0,1", np.uint8, ["--dtype", "uint8", "--co", "COMPRESS=ZSTD",
                                                                 "--co", "ZSTD_LEVEL=3"], None),
    "int16 lzw predictor 2 nodata": ("1,-1,0", np.int16, ["--dtype", "int16", "--co", "COMPRESS=LZW",
                                                          "--co", "PREDICTOR=2"], -999),
    "float64 predictor 3 odd tiles": ("0.5,0.25,2;1,0,-1", np.float64, ["--co", "PREDICTOR=3", "--co", "ZLEVEL=1",
                                                                        "--co", "BLOCKXSIZE=48", "--co", "BLOCKYSIZE=32"],
                                      float("nan")),
    "uint16 bigtiff zstd": ("1,1,1;2,2,2", np.uint16, ["--dtype", "uint16", "--co", "COMPRESS=ZSTD",
                                                       "--co", "BIGTIFF=YES", "--co", "NUM_THREADS=2"], 0),
    "int8 four bands deflate": ("1,0,0;0,1,0;0,0,1;1,1,-1", np.int8, ["--dtype", "int8"], None),
    "int32 zstd predictor 2": ("3,-2,1", np.int32, ["--dtype", "int32", "--co", "COMPRESS=ZSTD", "--co", "PREDICTOR=2"],
                               None),
    "uint32 lzw four bands": ("1,0,0;0,1,0;0,0,1;1,1,1", np.uint32, ["--dtype", "uint32", "--co", "COMPRESS=LZW"],
                              None),
    "uint8 four bands zstd": ("1,0,0;0,1,0;0,0,1;0,0,0", np.uint8, ["--dtype", "uint8", "--co", "COMPRESS=ZSTD"], None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_pwconvs_geotiff_matches_gdals(tmp_path, case):
    weights, dtype, options, nodata = CASES[case]
    rng = np.random.default_rng(5)
    bands = (rng.random((3, 50, 70)) * 60).astype(dtype)
    if nodata is not None and not np.isnan(nodata):
        bands[:, :3, :4] = nodata
    _input(tmp_path / "in.tif", bands, nodata)
    for name, switch in (("own.tif", "1"), ("gdal.tif", "0")):
        proc = run_cli(
            "apply", "in.tif", weights, "-o", name, *options, cwd=tmp_path, env={"PWCONV_RAW_IO": switch}
        )
        assert proc.returncode == 0, proc.stderr
    own, gdal = _facts(tmp_path / "own.tif"), _facts(tmp_path / "gdal.tif")
    assert own.pop("own") and not gdal.pop("own")  # each run took the path it should
    np.testing.assert_array_equal(own.pop("pixels"), gdal.pop("pixels"))
    assert own == gdal
    with open(tmp_path / "own.tif", "rb") as handle:
        assert handle.read(4)[2:] == (b"+\x00" if "BIGTIFF=YES" in options else b"*\x00")
    if "PREDICTOR=3" in options:
        with tifffile.TiffFile(tmp_path / "own.tif") as tif:
            assert tif.pages[0].predictor == 3 and tif.pages[0].tilewidth == 48


def test_band_names_reach_pwconvs_geotiff(tmp_path):
    bands = np.random.default_rng(1).standard_normal((4, 20, 30)).astype(np.float32)
    _input(tmp_path / "in.tif", bands, names=("B2", "B3", "B4", "B8"))
    assert run_cli("fit", "pca", "in.tif", "-k", "2", "-o", "pca.npz", cwd=tmp_path).returncode == 0
    proc = run_cli("apply", "in.tif", "pca.npz", "-o", "pc.tif", "--co", "COMPRESS=ZSTD", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    facts = _facts(tmp_path / "pc.tif")
    assert facts["own"] and facts["descriptions"] == ("pc1", "pc2")


def test_options_pwconv_does_not_write_go_to_gdal(tmp_path):
    bands = np.random.default_rng(2).random((3, 40, 40)).astype(np.float32)
    _input(tmp_path / "in.tif", bands)
    cases = {"strips.tif": ["--co", "TILED=NO"], "jpeg.tif": ["--dtype", "uint8", "--co", "COMPRESS=JPEG"],
             "sparse.tif": ["--co", "SPARSE_OK=TRUE"], "level12.tif": ["--co", "ZLEVEL=12"],
             "maybe.tif": ["--co", "TILED=maybe"]}  # fmt: skip
    for name, options in cases.items():
        proc = run_cli("apply", "in.tif", "1,1,1", "-o", name, *options, cwd=tmp_path)
        assert proc.returncode == 0, (name, proc.stderr)
        assert not _facts(tmp_path / name)["own"], name
    with rasterio.open(tmp_path / "maybe.tif") as ds:  # GDAL reads only YES, TRUE, ON and 1 as true
        assert ds.profile["tiled"] is False
    for option, named in (("NO_SUCH=1", "NO_SUCH"), ("BIGTIFF=maybe", "BIGTIFF")):
        proc = run_cli("apply", "in.tif", "1,1,1", "-o", "bad.tif", "--co", option, cwd=tmp_path)
        assert_clean_error(proc, 2, named)
        assert not (tmp_path / "bad.tif").exists()


def test_overwriting_removes_an_old_outputs_sidecar(tmp_path):
    bands = np.random.default_rng(3).random((3, 20, 20)).astype(np.float32)
    _input(tmp_path / "in.tif", bands)
    (tmp_path / "out.tif.aux.xml").write_text(
        "<PAMDataset><Metadata><MDI key='OLD'>1</MDI></Metadata></PAMDataset>"
    )
    (tmp_path / "out.tif").write_bytes(b"old")
    proc = run_cli("apply", "in.tif", "1,1,1", "-o", "out.tif", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out.tif.aux.xml").exists()
    assert _facts(tmp_path / "out.tif")["own"]


@pytest.mark.parametrize(
    "codec, option, low, high", [("ZSTD", "ZSTD_LEVEL", 1, 19), ("DEFLATE", "ZLEVEL", 1, 9)]
)
def test_the_level_asked_for_reaches_the_tiles(tmp_path, codec, option, low, high):
    y, x = np.mgrid[0:256, 0:256]
    bands = np.stack([np.sin(x / 9.0 + k) * np.cos(y / 7.0) for k in range(3)]).astype(np.float32)
    _input(tmp_path / "in.tif", np.round(bands, 1))
    sizes = {}
    for level in (low, high):
        for switch in ("1", "0"):
            name = f"{level}-{switch}.tif"
            options = ["--co", f"COMPRESS={codec}", "--co", f"{option}={level}", "--co", "PREDICTOR=3"]
            proc = run_cli("apply", "in.tif", "1,2,3;3,2,1", "-o", name, *options, cwd=tmp_path,
                           env={"PWCONV_RAW_IO": switch})  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            sizes[level, switch] = (tmp_path / name).stat().st_size
    assert sizes[high, "1"] < sizes[low, "1"], sizes  # equal where the level is not passed on
    for level in (low, high):  # the same codec at the same level as GDAL's: within 3%
        assert abs(sizes[level, "1"] / sizes[level, "0"] - 1) < 0.03, sizes


def test_a_crs_that_needs_gdals_sidecar_is_written_by_gdal_with_it(tmp_path):
    bands = np.ones((3, 20, 20), np.float32)
    with rasterio.open(
        tmp_path / "in.tif", "w", driver="GTiff", width=20, height=20, count=3, dtype="float32",
        crs="ESRI:54035", transform=TRANSFORM,
    ) as ds:  # fmt: skip
        ds.write(bands)
    proc = run_cli("apply", "in.tif", "1,2,3", "-o", "out.tif", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.tif.aux.xml").exists()
    assert not _facts(tmp_path / "out.tif")["own"]
    with rasterio.open(tmp_path / "out.tif") as out, rasterio.open(tmp_path / "in.tif") as source:
        assert out.crs == source.crs
