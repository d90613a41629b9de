"""Every byte of an input file is hostile: readers fed malformed files end in one clean error.

In process, each reader must either read the file or raise a PwconvError (never another
exception). Through the CLI, a sample of the same files must end with exit code 2 (or 1),
one line on stderr, no traceback, never "internal error", and no output left behind.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pwconv.errors import PwconvError
from pwconv.io.formats.npy import read_header
from pwconv.io.registry import open_source
from pwconv.io.spec import parse_spec

from .conftest import leftovers, run_cli

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
MAGIC = b"\x93NUMPY"


def _header(text: str | bytes, version: tuple[int, int] = (1, 0), length: int | None = None) -> bytes:
    body = text.encode("latin1") if isinstance(text, str) else text
    size = len(body) if length is None else length
    field = struct.pack("<H" if version == (1, 0) else "<I", size % (1 << (16 if version == (1, 0) else 32)))
    return MAGIC + bytes(version) + field + body


def _read_whole(spec_text: str) -> None:
    """Open and read the data (a corner of at most 64 per axis: a lying header may declare
    a huge shape, which a reader is right to accept when the file could hold it)."""
    source = open_source(parse_spec(spec_text))
    try:
        source.read(tuple(slice(0, min(n, 64)) for n in source.shape))
    finally:
        source.close()


def _only_clean_errors(spec_text: str) -> None:
    try:
        _read_whole(spec_text)
    except PwconvError as exc:
        text = exc.for_cli()
        assert "\n" not in text and "internal error" not in text


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# --- the npy header parser ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_after_the_magic_parse_or_fail_cleanly(tail):
    try:
        shape, dtype, fortran = read_header(io.BytesIO(MAGIC + tail), "fuzz")
    except PwconvError:
        return
    assert all(isinstance(n, int) and n >= 0 for n in shape)
    assert dtype.kind in "biufc" and isinstance(fortran, bool)


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255))
def test_every_version_byte_pair(major, minor):
    data = _header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", (major, minor)) + bytes(8)
    if (major, minor) in ((1, 0), (2, 0), (3, 0)):
        assert read_header(io.BytesIO(data), "v")[0] == (2,)
    else:
        with pytest.raises(PwconvError, match=f"version {major}.{minor}"):
            read_header(io.BytesIO(data), "v")


shape_entries = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(alphabet="ab1-", max_size=3),
    st.none(),
)


@FUZZ
@given(
    st.lists(shape_entries, max_size=5), st.sampled_from(["<f4", "|O", "<U3", "x", "<c16", "[('a','<i4')]"])
)
def test_lying_shapes_and_descrs(entries, descr):
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': ({', '.join(map(repr, entries))}{',' if len(entries) == 1 else ''}), }}"
    try:
        shape, dtype, _ = read_header(io.BytesIO(_header(text)), "lie")
    except PwconvError:
        return
    assert all(type(n) is int and 0 <= n for n in shape) and dtype.kind in "biufc"


def test_version_3_header_is_read():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    data = _header(text.encode("utf8"), (3, 0)) + array.tobytes()
    shape, dtype, fortran = read_header(io.BytesIO(data), "v3")
    assert (shape, dtype, fortran) == ((2, 3), np.dtype(np.float32), False)


@pytest.mark.parametrize(
    "header, fragment",
    [
        (_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3), }"), "shape"),
        (_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,), }"), "shape"),
        (_header("{'descr': '<f4', 'fortran_order': 1, 'shape': (2,), }"), "fortran_order"),
        (_header("{'descr': '<f4', 'shape': (2,), }"), "header keys"),
        (_header("{'descr': '<f4' 'fortran_order"), "not a Python literal"),
        (_header("((((((((((((((((((((((((((((((((((((((((((((((((((("), "not a Python literal"),
        (_header("{}", length=60000), "end of the data"),
        (_header("{}", (2, 0), length=1 << 30), "header length"),
        (_header(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({2**62}, {2**62}), }}"), "more bytes"),
        (MAGIC[:4], "end of the data"),
    ],
)
def test_each_malformed_field_is_named(header, fragment):
    with pytest.raises(PwconvError, match=fragment):
        read_header(io.BytesIO(header), "bad")


# --- whole files: truncated, bit-flipped, lying ---------------------------------------------


def _mutations(data: bytes):
    """(cut, flips): a truncation point and byte positions to flip."""
    return st.tuples(
        st.integers(0, len(data)),
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)), max_size=4),
    )


def _mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    mutable = bytearray(data)
    for position, mask in flips:
        mutable[position] ^= mask
    return bytes(mutable[:cut])


NPY_SAMPLE = _npy_bytes(np.arange(24, dtype=np.float32).reshape(2, 3, 4))


@FUZZ
@given(_mutations(NPY_SAMPLE))
def test_damaged_npy_files(tmp_path, mutation):
    path = tmp_path / "x.npy"
    path.write_bytes(_mutate(NPY_SAMPLE, *mutation))
    _only_clean_errors(str(path))


def _h5_sample(tmp_path: Path, chunks: tuple[int, ...] | None = (1, 4, 5)) -> bytes:
    """A small HDF5 file: chunked, or contiguous with ``chunks=None`` (both read raw)."""
    path = tmp_path / "sample.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=np.arange(60, dtype=np.float32).reshape(3, 4, 5), chunks=chunks)
    return path.read_bytes()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutation=st.data(), contiguous=st.booleans())
def test_damaged_h5_files(tmp_path, mutation, contiguous):
    # Lying chunk or data addresses must end in a clean error too: the raw reader trusts them.
    sample = _h5_sample(tmp_path, None if contiguous else (1, 4, 5))
    cut, flips = mutation.draw(_mutations(sample))
    path = tmp_path / "x.h5"
    path.write_bytes(_mutate(sample, cut, flips))
    _only_clean_errors(str(path))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutation=st.data(), shuffle=st.booleans())
def test_damaged_gzip_h5_files(tmp_path, mutation, shuffle):
    # pwconv decodes these chunks itself: lying chunk addresses, sizes and filter masks, and
    # damaged deflate streams, must end in a clean error too.
    path = tmp_path / "sample.h5"
    with h5py.File(path, "w") as handle:
        data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
        handle.create_dataset("x", data=data, chunks=(1, 4, 5), compression="gzip", shuffle=shuffle)
    sample = path.read_bytes()
    _, flips = mutation.draw(_mutations(sample))  # flips only: a cut file mostly fails to open
    path = tmp_path / "x.h5"
    path.write_bytes(_mutate(sample, len(sample), flips))
    _only_clean_errors(str(path))


def test_damaged_h5_object_headers_without_a_dataset_name(tmp_path):
    """Flipped bytes in the first 4 KiB of a gzip-chunked file, opened without naming the
    dataset, so that pwconv walks every object (h5py's visit fails with RuntimeError on some
    of them): each opens and reads, or is a clean error."""
    with h5py.File(tmp_path / "good.h5", "w") as handle:
        data = np.random.default_rng(20).random((16, 16, 3), dtype=np.float32)
        handle.create_dataset("x", data=data, chunks=(8, 8, 3), compression="gzip")
    good = (tmp_path / "good.h5").read_bytes()
    rng = np.random.default_rng(19)
    for i in range(60):
        damaged = bytearray(good)
        for at in rng.integers(0, min(len(good), 4096), size=int(rng.integers(1, 4))):
            damaged[at] = int(rng.integers(0, 256))
        (tmp_path / f"d{i}.h5").write_bytes(bytes(damaged))
        _only_clean_errors(str(tmp_path / f"d{i}.h5"))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mutation=st.data(), kind=st.sampled_from(["raw", "zstd", "blosc"]))
def test_damaged_zarr_stores(tmp_path, mutation, kind):
    # Each kind's zarr.json is parsed and its chunks decoded by pwconv itself: raw chunk
    # files, zarr's default zstd, blosc.
    zarr = pytest.importorskip("zarr")
    store = tmp_path / f"{kind}.zarr"
    if not store.exists():
        options = {
            "raw": {"compressors": None},
            "zstd": {},
            "blosc": {"compressors": zarr.codecs.BloscCodec()},
        }
        zarr.create_array(
            store=str(store), shape=(4, 4, 3), chunks=(2, 4, 3), dtype="float32", **options[kind]
        )[:] = np.arange(48, dtype=np.float32).reshape(4, 4, 3)
    files = sorted(p for p in store.rglob("*") if p.is_file())
    target = mutation.draw(st.sampled_from(files))
    original = target.read_bytes()
    cut, flips = mutation.draw(_mutations(original)) if original else (0, [])
    target.write_bytes(_mutate(original, cut, flips))
    try:
        _only_clean_errors(str(store))
    finally:
        target.write_bytes(original)


# --- the same through the command line, files and stdin -------------------------------------

CLI_CASES = [
    _header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3), }"),
    _header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", (9, 9)),
    _header("{'descr': '<f4', 'fortran_order': False, 'sha"),
    _header("{'descr': '|O', 'fortran_order': False, 'shape': (2, 3), }") + bytes(48),
    _header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }") + bytes(7),
    NPY_SAMPLE[:-5],
    NPY_SAMPLE[:9],
]


def _clean_cli_failure(proc) -> None:
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pwconv: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


@pytest.mark.parametrize("data", CLI_CASES)
def test_cli_refuses_malformed_npy_from_files_and_stdin(tmp_path, data):
    (tmp_path / "bad.npy").write_bytes(data)
    _clean_cli_failure(run_cli("apply", "bad.npy", "1,1,1", "-o", "out.npy", cwd=tmp_path))
    _clean_cli_failure(run_cli("apply", "-", "1,1,1", "-o", "out.npy", stdin=data, cwd=tmp_path))
    assert not (tmp_path / "out.npy").exists() and leftovers(tmp_path) == []


def test_cli_refuses_a_truncated_h5_file(tmp_path):
    sample = _h5_sample(tmp_path)
    (tmp_path / "bad.h5").write_bytes(sample[: len(sample) // 2])
    _clean_cli_failure(run_cli("apply", "bad.h5", "1,1,1,1,1", "-o", "out.npy", cwd=tmp_path))
    assert not (tmp_path / "out.npy").exists() and leftovers(tmp_path) == []


# --- model and bank files --------------------------------------------------------------------


def _model_samples(tmp_path: Path) -> dict[str, bytes]:
    """One small real file per model format, written by its own library."""
    import os
    import zipfile

    os.environ.setdefault("KERAS_BACKEND", "torch")
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    weights = np.arange(24, dtype=np.float32).reshape(4, 6)
    samples: dict[str, bytes] = {}
    np.savez(tmp_path / "s.npz", weights=weights, bias=np.ones(4, np.float32))
    save_file(
        {"weights": weights, "bias": np.ones(4, np.float32)}, str(tmp_path / "s.safetensors"),
        metadata={"names": '["a", "b", "c", "d"]'},  # a bank's names: the metadata is read too
    )  # fmt: skip
    torch.save({"conv.weight": torch.from_numpy(weights)}, tmp_path / "s.pt")
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"names": '["a", "b", "c", "d"]'})
    onnx.save_model(model, tmp_path / "s.onnx")
    with h5py.File(tmp_path / "inner.h5", "w") as handle:
        handle["layers/conv2d/vars/0"] = weights.reshape(1, 1, 6, 4)
        handle["layers/conv2d/vars"].attrs["name"] = "mix"
    with zipfile.ZipFile(tmp_path / "s.keras", "w") as archive:
        archive.write(tmp_path / "inner.h5", "model.weights.h5")
    import tifffile
    from PIL import Image

    photo = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "s.png")
    Image.fromarray(photo).save(tmp_path / "s.jpg")
    Image.fromarray(photo).convert("P").save(tmp_path / "s.gif")
    tifffile.imwrite(
        tmp_path / "s.tif", np.moveaxis(photo, -1, 0), photometric="minisblack", planarconfig="separate",
        tile=(16, 16), compression="zlib",
    )  # fmt: skip
    # Pages of strips, LZW with a predictor: blocks pwconv decodes itself, found page by page.
    tifffile.imwrite(
        tmp_path / "pages.tif", np.stack([photo, photo[::-1]]), photometric="rgb", planarconfig="contig",
        rowsperstrip=5, compression="lzw", predictor=2,
    )  # fmt: skip
    samples["pages.tif"] = (tmp_path / "pages.tif").read_bytes()
    import h5netcdf
    import rasterio
    from rasterio.transform import from_origin

    with h5netcdf.File(tmp_path / "s.nc", "w") as f:
        f.dimensions = {"band": 3, "y": 8}
        f.create_variable("v", ("band", "y"), data=np.ones((3, 8), "f4"), fillvalue=-1.0)
    geo = {"driver": "GTiff", "width": 32, "height": 24, "count": 3, "dtype": "uint8", "crs": "EPSG:4326"}
    with rasterio.open(tmp_path / "g.tif", "w", transform=from_origin(0, 1, 0.1, 0.1), **geo) as ds:
        ds.write(np.moveaxis(photo, -1, 0))
    samples["geo.tif"] = (tmp_path / "g.tif").read_bytes()
    # Tiled and compressed with a predictor: blocks pwconv decodes itself.
    tiles = {"tiled": True, "blockxsize": 16, "blockysize": 16, "compress": "deflate", "predictor": 2}
    with rasterio.open(tmp_path / "t.tif", "w", transform=from_origin(0, 1, 0.1, 0.1), **geo, **tiles) as ds:
        ds.write(np.moveaxis(photo, -1, 0))
    samples["deflate.tif"] = (tmp_path / "t.tif").read_bytes()
    # A STAC item naming g.tif (beside the damaged copies) as its red band.
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "s", "geometry": None, "links": [],
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
        "assets": {"b": {"href": "./g.tif", "eo:bands": [{"name": "b", "common_name": "red"}]}},
    }  # fmt: skip
    samples["json"] = json.dumps(item).encode()
    for suffix in ("npz", "safetensors", "pt", "onnx", "keras", "png", "jpg", "gif", "tif", "nc"):
        samples[suffix] = (tmp_path / f"s.{suffix}").read_bytes()
    return samples


@pytest.mark.parametrize(
    "suffix",
    [
        "npz",
        "safetensors",
        "pt",
        "onnx",
        "keras",
        "png",
        "jpg",
        "gif",
        "tif",
        "nc",
        "geo.tif",
        "deflate.tif",
        "pages.tif",
        "json",
    ],
)
def test_damaged_model_files(tmp_path, suffix):
    sample = _model_samples(tmp_path)[suffix]

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(_mutations(sample))
    def check(mutation):
        path = tmp_path / f"damaged.{suffix}"
        path.write_bytes(_mutate(sample, *mutation))
        for name in ("", ":weights", ":conv.weight", ":W", ":mix", ":v", ":red"):
            _only_clean_errors(f"{path}{name}")

    check()
