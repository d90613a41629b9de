"""TIFF blocks read and decoded by pwconv itself: GeoTIFFs against GDAL reading the same files,
plain TIFFs against tifffile."""

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


def _block_1_1(tmp_path, kind: str) -> tuple[int, int]:
    """Write in.tif (int16, deflate, predictor 2, 32x32 tiles), a GeoTIFF through GDAL or a
    plain TIFF through tifffile; the offset and size of its block (1, 1)."""
    data = _values("int16")
    if kind == "geotiff":
        _write(
            tmp_path / "in.tif",
            data,
            compress="deflate",
            predictor=2,
            tiled=True,
            blockxsize=32,
            blockysize=32,
        )
        with rasterio.open(tmp_path / "in.tif") as ds:
            offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
            return offset, int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", np.moveaxis(data, 0, -1), compression="zlib", predictor=2,
                     tile=(32, 32), photometric="minisblack", planarconfig="contig")  # fmt: skip
    with tifffile.TiffFile(tmp_path / "in.tif") as tif:
        index = -(-COLS // 32) + 1
        return tif.pages[0].dataoffsets[index], tif.pages[0].databytecounts[index]


def _damaged(tmp_path, change, kind: str) -> str:
    offset, size = _block_1_1(tmp_path, kind)
    raw = bytearray((tmp_path / "in.tif").read_bytes())
    change(raw, offset, size)
    (tmp_path / "in.tif").write_bytes(bytes(raw))
    with pytest.raises(FormatError) as caught:
        _read(tmp_path / "in.tif")
    return caught.value.for_cli()


def _garble(raw, offset, size):
    raw[offset + 2 : offset + size] = bytes(size - 2)


KINDS = pytest.mark.parametrize("kind", ["geotiff", "plain"])


@KINDS
def test_a_damaged_block_is_one_line_naming_it(tmp_path, kind):
    text = _damaged(tmp_path, _garble, kind)
    assert "\n" not in text and "block (1, 1, 0)" in text and "damaged" in text


@KINDS
def test_a_damaged_block_ends_the_run_with_exit_2_and_no_output(tmp_path, kind):
    _damaged(tmp_path, _garble, kind)
    for output in ("out.npy", "out.tif"):
        proc = run_cli("apply", "in.tif", "1,1,1", "-o", output, cwd=tmp_path)
        assert_clean_error(proc, 2, "block (1, 1, 0)", "damaged")
        assert not (tmp_path / output).exists() and not leftovers(tmp_path)


@KINDS
def test_a_block_past_the_end_of_the_file_is_refused(tmp_path, kind):
    def cut(raw, offset, size):
        del raw[offset + size // 2 :]

    text = _damaged(tmp_path, cut, kind)
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


# Plain TIFFs (tifffile's reader): the same blocks, found through tifffile's pages.

PLAIN_CODECS = [None, "zlib", "zstd", "lzw"]
PLAIN_DTYPES = ["uint8", "int16", "uint16", "float32", "float64"]


def _tifffile_read(path) -> np.ndarray:
    """tifffile's read of the first series as (rows, cols, channels), the channels its other
    axes in storage order: what pwconv presents."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, data = series.axes, series.asarray()
    order = [axes.index("Y"), axes.index("X"), *(i for i, a in enumerate(axes) if a not in "YX")]
    moved = data.transpose(order)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def _plain(path, data: np.ndarray, *, pages: int, planar: bool, tiled: bool, **options) -> None:
    """``data`` (bands, rows, cols) as ``pages`` pages of its bands split evenly, each page's
    samples contiguous or planar, in tiles or in strips."""
    import tifffile

    split = np.stack(np.split(data, pages))  # (pages, samples, rows, cols)
    stored = split if planar else np.moveaxis(split, 1, -1)
    layout = {"tile": (16, 32)} if tiled else {"rowsperstrip": 10}
    tifffile.imwrite(
        path, stored if pages > 1 else stored[0], photometric="minisblack",
        planarconfig="separate" if planar else "contig", **layout, **options,
    )  # fmt: skip


@pytest.mark.parametrize("layout", ["tiled", "strips"])
@pytest.mark.parametrize("planar", [False, True], ids=["contig", "planar"])
@pytest.mark.parametrize("pages", [1, 3])
@pytest.mark.parametrize("compression", PLAIN_CODECS)
def test_plain_tiff_blocks_decoded_by_pwconv_match_tifffile(tmp_path, layout, planar, pages, compression):
    for dtype in PLAIN_DTYPES:
        predictors = [1] if compression is None else [1, 3] if dtype[0] == "f" else [1, 2]
        for predictor in predictors:
            data = np.concatenate([_values(dtype), _values(dtype, seed=1)])  # 6 bands
            path = tmp_path / f"{dtype}-{predictor}.tif"
            options = {"compression": compression, "predictor": predictor if predictor > 1 else None}
            _plain(path, data, pages=pages, planar=planar, tiled=layout == "tiled", **options)
            expected = _tifffile_read(path)
            got, reader = _read(path)
            # uncompressed strips written one after another are a memory map of the file
            codec = {None: "raw", "zlib": "deflate"}.get(compression, compression)
            mapped = compression is None and layout == "strips"
            assert reader == ("memory map" if mapped else f"block offsets, {codec}")
            np.testing.assert_array_equal(got, expected)
            window = (slice(5, 70, 3), slice(30, 93, 2), slice(1, 5))
            np.testing.assert_array_equal(_read(path, window)[0], expected[window])


@pytest.mark.parametrize("case", ["big-endian", "packbits", "raw io off"])
def test_plain_tiffs_pwconv_does_not_decode_go_to_tifffile(tmp_path, monkeypatch, case):
    import tifffile

    data = np.moveaxis(_values("uint16"), 0, -1)
    if case == "big-endian":
        tifffile.imwrite(tmp_path / "in.tif", data, byteorder=">", compression="zlib", tile=(16, 16))
    else:
        tifffile.imwrite(tmp_path / "in.tif", data, compression="packbits" if case == "packbits" else "zlib",
                         tile=(16, 16))  # fmt: skip
    if case == "raw io off":
        monkeypatch.setenv("PWCONV_RAW_IO", "0")
    got, reader = _read(tmp_path / "in.tif")
    assert reader == "tifffile"
    np.testing.assert_array_equal(got, _tifffile_read(tmp_path / "in.tif"))


def test_tiles_never_written_read_as_zeros_as_tifffile_reads_them(tmp_path):
    data = np.moveaxis(_values("int16"), 0, -1)
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", data, compression="zlib", tile=(16, 16), photometric="minisblack",
                     planarconfig="contig")  # fmt: skip
    missing = 2 * -(-COLS // 16) + 1  # tile (2, 1): no offset and no bytes, as a sparse writer leaves it
    raw = bytearray((tmp_path / "in.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "in.tif") as tif:
        for name in ("TileOffsets", "TileByteCounts"):
            tag = tif.pages[0].tags[name]
            width = np.dtype(tag.dataformat[-1]).itemsize
            at = tag.valueoffset + width * missing
            raw[at : at + width] = bytes(width)
    (tmp_path / "in.tif").write_bytes(bytes(raw))
    got, reader = _read(tmp_path / "in.tif")
    assert reader == "block offsets, deflate"
    np.testing.assert_array_equal(got, _tifffile_read(tmp_path / "in.tif"))
    assert not got[32:48, 16:32].any() and got[32:48, :16].any()


def test_apply_on_a_compressed_multi_page_tiff_matches_the_reference(tmp_path):
    """Three pages of two planar samples each are six channels, page by page."""
    data = np.concatenate([_values("float32"), _values("float32", seed=1)])
    _plain(tmp_path / "in.tif", data, pages=3, planar=True, tiled=True, compression="zstd", predictor=3)
    weights = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    np.save(tmp_path / "w.npy", weights)
    proc = run_cli("apply", "in.tif", "w.npy", "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reference = np.einsum("crw,kc->rwk", data.astype(np.float64), weights.astype(np.float64))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), reference, rtol=1e-5, atol=1e-4)


OUTPUT_CASES = [
    ("deflate", 1, "float32"), ("deflate", 3, "float64"), ("zstd", 2, "int16"), ("zstd", 3, "float32"),
    ("lzw", 2, "uint16"), ("lzw", 1, "uint8"),
]  # fmt: skip


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize(("compression", "predictor", "dtype"), OUTPUT_CASES)
def test_a_compressed_tiff_output_encodes_strips_as_blocks_complete_them_in_any_order(
    tmp_path, channels, compression, predictor, dtype
):
    """Blocks that cut strips in rows and columns, written out of order: the file tifffile
    and GDAL read is the image, in strips of about 256 KiB, with the codec and predictor
    asked for."""
    import tifffile

    from pwconv.io.interface import SinkRequest
    from pwconv.io.registry import open_sink

    rng = np.random.default_rng(3)
    shape = (203, 151, channels)
    image = (rng.integers(0, 1000, shape) - (0 if dtype[0] == "u" else 500)).astype(dtype)
    if dtype[0] == "f":
        image = image / 7  # values with all their bytes in use
    blocks = [(slice(r, r + 37), slice(c, c + 60)) for r in range(0, 203, 37) for c in range(0, 151, 60)]
    rng.shuffle(blocks)
    path = tmp_path / "out.tif"
    request = SinkRequest(shape, np.dtype(dtype), channel_axis=2, compression=compression,
                          options={"PREDICTOR": str(predictor)})  # fmt: skip
    sink = open_sink(parse_spec(str(path)), request)
    for rows, cols in blocks:
        sink.write((rows, cols, slice(None)), image[rows, cols])
    sink.commit()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression.name == {"deflate": "ADOBE_DEFLATE"}.get(compression, compression.upper())
        assert int(page.predictor) == predictor
        assert page.rowsperstrip == min(203, (1 << 18) // (151 * channels * image.itemsize))
        np.testing.assert_array_equal(tif.asarray().reshape(shape), image)
    np.testing.assert_array_equal(_gdal_read(path).reshape(shape), image)
    got, reader = _read(path)  # pwconv's own reader, through the same strips
    assert reader == f"block offsets, {compression}"
    np.testing.assert_array_equal(got.reshape(shape), image)


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--co", "predictor=2", "--compression", "zstd"], ("integer output for predictor=2", "float32")),
        (["--co", "predictor=3", "--dtype", "int16", "--compression", "lzw"], ("floating-point", "int16")),
        (["--co", "predictor=3"], ("--compression deflate, zstd or lzw", "found none")),
        (["--co", "predictor=4", "--compression", "lzw"], ("predictor=1, 2 or 3", "predictor=4")),
        (["--compression", "lzw:5"], ("lzw without a level",)),
    ],
)
def test_a_tiff_output_refuses_what_it_cannot_honour(tmp_path, options, fragments):
    np.save(tmp_path / "x.npy", np.ones((8, 8, 2), np.float32))
    proc = run_cli("apply", "x.npy", "1,1", "-o", "out.tif", *options, cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert not (tmp_path / "out.tif").exists() and not leftovers(tmp_path)


def test_a_failed_deflate_tiff_output_leaves_nothing(tmp_path):
    from pwconv.io.interface import SinkRequest
    from pwconv.io.registry import open_sink

    request = SinkRequest((64, 64, 2), np.dtype(np.uint16), channel_axis=2, compression="deflate")
    sink = open_sink(parse_spec(str(tmp_path / "out.tif")), request)
    sink.write((slice(0, 32), slice(None), slice(None)), np.ones((32, 64, 2), np.uint16))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_multi_page_tiff_is_read_by_pages_or_refused_where_gdal_would_read_one(tmp_path):
    """GDAL reads a multi-page TIFF's first page only. A plain one at a URL (where a .tif is
    GDAL's) is read through tifffile instead, its pages as channels, as on disk; a
    georeferenced one, on disk or at a URL, is one line and exit 2, not the first page."""
    import tifffile

    pages = np.stack([np.moveaxis(_values("uint16", seed=i), 0, -1) for i in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="rgb", planarconfig="contig", compression="zlib",
                     predictor=2, tile=(16, 32))  # fmt: skip
    tifffile.imwrite(
        tmp_path / "packed.tif", pages, photometric="rgb", planarconfig="contig", compression="packbits"
    )
    geokeys = [(33550, "d", 3, (10.0, 10.0, 0.0), True), (33922, "d", 6, (0, 0, 0, 5e5, 4.6e6, 0), True),
               (34735, "H", 8, (1, 1, 0, 1, 1024, 0, 1, 1), True)]  # fmt: skip
    with tifffile.TiffWriter(tmp_path / "geo.tif") as tif:
        for page in pages:
            tif.write(page, photometric="rgb", extratags=geokeys)
    expected = np.moveaxis(pages, 0, 2).reshape(ROWS, COLS, 9).astype(np.float64)
    mix = ";".join(",".join("1" if j == i else "0" for j in range(9)) for i in range(9))  # the identity
    proc = run_cli("apply", "geo.tif", "1,1,1", "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "3 pages", "GTIFF_DIR:2:")
    server = RangeServer(str(tmp_path))
    try:
        for name, reader in (("stack.tif", "block offsets, deflate"), ("packed.tif", "tifffile")):
            info = run_cli("info", f"{server.url}/{name}", "--json")
            assert info.returncode == 0, info.stderr
            assert json.loads(info.stdout)[0]["reader"] == reader
            proc = run_cli("apply", f"{server.url}/{name}", mix, "-o", tmp_path / "out.npy", "--dtype", "float64",
                           "--overwrite")  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
        refused = run_cli("apply", f"{server.url}/geo.tif", "1,1,1", "-o", tmp_path / "geo.npy")
    finally:
        server.stop()
    assert_clean_error(refused, 2, "3 pages", "GTIFF_DIR:2:")
    assert not (tmp_path / "geo.npy").exists()
