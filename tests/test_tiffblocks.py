"""GeoTIFF blocks read and decoded by pwconv itself, against GDAL reading the same files."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
pytest.importorskip("imagecodecs")

from rasterio.transform import from_origin  # noqa: E402

from pwconv.errors import FormatError  # noqa: E402
from pwconv.io.registry import open_source  # noqa: E402
from pwconv.io.spec import parse_spec  # noqa: E402

from .conftest import assert_clean_error, leftovers, run_cli  # noqa: E402
from .servers import RangeServer  # noqa: E402

# Shapes that leave partial blocks on both edges.
ROWS, COLS, BANDS = 77, 93, 3


def _values(dtype: str, seed: int = 0) -> np.ndarray:
    """(bands, rows, cols) of smooth data with noise, so that predictors matter."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(ROWS), np.arange(COLS))[None] * np.array([1, 3, -2])[:, None, None]
    if np.dtype(dtype).kind == "f":
        return (ramp / 7 + rng.standard_normal((BANDS, ROWS, COLS))).astype(dtype)
    info = np.iinfo(dtype)
    noisy = ramp + rng.integers(-40, 40, (BANDS, ROWS, COLS))
    return np.clip(noisy + (info.min + info.max) // 2, info.min, info.max).astype(dtype)


def _write(path, data: np.ndarray, **options) -> None:
    profile = {
        "driver": "GTiff", "height": ROWS, "width": COLS, "count": data.shape[0], "dtype": data.dtype.name,
        "crs": "EPSG:32633", "transform": from_origin(500000, 4600000, 10, 10),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile, **options) as ds:
        ds.write(data)


def _gdal_read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return np.moveaxis(ds.read(), 0, -1)


def _read(path, index=None):
    source = open_source(parse_spec(str(path)))
    try:
        reader = source.description.reader
        return source.read(index or tuple(slice(None) for _ in source.shape)), reader
    finally:
        source.close()


CASES = [
    (compression, predictor, dtype)
    for compression, predictor, dtype in itertools.product(
        [None, "deflate", "zstd", "lzw"],
        [1, 2, 3],
        ["uint8", "int16", "uint16", "int32", "float32", "float64"],
    )
    if not (predictor == 3 and dtype[0] != "f") and not (compression is None and predictor != 1)
]


@pytest.mark.parametrize("layout", ["tiled pixel", "tiled band", "strips pixel", "strips band"])
@pytest.mark.parametrize(("compression", "predictor", "dtype"), CASES)
def test_blocks_decoded_by_pwconv_match_gdal(tmp_path, layout, compression, predictor, dtype):
    data = _values(dtype)
    tiled, interleave = layout.split()
    options = {"interleave": interleave}
    options |= {"tiled": True, "blockxsize": 32, "blockysize": 16} if tiled == "tiled" else {"blockysize": 10}
    if compression:
        options |= {"compress": compression, "predictor": predictor}
    _write(tmp_path / "in.tif", data, **options)
    expected = _gdal_read(tmp_path / "in.tif")
    got, reader = _read(tmp_path / "in.tif")
    # LZW on disk is GDAL's (its decoder is faster); pwconv reads it at a URL (test below)
    assert reader == ("rasterio" if compression == "lzw" else f"block offsets, {compression or 'raw'}")
    np.testing.assert_array_equal(got, expected)
    window = (slice(5, 70, 3), slice(30, 93, 2), slice(1, 3))  # steps, the edges, some bands
    np.testing.assert_array_equal(_read(tmp_path / "in.tif", window)[0], expected[window])


def test_the_library_reads_them_when_raw_paths_are_off(tmp_path, monkeypatch):
    data = _values("float32")
    _write(
        tmp_path / "in.tif", data, compress="deflate", predictor=3, tiled=True, blockxsize=32, blockysize=32
    )
    monkeypatch.setenv("PWCONV_RAW_IO", "0")
    got, reader = _read(tmp_path / "in.tif")
    assert reader == "rasterio"
    np.testing.assert_array_equal(got, np.moveaxis(data, 0, -1))


@pytest.mark.parametrize("compression", ["jpeg", "packbits"])
def test_codecs_pwconv_does_not_decode_go_to_gdal(tmp_path, compression):
    data = _values("uint8")
    _write(tmp_path / "in.tif", data, compress=compression, tiled=True, blockxsize=32, blockysize=32)
    got, reader = _read(tmp_path / "in.tif")
    assert reader == "rasterio"
    np.testing.assert_array_equal(got, _gdal_read(tmp_path / "in.tif"))


@pytest.mark.parametrize("nodata", [None, 7.0, -3.0])
def test_blocks_never_written_read_as_gdal_reads_them(tmp_path, nodata):
    profile = {
        "driver": "GTiff", "height": ROWS, "width": COLS, "count": 2, "dtype": "int16", "tiled": True,
        "blockxsize": 32, "blockysize": 32, "compress": "deflate", "sparse_ok": True, "nodata": nodata,
        "crs": "EPSG:32633", "transform": from_origin(500000, 4600000, 10, 10),
    }  # fmt: skip
    with rasterio.open(tmp_path / "in.tif", "w", **profile) as ds:
        ds.write(np.full((2, 20, 20), 200, np.int16), window=((40, 60), (50, 70)))
    expected = _gdal_read(tmp_path / "in.tif")
    got, reader = _read(tmp_path / "in.tif")
    assert reader == "block offsets, deflate"
    np.testing.assert_array_equal(got, expected)
    assert (got == 200).sum() == 2 * 20 * 20


def test_apply_on_a_compressed_geotiff_matches_the_reference(tmp_path):
    data = _values("float32")
    _write(tmp_path / "in.tif", data, compress="zstd", predictor=3, tiled=True, blockxsize=32, blockysize=32)
    weights = np.array([[1, -1, 0.5], [0.25, 2, -3]], np.float32)
    np.save(tmp_path / "w.npy", weights)
    proc = run_cli("apply", "in.tif", "w.npy", "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reference = np.einsum("crw,kc->rwk", data.astype(np.float64), weights.astype(np.float64))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), reference, rtol=1e-5, atol=1e-4)


def _damaged(tmp_path, change) -> str:
    data = _values("int16")
    _write(
        tmp_path / "in.tif", data, compress="deflate", predictor=2, tiled=True, blockxsize=32, blockysize=32
    )
    with rasterio.open(tmp_path / "in.tif") as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    raw = bytearray((tmp_path / "in.tif").read_bytes())
    change(raw, offset, size)
    (tmp_path / "in.tif").write_bytes(bytes(raw))
    with pytest.raises(FormatError) as caught:
        _read(tmp_path / "in.tif")
    return caught.value.for_cli()


def test_a_damaged_block_is_one_line_naming_it(tmp_path):
    def garble(raw, offset, size):
        raw[offset + 2 : offset + size] = bytes(size - 2)

    text = _damaged(tmp_path, garble)
    assert "\n" not in text and "block (1, 1, 0)" in text and "damaged" in text


def test_a_damaged_block_ends_the_run_with_exit_2_and_no_output(tmp_path):
    def garble(raw, offset, size):
        raw[offset + 2 : offset + size] = bytes(size - 2)

    _damaged(tmp_path, garble)
    for output in ("out.npy", "out.tif"):
        proc = run_cli("apply", "in.tif", "1,1,1", "-o", output, cwd=tmp_path)
        assert_clean_error(proc, 2, "block (1, 1, 0)", "damaged")
        assert not (tmp_path / output).exists() and not leftovers(tmp_path)


def test_a_block_past_the_end_of_the_file_is_refused(tmp_path):
    def cut(raw, offset, size):
        del raw[offset + size // 2 :]

    text = _damaged(tmp_path, cut)
    assert "\n" not in text and "damaged" in text


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_the_dask_engine_reads_the_blocks_the_same_way(tmp_path, scheduler):
    """Dask's threads share one reader and its processes open their own: both equal the
    numpy engine on a compressed GeoTIFF with predictor."""
    pytest.importorskip("dask.array")
    data = _values("int16")
    _write(
        tmp_path / "in.tif", data, compress="deflate", predictor=2, tiled=True, blockxsize=16, blockysize=16
    )
    np.save(tmp_path / "w.npy", np.array([[1, 2, -1], [0.5, 0, 3]], np.float32))
    for engine, out in (("numpy", "a.npy"), ("dask", "b.npy")):
        extra = ["--scheduler", scheduler] if engine == "dask" else []
        proc = run_cli("apply", "in.tif", "w.npy", "-o", out, "--engine", engine, "--dtype", "float32", *extra,
                       cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), np.load(tmp_path / "a.npy"), rtol=1e-6)
    expected = np.einsum(
        "crw,kc->rwk", data.astype(np.float64), np.load(tmp_path / "w.npy").astype(np.float64)
    )
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), expected, rtol=1e-5, atol=1e-3)


