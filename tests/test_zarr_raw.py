"""Uncompressed Zarr v3 arrays read and written without the zarr package.

pwconv parses and writes ``zarr.json`` itself for arrays of plain little-endian chunk files;
every result is checked against the real zarr library reading or writing the same store.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zarr

from pwconv import pointwise_conv
from pwconv.errors import FormatError
from pwconv.io.formats import zarr as zarr_store
from pwconv.io.registry import open_source
from pwconv.io.spec import parse_spec

from .conftest import cli_in_process, run_cli

DATA = np.arange(7 * 10 * 6, dtype=np.float32).reshape(7, 10, 6) / 7
W = np.arange(18, dtype=np.float32).reshape(3, 6) - 8


def _read_all(path) -> tuple[np.ndarray, object]:
    source = open_source(parse_spec(str(path)))
    try:
        whole = tuple(slice(0, n) for n in source.shape)
        return source.read(whole), source
    finally:
        source.close()


@pytest.mark.parametrize(
    "options",
    [
        {"chunks": (2, 10, 6)},
        {"chunks": (3, 4, 4)},  # edge chunks on every axis
        {"chunks": (2, 10, 6), "chunk_key_encoding": {"name": "v2", "separator": "."}},
        {"chunks": (2, 10, 6), "chunk_key_encoding": {"name": "default", "separator": "."}},
    ],
    ids=["rows", "edges", "v2-keys", "dot-separator"],
)
def test_raw_reads_equal_zarr(tmp_path, options):
    store = tmp_path / "x.zarr"
    zarr.create_array(store=str(store), data=DATA, compressors=None, zarr_format=3, **options)
    assert zarr_store.read_raw_metadata(str(store)) is not None  # the path under test
    data, source = _read_all(store)
    np.testing.assert_array_equal(data, DATA)
    assert source.description.reader == "chunk files"  # zarr was never asked


@pytest.mark.parametrize("fill", [np.nan, -2.5, np.inf])
def test_chunks_never_written_read_as_the_fill_value(tmp_path, fill):
    store = tmp_path / "x.zarr"
    array = zarr.create_array(
        store=str(store),
        shape=(6, 4, 3),
        dtype="float32",
        chunks=(2, 4, 3),
        compressors=None,
        fill_value=fill,
    )
    array[2:4] = 7.0
    expected = np.full((6, 4, 3), fill, np.float32)
    expected[2:4] = 7.0
    assert zarr_store.read_raw_metadata(str(store)) is not None
    data, _ = _read_all(store)
    np.testing.assert_array_equal(data, expected)


@pytest.mark.parametrize(
    "change",
    [
        {"codecs": [{"name": "bytes", "configuration": {"endian": "big"}}]},
        {"data_type": "string"},
        {"fill_value": "0x7fc00000"},
        {"chunk_grid": {"name": "rectilinear", "configuration": {}}},
        {"storage_transformers": [{"name": "sharding"}]},
        {"zarr_format": 2},
    ],
    ids=["big-endian", "string", "hex-fill", "irregular-grid", "transformer", "v2"],
)
def test_metadata_pwconv_does_not_know_goes_to_zarr(tmp_path, change):
    store = tmp_path / "x.zarr"
    zarr.create_array(store=str(store), data=DATA, chunks=(2, 10, 6), compressors=None, zarr_format=3)
    meta = json.loads((store / "zarr.json").read_text())
    meta.update(change)
    (store / "zarr.json").write_text(json.dumps(meta))
    assert zarr_store.read_raw_metadata(str(store)) is None


def test_gzip_stores_go_through_zarr(tmp_path):
    store = tmp_path / "gzip.zarr"
    zarr.create_array(
        store=str(store), data=DATA, chunks=(2, 10, 6), zarr_format=3, compressors=zarr.codecs.GzipCodec()
    )
    assert zarr_store.read_raw_metadata(str(store), compressed=True) is None
    data, source = _read_all(store)
    np.testing.assert_array_equal(data, DATA)
    assert source.description.reader == "zarr"


BLOSC = [
    zarr.codecs.BloscCodec(),  # zstd, byte shuffle
    zarr.codecs.BloscCodec(cname="lz4", clevel=9, shuffle="bitshuffle"),
    zarr.codecs.BloscCodec(cname="zlib", clevel=1, shuffle="noshuffle", blocksize=256),
    zarr.codecs.BloscCodec(cname="lz4hc", typesize=4, shuffle="shuffle"),
]


@pytest.mark.parametrize("compressor", BLOSC, ids=["default", "lz4-bitshuffle", "zlib-noshuffle", "lz4hc"])
@pytest.mark.parametrize("dtype", ["float32", "int16", "float64"])
def test_blosc_chunks_decoded_by_pwconv_equal_zarr(tmp_path, compressor, dtype):
    store = tmp_path / "x.zarr"
    array = zarr.create_array(
        store=str(store), shape=DATA.shape, chunks=(3, 4, 4), dtype=dtype, zarr_format=3, fill_value=-3,
        compressors=compressor,
    )  # fmt: skip
    array[:5] = (DATA[:5] * 10).astype(dtype)  # the last rows' chunks are never written
    expected = array[...]
    source = open_source(parse_spec(str(store)))
    try:
        assert source.description.reader == "chunk files, blosc by imagecodecs"
        for index in [(slice(0, 7), slice(0, 10), slice(0, 6)), (slice(1, 6), slice(2, 9), slice(1, 5))]:
            np.testing.assert_array_equal(source.read(index), expected[index])
    finally:
        source.close()


@pytest.mark.parametrize(
    "options",
    [
        {"chunks": (2, 10, 6)},  # zarr's default compressor: zstd level 0
        {"chunks": (3, 4, 4), "compressors": zarr.codecs.ZstdCodec(level=7, checksum=True)},  # edges
    ],
    ids=["default", "edges-checksum"],
)
def test_zstd_chunks_decoded_by_pwconv_equal_zarr(tmp_path, options):
    store = tmp_path / "x.zarr"
    array = zarr.create_array(
        store=str(store), shape=DATA.shape, dtype="f4", zarr_format=3, fill_value=-3, **options
    )
    array[:5] = DATA[:5]  # the last rows' chunks are never written: the fill value
    expected = array[...]
    source = open_source(parse_spec(str(store)))
    try:
        assert source.description.reader == "chunk files, zstd by imagecodecs"
        for index in [
            (slice(0, 7), slice(0, 10), slice(0, 6)),
            (slice(1, 6), slice(2, 9), slice(1, 5)),
            (slice(0, 7, 2), slice(1, 10, 3), slice(0, 6)),  # strided: through zarr
        ]:
            np.testing.assert_array_equal(source.read(index), expected[index])
    finally:
        source.close()


@pytest.mark.parametrize("extra", [[], ["--chunks", "3,4,3"], ["--max-memory", "2KB", "--chunks", "2,10,3"]])
def test_zstd_output_is_a_store_zarr_reads(tmp_path, extra):
    np.save(tmp_path / "x.npy", DATA)
    np.save(tmp_path / "w.npy", W)
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "y.zarr", "--compression", "zstd", *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    array = zarr.open_array(str(tmp_path / "y.zarr"), mode="r")
    assert [type(c).__name__ for c in array.compressors] == ["ZstdCodec"]
    np.testing.assert_array_equal(array[...], pointwise_conv(DATA, W))


@pytest.mark.parametrize("codec", ["zstd", "blosc"])
@pytest.mark.parametrize("chunk", ["garbage", "empty", "too-long", "too-short"])
def test_a_damaged_compressed_chunk_is_one_line(tmp_path, codec, chunk):
    import imagecodecs

    store = tmp_path / "x.zarr"
    compressors = zarr.codecs.ZstdCodec() if codec == "zstd" else zarr.codecs.BloscCodec()
    zarr.create_array(store=str(store), data=DATA, chunks=(2, 10, 6), zarr_format=3, compressors=compressors)
    size = math.prod((2, 10, 6)) * 4
    encode = imagecodecs.zstd_encode if codec == "zstd" else imagecodecs.blosc_encode
    stored = {
        "garbage": (b"\x28\xb5\x2f\xfd" if codec == "zstd" else b"\x02\x01") + bytes(range(60)),
        "empty": b"",
        "too-long": encode(bytes(size * 40)),  # would decode to 40 chunks' worth
        "too-short": encode(bytes(size - 4)),
    }[chunk]
    (store / "c" / "1" / "0" / "0").write_bytes(stored)
    np.save(tmp_path / "w.npy", W)
    proc = run_cli("apply", "x.zarr", "w.npy", "-o", "y.npy", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "damaged" in proc.stderr and "1/0/0" in proc.stderr and not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("extra", [[], ["--chunks", "3,4,3"], ["--max-memory", "2KB"]])
def test_raw_output_is_a_store_zarr_reads(tmp_path, extra):
    np.save(tmp_path / "x.npy", DATA)
    np.save(tmp_path / "w.npy", W)
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "y.zarr", *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    array = zarr.open_array(str(tmp_path / "y.zarr"), mode="r")
    assert array.metadata.zarr_format == 3 and not array.compressors
    assert array.attrs["weights_source"] == "w.npy" and array.attrs["channel_axis"] == 2  # provenance kept
    np.testing.assert_array_equal(array[...], pointwise_conv(DATA, W))


@pytest.mark.parametrize("zstd", [False, True], ids=["raw", "zstd"])
def test_zarr_to_zarr_runs_without_importing_zarr(tmp_path, zstd):
    compressors = zarr.codecs.ZstdCodec() if zstd else None
    zarr.create_array(store=str(tmp_path / "x.zarr"), data=DATA, chunks=(2, 10, 6), compressors=compressors)
    np.save(tmp_path / "w.npy", W)
    extra = ["--compression", "zstd"] if zstd else []
    proc = cli_in_process(tmp_path, [], ["apply", "x.zarr", "w.npy", "-o", "y.zarr", *extra])
    assert proc.returncode == 0, proc.stderr
    assert "zarr" not in proc.stderr.strip().splitlines()[-1].removeprefix("loaded:").split(",")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "y.zarr"))[...], pointwise_conv(DATA, W))


def test_a_chunk_file_of_the_wrong_size_is_refused(tmp_path):
    store = tmp_path / "x.zarr"
    zarr.create_array(store=str(store), data=DATA, chunks=(2, 10, 6), compressors=None)
    chunk = store / "c" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[: math.prod((2, 10, 6)) * 4 - 4])
    np.save(tmp_path / "w.npy", W)
    proc = run_cli("apply", "x.zarr", "w.npy", "-o", "y.npy", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "damaged" in proc.stderr and not (tmp_path / "y.npy").exists()


def test_a_whole_chunk_is_a_read_only_map_of_its_file(tmp_path):
    store = tmp_path / "x.zarr"
    zarr.create_array(store=str(store), data=DATA, chunks=(2, 10, 6), compressors=None)
    source = open_source(parse_spec(str(store)))
    try:
        chunk = source.read((slice(2, 4), slice(0, 10), slice(0, 6)))
        assert not chunk.flags.writeable  # a map, not a copy
        np.testing.assert_array_equal(chunk, DATA[2:4])
        edge = source.read((slice(6, 7), slice(0, 10), slice(0, 6)))  # the edge chunk holds 1 of 2 rows
        np.testing.assert_array_equal(edge, DATA[6:7])
        path = store / "c" / "2" / "0" / "0"
        path.write_bytes(path.read_bytes()[:-4])
        with pytest.raises(FormatError, match="damaged"):
            source.read((slice(4, 6), slice(0, 10), slice(0, 6)))
    finally:
        source.close()


def test_an_unknown_metadata_field_is_refused_unless_it_may_be_ignored(tmp_path):
    store = tmp_path / "x.zarr"
    zarr.create_array(store=str(store), data=DATA, chunks=(2, 10, 6), compressors=None, zarr_format=3)
    meta = json.loads((store / "zarr.json").read_text())
    (store / "zarr.json").write_text(json.dumps({**meta, "my_extension": {"must_understand": False}}))
    assert zarr_store.read_raw_metadata(str(store)) is not None  # marked as ignorable: read
    (store / "zarr.json").write_text(json.dumps({**meta, "my_extension": {"level": 3}}))
    with pytest.raises(FormatError, match="my_extension"):
        zarr_store.read_raw_metadata(str(store))
    np.save(tmp_path / "w.npy", W)
    proc = run_cli("apply", "x.zarr", "w.npy", "-o", "y.npy", cwd=tmp_path)
    assert proc.returncode == 2 and "my_extension" in proc.stderr and not (tmp_path / "y.npy").exists()


def test_big_endian_chunks_are_never_mapped_as_little_endian(tmp_path):
    store = tmp_path / "x.zarr"
    zarr.create_array(
        store=str(store),
        data=DATA,
        chunks=(2, 10, 6),
        serializer=zarr.codecs.BytesCodec(endian="big"),
        compressors=None,
        zarr_format=3,
    )
    assert json.loads((store / "zarr.json").read_text())["codecs"][0]["configuration"]["endian"] == "big"
    data, source = _read_all(store)
    assert source.description.reader == "zarr"
    np.testing.assert_array_equal(data, DATA)


def test_arrays_nested_in_groups_are_listed_and_read_by_path(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("top", data=DATA, chunks=(2, 10, 6), compressors=None)
    group.create_group("sub").create_array("deep", data=DATA * 2, chunks=(7, 10, 6), compressors=None)
    proc = run_cli("info", "g.zarr", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [item["path"] for item in json.loads(proc.stdout)] == ["g.zarr:sub/deep", "g.zarr:top"]
    source = open_source(parse_spec(str(tmp_path / "g.zarr:sub/deep")))
    try:
        assert source.description.reader == "chunk files"  # a group's member is read without zarr too
        np.testing.assert_array_equal(source.read((slice(0, 7), slice(0, 10), slice(0, 6))), DATA * 2)
    finally:
        source.close()
    with pytest.raises(Exception, match="closest"):
        open_source(parse_spec(str(tmp_path / "g.zarr:sub/../top")))


def test_a_blosc_frame_cut_short_is_refused_not_read_past_its_end():
    """blosc's decoder takes a frame's length from its header: bytes cut short (an empty or
    truncated chunk) that lie in front of a whole frame in memory would decode as that frame.
    They are refused."""
    import imagecodecs

    from pwconv.errors import FormatError
    from pwconv.io import codecs

    raw = np.arange(256, dtype=np.float32).tobytes()
    frame = bytes(imagecodecs.blosc_encode(raw))
    memory = np.frombuffer(frame + frame, np.uint8)  # a buffer holding a whole frame
    assert bytes(codecs.decode_between("blosc", memory[: len(frame)], len(raw), len(raw), "x")) == raw
    for cut in (0, 10, len(frame) - 1):
        with pytest.raises(FormatError, match="damaged"):
            codecs.decode_between("blosc", memory[:cut], len(raw), len(raw), "x")
