"""The worked example (DESIGN.md): M channels-first, filter [2, 3] -> [[17, 22], [27, 32]]."""

from __future__ import annotations

import hashlib
import io
import json

import h5py
import numpy as np
import pytest

from pwconv import load_weights, pointwise_conv
from pwconv.core.reference import reference_conv

from .conftest import SAMPLES, WORKED_FILTER, WORKED_M, WORKED_RESULT, modules_imported_by, run_cli


@pytest.mark.parametrize(
    "filters",
    [
        WORKED_FILTER,
        WORKED_FILTER.reshape(2, 1, 1),
        WORKED_FILTER.reshape(1, 2),
        WORKED_FILTER.reshape(1, 2, 1, 1),
    ],
    ids=["(2,)", "(2,1,1)", "(1,2)", "(1,2,1,1)"],
)
def test_worked_example_api_every_filter_shape(filters):
    result = pointwise_conv(WORKED_M, filters, layout="channels-first")
    assert result.shape == (1, 2, 2)
    np.testing.assert_array_equal(result[0], WORKED_RESULT)


def test_worked_example_reference_loop_agrees():
    np.testing.assert_array_equal(reference_conv(WORKED_M, WORKED_FILTER, layout="CHW")[0], WORKED_RESULT)


def test_worked_example_channels_last_transposed():
    x = np.moveaxis(WORKED_M, 0, -1)
    np.testing.assert_array_equal(pointwise_conv(x, WORKED_FILTER)[..., 0], WORKED_RESULT)


def test_sample_files_hold_the_worked_example():
    np.testing.assert_array_equal(np.load(SAMPLES / "example_M.npy"), WORKED_M)
    np.testing.assert_array_equal(np.load(SAMPLES / "example_filter.npy"), WORKED_FILTER)
    assert np.load(SAMPLES / "example_filter_2x1x1.npy").shape == (2, 1, 1)
    np.testing.assert_array_equal(load_weights(str(SAMPLES / "example_filter.npy")), WORKED_FILTER)


@pytest.mark.parametrize("weights", ["2,3", "f.npy", "f211.npy"])
def test_worked_example_cli(worked, weights):
    proc = run_cli("apply", "M.npy", weights, "-o", "out.npy", "--layout", "channels-first", cwd=worked)
    assert proc.returncode == 0, proc.stderr
    out = np.load(worked / "out.npy")
    assert out.shape == (1, 2, 2)
    np.testing.assert_array_equal(out[0], WORKED_RESULT)
    assert "2x2x2" in proc.stderr and "1x2x2" in proc.stderr and "total" in proc.stderr


def test_worked_example_cli_squeeze_to_stdout(worked):
    proc = run_cli("apply", "M.npy", "2,3", "-o", "-", "--layout", "CHW", "--squeeze", cwd=worked)
    assert proc.returncode == 0, proc.stderr
    out = np.load(io.BytesIO(proc.stdout))
    np.testing.assert_array_equal(out, WORKED_RESULT)
    assert out.dtype == np.int64


def test_worked_example_json_report(worked):
    proc = run_cli(
        "apply", "M.npy", "f211.npy", "-o", "out.h5", "--layout", "channels-first", "--json", cwd=worked
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)[0]
    assert report["input"]["shape"] == [2, 2, 2]
    assert report["weights"]["shape"] == [2, 1, 1]
    assert report["weights"]["read_as"] == "chw"
    assert report["weights"]["matrix_shape"] == [1, 2]
    assert report["output"]["shape"] == [1, 2, 2]
    assert set(report["seconds"]) == {"load", "compute", "save", "total"}
    assert proc.stderr == ""
    with h5py.File(worked / "out.h5") as handle:
        np.testing.assert_array_equal(handle["data"][0], WORKED_RESULT)
        assert handle["data"].attrs["weights_sha256"] == report["weights"]["sha256"]


def test_counts_in_the_report_are_singular_for_one(tmp_path):
    np.save(tmp_path / "m.npy", WORKED_M)
    proc = run_cli("apply", "m.npy", "2,3", "--layout", "CHW", "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import re

    assert "1 filter x 2 channels" in proc.stderr and not re.search(r"(?<![x\d])1 filters", proc.stderr)
    np.save(tmp_path / "bank.npy", WORKED_FILTER.reshape(1, 2))
    info = run_cli("info", "bank.npy", "--channels", "2", cwd=tmp_path)
    assert "yes: 1 filter x 2 channels" in info.stdout.decode() + info.stderr, info.stderr


# What a run on .npy files has no use for: the other commands, the named tables and indices,
# and the standard modules that cost start-up time (OpenSSL, sockets, zip, thread pools, JSON).
NOT_FOR_AN_NPY_RUN = (
    "pwconv.cli.batch", "pwconv.cli.explain", "pwconv.cli.info", "pwconv.cli.banks",
    "pwconv.cli.export", "pwconv.cli.fit", "pwconv.io.tables", "pwconv.core.indices",
    "_hashlib", "socket", "zipfile", "concurrent.futures", "json", "importlib.resources",
)  # fmt: skip


def test_npy_run_loads_only_what_it_uses(worked):
    args = ["apply", "M.npy", "f.npy", "-o", "o.npy", "--layout", "CHW"]
    assert modules_imported_by(worked, args, NOT_FOR_AN_NPY_RUN) == (0, [])
    np.testing.assert_array_equal(np.load(worked / "o.npy")[0], WORKED_RESULT)


def test_root_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    listed = [
        line.split()[0] for line in proc.stdout.decode().split("Commands:")[1].splitlines() if line.strip()
    ]
    assert listed == ["apply", "batch", "explain", "info", "banks", "export", "fit"]


@pytest.mark.parametrize("filters", [4, 1200], ids=["small bank (Python's sha256)", "large bank (OpenSSL's)"])
def test_weights_digest_is_the_files_sha256(tmp_path, filters):
    np.save(tmp_path / "x.npy", np.ones((2, 2, 64), np.float32))
    np.save(tmp_path / "w.npy", np.random.default_rng(0).random((filters, 64)))
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "y.h5", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = hashlib.sha256((tmp_path / "w.npy").read_bytes()).hexdigest()
    assert json.loads(proc.stdout)[0]["weights"]["sha256"] == expected
    with h5py.File(tmp_path / "y.h5") as handle:
        assert handle["data"].attrs["weights_sha256"] == expected