LZW_CASES = [(p, i, d) for p in (1, 2) for i in ("pixel", "band") for d in ("uint16", "float32")]


@pytest.mark.parametrize(("predictor", "interleave", "dtype"), [*LZW_CASES, (3, "pixel", "float64")])
def test_lzw_blocks_at_a_url_decoded_by_pwconv_match_gdal(tmp_path, predictor, interleave, dtype):
    """pwconv decodes LZW only at a URL: read there (through an identity product in float64,
    exact for these values), it equals GDAL's read of the same file on disk."""
    data = _values(dtype)
    options = {"interleave": interleave, "tiled": True, "blockxsize": 32, "blockysize": 16}
    _write(tmp_path / "in.tif", data, compress="lzw", predictor=predictor, **options)
    server = RangeServer(str(tmp_path))
    try:
        info = run_cli("info", f"{server.url}/in.tif", "--json")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)[0]["reader"] == "block offsets, lzw"
        proc = run_cli("apply", f"{server.url}/in.tif", "1,0,0;0,1,0;0,0,1", "-o", tmp_path / "out.npy",
                       "--dtype", "float64")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    finally:
        server.stop()
    np.testing.assert_array_equal(
        np.load(tmp_path / "out.npy"), _gdal_read(tmp_path / "in.tif").astype(np.float64)
    )


