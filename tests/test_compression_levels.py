"""``--compression NAME:LEVEL``: the level reaches every format that takes one, checked by
reading the outputs back with their own libraries; bad levels are one-line errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from pwconv import pointwise_conv

from .conftest import assert_clean_error, run_cli

DATA = np.round(np.random.default_rng(3).standard_normal((48, 40, 6), dtype=np.float32) * 8) / 8
W = np.arange(12, dtype=np.float32).reshape(2, 6) / 5


@pytest.fixture
def folder(tmp_path):
    np.save(tmp_path / "x.npy", DATA)
    np.save(tmp_path / "w.npy", W)
    return tmp_path


def _apply(folder, output: str, compression: str) -> None:
    proc = run_cli(
        "apply", "x.npy", "w.npy", "-o", output, "--compression", compression, "--overwrite", cwd=folder
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("level", [1, 9])
def test_hdf5_gzip_level(folder, level):
    _apply(folder, "y.h5", f"gzip:{level}")
    with h5py.File(folder / "y.h5") as handle:
        assert handle["data"].compression == "gzip" and handle["data"].compression_opts == level
        np.testing.assert_array_equal(handle["data"][...], pointwise_conv(DATA, W))


@pytest.mark.parametrize(
    ("compression", "codec", "level"), [("zstd:19", "ZstdCodec", 19), ("gzip:2", "GzipCodec", 2)]
)
def test_zarr_levels(folder, compression, codec, level):
    _apply(folder, "y.zarr", compression)
    array = zarr.open_array(str(folder / "y.zarr"), mode="r")
    (found,) = array.compressors
    assert type(found).__name__ == codec and found.level == level
    np.testing.assert_array_equal(array[...], pointwise_conv(DATA, W))


@pytest.mark.parametrize("level", [1, 19])
@pytest.mark.parametrize("rows", [40, 512])  # chunks of 125 KiB and of 2 MiB (numcodecs from 1 MiB)
def test_zarr_zstd_level_reaches_the_chunks(tmp_path, rows, level):
    """Each chunk is one zstd frame at the level asked for: as large as zarr's own codec
    makes it at that level (within 2%), whichever implementation pwconv picked."""
    from numcodecs import Zstd

    rng = np.random.default_rng(4)
    data = np.round(rng.standard_normal((rows, 512, 6), dtype=np.float32) * 8) / 8
    np.save(tmp_path / "x.npy", data)
    np.save(tmp_path / "w.npy", W)
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "y.zarr", "--compression", f"zstd:{level}",
                   "--chunks", f"{rows},512,2", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = pointwise_conv(data, W)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "y.zarr"), mode="r")[...], expected)
    (chunk,) = [p for p in (tmp_path / "y.zarr" / "c").rglob("*") if p.is_file()]
    sizes = {other: len(Zstd(level=other).encode(np.ascontiguousarray(expected))) for other in (1, 19)}
    assert abs(sizes[1] - sizes[19]) > 0.05 * sizes[19]  # the levels differ enough to be told apart
    assert abs(chunk.stat().st_size - sizes[level]) <= 0.02 * sizes[level]


@pytest.mark.parametrize("max_memory", ["512MiB", "4KB"])  # one block, or many cutting the chunks
def test_netcdf_gzip_level(folder, max_memory):
    xarray = pytest.importorskip("xarray")
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "y.nc", "--compression", "gzip:7", "--max-memory", max_memory,
                   cwd=folder)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with h5py.File(folder / "y.nc") as handle:  # NetCDF-4 is HDF5 underneath
        assert handle["data"].compression == "gzip" and handle["data"].compression_opts == 7
    with xarray.open_dataset(folder / "y.nc", engine="h5netcdf") as dataset:  # still NetCDF to its readers
        assert dataset["data"].dims == ("dim_0", "dim_1", "channel")
        np.testing.assert_array_equal(dataset["data"].values, pointwise_conv(DATA, W))


@pytest.mark.parametrize(("name", "tag"), [("deflate", "ADOBE_DEFLATE"), ("zstd", "ZSTD")])
def test_tiff_level_changes_the_stream(folder, name, tag):
    sizes = {}
    for level in (1, 9):
        _apply(folder, f"y{level}.tif", f"{name}:{level}")
        with tifffile.TiffFile(folder / f"y{level}.tif") as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION[tag]
            np.testing.assert_allclose(tif.asarray(), pointwise_conv(DATA, W), rtol=1e-6)
        sizes[level] = (folder / f"y{level}.tif").stat().st_size
    assert sizes[9] < sizes[1]  # the level was used: level 9 compresses this data more


@pytest.mark.parametrize(
    ("compression", "output", "fragments"),
    [
        ("gzip:0", "y.h5", ["gzip level from 1 to 9", "gzip:0"]),
        ("gzip:10", "y.h5", ["gzip level from 1 to 9"]),
        ("zstd:23", "y.zarr", ["zstd level from 1 to 22"]),
        ("gzip:fast", "y.h5", ["gzip level", "gzip:fast"]),
        ("lzf:3", "y.h5", ["without a level"]),
        ("brotli:3", "y.h5", ["NAME:LEVEL", "brotli:3"]),
    ],
)
def test_bad_levels_are_one_line_errors(folder, compression, output, fragments):
    proc = run_cli("apply", "x.npy", "w.npy", "-o", output, "--compression", compression, cwd=folder)
    assert_clean_error(proc, 2, *fragments)
    assert not (folder / output).exists()


def test_a_level_the_output_format_does_not_take_names_the_format(folder):
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "y.zarr", "--compression", "deflate:5", cwd=folder)
    assert_clean_error(proc, 2, "deflate")
    assert not (folder / "y.zarr").exists()
