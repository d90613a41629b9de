"""HDF5 datasets whose bytes are raw in the file: read and written with positioned I/O.

Every result is checked against h5py reading or writing the same data itself. The reads run
on disk and at a URL (runs fetched by ranges from an HTTP server on 127.0.0.1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from pwconv import pointwise_conv
from pwconv.errors import FormatError
from pwconv.io.interface import SinkRequest
from pwconv.io.rawio import RawChunks
from pwconv.io.registry import open_sink, open_source
from pwconv.io.spec import parse_spec

from .conftest import assert_clean_error, leftovers, run_cli

DATA = np.arange(7 * 10 * 6, dtype=np.float32).reshape(7, 10, 6) / 7


def _write(path: Path, data: np.ndarray = DATA, **options) -> None:
    with h5py.File(path, "w", **options.pop("file", {})) as handle:
        handle.create_dataset("x", data=data, **options)


@pytest.mark.parametrize(
    "options",
    [
        {},  # contiguous
        {"chunks": (2, 10, 6)},  # whole rows, an edge chunk at the end
        {"chunks": (3, 4, 6)},  # tiles: boxes cut chunks along two axes
        {"chunks": (2, 3, 4)},  # even the channel axis is chunked
        {"file": {"userblock_size": 512}, "chunks": (4, 4, 6)},  # data addresses past a user block
    ],
    ids=["contiguous", "rows", "tiles", "channels-chunked", "userblock"],
)
def test_raw_reads_equal_h5py(tmp_path, options, located):
    _write(tmp_path / "x.h5", **options)
    source = open_source(parse_spec(located(tmp_path / "x.h5")))
    try:
        assert source.description.reader == "raw offsets"  # the raw path is the one under test
        for index in [
            (slice(0, 7), slice(0, 10), slice(0, 6)),
            (slice(1, 6), slice(2, 9), slice(0, 6)),
            (slice(5, 7), slice(3, 4), slice(1, 5)),
            (slice(0, 7, 2), slice(1, 10, 3), slice(0, 6)),  # strided (--stride)
            (slice(3, 3), slice(0, 10), slice(0, 6)),  # empty
        ]:
            np.testing.assert_array_equal(source.read(index), DATA[index])
    finally:
        source.close()


def test_unwritten_chunks_read_as_the_fill_value(tmp_path, located):
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        ds = handle.create_dataset("x", shape=(6, 4, 3), dtype="f4", chunks=(2, 4, 3), fillvalue=-1.5)
        ds[2:4] = 7.0
    source = open_source(parse_spec(located(tmp_path / "x.h5")))
    try:
        assert source.description.reader == "raw offsets"
        expected = np.full((6, 4, 3), -1.5, np.float32)
        expected[2:4] = 7.0
        np.testing.assert_array_equal(source.read((slice(0, 6), slice(0, 4), slice(0, 3))), expected)
    finally:
        source.close()


@pytest.mark.parametrize(
    "options",
    [
        {"chunks": (2, 10, 6), "compression": "lzf"},
        {"chunks": (2, 10, 6), "shuffle": True},  # shuffle without gzip
        {"chunks": (2, 10, 6), "compression": "gzip", "fletcher32": True},
    ],
    ids=["lzf", "shuffle", "gzip-fletcher32"],
)
def test_filtered_datasets_go_through_h5py(tmp_path, options, located):
    _write(tmp_path / "x.h5", **options)
    source = open_source(parse_spec(located(tmp_path / "x.h5")))
    try:
        assert source.description.reader == "h5py"
        np.testing.assert_array_equal(source.read((slice(1, 5), slice(0, 10), slice(0, 6))), DATA[1:5])
    finally:
        source.close()


def test_big_endian_data_goes_through_h5py(tmp_path):
    _write(tmp_path / "x.h5", DATA.astype(">f4"))
    source = open_source(parse_spec(str(tmp_path / "x.h5")))
    try:
        assert source.description.reader == "h5py"
        np.testing.assert_array_equal(source.read((slice(0, 7), slice(0, 10), slice(0, 6))), DATA)
    finally:
        source.close()


def test_chunks_past_the_end_of_a_truncated_file_are_refused(tmp_path, located):
    _write(tmp_path / "x.h5", chunks=(1, 10, 6))
    with h5py.File(tmp_path / "x.h5") as handle:
        last = handle["x"].id.get_chunk_info(6).byte_offset
    data = (tmp_path / "x.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: last + 8])  # the file ends inside the last chunk
    try:
        source = open_source(parse_spec(located(tmp_path / "cut.h5")))
    except FormatError as exc:
        assert "truncated" in str(exc)
    else:
        source.close()
        pytest.fail("a chunk past the end of the file was not refused")
    proc = run_cli("apply", located(tmp_path / "cut.h5"), "1,1,1,1,1,1", "-o", "out.h5", cwd=tmp_path)
    assert_clean_error(proc, 2, located(tmp_path / "cut.h5"))
    assert not (tmp_path / "out.h5").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize(
    ("extra", "chunks"),
    [
        ([], (2, 10, 3)),  # the automatic chunks
        (["--chunks", "3,4,3"], (3, 4, 3)),  # chunks that blocks cut
        (["--chunks", "none"], None),  # contiguous
    ],
)
def test_raw_writes_equal_the_in_memory_result(tmp_path, extra, chunks):
    np.save(tmp_path / "x.npy", DATA)
    w = np.arange(18, dtype=np.float32).reshape(3, 6) - 8
    np.save(tmp_path / "w.npy", w)
    # A tiny memory budget: many blocks, most not aligned to the output chunks.
    args = ["apply", "x.npy", "w.npy", "-o", "y.h5", "--max-memory", "2KB", *extra]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "y.h5") as handle:
        ds = handle["data"]
        if chunks is not None:
            assert ds.chunks is not None and ds.compression is None
        np.testing.assert_array_equal(ds[...], pointwise_conv(DATA, w))


def test_lzf_output_is_written_by_h5py(tmp_path):
    np.save(tmp_path / "x.npy", DATA)
    proc = run_cli("apply", "x.npy", "1,2,3,4,5,6", "-o", "y.h5", "--compression", "lzf", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "y.h5") as handle:
        assert handle["data"].compression == "lzf"
        np.testing.assert_allclose(handle["data"][...], DATA @ np.arange(1, 7, dtype=np.float32)[:, None])


def test_raw_sink_keeps_attributes_and_leaves_nothing_on_failure(tmp_path):
    request = SinkRequest((4, 5, 2), np.dtype(np.float32), channel_axis=2, attrs={"pwconv_weights": "w.npy"})
    sink = open_sink(parse_spec(str(tmp_path / "y.h5"), what="output"), request)
    assert sink.writer == "raw offsets"
    block = np.arange(40, dtype=np.float32).reshape(4, 5, 2)
    sink.write((slice(0, 4), slice(0, 5), slice(0, 2)), block)
    sink.commit()
    with h5py.File(tmp_path / "y.h5") as handle:
        assert handle["data"].attrs["pwconv_weights"] == "w.npy"
        np.testing.assert_array_equal(handle["data"][...], block)
    failed = open_sink(
        parse_spec(str(tmp_path / "z.h5"), what="output"), dataclasses.replace(request, attrs={})
    )
    failed.write((slice(0, 2), slice(0, 5), slice(0, 2)), block[:2])
    failed.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.h5"]


def test_raw_layout_checks_every_address_against_the_file(tmp_path):
    path = tmp_path / "raw.bin"
    path.write_bytes(np.arange(24, dtype=np.float32).tobytes())
    with open(path, "rb") as handle:
        fd = handle.fileno()
        inside = RawChunks(fd, "raw.bin", (4, 6), np.dtype(np.float32), (2, 6), {(0, 0): 0, (1, 0): 48})
        inside.check_inside(96)
        np.testing.assert_array_equal(
            inside.read_box((slice(1, 4), slice(2, 5))), np.arange(24).reshape(4, 6)[1:4, 2:5]
        )
        lying = RawChunks(fd, "raw.bin", (4, 6), np.dtype(np.float32), (2, 6), {(0, 0): 0, (1, 0): 64})
        with pytest.raises(FormatError, match="truncated or damaged"):
            lying.check_inside(96)
        # A file that shrinks after it was checked: the short read is named, not a crash.
        with pytest.raises(FormatError, match="truncated"):
            lying.read_box((slice(0, 4), slice(0, 6)))


def test_blocks_of_whole_chunks_in_file_order_are_views_of_the_map(tmp_path):
    _write(tmp_path / "x.h5", chunks=(2, 10, 6))
    source = open_source(parse_spec(str(tmp_path / "x.h5")))
    try:
        whole_chunks = source.read((slice(2, 6), slice(0, 10), slice(0, 6)))
        assert not whole_chunks.flags.writeable  # a view of the read-only map
        np.testing.assert_array_equal(whole_chunks, DATA[2:6])
        source.release((slice(2, 6), slice(0, 10), slice(0, 6)))  # pages dropped, data still there
        np.testing.assert_array_equal(whole_chunks, DATA[2:6])
        rows = source.read((slice(1, 5), slice(0, 10), slice(0, 6)))  # parts of chunks, still one run
        assert not rows.flags.writeable
        np.testing.assert_array_equal(rows, DATA[1:5])
        tile = source.read((slice(1, 5), slice(2, 7), slice(0, 6)))  # many runs: a copy
        assert tile.flags.writeable  # its own memory, not the read-only map
        np.testing.assert_array_equal(tile, DATA[1:5, 2:7])
    finally:
        source.close()
