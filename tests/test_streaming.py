"""Streaming in blocks gives the in-memory result, for every format and block size."""

from __future__ import annotations

import io
import time

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pwconv import pointwise_conv
from pwconv.core.blocks import parse_size, plan_blocks
from pwconv.core.conv import plan_conv
from pwconv.engines.numpy_engine import block_plan, pixel_bytes, run
from pwconv.io.formats.stream import StreamSink, StreamSource
from pwconv.io.interface import SinkRequest
from pwconv.io.rawio import BlockMemory
from pwconv.io.registry import open_sink, open_source
from pwconv.io.spec import parse_spec

from .conftest import run_cli

# float32 sums of up to 16 terms in another order differ by a few ulps of the largest term.
RTOL, ATOL = 1e-5, 1e-5


def _covering(blocks, shape, channel_axis):
    seen = np.zeros([n for i, n in enumerate(shape) if i != channel_axis] or [1], dtype=int)
    for index in blocks:
        seen[tuple(sl for i, sl in enumerate(index) if i != channel_axis)] += 1
    return seen


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=4),
    st.data(),
    st.integers(1, 64),
    st.integers(1, 2000),
    st.booleans(),
)
def test_blocks_cover_every_position_once(shape, data, pixel, budget, contiguous):
    axis = data.draw(st.integers(0, len(shape) - 1))
    blocks = plan_blocks(tuple(shape), axis, pixel, budget, contiguous=contiguous)
    assert (_covering(blocks, shape, axis) == 1).all()
    for index in blocks:
        assert index[axis] == slice(0, shape[axis])
        if contiguous:
            cut = [i for i, sl in enumerate(index) if sl != slice(0, shape[i])]
            assert all(i < axis for i in cut)


