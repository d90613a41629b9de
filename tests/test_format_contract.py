"""The format contract: one suite that every registered format runs (xarray's ``DatasetIOBase``).

Each format has one fixture that writes a small real file with the format's own library and
says what it holds. A new format gets every test here by adding its :class:`Case`:

- its registry row matches its code (what the row says it writes, the backend does);
- shape, dtype and description come before any data, and the data equals what was written;
- a container lists its arrays;
- a writable format round-trips blocks through ``open_sink``, read back by its own library,
  shows nothing at the target before ``commit`` and leaves nothing after ``abort``;
- damaged bytes under its suffix are one line and exit 2, never a traceback;
- a read-only format is refused as an output, naming the formats that write.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pwconv.errors import PwconvError, UsageError
from pwconv.io.interface import Backend, Description, Sink, SinkRequest, Source
from pwconv.io.registry import (
    FORMATS,
    STREAM,
    array_specs,
    data_suffixes,
    format_named,
    open_sink,
    open_source,
)
from pwconv.io.spec import Spec, parse_spec

from .conftest import assert_clean_error, run_cli

DATA = (np.arange(6 * 5 * 3, dtype=np.float32).reshape(6, 5, 3) - 20) / 4
PIXELS = (np.arange(6 * 5 * 3).reshape(6, 5, 3) * 3 % 256).astype(np.uint8)


def _npy(path: Path, data: np.ndarray) -> None:
    np.save(path, data)


def _h5(path: Path, data: np.ndarray) -> None:
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=data, chunks=(2, 5, 3))


def _read_h5(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path) as handle:
        return handle["data"][...]


def _zarr(path: Path, data: np.ndarray) -> None:
    import zarr

    zarr.create_array(store=str(path), data=data, chunks=(2, 5, 3), compressors=None)


def _read_zarr(path: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(str(path), mode="r")[...])


def _tiff(path: Path, data: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="contig")


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))


def _png(path: Path, data: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(data).save(path)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def _geotiff(path: Path, data: np.ndarray) -> None:
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": 5, "height": 6, "count": 3, "dtype": "float32"}
    with rasterio.open(
        path, "w", crs="EPSG:32631", transform=from_origin(500000, 4100000, 10, 10), **profile
    ) as ds:
        ds.write(np.moveaxis(data, -1, 0))


def _stac(path: Path, data: np.ndarray) -> None:
    """A STAC item whose assets b1, b2 are single-band GeoTIFFs beside it (b1 holds ``data``)."""
    import json

    for band in ("b1", "b2"):
        _geotiff_bands(path.parent / f"{band}.tif", data)
    assets = {
        b: {"href": f"./{b}.tif", "eo:bands": [{"name": b, "common_name": c}]}
        for b, c in (("b1", "red"), ("b2", "nir"))
    }
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "contract", "geometry": None, "links": [],
        "properties": {"datetime": "2024-01-01T00:00:00Z"}, "assets": assets,
    }  # fmt: skip
    path.write_text(json.dumps(item))


def _geotiff_bands(path: Path, data: np.ndarray) -> None:
    import rasterio
    from rasterio.transform import from_origin

    height, width, count = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name,
        crs="EPSG:32631", transform=from_origin(500000, 4100000, 10, 10),
    ) as ds:  # fmt: skip
        ds.write(np.moveaxis(data, -1, 0))


def _read_raster(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return np.moveaxis(ds.read(), 0, -1)


def _netcdf(path: Path, data: np.ndarray) -> None:
    import h5netcdf

    with h5netcdf.File(path, "w") as handle:
        handle.dimensions = {"y": 6, "x": 5, "band": 3}
        handle.create_variable("v", ("y", "x", "band"), data=data)


def _read_netcdf(path: Path) -> np.ndarray:
    import h5netcdf

    with h5netcdf.File(path) as handle:
        (name,) = [v for v in handle.variables if v not in handle.dimensions]
        return np.asarray(handle.variables[name][...])


def _npz(path: Path, data: np.ndarray) -> None:
    np.savez(path, x=data, other=np.ones(2))


def _safetensors(path: Path, data: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file({"x": data, "other": np.ones(2, np.float32)}, str(path))


def _torch(path: Path, data: np.ndarray) -> None:
    import torch

    torch.save({"x": torch.from_numpy(data.copy()), "other": torch.ones(2)}, path)


def _onnx(path: Path, data: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(data.shape))],
        [numpy_helper.from_array(data, "x"), numpy_helper.from_array(np.ones(2, np.float32), "other")],
    )
    onnx.save_model(helper.make_model(graph), path)


def _keras(path: Path, data: np.ndarray) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")  # the CPU torch the test extra installs
    import keras

    model = keras.Sequential([keras.Input((4, 4, 5)), keras.layers.Conv2D(3, 1, name="x")])
    model.layers[0].kernel.assign(data)
    model.save_weights(path)


KERNEL = DATA.reshape(-1)[:15].reshape(1, 1, 5, 3)  # a Conv2D(3, 1) kernel over 5 channels


@dataclass(frozen=True)
class Case:
    """One format's fixture: the file it writes, the name of the array in it, what it holds."""

    format: str
    name: str  # file name, by which the registry finds the format
    write: Callable[[Path, np.ndarray], None]
    data: np.ndarray = dataclasses.field(default_factory=lambda: DATA)
    member: str | None = None  # the array to read inside a container
    read_back: Callable[[Path], np.ndarray] | None = None  # the library's reader of pwconv's output
    output: str | None = None  # the output's name, where it is not ``out`` + the input's suffix


