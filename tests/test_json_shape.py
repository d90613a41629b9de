"""Every ``--json`` prints one shape: a list of entries, each with its path, exit code and
error, a failed file or run included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import run_cli

KEYS = ("path", "exit_code", "error")


def _entries(proc) -> list[dict]:
    doc = json.loads(proc.stdout)
    assert isinstance(doc, list) and doc, proc.stdout
    for item in doc:
        assert list(item)[:3] == list(KEYS), item
    return doc


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(24, dtype=np.float32).reshape(2, 4, 3))
    np.save(tmp_path / "w.npy", np.ones((2, 3), np.float32))
    return tmp_path


def test_info_is_a_list_for_one_file_and_for_a_missing_one(files):
    one = run_cli("info", "x.npy", "--json", cwd=files)
    assert one.returncode == 0, one.stderr
    [entry] = _entries(one)
    assert entry["path"] == "x.npy" and entry["exit_code"] == 0 and entry["error"] is None
    assert entry["shape"] == [2, 4, 3]

    missing = run_cli("info", "x.npy", "gone.npy", "--json", cwd=files)
    assert missing.returncode == 2
    found, failed = _entries(missing)
    assert found["exit_code"] == 0 and failed["path"] == "gone.npy"
    assert failed["exit_code"] == 2 and "gone.npy" in failed["error"]
    assert failed["error"] in missing.stderr  # the same words as the one stderr line


def test_apply_fit_and_explain_print_one_entry_each(files):
    applied = run_cli("apply", "x.npy", "w.npy", "-o", "y.npy", "--json", cwd=files)
    assert applied.returncode == 0, applied.stderr
    [entry] = _entries(applied)
    assert entry["path"] == "x.npy" and entry["exit_code"] == 0 and entry["output"]["shape"] == [2, 4, 2]

    fitted = run_cli("fit", "pca", "x.npy", "-k", "2", "-o", "bank.npz", "--json", cwd=files)
    assert fitted.returncode == 0, fitted.stderr
    [entry] = _entries(fitted)
    assert entry["path"] == "bank.npz" and entry["method"] == "pca"

    explained = run_cli("explain", "x.npy", "w.npy", "--at", "1,2", "--json", cwd=files)
    assert explained.returncode == 0, explained.stderr
    [entry] = _entries(explained)
    x = np.load(files / "x.npy")
    assert entry["path"] == "x.npy" and entry["results"][0]["sum"] == pytest.approx(float(x[1, 2].sum()))


@pytest.mark.parametrize(
    "args, code, path",
    [
        (["apply", "x.npy", "1,1", "-o", "y.npy"], 2, "x.npy"),  # 2 filter values for 3 channels
        (["apply", "gone.npy", "w.npy", "-o", "y.npy"], 2, "gone.npy"),
        (["fit", "pca", "x.npy", "-k", "9", "-o", "bank.npz"], 2, "bank.npz"),
        (["explain", "x.npy", "w.npy", "--at", "9,9"], 2, "x.npy"),
        (["batch", "1,1", "x.npy", "--out-dir", "out"], 2, "x.npy"),
    ],
)
def test_a_failure_is_an_entry_with_its_error_and_code(files, args, code, path):
    proc = run_cli(*args, "--json", cwd=files)
    assert proc.returncode == code, proc.stderr
    [entry] = _entries(proc)
    assert entry["path"] == path and entry["exit_code"] == code
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("pwconv: error: ") or line.startswith("FAIL") or "failed" in line
    assert entry["error"] and entry["error"] in proc.stderr
    assert not (files / "y.npy").exists() and not (files / "bank.npz").exists()


def test_batch_entries_carry_status_and_the_summary_stays_on_stderr(files):
    np.save(files / "bad.npy", np.ones((2, 2, 5), np.float32))
    proc = run_cli("batch", "w.npy", "x.npy", "bad.npy", "--out-dir", "out", "--json", cwd=files)
    assert proc.returncode == 2
    ok, failed = _entries(proc)
    assert (ok["path"], ok["status"], ok["exit_code"], ok["error"]) == ("x.npy", "ok", 0, None)
    assert ok["output"].endswith("x.pw.npy") and ok["report"]["output"]["shape"] == [2, 4, 2]
    assert (failed["path"], failed["status"], failed["exit_code"]) == ("bad.npy", "failed", 2)
    assert "2 files: 1 ok, 1 failed" in proc.stderr