@pytest.mark.parametrize("kind", ["npy", "h5"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "HWC", "CHW", "HCW"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("max_bytes", [1, 200, 1000, 4096, 10**9])
def test_streamed_equals_in_memory(tmp_path, kind, layout, stride, max_bytes):
    rng = np.random.default_rng(len(layout) * 100 + stride)
    shapes = {
        "NHWC": (3, 7, 5, 6),
        "NCHW": (3, 6, 7, 5),
        "HWC": (7, 5, 6),
        "CHW": (6, 7, 5),
        "HCW": (7, 6, 5),
    }
    x = rng.standard_normal(shapes[layout]).astype(np.float32)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    expected = pointwise_conv(x, w, layout=layout, stride=stride)
    plan = plan_conv(x.shape, x.dtype, w, layout=layout, stride=stride)
    if kind == "npy":
        np.save(tmp_path / "x.npy", x)
    else:
        with h5py.File(tmp_path / "x.h5", "w") as handle:
            handle.create_dataset("x", data=x, chunks=tuple(max(1, n // 2) for n in x.shape))
    source = open_source(parse_spec(str(tmp_path / f"x.{kind}")))
    request = SinkRequest(plan.out_shape, plan.out_dtype, channel_axis=plan.channel_axis)
    sink = open_sink(parse_spec(str(tmp_path / f"y.{kind}"), what="output"), request)
    timings = run(plan, source, sink, max_bytes=max_bytes)
    sink.commit()
    source.close()
    if kind == "npy":
        result = np.load(tmp_path / "y.npy")
    else:
        with h5py.File(tmp_path / "y.h5") as handle:
            result = handle["data"][...]
    np.testing.assert_allclose(result, expected, rtol=RTOL, atol=ATOL)
    if max_bytes < 1000:
        assert timings.blocks > 1


def test_stdin_to_stdout_streams_in_order():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 4, 3)).astype(np.float32)
    w = rng.standard_normal((2, 3)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, x)
    buffer.seek(0)
    plan = plan_conv(x.shape, x.dtype, w)
    out = io.BytesIO()
    source, sink = StreamSource(buffer), StreamSink(plan.out_shape, plan.out_dtype, out)
    timings = run(plan, source, sink, max_bytes=100)
    sink.commit()
    assert timings.blocks > 1
    np.testing.assert_allclose(np.load(io.BytesIO(out.getvalue())), x @ w.T, rtol=RTOL, atol=ATOL)


def test_pipe_blocks_are_contiguous_for_channels_first():
    plan = plan_conv((2, 8, 16, 16), np.float32, np.ones((4, 8)), layout="NCHW")

    class Pipe:
        sequential = True

        def chunks(self):
            return None

    blocks = block_plan(plan, Pipe(), Pipe(), max_bytes=pixel_bytes(plan) * 10)  # type: ignore[arg-type]
    assert [b[0] for b in blocks] == [slice(0, 1), slice(1, 2)]


def test_same_command_writes_the_same_bytes(tmp_path):
    rng = np.random.default_rng(11)
    np.save(tmp_path / "x.npy", rng.standard_normal((64, 32, 16)).astype(np.float32))
    np.save(tmp_path / "w.npy", rng.standard_normal((8, 16)).astype(np.float32))
    outputs = []
    for name in ("a.npy", "b.npy"):
        proc = run_cli("apply", "x.npy", "w.npy", "-o", name, "--max-memory", "20KiB", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]


def test_fortran_order_npy_is_read_correctly(tmp_path):
    x = np.asfortranarray(np.arange(60, dtype=np.float64).reshape(3, 4, 5))
    np.save(tmp_path / "f.npy", x)
    source = open_source(parse_spec(str(tmp_path / "f.npy")))
    assert source.storage()["fortran_order"]
    np.testing.assert_array_equal(source.read((slice(1, 3), slice(0, 4, 2), slice(0, 5))), x[1:3, ::2])


def test_h5_output_chunks_and_compression(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((64, 64, 8), np.float32))
    proc = run_cli(
        "apply",
        "x.npy",
        "1,1,1,1,1,1,1,1",
        "-o",
        "y.h5",
        "--compression",
        "gzip",
        "--chunks",
        "8,64,1",
        "--max-memory",
        "64KiB",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "y.h5") as handle:
        assert handle["data"].compression == "gzip"
        assert handle["data"].chunks == (8, 64, 1)
        np.testing.assert_array_equal(handle["data"][...], 8.0)


@pytest.mark.parametrize(
    ("text", "value"), [("512MiB", 512 << 20), ("2GB", 2 * 10**9), ("1.5KiB", 1536), ("100", 100)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def _streamed_run(tmp_path, stderr):
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", np.ones((256, 64, 16), np.float32))
    env = {**__import__("os").environ, "PWCONV_PROGRESS_DELAY": "0"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pwconv",
            "apply",
            "x.npy",
            "1" + ",0" * 15,
            "-o",
            "y.npy",
            "--max-memory",
            "8KiB",
        ],
        cwd=tmp_path,
        stderr=stderr,
        stdout=subprocess.DEVNULL,
        env=env,
        timeout=120,
    )


def test_progress_bar_only_on_a_terminal(tmp_path):
    import os
    import pty
    import subprocess

    piped = _streamed_run(tmp_path, subprocess.PIPE)
    assert piped.returncode == 0
    assert "\r" not in piped.stderr.decode() and "━" not in piped.stderr.decode()
    (tmp_path / "y.npy").unlink()
    leader, follower = pty.openpty()
    try:
        proc = _streamed_run(tmp_path, follower)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert "pwconv apply" in b"".join(chunks).decode("utf-8", "replace")


def test_a_pipe_is_widened_and_a_file_is_left_alone(tmp_path):
    import fcntl
    import os

    from pwconv.io.formats.stream import widen_pipe

    read_end, write_end = os.pipe()
    try:
        with os.fdopen(read_end, "rb", closefd=False) as stream:
            widen_pipe(stream)
        f_getpipe_sz = getattr(fcntl, "F_GETPIPE_SZ", 1032)
        with open("/proc/sys/fs/pipe-max-size") as limit:
            allowed = os.geteuid() == 0 or int(limit.read()) >= 1 << 20
        assert fcntl.fcntl(read_end, f_getpipe_sz) >= (1 << 20 if allowed else 4096)
    finally:
        os.close(read_end)
        os.close(write_end)
    with open(tmp_path / "f.bin", "wb") as handle:
        widen_pipe(handle)  # not a pipe: nothing to do, no error


def test_block_memory_is_taken_again_only_when_nothing_refers_to_it():
    memory = BlockMemory()
    f32 = np.dtype(np.float32)
    first = memory.empty((4, 8), f32)
    first[...] = 1
    view = first[1:, ::2]
    del first
    second = memory.empty((4, 8), f32)  # a view of the first block is alive: fresh memory
    assert not np.shares_memory(second, view)
    del view
    third = memory.empty((2, 2), np.dtype(np.float64))  # the first block's memory, now free
    assert not np.shares_memory(third, second)
    assert any(np.shares_memory(third, kept) for kept in memory._buffers)
    assert len(memory._buffers) == 2


def test_block_memory_lets_a_free_buffer_too_small_go():
    memory = BlockMemory()
    small = memory.empty((4,), np.dtype(np.float32))
    del small
    large = memory.empty((64,), np.dtype(np.float32))
    assert [b.nbytes for b in memory._buffers] == [256]  # the 16-byte buffer is gone
    assert np.shares_memory(large, memory._buffers[0])


def test_blocks_kept_from_a_stream_keep_their_values():
    """Every block a caller still holds keeps what was read into it, however many come after."""
    x = np.arange(12 * 5 * 3, dtype=np.float32).reshape(12, 5, 3)
    buffer = io.BytesIO()
    np.save(buffer, x)
    buffer.seek(0)
    source = StreamSource(buffer)
    kept, seen = [], []
    for row in range(12):
        block = source.read((slice(row, row + 1), slice(0, 5), slice(0, 3)))
        seen.append(block.copy())
        if row % 3 == 0:
            kept.append((row, block[:, ::2]))  # a view keeps its block's memory too
    for row, view in kept:
        np.testing.assert_array_equal(view, x[row : row + 1, ::2])
    np.testing.assert_array_equal(np.concatenate(seen), x)


def test_block_memory_shared_by_threads_hands_each_buffer_to_one():
    from concurrent.futures import ThreadPoolExecutor

    memory = BlockMemory(keep=3)

    def fill(value: int) -> bool:
        block = memory.empty((64, 64), np.dtype(np.int64))
        block[...] = value
        time.sleep(0.001)
        return bool((block == value).all())

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(fill, range(400)))


class _KeepingSink:
    """A sink that keeps every block it is given (no copy), as a sink that queues blocks for
    encoding does, and the memory each came in."""

    sequential = False

    def __init__(self) -> None:
        self.blocks: list[tuple[tuple[slice, ...], np.ndarray]] = []

    def write(self, index, block):
        self.blocks.append((index, block))


class _CopyingSink(_KeepingSink):
    """A sink that copies each block and lets it go, as a file writer does."""

    def __init__(self, shape, dtype) -> None:
        super().__init__()
        self.out = np.empty(shape, dtype)
        self.addresses: set[int] = set()
        self.kept_memory: list[bool] = []

    def write(self, index, block):
        self.out[index] = block
        self.addresses.add(block.__array_interface__["data"][0])
        # a view of one of the engine's kept buffers (bytes), not an array of its own
        self.kept_memory.append(block.base is not None and block.base.dtype == np.uint8)


def test_streamed_output_buffers_are_reused_only_once_the_sink_let_go(tmp_path):
    """The engine computes each block into one of two kept buffers, and never into one a
    sink still holds: a sink that keeps its blocks sees each with its own values."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 32, 16)).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    plan = plan_conv(x.shape, x.dtype, w)
    expected = x @ w.T

    source = open_source(parse_spec(str(tmp_path / "x.npy")))
    keeping = _KeepingSink()
    timings = run(plan, source, keeping, max_bytes=16 << 10)
    assert timings.blocks > 8
    for index, block in keeping.blocks:
        np.testing.assert_allclose(block, expected[index], rtol=RTOL, atol=ATOL)

    copying = _CopyingSink(plan.out_shape, plan.out_dtype)
    timings = run(plan, source, copying, max_bytes=16 << 10)
    source.close()
    np.testing.assert_allclose(copying.out, expected, rtol=RTOL, atol=ATOL)
    assert timings.blocks > 8
    assert all(copying.kept_memory)
    assert len(copying.addresses) <= 3  # two kept buffers (the last, smaller block may be a third)


@pytest.mark.parametrize("least", [1, 2, 3])
def test_blocks_smaller_than_a_chunk_row_are_columns_of_whole_chunks(least):
    """A block budget below one row of (256, 256) chunks gives blocks one chunk wide and
    ``least`` chunks or more tall (one per codec thread) while that fits ``align_limit``, so
    that each chunk is one run of its block; every position once."""
    shape, per_pixel = (1000, 2048, 16), 320  # a chunk costs 20 MiB, a row of them 160 MiB
    blocks = plan_blocks(
        shape, 2, per_pixel, 32 << 20, align={0: 256, 1: 256}, align_limit=256 << 20, least_tiles=least
    )
    np.testing.assert_array_equal(_covering(blocks, shape, 2), 1)
    assert {sl[1].stop - sl[1].start for sl in blocks} == {256}
    assert max(sl[0].stop - sl[0].start for sl in blocks) == 256 * least
    assert all(sl[0].start % 256 == 0 and sl[1].start % 256 == 0 for sl in blocks)
    # a row of blocks is done before the next starts (writers complete rows of chunks)
    assert [sl[0].start for sl in blocks] == sorted(sl[0].start for sl in blocks)
    # at most align_limit: a column of more chunks than fit is cut to what does
    tight = plan_blocks(
        shape, 2, per_pixel, 32 << 20, align={0: 256, 1: 256}, align_limit=45 << 20, least_tiles=3
    )
    assert {sl[0].stop - sl[0].start for sl in tight} == {512, 1000 - 512}
    # at a URL, rows of tiles (what lies together in a file): one chunk tall, ``least`` wide
    across = plan_blocks(
        shape, 2, per_pixel, 32 << 20, align={0: 256, 1: 256}, align_limit=256 << 20, least_tiles=least,
        columns=False,
    )  # fmt: skip
    np.testing.assert_array_equal(_covering(across, shape, 2), 1)
    assert max(sl[1].stop - sl[1].start for sl in across) == 256 * least
    assert {sl[0].stop - sl[0].start for sl in across} == {256, 1000 - 768}
    # contiguous blocks (a pipe) are never tiles
    rows = plan_blocks(
        shape, 2, per_pixel, 32 << 20, contiguous=True, align={0: 256, 1: 256}, align_limit=256 << 20
    )
    assert all(sl[1] == slice(0, 2048) for sl in rows)


@pytest.mark.parametrize("kind", ["zarr zstd", "hdf5 gzip", "tiff deflate"])
def test_boxes_kept_from_a_compressed_reader_keep_their_values(tmp_path, kind):
    """The chunk readers assemble boxes in kept buffers: a box, or a view of one, that the
    caller still holds keeps its values however many boxes are read after it."""
    rng = np.random.default_rng(12)
    x = (np.round(rng.standard_normal((64, 48, 3)) * 64) / 64).astype(np.float32)
    if kind == "zarr zstd":
        zarr = pytest.importorskip("zarr")
        z = zarr.create_array(
            tmp_path / "x.zarr", shape=x.shape, dtype=x.dtype, chunks=(8, 16, 3),
            compressors=zarr.codecs.ZstdCodec(level=1), zarr_format=3,
        )  # fmt: skip
        z[...] = x
        path = tmp_path / "x.zarr"
    elif kind == "hdf5 gzip":
        path = tmp_path / "x.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset("x", data=x, chunks=(8, 16, 3), compression="gzip")
    else:
        tifffile = pytest.importorskip("tifffile")
        path = tmp_path / "x.tif"
        tifffile.imwrite(
            path, x, tile=(16, 16), compression="zlib", planarconfig="contig", photometric="minisblack"
        )
    source = open_source(parse_spec(str(path)))
    try:
        assert source.shape == x.shape
        kept, seen = [], []
        for row in range(0, 64, 16):
            for col in (0, 16, 32):
                index = (slice(row, row + 16), slice(col, col + 16), slice(0, 3))
                box = source.read(index)
                seen.append((index, box.copy()))
                if (row + col) % 32 == 0:
                    kept.append((index, box[::2]))  # a view keeps its box's memory too
        for index, box in seen:
            np.testing.assert_array_equal(box, x[index])
        for index, view in kept:
            np.testing.assert_array_equal(view, x[index][::2])
    finally:
        source.close()


def _compressed_file(tmp_path, kind, x):
    """``x`` (rows, cols, bands) stored in chunks or tiles of 16 x 16 pixels, all bands."""
    if kind.startswith("zarr"):
        zarr = pytest.importorskip("zarr")
        codec = (
            zarr.codecs.ZstdCodec(level=1) if kind == "zarr zstd" else zarr.codecs.BloscCodec(cname="zstd")
        )
        path = tmp_path / "x.zarr"
        z = zarr.create_array(
            path, shape=x.shape, dtype=x.dtype, chunks=(16, 16, x.shape[2]), compressors=codec, zarr_format=3
        )
        z[...] = x
        return path
    if kind == "hdf5 gzip":
        path = tmp_path / "x.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset("x", data=x, chunks=(16, 16, x.shape[2]), compression="gzip")
        return path
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "x.tif"
    compression, predictor = {"tiff deflate": ("zlib", False), "tiff zstd predictor 2": ("zstd", True)}[kind]
    tifffile.imwrite(
        path, x, tile=(16, 16), compression=compression, predictor=predictor, planarconfig="contig",
        photometric="minisblack",
    )  # fmt: skip
    return path


@pytest.mark.parametrize(
    "kind", ["zarr zstd", "zarr blosc", "hdf5 gzip", "tiff deflate", "tiff zstd predictor 2"]
)
def test_whole_chunks_are_decoded_straight_into_a_box_one_chunk_wide(tmp_path, monkeypatch, kind):
    """In a box one chunk wide each whole chunk is one run of the box and is decoded straight
    into it; chunks cut by the box or by the array's edge go through a buffer. Either way the
    box holds the stored values."""
    from pwconv.io import codecs

    rng = np.random.default_rng(13)
    if kind.endswith("predictor 2"):  # TIFF's horizontal predictor: integers
        x = rng.integers(0, 60000, (64, 40, 3)).astype(np.uint16)
    else:
        x = (np.round(rng.standard_normal((64, 40, 3)) * 64) / 64).astype(np.float32)
    path = _compressed_file(tmp_path, kind, x)
    straight: list[int] = []
    decode_into = codecs.decode_into

    def counted(codec, data, target, name, holder="file"):
        straight.append(target.nbytes)
        decode_into(codec, data, target, name, holder)

    monkeypatch.setattr(codecs, "decode_into", counted)
    source = open_source(parse_spec(str(path)))
    try:
        cases = [
            ((slice(16, 64), slice(16, 32)), 3),  # three whole chunks, one run each
            ((slice(0, 32), slice(0, 32)), 0),  # two chunks wide: no chunk is one run
            ((slice(8, 40), slice(16, 32)), 1),  # rows cut through the first and last chunk
            ((slice(0, 32), slice(32, 40)), 0),  # the right edge: part of each chunk is outside
        ]
        for (rows, cols), whole in cases:
            straight.clear()
            box = source.read((rows, cols, slice(0, 3)))
            np.testing.assert_array_equal(box, x[rows, cols])
            assert straight == [16 * 16 * 3 * x.itemsize] * whole
    finally:
        source.close()


@pytest.mark.parametrize("kind", ["zarr zstd", "hdf5 gzip", "tiff deflate"])
def test_a_damaged_chunk_decoded_straight_into_a_box_is_a_one_line_error(tmp_path, kind):
    """A chunk whose stored bytes are damaged fails the same way when it is decoded straight
    into the box (the array is one chunk wide): one line, the exit code of a bad input, no
    output."""
    rng = np.random.default_rng(14)
    x = (np.round(rng.standard_normal((64, 16, 3)) * 64) / 64).astype(np.float32)
    path = _compressed_file(tmp_path, kind, x)
    if kind == "zarr zstd":
        chunk = path / "c" / "1" / "0" / "0"
        chunk.write_bytes(chunk.read_bytes()[:-20])  # a frame cut short
    else:
        if kind == "hdf5 gzip":
            with h5py.File(path) as handle:
                info = handle["x"].id.get_chunk_info_by_coord((16, 0, 0))
                offset, size = info.byte_offset, info.size
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                offset, size = tif.pages[0].dataoffsets[1], tif.pages[0].databytecounts[1]
        with open(path, "r+b") as handle:
            handle.seek(offset + size // 2)
            handle.write(bytes(size - size // 2))
    np.save(tmp_path / "w.npy", np.ones((2, 3), np.float32))
    proc = run_cli("apply", path, "w.npy", "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out.npy").exists()
