"""Every bad input: the documented exit code, one line naming the problem and fix, no output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from .conftest import assert_clean_error, file_size_limit, leftovers, permissions_apply, run_cli


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 4, 3), np.float32))
    np.save(tmp_path / "w.npy", np.ones((2, 3), np.float32))
    return tmp_path


def _apply(cwd, *args, out="out.npy"):
    return run_cli("apply", *args, "-o", out, cwd=cwd)


def _no_output(cwd, name="out.npy"):
    assert not (cwd / name).exists()
    assert leftovers(cwd) == []


def test_missing_input(files):
    assert_clean_error(_apply(files, "nope.npy", "w.npy"), 2, "nope.npy", "no file")
    _no_output(files)


def test_directory_as_input(files):
    (files / "d.npy").mkdir()
    assert_clean_error(_apply(files, "d.npy", "w.npy"), 2, "directory")
    _no_output(files)


def test_unreadable_input(files):
    os.chmod(files / "x.npy", 0)
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "out.npy", cwd=files, prefix=permissions_apply())
    assert_clean_error(proc, 2, "read permission")
    _no_output(files)


def test_unknown_extension(files):
    (files / "x.csv").write_text("1,2,3\n")
    assert_clean_error(_apply(files, "x.csv", "w.npy"), 2, ".csv", ".npy")
    assert_clean_error(_apply(files, "x.npy", "w.npy", out="out.txt"), 2, ".txt")
    _no_output(files)


def test_corrupt_npy(files):
    (files / "bad.npy").write_bytes(b"this is not an npy file at all")
    assert_clean_error(_apply(files, "bad.npy", "w.npy"), 2, "corrupt", "numpy.save")
    _no_output(files)


def test_truncated_npy(files):
    data = (files / "x.npy").read_bytes()
    (files / "cut.npy").write_bytes(data[:-10])
    assert_clean_error(_apply(files, "cut.npy", "w.npy"), 2, "truncated")
    _no_output(files)


def test_truncated_stdin(files):
    data = (files / "x.npy").read_bytes()[:-10]
    proc = run_cli("apply", "-", "w.npy", "-o", "out.npy", stdin=data, cwd=files)
    assert_clean_error(proc, 2, "truncated")
    _no_output(files)


def test_object_array_is_never_unpickled(files):
    np.save(files / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert_clean_error(_apply(files, "obj.npy", "w.npy"), 2, "object array", "never unpickles")
    assert_clean_error(_apply(files, "x.npy", "obj.npy"), 2, "object array")
    _no_output(files)


def test_missing_h5_dataset_lists_what_exists(files):
    with h5py.File(files / "in.h5", "w") as handle:
        handle["alpha"] = np.ones((2, 2, 3))
        handle["beta"] = np.ones((2, 2, 3))
    assert_clean_error(_apply(files, "in.h5:/gamma", "w.npy"), 2, "/gamma", "/alpha", "/beta")
    assert_clean_error(_apply(files, "in.h5", "w.npy"), 2, "2", "/alpha", "name one as in.h5:/alpha")
    _no_output(files)


def test_channel_mismatch_suggests_layout(files):
    np.save(files / "chw.npy", np.ones((3, 5, 7), np.float32))
    proc = _apply(files, "chw.npy", "w.npy")
    assert_clean_error(proc, 2, "channel mismatch", "axis 2", "--layout channels-first")
    _no_output(files)


def test_kernel_larger_than_1x1(files):
    np.save(files / "k3.npy", np.ones((2, 3, 3, 3), np.float32))
    assert_clean_error(_apply(files, "x.npy", "k3.npy"), 2, "pwconv applies 1x1 kernels; got 3x3")
    _no_output(files)


@pytest.mark.parametrize("literal", ["1,,2", "1,2;3", "1,x,3", "1e999,1,1"])
def test_bad_literal(files, literal):
    assert_clean_error(_apply(files, "x.npy", literal), 2, literal)
    _no_output(files)


def test_bias_of_wrong_length(files):
    assert_clean_error(_apply(files, "x.npy", "w.npy", "--bias", "1,2,3"), 2, "bias", "2 values")
    _no_output(files)


def test_groups_not_dividing(files):
    assert_clean_error(_apply(files, "x.npy", "w.npy", "--groups", "2"), 2, "groups=2", "3 input channels")
    np.save(files / "x4.npy", np.ones((2, 2, 4), np.float32))
    np.save(files / "w3.npy", np.ones((3, 2), np.float32))
    assert_clean_error(_apply(files, "x4.npy", "w3.npy", "--groups", "2"), 2, "3 filters")
    _no_output(files)


def test_empty_tensors(files):
    np.save(files / "empty.npy", np.ones((0, 4, 3), np.float32))
    assert_clean_error(_apply(files, "empty.npy", "w.npy"), 2, "non-empty input")
    np.save(files / "nochan.npy", np.ones((4, 4, 0), np.float32))
    assert_clean_error(_apply(files, "nochan.npy", "w.npy"), 2, "at least one input channel")
    np.save(files / "wempty.npy", np.ones((0, 3), np.float32))
    assert_clean_error(_apply(files, "x.npy", "wempty.npy"), 2, "non-empty filter bank")
    _no_output(files)


def test_existing_output_is_kept_without_overwrite(files):
    (files / "out.npy").write_bytes(b"precious")
    assert_clean_error(_apply(files, "x.npy", "w.npy"), 2, "exists", "--overwrite")
    assert (files / "out.npy").read_bytes() == b"precious"
    assert leftovers(files) == []
    assert _apply(files, "x.npy", "w.npy", "--overwrite").returncode == 0
    assert np.load(files / "out.npy").shape == (4, 4, 2)


def test_output_equal_to_input_is_refused(files):
    before = (files / "x.npy").read_bytes()
    for extra in ([], ["--overwrite"]):
        proc = run_cli("apply", "x.npy", "w.npy", "-o", "./x.npy", *extra, cwd=files)
        assert_clean_error(proc, 2, "same file")
    assert_clean_error(
        run_cli("apply", "x.npy", "w.npy", "-o", "w.npy", "--overwrite", cwd=files), 2, "same file"
    )
    assert (files / "x.npy").read_bytes() == before
    assert leftovers(files) == []


def test_json_with_stdout_data_is_refused(files):
    assert_clean_error(run_cli("apply", "x.npy", "w.npy", "-o", "-", "--json", cwd=files), 2, "--json")


def test_squeeze_needs_one_filter(files):
    assert_clean_error(_apply(files, "x.npy", "w.npy", "--squeeze"), 2, "--squeeze", "2")
    _no_output(files)


def test_bad_option_values(files):
    assert_clean_error(_apply(files, "x.npy", "w.npy", "--layout", "NQ"), 2, "layout")
    assert_clean_error(_apply(files, "x.npy", "w.npy", "--max-memory", "lots"), 2, "memory size")
    assert_clean_error(_apply(files, "x.npy", "w.npy", "--dtype", "floaty"), 2, "dtype")
    assert_clean_error(_apply(files, "x.npy", "w.npy", "--weights-layout", "xyz"), 2, "weights")
    assert_clean_error(
        _apply(files, "x.npy", "w.npy", "--chunks", "1,2", out="out.h5"), 2, "--chunks", "3 positive"
    )
    _no_output(files)
    _no_output(files, "out.h5")


def test_missing_output_directory(files):
    assert_clean_error(_apply(files, "x.npy", "w.npy", out="nodir/out.npy"), 2, "directory", "nodir")


@pytest.mark.parametrize("out", ["out.npy", "out.h5", "out.tif", "out.nc", "out.img"])
def test_write_failure_exits_1_and_keeps_the_old_output(files, out):
    np.save(files / "big.npy", np.ones((100, 100, 3), np.float32))
    (files / out).write_bytes(b"old")
    proc = subprocess.run(
        [sys.executable, "-m", "pwconv", "apply", "big.npy", "w.npy", "-o", out, "--overwrite"],
        cwd=files,
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit(50_000),
    )
    assert_clean_error(proc, 1)
    assert (files / out).read_bytes() == b"old"
    assert leftovers(files) == []


@pytest.mark.parametrize(
    "signum, code, said",
    [(signal.SIGINT, 130, b"interrupted"), (signal.SIGTERM, 143, b"")],
    ids=["INT", "TERM"],
)
def test_a_signal_while_reading_stdin_leaves_no_partial_file(files, signum, code, said):
    header = np.lib.format
    import io

    buffer = io.BytesIO()
    header.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (4096, 1024, 3)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pwconv", "apply", "-", "w.npy", "-o", "out.npy", "--max-memory", "1MiB"],
        cwd=files,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A suite started in the background (``cmd &`` in a script) passes SIGINT on ignored,
        # and Python keeps an ignored SIGINT ignored: give the run the default, as a terminal does.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    proc.stdin.write(buffer.getvalue() + b"\0" * (1 << 20))
    proc.stdin.flush()
    deadline = time.time() + 30
    while not leftovers(files) and time.time() < deadline:
        time.sleep(0.05)
    assert leftovers(files), "the run never started writing"
    proc.send_signal(signum)
    # stdin stays open until the process has ended: closing it first would race the signal
    # with the end of the data (a truncated stream is its own error, exit 2).
    try:
        proc.wait(timeout=30)
    finally:
        proc.stdin.close()
    err = proc.stderr.read()
    assert proc.returncode == code, err
    assert said in err and b"Traceback" not in err and b"Fatal Python error" not in err
    _no_output(files)


def test_closed_pipe_downstream_is_quiet(files):
    np.save(files / "big.npy", np.ones((512, 512, 3), np.float32))
    cmd = f"{sys.executable} -m pwconv apply big.npy w.npy -o - | head -c 100 > /dev/null; echo ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], cwd=files, capture_output=True, text=True)
    assert proc.stdout.strip() in ("0", "141")
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr


def test_unreadable_input_message(tmp_path, monkeypatch):
    # Runs as root too (where file modes do not stop reads): the permission check itself.
    from pwconv.errors import InputFileError
    from pwconv.io.checks import check_readable

    path = tmp_path / "x.npy"
    path.write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda *args: False)
    with pytest.raises(InputFileError, match="without read permission"):
        check_readable(str(path))