@pytest.mark.parametrize("compression", ["deflate", "zstd", "lzw"])
def test_a_cloud_optimized_geotiff_with_overviews_and_a_mask_reads_as_gdal_reads_it(tmp_path, compression):
    """GDAL's COG driver puts overviews and an internal mask in the file, and block leaders and
    trailers around each tile: the full-resolution blocks are still where GDAL says."""
    import rasterio.shutil

    data = _values("uint16")
    _write(tmp_path / "plain.tif", data, tiled=True, blockxsize=32, blockysize=32)
    with rasterio.open(tmp_path / "plain.tif", "r+") as ds:
        ds.write_mask(np.where(np.arange(COLS)[None, :] < 40, 0, 255).repeat(ROWS, 0).astype(np.uint8))
    rasterio.shutil.copy(
        tmp_path / "plain.tif", tmp_path / "cog.tif", driver="COG", compress=compression, predictor=2,
        blocksize=32, overview_resampling="average",
    )  # fmt: skip
    with rasterio.open(tmp_path / "cog.tif") as ds:
        assert ds.overviews(1)  # the layout under test
    got, reader = _read(tmp_path / "cog.tif")
    assert reader == ("rasterio" if compression == "lzw" else f"block offsets, {compression}")
    np.testing.assert_array_equal(got, _gdal_read(tmp_path / "cog.tif"))
