"""HDF5 gzip datasets: chunks found at their offsets and decoded, and gzip outputs' chunks
encoded, by pwconv on every core (libdeflate, or the standard library's zlib). The reads run
on disk and at a URL (a block's chunks fetched by ranges from an HTTP server on 127.0.0.1).

Every read is checked against h5py reading the same file, every output by h5py reading it
back; both implementations run on the same files.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from pwconv import pointwise_conv
from pwconv.errors import FormatError
from pwconv.io import codecs
from pwconv.io.interface import SinkRequest
from pwconv.io.registry import open_sink, open_source
from pwconv.io.spec import parse_spec

from .conftest import assert_clean_error, leftovers, run_cli

DATA = (np.arange(9 * 11 * 6, dtype=np.float32).reshape(9, 11, 6) % 17) / 4
IMPLEMENTATIONS = ["libdeflate", "zlib"]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request, monkeypatch) -> str:
    if request.param == "zlib":
        monkeypatch.setenv(codecs.DEFLATE_VARIABLE, "zlib")
    else:
        monkeypatch.delenv(codecs.DEFLATE_VARIABLE, raising=False)
    assert codecs.deflate_implementation() == request.param
    return request.param


def _write(path: Path, data: np.ndarray = DATA, **options) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=data, **options)


def _indexes(shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    rows, cols, c = shape
    return [
        (slice(0, rows), slice(0, cols), slice(0, c)),
        (slice(1, rows - 1), slice(2, cols - 1), slice(0, c)),  # boxes that cut chunks
        (slice(rows - 2, rows), slice(3, 4), slice(1, c - 1)),
        (slice(0, rows, 2), slice(1, cols, 3), slice(0, c)),  # strided (--stride)
        (slice(3, 3), slice(0, cols), slice(0, c)),  # empty
    ]


@pytest.mark.parametrize(
    "options",
    [
        {"chunks": (2, 11, 6), "compression": "gzip"},  # whole rows, an edge chunk at the end
        {"chunks": (4, 4, 6), "compression": "gzip", "compression_opts": 9},  # tiles, edge tiles
        {"chunks": (3, 5, 4), "compression": "gzip", "shuffle": True},  # byte shuffle, channels chunked
    ],
    ids=["rows", "tiles-level9", "shuffle"],
)
@pytest.mark.parametrize("dtype", ["float32", "int16", "float64"])
def test_gzip_reads_equal_h5py(tmp_path, implementation, options, dtype, located):
    data = (DATA * 4).astype(dtype)
    _write(tmp_path / "x.h5", data, **options)
    source = open_source(parse_spec(located(tmp_path / "x.h5")))
    try:
        assert source.description.reader == f"chunk offsets, {implementation}"  # the path under test
        with h5py.File(tmp_path / "x.h5") as handle:
            for index in _indexes(data.shape):
                np.testing.assert_array_equal(source.read(index), handle["x"][index])
    finally:
        source.close()


def test_unwritten_chunks_and_chunks_kept_unfiltered(tmp_path, implementation, located):
    """A chunk never written reads as the fill value; a chunk whose filter mask says HDF5 kept
    it as it is (deflate is an optional filter) is read raw, as h5py reads it."""
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        ds = handle.create_dataset(
            "x",
            shape=(6, 4, 3),
            dtype="f4",
            chunks=(2, 4, 3),
            compression="gzip",
            shuffle=True,
            fillvalue=-1.5,
        )
        ds[0:2] = 3.0
        raw = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
        ds.id.write_direct_chunk((2, 0, 0), raw.tobytes(), 0b11)  # neither shuffled nor deflated
        shuffled_only = np.frombuffer(raw.tobytes(), np.uint8).reshape(-1, 4).T.tobytes()
        ds.id.write_direct_chunk((4, 0, 0), shuffled_only, 0b10)  # shuffled, deflate skipped
        expected = ds[...]
    np.testing.assert_array_equal(expected[2:4], raw)  # h5py agrees on what the masks mean
    np.testing.assert_array_equal(expected[4:6], raw)
    source = open_source(parse_spec(located(tmp_path / "x.h5")))
    try:
        assert source.description.reader.startswith("chunk offsets")
        np.testing.assert_array_equal(source.read((slice(0, 6), slice(0, 4), slice(0, 3))), expected)
    finally:
        source.close()


def _damaged(tmp_path: Path, chunk: bytes) -> Path:
    with h5py.File(tmp_path / "bad.h5", "w") as handle:
        ds = handle.create_dataset("x", data=DATA, chunks=(3, 11, 6), compression="gzip")
        ds.id.write_direct_chunk((3, 0, 0), chunk, 0)
    return tmp_path / "bad.h5"


@pytest.mark.parametrize(
    "chunk",
    [
        b"\x78\x9c" + bytes(range(200)),  # not a deflate stream
        zlib.compress(bytes(3 * 11 * 6 * 4 * 50)),  # inflates to 50 chunks' worth (a bomb)
        zlib.compress(bytes(3 * 11 * 6 * 4 - 4)),  # 4 bytes short
        zlib.compress(bytes(3 * 11 * 6 * 4))[:-6],  # cut off
        b"\x00",
    ],
    ids=["garbage", "too-long", "too-short", "cut", "one-byte"],
)
def test_damaged_chunks_are_one_line_errors(tmp_path, implementation, chunk, located):
    path = _damaged(tmp_path, chunk)
    source = open_source(parse_spec(located(path)))
    try:
        source.read((slice(0, 3), slice(0, 11), slice(0, 6)))  # the chunks before are fine
        with pytest.raises(FormatError, match=r"chunk \(1, 0, 0\)"):
            source.read((slice(0, 9), slice(0, 11), slice(0, 6)))
    finally:
        source.close()
    proc = run_cli("apply", located(path), "1,1,1,1,1,1", "-o", "out.h5", cwd=tmp_path)
    assert_clean_error(proc, 2, located(path), "chunk (1, 0, 0)")
    assert not (tmp_path / "out.h5").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize(
    ("extra", "chunks"),
    [
        ([], None),  # the automatic chunks
        (["--chunks", "2,4,3"], (2, 4, 3)),  # chunks the blocks cut, edge chunks on two axes
        (["--chunks", "9,11,3"], (9, 11, 3)),  # one chunk, filled by every block
    ],
)
def test_gzip_outputs_are_what_h5py_reads_back(tmp_path, implementation, extra, chunks):
    np.save(tmp_path / "x.npy", DATA)
    w = np.arange(18, dtype=np.float32).reshape(3, 6) - 8
    np.save(tmp_path / "w.npy", w)
    # A tiny memory budget: many blocks, most not aligned to the output chunks.
    args = ["apply", "x.npy", "w.npy", "-o", "y.h5", "--compression", "gzip", "--max-memory", "2KB", *extra]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "y.h5") as handle:
        ds = handle["data"]
        assert ds.compression == "gzip" and ds.compression_opts == 4
        if chunks is not None:
            assert ds.chunks == chunks
        assert ds.id.get_num_chunks() == np.prod([-(-n // c) for n, c in zip(ds.shape, ds.chunks)])
        np.testing.assert_array_equal(ds[...], pointwise_conv(DATA, w))
    # and pwconv reads its own output back through the same path
    back = run_cli("apply", "y.h5", "1,0,0", "-o", "z.npy", cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy")[..., 0], pointwise_conv(DATA, w)[..., 0])


def test_gzip_sink_writes_whole_chunks_and_leaves_nothing_on_failure(tmp_path, implementation):
    request = SinkRequest(
        (4, 5, 2), np.dtype(np.float32), channel_axis=2, compression="gzip", chunks=(3, 5, 2)
    )
    sink = open_sink(parse_spec(str(tmp_path / "y.h5"), what="output"), request)
    assert sink.writer == f"whole chunks, {implementation}"
    block = np.arange(40, dtype=np.float32).reshape(4, 5, 2)
    sink.write((slice(0, 1), slice(0, 5), slice(0, 2)), block[:1])  # a chunk begun, not finished
    sink.abort()
    assert list(tmp_path.iterdir()) == []
    sink = open_sink(parse_spec(str(tmp_path / "y.h5"), what="output"), request)
    sink.write((slice(0, 1), slice(0, 5), slice(0, 2)), block[:1])
    sink.write((slice(1, 4), slice(0, 5), slice(0, 2)), block[1:])
    sink.commit()
    with h5py.File(tmp_path / "y.h5") as handle:
        np.testing.assert_array_equal(handle["data"][...], block)


def test_gzip_round_trip_with_other_implementation(tmp_path, monkeypatch):
    """What libdeflate writes, zlib reads, and the other way round."""
    np.save(tmp_path / "x.npy", DATA)
    for writer, reader in (("libdeflate", "zlib"), ("zlib", "libdeflate")):
        env = {codecs.DEFLATE_VARIABLE: "zlib"} if writer == "zlib" else {codecs.DEFLATE_VARIABLE: ""}
        proc = run_cli("apply", "x.npy", "1,1,1,1,1,1", "-o", f"{writer}.h5", "--compression", "gzip", env=env,
                       cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        monkeypatch.setenv(codecs.DEFLATE_VARIABLE, "zlib" if reader == "zlib" else "")
        source = open_source(parse_spec(str(tmp_path / f"{writer}.h5")))
        try:
            assert source.description.reader == f"chunk offsets, {reader}"
            got = source.read((slice(0, 9), slice(0, 11), slice(0, 1)))
        finally:
            source.close()
        np.testing.assert_allclose(got[..., 0], DATA.sum(axis=-1), rtol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "gzip", "chunks": (1, 4, 4, 6)},
        {"compression": "gzip", "shuffle": True, "chunks": (1, 4, 4, 6)},
        {"chunks": (1, 4, 4, 6)},  # unfiltered chunks: read at their offsets
        {},  # contiguous
    ],
    ids=["gzip", "shuffle-gzip", "unfiltered", "contiguous"],
)
def test_netcdf_gzip_variables_read_equal_h5netcdf(tmp_path, implementation, options, located):
    h5netcdf = pytest.importorskip("h5netcdf")
    cube = np.stack([DATA, DATA * 2, DATA - 1])  # (time, y, x, band)
    with h5netcdf.File(tmp_path / "x.nc", "w") as handle:
        handle.dimensions = {"time": 3, "y": 9, "x": 11, "band": 6}
        var = handle.create_variable("refl", ("time", "y", "x", "band"), dtype="f4", **options)
        var[...] = cube
    source = open_source(parse_spec(located(tmp_path / "x.nc")))
    try:
        gzip = "compression" in options
        assert source.description.reader == (f"chunk offsets, {implementation}" if gzip else "raw offsets")
        with h5netcdf.File(tmp_path / "x.nc", "r") as handle:
            for index in [
                (slice(0, 3), slice(0, 9), slice(0, 11), slice(0, 6)),
                (slice(1, 3), slice(2, 8), slice(1, 10, 2), slice(0, 6)),
            ]:
                np.testing.assert_array_equal(source.read(index), handle.variables["refl"][index])
    finally:
        source.close()
    w = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.save(tmp_path / "w.npy", w)
    proc = run_cli(
        "apply", located(tmp_path / "x.nc"), "w.npy", "-o", "y.npy", "--max-memory", "4KB", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), pointwise_conv(cube, w), rtol=1e-6)