CASES = [
    Case("npy", "in.npy", _npy, read_back=np.load),
    Case("hdf5", "in.h5", _h5, member="/x", read_back=_read_h5),
    Case("zarr", "in.zarr", _zarr, read_back=_read_zarr),
    Case("tiff", "in.tif", _tiff, read_back=_read_tiff),
    Case("image", "in.png", _png, PIXELS, read_back=_read_png),
    Case("raster", "in.tif", _geotiff, read_back=_read_raster, output="out.tif"),
    Case("netcdf", "in.nc", _netcdf, member="v", read_back=_read_netcdf),
    Case("stac", "in.json", _stac, DATA[..., :1].copy(), member="b1"),
    Case("npz", "in.npz", _npz, member="x"),
    Case("safetensors", "in.safetensors", _safetensors, member="x"),
    Case("torch", "in.pt", _torch, member="x"),
    Case("onnx", "in.onnx", _onnx, member="x"),
    Case("keras", "in.weights.h5", _keras, KERNEL, member="x/kernel"),
]
_BY_FORMAT = {case.format: case for case in CASES}


def test_every_registered_format_has_a_contract_case():
    assert sorted(_BY_FORMAT) == sorted(f.name for f in FORMATS)


@pytest.fixture(params=CASES, ids=[c.format for c in CASES])
def case(request, tmp_path) -> tuple[Case, Path]:
    case: Case = request.param
    path = tmp_path / case.name
    case.write(path, case.data)
    return case, path


def _spec(case: Case, path: Path) -> Spec:
    spec = parse_spec(str(path))
    assert spec.format == case.format, "the registry finds this format by the fixture's name"
    return dataclasses.replace(spec, member=case.member) if case.member else spec


