"""Faults and hostile inputs: one line, the documented exit code, nothing written."""

from __future__ import annotations

import os

import numpy as np
import pytest

from .conftest import assert_clean_error, file_size_limit, run_cli, wait_for_temp, write_geotiff


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["fit", "pca", "x.npy", "-k", "nan", "-o", "b.npz"], "-k above 0"),
        (["fit", "pca", "x.npy", "-k", "inf", "-o", "b.npz"], "-k above 0"),
        (["fit", "lstsq", "x.npy", "x.npy", "--ridge", "nan", "-o", "b.npz"], "--ridge of at least 0"),
        (["fit", "lstsq", "x.npy", "x.npy", "--ridge", "inf", "-o", "b.npz"], "--ridge of at least 0"),
    ],
)
def test_nan_and_infinite_fit_parameters_are_refused_before_any_work(tmp_path, args, fragment):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 5, 3)))
    assert_clean_error(run_cli(*args, cwd=tmp_path), 2, fragment)
    assert os.listdir(tmp_path) == ["x.npy"]


def test_an_npy_bank_whose_bias_file_is_an_input_is_refused(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 5, 3))
    np.save(tmp_path / "data.bias.npy", x)
    proc = run_cli("fit", "pca", "data.bias.npy", "-k", "2", "-o", "data.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "data.bias.npy", "which is read")
    np.testing.assert_array_equal(np.load(tmp_path / "data.bias.npy"), x)  # the input is intact
    assert sorted(os.listdir(tmp_path)) == ["data.bias.npy"]


def test_an_npy_bank_is_published_whole_or_not_at_all(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 5, 3)))
    np.save(tmp_path / "out.bias.npy", np.ones(2))  # in the way, without --overwrite
    proc = run_cli("fit", "pca", "x.npy", "-k", "2", "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "out.bias.npy", "exists")
    assert sorted(os.listdir(tmp_path)) == ["out.bias.npy", "x.npy"]  # no out.npy without its bias
    proc = run_cli("fit", "pca", "x.npy", "-k", "2", "-o", "out.npy", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "out.bias.npy").shape == (2,) and np.load(tmp_path / "out.npy").shape == (2, 3)


@pytest.mark.parametrize("name", ["fifo.npy", "fifo.h5", "store.zarr/zarr.json"])
def test_a_fifo_named_like_an_input_is_refused_instead_of_blocking(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    os.mkfifo(path)
    argument = "store.zarr" if name.startswith("store") else name
    proc = run_cli("apply", argument, "1", "-o", "out.npy", cwd=tmp_path)  # run_cli times out after 300 s
    assert_clean_error(proc, 2, "a FIFO", "pipe it to '-'")
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("existing", ["file", "link"])
def test_overwriting_a_store_name_held_by_a_file_or_link_leaves_nothing_behind(tmp_path, existing):
    np.save(tmp_path / "x.npy", np.ones((4, 5, 3), np.float32))
    (tmp_path / "target").mkdir()
    if existing == "file":
        (tmp_path / "y.zarr").write_text("not a store")
    else:
        (tmp_path / "y.zarr").symlink_to(tmp_path / "target")
    proc = run_cli("apply", "x.npy", "1,1,1", "-o", "y.zarr", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["target", "x.npy", "y.zarr"]  # no .pwconv-part.old
    assert (tmp_path / "y.zarr").is_dir() and not (tmp_path / "y.zarr").is_symlink()
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "y.zarr").stat().st_mode & 0o777 == 0o777 & ~umask  # not private to the user


@pytest.mark.parametrize("output", ["y.zarr", "y.h5"])
def test_a_chunk_larger_than_its_axis_is_the_whole_axis(tmp_path, output):
    import h5py
    import zarr

    np.save(tmp_path / "x.npy", np.ones((4, 5, 3), np.float32))
    proc = run_cli("apply", "x.npy", "1,1,1", "-o", output, "--chunks", "1000000000,16,1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    if output.endswith(".zarr"):
        chunks = zarr.open_array(str(tmp_path / output), mode="r").chunks
    else:
        with h5py.File(tmp_path / output) as handle:
            chunks = handle["data"].chunks
    assert tuple(chunks) == (4, 5, 1)


def test_names_read_from_a_file_are_printed_escaped_on_one_line(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle["bad\nname"] = np.ones((2, 2, 3))
        handle["other"] = np.ones((2, 2, 3))
    proc = run_cli("apply", "x.h5", "1,1,1", "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "/bad\\nname", "/other")


# Uncompressed: GDAL writes the GeoTIFF; deflate: pwconv does (pwconv.io.formats.geotiff).
@pytest.mark.parametrize(
    "output, options", [("out.tif", ["--co", "COMPRESS=NONE"]), ("out.tif", []), ("out.img", [])]
)
def test_a_raster_the_disk_did_not_take_whole_is_exit_1_and_nothing_is_left(tmp_path, output, options):
    import subprocess
    import sys

    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    bands = np.random.default_rng(0).standard_normal((3, 128, 128)).astype(np.float32)
    with rasterio.open(
        tmp_path / "in.tif", "w", driver="GTiff", width=128, height=128, count=3, dtype="float32",
        crs="EPSG:32633", transform=from_origin(5e5, 4.6e6, 10, 10),
    ) as ds:  # fmt: skip
        ds.write(bands)
    proc = subprocess.run(
        [sys.executable, "-m", "pwconv", "apply", "in.tif", "1,0,0;0,1,0;0,0,1", "-o", output, *options],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=file_size_limit(50_000),
    )  # fmt: skip
    # libtiff prints its own line on file descriptor 2 as well: it is kept off the terminal.
    assert_clean_error(
        proc, 1, "did not take all of it" if output.endswith(".img") else "cannot write 'out.tif'"
    )
    assert os.listdir(tmp_path) == ["in.tif"]


@pytest.mark.parametrize("member, extra", [("/a", ["--overwrite"]), ("/c", [])])
def test_a_dataset_written_into_a_container_on_a_full_disk_leaves_the_file_as_it_was(tmp_path, member, extra):
    import hashlib
    import subprocess
    import sys

    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "keep.h5", "w") as f:
        f["a"] = np.arange(1000, dtype=np.float32).reshape(10, 100)
        f["b"] = np.ones((10, 10), np.float32)
    before = hashlib.sha256((tmp_path / "keep.h5").read_bytes()).hexdigest()
    np.save(tmp_path / "x.npy", np.ones((256, 256, 4), np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "pwconv", "apply", "x.npy", "1,1,1,1;1,0,0,0", "-o", f"keep.h5:{member}", *extra],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=file_size_limit(200_000),
    )  # fmt: skip
    assert_clean_error(proc, 1, "cannot write")
    assert hashlib.sha256((tmp_path / "keep.h5").read_bytes()).hexdigest() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.h5", "x.npy"]


def test_a_dataset_added_to_a_container_keeps_its_mode_and_the_other_datasets(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "keep.h5", "w") as f:
        f["b"] = np.arange(6.0).reshape(2, 3)
    os.chmod(tmp_path / "keep.h5", 0o640)
    os.symlink("keep.h5", tmp_path / "link.h5")
    np.save(tmp_path / "x.npy", np.ones((4, 4, 2), np.float32))
    proc = run_cli("apply", "x.npy", "1,1", "-o", "link.h5:/c", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert os.path.islink(tmp_path / "link.h5")  # the link's file was edited, the link kept
    assert oct(os.stat(tmp_path / "keep.h5").st_mode & 0o777) == oct(0o640)
    with h5py.File(tmp_path / "keep.h5", "r") as f:
        np.testing.assert_array_equal(f["b"][()], np.arange(6.0).reshape(2, 3))
        np.testing.assert_allclose(f["c"][()], np.full((4, 4, 1), 2.0))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--layout", "²"], "expected a layout"),
        (["--max-memory", "1e400"], "expected a memory size"),
        (["--dtype", "2147483648f4"], "expected a numpy dtype name"),
        (["--dtype", "2f4"], "expected a numeric output dtype"),
        (["--nodata", "inf", "--dtype", "uint8"], "that uint8 holds"),
        (["--engine", "dask", "--scheduler", "tcp://host:notaport"], "a port from 1 to 65535"),
        (["--bogus"], "No such option: --bogus"),
        (["--groups", "x"], "Invalid value for '--groups'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, fragment):
    np.save(tmp_path / "x.npy", np.ones((4, 4, 3), np.uint8))
    proc = run_cli("apply", "x.npy", "1,1,1", "-o", "y.npy", *args, cwd=tmp_path)
    assert_clean_error(proc, 2, fragment)
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def test_a_missing_argument_is_one_line_naming_the_help(tmp_path):
    proc = run_cli("explain", "x.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "Missing argument 'weights'", "see 'pwconv explain --help'")
    # apply's WEIGHTS may be left out for --index: its missing -o is said first, then WEIGHTS
    proc = run_cli("apply", "x.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "Missing option '--output'", "see 'pwconv apply --help'")


def _netcdf_with_fill(path, fill) -> None:
    h5netcdf = pytest.importorskip("h5netcdf")
    import h5py

    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"band": 3, "y": 4, "x": 4}
        f.create_variable("v", ("band", "y", "x"), np.float32)[...] = 1
    with h5py.File(path, "a") as f:
        f["v"].attrs.create("_FillValue", fill)
        f.attrs.create("odd", np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]))


@pytest.mark.parametrize(
    "fill", [np.array([], np.float32), "abc", np.bytes_(b"\x00\x01"), np.void(b"\x00\x01")], ids=str
)
def test_a_netcdf_fill_value_that_is_not_a_number_is_ignored_and_said(tmp_path, fill):
    _netcdf_with_fill(tmp_path / "in.nc", fill)
    proc = run_cli("apply", "in.nc", "1,1,1", "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "_FillValue ignored: expected a number" in proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.full((1, 4, 4), 3.0, np.float32))


def test_an_hdf5_file_without_netcdf_dimensions_is_a_format_error(tmp_path):
    import h5py

    with h5py.File(tmp_path / "plain.nc", "w") as f:
        f["v"] = np.ones((3, 4, 4), np.float32)
    proc = run_cli("apply", "plain.nc", "1,1,1", "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "expected a NetCDF-4 variable")
    assert sorted(os.listdir(tmp_path)) == ["plain.nc"]


@pytest.mark.parametrize(
    "field, value, fragment",
    [("flags", 1, "encrypted"), ("method", 99, "with method 99")],
)
def test_an_npz_member_zipfile_cannot_decode_is_refused(tmp_path, field, value, fragment):
    import io
    import struct
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        member = io.BytesIO()
        np.save(member, np.ones((1, 3), np.float32))
        archive.writestr("w.npy", member.getvalue())
    data = bytearray(buffer.getvalue())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    offsets = {"flags": (local + 6, central + 8), "method": (local + 8, central + 10)}[field]
    for offset in offsets:
        data[offset : offset + 2] = struct.pack("<H", value)
    (tmp_path / "bank.npz").write_bytes(bytes(data))
    np.save(tmp_path / "x.npy", np.ones((4, 4, 3), np.float32))
    proc = run_cli("apply", "x.npy", "bank.npz:w", "-o", "y.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, fragment)
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["apply", "x.npy", "1,1,1", "-o", "-"],
        ["apply", "x.npy", "1,1,1", "-o", "y.npy", "--json"],
        ["fit", "pca", "x.npy", "-k", "2", "-o", "y.npz", "--json"],
        ["explain", "x.npy", "1,1,1"],
    ],
)
def test_a_closed_stdout_is_refused_before_any_work(tmp_path, args):
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((4, 4, 3)).astype(np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "pwconv", *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, pass_fds=(), preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert_clean_error(proc, 2, "expected an open stdout")
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


@pytest.mark.parametrize("bank", ["b.safetensors", "b.npz", "b.npy", "b.h5"])
def test_a_bank_the_disk_did_not_take_is_exit_1_and_nothing_is_left(tmp_path, bank):
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((64, 64, 300)).astype(np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "pwconv", "fit", "pca", "x.npy", "-k", "200", "-o", bank],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=file_size_limit(100_000),
    )  # fmt: skip
    assert_clean_error(proc, 1, f"cannot write '{bank}'")
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def _stream_header(shape, dtype="<f4") -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("output", ["y.npy", "y.h5", "y.zarr", "y.tif", "y.nc"])
def test_a_rerun_after_sigkill_removes_the_temp_the_killed_run_left(tmp_path, output):
    import signal
    import subprocess
    import sys

    shape = (512, 512, 4)
    command = [sys.executable, "-m", "pwconv", "apply", "-", "1,1,1,1", "-o", output, "--max-memory", "1MiB"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(_stream_header(shape) + bytes(1 << 20))
    proc.stdin.flush()
    wait_for_temp(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdin.close()
    proc.stderr.close()
    assert any("pwconv-part" in name for name in os.listdir(tmp_path))  # what a SIGKILL leaves
    data = np.ones(shape, np.float32)
    rerun = subprocess.run(
        command, cwd=tmp_path, input=_stream_header(shape) + data.tobytes(), capture_output=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert os.listdir(tmp_path) == [output]


def _pointing_h5(tmp_path) -> None:
    import h5py

    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(np.arange(48, dtype=np.uint8).tobytes())
    with h5py.File(tmp_path / "source.h5", "w") as f:
        f["s"] = np.arange(48, dtype=np.float32).reshape(4, 4, 3)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("external", shape=(4, 4, 3), dtype="u1", external=[(str(secret), 0, 48)])
        layout = h5py.VirtualLayout(shape=(4, 4, 3), dtype="f4")
        layout[:] = h5py.VirtualSource("source.h5", "s", shape=(4, 4, 3))
        f.create_virtual_dataset("virtual", layout, fillvalue=-1)
        gone = h5py.VirtualLayout(shape=(4, 4, 3), dtype="f4")
        gone[:] = h5py.VirtualSource("missing.h5", "s", shape=(4, 4, 3))
        f.create_virtual_dataset("gone", gone, fillvalue=-1)
        f["linked"] = h5py.ExternalLink("source.h5", "s")


@pytest.mark.parametrize(
    "dataset, fragment",
    [
        ("external", "stored in the external file"),
        ("virtual", "a virtual dataset reading source.h5"),
        ("linked", "an external link to source.h5:s"),
    ],
)
def test_an_hdf5_dataset_pointing_at_other_files_is_read_only_when_allowed(tmp_path, dataset, fragment):
    _pointing_h5(tmp_path)
    proc = run_cli("apply", f"in.h5:/{dataset}", "1,1,1", "-o", "y.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, fragment, "--allow-external")
    assert not (tmp_path / "y.npy").exists()
    allowed = run_cli("apply", f"in.h5:/{dataset}", "1,1,1", "-o", "y.npy", "--allow-external", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    expected = np.arange(48, dtype=np.float64).reshape(4, 4, 3).sum(axis=2, keepdims=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected)


def test_a_virtual_dataset_whose_source_is_missing_is_an_error_even_when_allowed(tmp_path):
    _pointing_h5(tmp_path)
    proc = run_cli("apply", "in.h5:/gone", "1,1,1", "-o", "y.npy", "--allow-external", cwd=tmp_path)
    assert_clean_error(proc, 2, "'missing.h5' missing")
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("raw", ["1", "0"])
def test_a_zarr_chunk_linked_out_of_the_store_is_refused_unless_allowed(tmp_path, raw, monkeypatch):
    zarr = pytest.importorskip("zarr")
    monkeypatch.setenv("PWCONV_RAW_IO", raw)
    outside = tmp_path / "outside"
    outside.mkdir()
    array = zarr.create_array(str(outside / "real.zarr"), shape=(4, 4, 2), chunks=(2, 2, 2), dtype="f4")
    array[:] = 7
    store = zarr.create_array(str(tmp_path / "s.zarr"), shape=(4, 4, 2), chunks=(2, 2, 2), dtype="f4")
    store[:] = 1
    chunk = tmp_path / "s.zarr" / "c" / "0" / "0" / "0"
    chunk.unlink()
    chunk.symlink_to(outside / "real.zarr" / "c" / "0" / "0" / "0")
    proc = run_cli("apply", "s.zarr", "1,1", "-o", "y.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "a link out of the store (c/0/0/0 ->", "--allow-external")
    allowed = run_cli("apply", "s.zarr", "1,1", "-o", "y.npy", "--allow-external", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert np.load(tmp_path / "y.npy")[0, 0, 0] == 14.0 and np.load(tmp_path / "y.npy")[3, 3, 0] == 2.0


def test_a_header_declaring_an_absurd_shape_is_refused_before_any_block_is_listed(tmp_path):
    import json

    store = tmp_path / "huge.zarr"
    store.mkdir()
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": [2**40, 2**40, 4], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [64, 64, 4]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "attributes": {},
    }  # fmt: skip
    (store / "zarr.json").write_text(json.dumps(meta))
    for engine in ("numpy", "dask"):
        proc = run_cli("apply", "huge.zarr", "1,1,1,1", "-o", "y.zarr", "--engine", engine, cwd=tmp_path)
        assert_clean_error(proc, 2, "expected a job of at most 1048576 blocks")
    assert sorted(os.listdir(tmp_path)) == ["huge.zarr"]


def _big_pieces(tmp_path, kind: str) -> str:
    data = np.zeros((1024, 1024, 4), np.uint8)  # 4 MiB in one piece
    if kind == "strip":
        tifffile = pytest.importorskip("tifffile")
        tifffile.imwrite(tmp_path / "in.tif", data, compression="zlib", rowsperstrip=1024, photometric="rgb",
                         extrasamples=["unassalpha"])  # fmt: skip
        return "in.tif"
    if kind == "chunk":
        zarr = pytest.importorskip("zarr")
        array = zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, chunks=data.shape, dtype="u1")
        array[:] = data
        return "in.zarr"
    if kind == "h5":
        import h5py

        with h5py.File(tmp_path / "in.h5", "w") as f:
            f.create_dataset("x", data=data, chunks=data.shape, compression="gzip")
        return "in.h5"
    pil = pytest.importorskip("PIL.Image")
    pil.fromarray(data).save(tmp_path / "in.png")
    return "in.png"


@pytest.mark.parametrize(
    "kind, fragment", [("strip", "a strip of 4.0 MiB"), ("chunk", "a chunk of 4.0 MiB"),
                       ("h5", "a compressed chunk of 4.0 MiB"), ("png", "the whole array")],
)  # fmt: skip
def test_a_piece_decoded_whole_must_fit_in_max_memory(tmp_path, kind, fragment):
    name = _big_pieces(tmp_path, kind)
    before = sorted(os.listdir(tmp_path))
    proc = run_cli("apply", name, "1,1,1,1", "-o", "y.npy", "--max-memory", "1MiB", cwd=tmp_path)
    assert_clean_error(proc, 2, fragment, "--max-memory (1.0 MiB)", "--max-memory 8.0MiB or more")
    assert sorted(os.listdir(tmp_path)) == before
    fitted = run_cli("fit", "pca", name, "-k", "2", "-o", "b.npz", "--max-memory", "1MiB", cwd=tmp_path)
    assert_clean_error(fitted, 2, fragment)
    ok = run_cli("apply", name, "1,1,1,1", "-o", "y.npy", "--max-memory", "8MiB", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def _vrt(source: str, relative: bool, raw: bool = False) -> str:
    flag = "1" if relative else "0"
    if raw:
        return (
            '<VRTDataset rasterXSize="8" rasterYSize="4"><VRTRasterBand dataType="Byte" band="1" '
            f'subClass="VRTRawRasterBand"><SourceFilename relativeToVRT="{flag}">{source}</SourceFilename>'
            "<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>8</LineOffset>"
            "</VRTRasterBand></VRTDataset>"
        )
    return (
        '<VRTDataset rasterXSize="8" rasterYSize="4"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="{flag}">{source}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("raw_out.vrt", "a VRT source outside its folder"),
        ("simple_up.vrt", "a VRT source outside its folder"),
        ("nested.vrt", "a VRT source outside its folder"),
        ("url.vrt", "not a plain file"),
        ("declared.vrt", "not a plain file"),  # an XML declaration first: still a VRT to GDAL
        ("missing.vrt", "found no such file"),
    ],
)
def test_a_vrt_naming_files_outside_its_folder_is_read_only_when_allowed(tmp_path, name, fragment):
    pytest.importorskip("rasterio")
    secret = np.arange(32, dtype=np.uint8).reshape(4, 8)
    (tmp_path / "secret.bin").write_bytes(secret.tobytes())
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "raw_out.vrt").write_text(_vrt(str(tmp_path / "secret.bin"), relative=False, raw=True))
    (folder / "sub" / "inner.vrt").write_text(_vrt("../../secret.bin", relative=True, raw=True))
    (tmp_path / "outside.vrt").write_text(_vrt("secret.bin", relative=True, raw=True))
    (folder / "simple_up.vrt").write_text(_vrt("sub/../../outside.vrt", relative=True))
    (folder / "nested.vrt").write_text(_vrt("sub/inner.vrt", relative=True))
    (folder / "url.vrt").write_text(_vrt("/vsicurl/http://127.0.0.1:9/x.tif", relative=False))
    (folder / "missing.vrt").write_text(_vrt("gone.tif", relative=True))
    (folder / "declared.vrt").write_text(
        '<?xml version="1.0"?>\n' + _vrt("/vsicurl/http://127.0.0.1:9/x.tif", relative=False)
    )
    proc = run_cli("apply", name, "1", "-o", "out.npy", cwd=folder)
    assert_clean_error(proc, 2, fragment)
    assert not (folder / "out.npy").exists()
    if name in ("raw_out.vrt", "simple_up.vrt", "nested.vrt"):
        allowed = run_cli("apply", name, "1", "-o", "out.npy", "--allow-external", cwd=folder)
        assert allowed.returncode == 0, allowed.stderr
        np.testing.assert_array_equal(np.load(folder / "out.npy")[..., 0], secret)


def test_a_geotiff_whose_description_names_a_vrt_is_read_as_a_geotiff(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    data = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    write_geotiff(tmp_path / "in.tif", data)
    with rasterio.open(tmp_path / "in.tif", "r+") as ds:  # a raw ASCII tag in the file's first bytes
        ds.update_tags(TIFFTAG_IMAGEDESCRIPTION="tiles of a <VRTDataset> mosaic")
    assert b"<VRTDataset" in (tmp_path / "in.tif").read_bytes()[:4096]
    proc = run_cli("apply", "in.tif", "1,2", "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npy")[..., 0], data[0] + 2 * data[1], rtol=1e-6)


def test_a_vrt_reading_files_in_its_own_folder_needs_no_flag(tmp_path):
    pytest.importorskip("rasterio")
    data = np.arange(32, dtype=np.uint8).reshape(4, 8)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "plain.bin").write_bytes(data.tobytes())
    (tmp_path / "mosaic.vrt").write_text(_vrt("sub/plain.bin", relative=True, raw=True))
    proc = run_cli("apply", "mosaic.vrt", "2", "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy")[..., 0], 2 * data.astype(np.int64))


@pytest.mark.parametrize(
    "output, extra",
    [("o.png", []), ("o.jpg", []), ("o.jp2", [])],
)
def test_an_output_held_whole_must_fit_in_max_memory_beside_its_blocks(tmp_path, output, extra):
    pytest.importorskip("PIL")
    pytest.importorskip("rasterio")
    np.save(tmp_path / "x.npy", np.ones((1024, 1024, 3), np.uint8))  # 3 MiB out
    mix = "1,0,0;0,1,0;0,0,1"
    refused = run_cli(
        "apply", "x.npy", mix, "-o", output, "--dtype", "u1", "--max-memory", "4MiB", *extra, cwd=tmp_path
    )
    assert_clean_error(refused, 2, "held whole until it is encoded: 3.0 MiB", "--max-memory 6.0MiB")
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]
    taken = run_cli(
        "apply", "x.npy", mix, "-o", output, "--dtype", "u1", "--max-memory", "6MiB", *extra, cwd=tmp_path
    )
    assert taken.returncode == 0, taken.stderr
    for compression in ("none", "deflate", "zstd"):  # written block by block, strip by strip: no such limit
        streamed = run_cli("apply", "x.npy", mix, "-o", f"{compression}.tif", "--dtype", "u1", "--max-memory", "4MiB",
                           "--compression", compression, cwd=tmp_path)  # fmt: skip
        assert streamed.returncode == 0, streamed.stderr


def test_gdal_block_cache_takes_a_quarter_of_max_memory_unless_the_user_set_it(monkeypatch):
    from pwconv.io import registry

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    monkeypatch.setattr(registry, "_USER_GDAL_CACHE", False)
    for limit, megabytes in ((32 << 20, "8"), (128 << 20, "32"), (4 << 30, "64")):
        registry.limit_library_caches(limit)
        assert os.environ["GDAL_CACHEMAX"] == megabytes
    monkeypatch.setenv("GDAL_CACHEMAX", "500")
    monkeypatch.setattr(registry, "_USER_GDAL_CACHE", True)
    registry.limit_library_caches(32 << 20)
    assert os.environ["GDAL_CACHEMAX"] == "500"


@pytest.mark.parametrize("offset", [2**63 + 5, 2**64 - 5, 2**40])
def test_a_bigtiff_whose_first_directory_lies_past_any_file_is_a_format_error(tmp_path, offset):
    import struct

    (tmp_path / "big.tif").write_bytes(b"II" + struct.pack("<HHHQ", 43, 8, 0, offset) + bytes(32))
    for command in (["info", "big.tif"], ["apply", "big.tif", "1", "-o", "out.npy"]):
        assert_clean_error(run_cli(*command, cwd=tmp_path), 2, "big.tif")
    assert sorted(os.listdir(tmp_path)) == ["big.tif"]


def test_deeply_nested_zarr_metadata_is_a_format_error(tmp_path):
    store = tmp_path / "deep.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("[" * 100_000 + "]" * 100_000)
    proc = run_cli("apply", "deep.zarr", "1", "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "deep.zarr")
    assert "RecursionError" not in proc.stderr and not (tmp_path / "out.npy").exists()


def test_a_signal_whose_exception_a_destructor_swallowed_still_ends_the_wait(monkeypatch):
    import signal

    from pwconv.engines import interrupts
    from pwconv.engines.workers import Pending

    class Swallows:  # what h5py's and GDAL's objects do when freed with a signal pending
        def __del__(self):
            try:
                interrupts._on_signal(signal.SIGTERM, None)
            except SystemExit:
                pass

    monkeypatch.setattr(interrupts, "_came", [])
    Swallows()  # freed at once: the handler's SystemExit is lost, the signal is kept
    with pytest.raises(SystemExit) as ended:
        Pending().result()  # never done: only the kept signal ends the wait
    assert ended.value.code == 143


def test_a_thread_whose_join_a_signal_interrupted_still_runs():
    """Python up to 3.12 marks a thread ended when a signal interrupts a join on it; pwconv's
    threads (the upload, the TIFF block writer, the engine's workers) end only when they do."""
    import threading

    from pwconv.io import threads
    from tests.conftest import Interrupted, interrupted_after

    release = threading.Event()
    thread = threads.Thread(lambda: release.wait(30), "test")
    with interrupted_after(0.1), pytest.raises(Interrupted):
        thread.join()
    assert thread.alive() and not thread.join(0.05)
    release.set()
    assert thread.join(5) and not thread.alive()


# A library that turns the handler's exception into its own error, as h5py does for a signal
# that comes inside one of its calls ("operation not defined for data type class").
_SIGNAL_TURNED_INTO_A_WRITE_ERROR = """
import os, signal
from pwconv.cli.output import guarded
from pwconv.engines import interrupts
from pwconv.errors import WriteError
interrupts.install()
def command():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except BaseException:
        pass
    raise WriteError("cannot write 'y.nc': Operation not defined for data type class")
guarded(command)()
"""


def test_a_signal_that_a_library_turned_into_its_own_error_ends_the_run_as_the_signal():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_TURNED_INTO_A_WRITE_ERROR], capture_output=True, text=True, timeout=60
    )
    assert_clean_error(proc, 143, "terminated; no output was written")
    assert "data type class" not in proc.stderr


def _limited(tmp_path, limit, *args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "pwconv", *args], cwd=tmp_path, capture_output=True, text=True,
        preexec_fn=file_size_limit(limit),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "target"),
    [
        (("export", "w.npy", "-o", "m.onnx"), "m.onnx"),
        (("export", "w.npy", "-o", "m.vrt", "in.tif"), "m.vrt"),
        (("export", "w.npy", "-o", "m.safetensors"), "m.safetensors"),
        (("explain", "in.tif", "w.npy", "--png", "p.png", "--html", "p.html"), "p.html"),  # together: none
        (("fit", "pca", "in.tif", "-k", "2", "-o", "b.npz", "--report", "r.html"), "b.npz"),  # bank first
    ],
)
def test_new_writers_on_a_full_disk_are_exit_1_and_leave_nothing(tmp_path, args, target):
    _full_disk_leaves_nothing(tmp_path, 2_000, args, target)


def test_a_fit_report_that_does_not_fit_takes_its_bank_with_it(tmp_path):
    """The bank (a few KB) fits, the report (tens of KB) does not: neither appears."""
    _full_disk_leaves_nothing(tmp_path, 20_000, ("fit", "pca", "in.tif", "-k", "2", "-o", "b.npz", "--report",
                                                 "r.html"), "r.html")  # fmt: skip


def _full_disk_leaves_nothing(tmp_path, limit, args, target):
    pytest.importorskip("rasterio")
    pytest.importorskip("onnx")
    pytest.importorskip("matplotlib")
    from tests.conftest import write_geotiff

    write_geotiff(tmp_path / "in.tif", np.random.default_rng(0).random((40, 50, 60)).astype(np.float32))
    np.save(tmp_path / "w.npy", np.random.default_rng(1).random((20, 40)))
    before = sorted(os.listdir(tmp_path))
    proc = _limited(tmp_path, limit, *args)
    assert_clean_error(proc, 1, f"cannot write '{target}'")
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(
    "args",
    [
        ("export", "1,2", "-o", "ro/m.onnx"),
        ("explain", "x.npy", "1,2", "--svg", "ro/p.svg"),
    ],
)
def test_new_writers_in_a_read_only_folder_are_exit_1_and_leave_nothing(tmp_path, args):
    pytest.importorskip("onnx")
    pytest.importorskip("matplotlib")
    from tests.conftest import permissions_apply

    np.save(tmp_path / "x.npy", np.ones((3, 3, 2), np.float32))
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        proc = run_cli(*args, cwd=tmp_path, prefix=permissions_apply())
        assert_clean_error(proc, 1, "cannot create the output in", "Permission denied")
        assert os.listdir(tmp_path / "ro") == []
    finally:
        os.chmod(tmp_path / "ro", 0o755)
