"""Faults and hostile inputs: one line, the documented exit code, nothing written."""

from __future__ import annotations

import os

import numpy as np
import pytest

from .conftest import assert_clean_error, run_cli


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


def _small_files():
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))


@pytest.mark.parametrize("output", ["out.tif", "out.img"])
def test_a_raster_the_disk_did_not_take_whole_is_exit_1_and_nothing_is_left(tmp_path, output):
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
        [sys.executable, "-m", "pwconv", "apply", "in.tif", "1,0,0;0,1,0;0,0,1", "-o", output, "--co", "COMPRESS=NONE"]
        if output.endswith(".tif")
        else [sys.executable, "-m", "pwconv", "apply", "in.tif", "1,0,0;0,1,0;0,0,1", "-o", output],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=_small_files,
    )  # fmt: skip
    if output.endswith(".img"):
        assert_clean_error(proc, 1, "did not take all of it")
    else:  # libtiff still prints its own line before pwconv's (issue 21 leaves this open)
        assert proc.returncode == 1 and "pwconv: error: cannot write 'out.tif'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == ["in.tif"]
