"""The command line through a real subprocess, for every pair of formats."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest

from pwconv import __version__
from pwconv.core.reference import reference_conv

from .conftest import SAMPLES, assert_clean_error, run_cli

RNG = np.random.default_rng(3)
X = RNG.standard_normal((5, 6, 8)).astype(np.float32)
W = RNG.standard_normal((3, 8)).astype(np.float32)
EXPECTED = reference_conv(X, W)


def _write(path, array, kind):
    if kind == "npy":
        np.save(path, array)
    else:
        with h5py.File(path, "w") as handle:
            handle.create_dataset("x", data=array, chunks=(2, 6, 8))


def _read(path, kind):
    if kind == "npy":
        return np.load(path)
    with h5py.File(path) as handle:
        return handle["data"][...]


@pytest.mark.parametrize("src", ["npy", "h5", "stdin"])
@pytest.mark.parametrize("dst", ["npy", "h5", "stdout"])
def test_format_pairs(tmp_path, src, dst):
    np.save(tmp_path / "w.npy", W)
    stdin = None
    if src == "stdin":
        buffer = io.BytesIO()
        np.save(buffer, X)
        stdin, in_arg = buffer.getvalue(), "-"
    else:
        in_arg = f"in.{src}"
        _write(tmp_path / in_arg, X, src)
    out_arg = "-" if dst == "stdout" else f"out.{dst}"
    proc = run_cli("apply", in_arg, "w.npy", "-o", out_arg, stdin=stdin, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = np.load(io.BytesIO(proc.stdout)) if dst == "stdout" else _read(tmp_path / out_arg, dst)
    np.testing.assert_allclose(result, EXPECTED, rtol=1e-5, atol=1e-5)
    if dst != "stdout":
        assert proc.stdout == b""


def test_sample_h5_with_dataset_paths(tmp_path):
    h5 = SAMPLES / "sample.h5"
    proc = run_cli("apply", f"{h5}:/input", f"{h5}:/filters", "-o", "out.h5:/result/y", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    x = np.load(SAMPLES / "input_28x28x192.npy")
    w = np.load(SAMPLES / "filters_64x192.npy")
    with h5py.File(tmp_path / "out.h5") as handle:
        y = handle["/result/y"]
        np.testing.assert_allclose(y[...], x @ w.T, rtol=1e-4, atol=1e-4)
        assert y.attrs["pwconv_version"] == __version__
        assert y.attrs["weights_source"].endswith("sample.h5:/filters")
        assert len(y.attrs["weights_sha256"]) == 64
        assert y.attrs["layout"] == "channels-last"


def test_dataset_option_and_adding_a_dataset_keeps_the_others(tmp_path):
    h5 = SAMPLES / "sample.h5"
    first = run_cli(
        "apply",
        str(h5),
        str(SAMPLES / "filters_64x192.npy"),
        "--dataset",
        "input",
        "-o",
        "o.h5:/a",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    second = run_cli("apply", f"{h5}:/input", "1" + ",0" * 191, "-o", "o.h5:/b", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    with h5py.File(tmp_path / "o.h5") as handle:
        assert sorted(handle) == ["a", "b"]
        np.testing.assert_array_equal(handle["b"][..., 0], np.load(SAMPLES / "input_28x28x192.npy")[..., 0])
    again = run_cli("apply", f"{h5}:/input", "1" + ",0" * 191, "-o", "o.h5:/b", cwd=tmp_path)
    assert_clean_error(again, 2, "exists", "--overwrite")
    replaced = run_cli(
        "apply", f"{h5}:/input", "2" + ",0" * 191, "-o", "o.h5:/b", "--overwrite", cwd=tmp_path
    )
    assert replaced.returncode == 0, replaced.stderr
    with h5py.File(tmp_path / "o.h5") as handle:
        assert sorted(handle) == ["a", "b"]
        np.testing.assert_array_equal(
            handle["b"][..., 0], 2 * np.load(SAMPLES / "input_28x28x192.npy")[..., 0]
        )


def test_pipe_pwconv_into_pwconv(tmp_path):
    np.save(tmp_path / "x.npy", X)
    first = run_cli("apply", "x.npy", "1,0,0,0,0,0,0,0;0,1,0,0,0,0,0,0", "-o", "-", cwd=tmp_path)
    second = run_cli("apply", "-", "1,1", "-o", "-", "--squeeze", stdin=first.stdout, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    np.testing.assert_allclose(np.load(io.BytesIO(second.stdout)), X[..., 0] + X[..., 1], rtol=1e-6)


def test_report_shows_shapes_and_timing(tmp_path):
    proc = run_cli(
        "apply", SAMPLES / "input_28x28x192.npy", SAMPLES / "filters_64x192.npy", "-o", "o.npy", cwd=tmp_path
    )
    assert proc.returncode == 0
    assert "28x28x192" in proc.stderr and "64x192" in proc.stderr and "28x28x64" in proc.stderr
    assert "GFLOP/s" in proc.stderr and "total" in proc.stderr


def test_quiet_prints_nothing(tmp_path):
    proc = run_cli(
        "apply", SAMPLES / "example_M.npy", "2,3", "--layout", "CHW", "-o", "o.npy", "-q", cwd=tmp_path
    )
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == b""


def test_literal_weights_keep_float32(tmp_path):
    np.save(tmp_path / "x.npy", X)
    proc = run_cli("apply", "x.npy", "0.5" + ",0.25" * 7, "-o", "o.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "o.npy")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], X @ np.array([0.5] + [0.25] * 7), rtol=1e-5, atol=1e-6)


def test_bias_groups_stride_and_dtype(tmp_path):
    np.save(tmp_path / "x.npy", X)
    w = RNG.standard_normal((4, 4)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    proc = run_cli(
        "apply",
        "x.npy",
        "w.npy",
        "-o",
        "o.npy",
        "--groups",
        "2",
        "--stride",
        "2",
        "--bias",
        "1,2,3,4",
        "--dtype",
        "float64",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    expected = reference_conv(X, w, np.array([1.0, 2, 3, 4]), groups=2, stride=2, dtype=np.float64)
    out = np.load(tmp_path / "o.npy")
    assert out.dtype == np.float64 and out.shape == (3, 3, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_info_reads_no_data(tmp_path):
    proc = run_cli("info", SAMPLES / "input_28x28x192.npy", f"{SAMPLES / 'sample.h5'}:/filters", "--json")
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    assert items[0]["shape"] == [28, 28, 192] and items[0]["dtype"] == "float32"
    assert items[0]["bytes"] == 28 * 28 * 192 * 4
    assert items[0]["layout_guess"] == "channels-last"
    assert items[1]["storage"]["dataset"] == "/filters"
    text = run_cli("info", SAMPLES / "sample.h5:/input")
    assert text.returncode == 0 and "28x28x192" in text.stderr and "hdf5" in text.stderr


def test_version_tells_the_tools_apart():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert f"pwconv {__version__}" in proc.stdout.decode()
    assert "1x1 convolution" in proc.stdout.decode()


def test_console_script_beside_the_interpreter():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("pwconv")
    if not script.exists():
        pytest.skip("console script not installed beside this interpreter")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_info_lists_every_array_of_a_container():
    proc = run_cli("info", SAMPLES / "sample.h5", "--json")
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    assert [i["storage"]["dataset"] for i in items] == ["/filters", "/input"]
    assert [i["shape"] for i in items] == [[64, 192], [28, 28, 192]]


def test_info_describes_the_other_files_when_one_is_bad(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not an npy file at all")
    proc = run_cli("info", SAMPLES / "example_M.npy", "bad.npy", SAMPLES / "sample.h5", cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pwconv: error:")]
    assert len(errors) == 1 and "bad.npy" in errors[0] and "Traceback" not in proc.stderr
    assert "2x2x2" in proc.stderr and "28x28x192" in proc.stderr and "64x192" in proc.stderr


def test_python_api_words_fixes_as_keywords_and_the_cli_as_flags(tmp_path):
    from pwconv import PwconvError, pointwise_conv

    x = np.zeros((192, 28, 28), np.float32)
    with pytest.raises(PwconvError) as info:
        pointwise_conv(x, np.zeros((64, 192), np.float32))
    assert "layout='channels-first'" in str(info.value) and "--" not in str(info.value)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", np.zeros((64, 192), np.float32))
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "y.npy", cwd=tmp_path)
    assert proc.returncode == 2 and "use --layout channels-first" in proc.stderr