class TestFormatContract:
    def test_row_matches_its_backend(self, case):
        row = format_named(case[0].format)
        backend = row.load()
        overrides = {name for name in vars(Backend) if name in vars(type(backend))}
        assert isinstance(backend, Backend) and "open_source" in overrides
        assert row.writable == ("open_sink" in overrides)
        assert row.banks == ("write_arrays" in overrides)
        assert bool(row.claims) == ("claims" in overrides)

    def test_shape_and_description_come_before_the_data_and_the_data_is_what_was_written(self, case):
        fmt, path = case
        source = open_source(_spec(fmt, path))
        try:
            assert isinstance(source, Source) and isinstance(source.description, Description)
            assert source.shape == fmt.data.shape and source.description.reader
            np.testing.assert_array_equal(source.read(tuple(slice(0, n) for n in source.shape)), fmt.data)
        finally:
            source.close()

    def test_a_container_lists_its_arrays(self, case):
        fmt, path = case
        specs = array_specs(parse_spec(str(path)))
        if format_named(fmt.format).containers and fmt.member:
            assert fmt.member in [s.member for s in specs]
            assert len(specs) > 1 or fmt.format in ("hdf5", "netcdf")
        else:
            assert len(specs) == 1

    def test_damaged_bytes_are_one_line_exit_2_and_no_output(self, case, tmp_path):
        fmt, path = case
        bad = tmp_path / ("bad_" + fmt.name)
        if path.is_dir():
            bad.mkdir()
            (bad / "zarr.json").write_bytes(b'{"zarr_format": 3, "node_type": "array", "shape": [')
        else:
            data = path.read_bytes()
            bad.write_bytes(data[: len(data) // 3] + b"\x00garbage" * 8)
        spec = bad.name + (f":{fmt.member}" if fmt.member else "")
        assert_clean_error(run_cli("apply", spec, "1,0,0", "-o", "out.npy", cwd=tmp_path), 2)
        assert not (tmp_path / "out.npy").exists()


WRITABLE = [c for c in CASES if format_named(c.format).writable]


@pytest.fixture(params=WRITABLE, ids=[c.format for c in WRITABLE])
def writable(request, tmp_path) -> tuple[Case, Spec]:
    case: Case = request.param
    name = case.output or "out" + os.path.splitext(case.name)[1]
    spec = parse_spec(str(tmp_path / name), what="output")
    return case, dataclasses.replace(spec, format=case.format)


def _write_two_blocks(sink: Sink, data: np.ndarray) -> None:
    half = data.shape[0] // 2
    for rows in (slice(0, half), slice(half, data.shape[0])):
        sink.write((rows, slice(0, data.shape[1]), slice(0, data.shape[2])), data[rows])


class TestWriterContract:
    def test_blocks_round_trip_through_the_formats_own_library(self, writable):
        case, spec = writable
        sink = open_sink(spec, SinkRequest(case.data.shape, case.data.dtype, channel_axis=2))
        _write_two_blocks(sink, case.data)
        assert not os.path.exists(spec.path), "nothing at the target before commit"
        sink.commit()
        assert case.read_back is not None
        np.testing.assert_array_equal(case.read_back(Path(spec.path)), case.data)

    def test_abort_leaves_nothing_behind(self, writable):
        case, spec = writable
        folder = os.path.dirname(spec.path)
        before = sorted(os.listdir(folder))
        sink = open_sink(spec, SinkRequest(case.data.shape, case.data.dtype, channel_axis=2))
        _write_two_blocks(sink, case.data)
        sink.abort()
        assert sorted(os.listdir(folder)) == before

    def test_an_existing_output_is_kept_without_overwrite(self, writable):
        case, spec = writable
        os.makedirs(spec.path) if case.format == "zarr" else Path(spec.path).write_bytes(b"old")
        with pytest.raises(PwconvError, match="exists"):
            open_sink(spec, SinkRequest(case.data.shape, case.data.dtype, channel_axis=2))


@pytest.mark.parametrize(
    "case", [c for c in CASES if not format_named(c.format).writable], ids=lambda c: c.format
)
def test_a_read_only_format_is_refused_as_output_naming_those_that_write(case, tmp_path):
    np.save(tmp_path / "x.npy", DATA)
    proc = run_cli("apply", "x.npy", "1,0,0", "-o", "out" + case.name.removeprefix("in"), cwd=tmp_path)
    assert_clean_error(proc, 2, "only reads", ".npy", ".zarr", ".png")
    assert os.listdir(tmp_path) == ["x.npy"]


def test_the_stream_row_is_the_only_sequential_format():
    assert [f.name for f in (*FORMATS, STREAM) if f.sequential] == [STREAM.name]


def test_help_names_every_suffix_pwconv_writes_and_nothing_it_only_reads():
    text = run_cli("apply", "--help").stdout.decode()
    output_help = text[text.index("--output") : text.index("--layout")]
    for suffix in data_suffixes():
        assert suffix in output_help, suffix
    for read_only in (".vrt", ".gif", ".onnx", ".pt", ".safetensors"):
        assert read_only not in output_help, read_only


@pytest.mark.parametrize(
    "output, option, others",
    [
        ("out.npy", "COMPRESS=LZW", "raster"),
        ("out.npy", "quality=90", "image"),
        ("out.h5", "quality=90", "image"),
    ],
)
def test_a_format_option_the_output_does_not_take_is_exit_2_naming_who_takes_it(
    tmp_path, output, option, others
):
    np.save(tmp_path / "x.npy", DATA)
    proc = run_cli("apply", "x.npy", "1,0,0", "-o", output, "--co", option, cwd=tmp_path)
    assert_clean_error(proc, 2, "--co", option.partition("=")[0], others)
    assert os.listdir(tmp_path) == ["x.npy"]


def test_quality_travels_to_the_image_writer_as_a_format_option(tmp_path):
    from PIL import Image

    Image.fromarray(PIXELS).save(tmp_path / "x.png")
    identity = "1,0,0;0,1,0;0,0,1"
    for name, extra in (("low.jpg", ["--co", "QUALITY=5"]), ("high.jpg", ["--quality", "95"])):
        assert run_cli("apply", "x.png", identity, "-o", name, *extra, cwd=tmp_path).returncode == 0
    low, high = (np.asarray(Image.open(tmp_path / n), np.float64) for n in ("low.jpg", "high.jpg"))
    assert np.abs(low - PIXELS).mean() > np.abs(high - PIXELS).mean()


def test_a_read_only_backend_refuses_to_write_with_the_usual_message(tmp_path):
    backend = format_named("onnx").load()
    spec = Spec("onnx", str(tmp_path / "o.onnx"))
    with pytest.raises(UsageError, match="only reads"):
        backend.open_sink(spec, SinkRequest((2, 2, 2), np.dtype(np.float32), channel_axis=2))


RAW = [("npy", "in.npy", _npy), ("hdf5", "in.h5", _h5), ("zarr", "in.zarr", _zarr), ("tiff", "in.tif", _tiff)]


@pytest.mark.parametrize("fmt, name, write", RAW, ids=[r[0] for r in RAW])
def test_raw_paths_and_library_paths_read_the_same_values(fmt, name, write, tmp_path, monkeypatch):
    write(tmp_path / name, DATA)
    readers, results = [], []
    for switch in ("1", "0"):
        monkeypatch.setenv("PWCONV_RAW_IO", switch)
        source = open_source(parse_spec(str(tmp_path / name)))
        try:
            readers.append(source.description.reader)
            results.append(source.read((slice(1, 5), slice(0, 5, 2), slice(0, 3))))
        finally:
            source.close()
    assert readers[0] != readers[1], readers
    np.testing.assert_array_equal(results[0], DATA[1:5, ::2])
    np.testing.assert_array_equal(results[1], DATA[1:5, ::2])


@pytest.mark.parametrize("name", ["out.npy", "out.h5", "out.zarr", "out.tif"])
def test_raw_writers_and_library_writers_write_the_same_values(name, tmp_path):
    np.save(tmp_path / "x.npy", DATA)
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "w.npy", w)
    results = []
    for switch in ("1", "0"):
        env = {**os.environ, "PWCONV_RAW_IO": switch}
        target = f"{switch}{name}"
        proc = subprocess.run(
            [sys.executable, "-m", "pwconv", "apply", "x.npy", "w.npy", "-o", target, "--max-memory", "1KiB"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        source = open_source(parse_spec(str(tmp_path / target)))
        try:
            results.append(source.read(tuple(slice(0, n) for n in source.shape)))
        finally:
            source.close()
    np.testing.assert_allclose(results[0], DATA @ w.T, rtol=1e-6)
    np.testing.assert_array_equal(results[0], results[1])
