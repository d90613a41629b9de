"""pwconv batch: weights loaded once, every file processed, bad files reported, no partial outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pwconv.core.reference import reference_conv

from .conftest import assert_clean_error, leftovers, run_cli

W = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]], np.float32)


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(9)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    data = {}
    for name in ("in/a.npy", "in/sub/b.npy", "in/c.npy"):
        data[name] = rng.standard_normal((5, 4, 3)).astype(np.float32)
        np.save(tmp_path / name, data[name])
    np.save(tmp_path / "w.npy", W)
    return tmp_path, data


def test_batch_walks_folders_and_matches_apply(tree):
    root, data = tree
    proc = run_cli("batch", "w.npy", "in", "--out-dir", "out", cwd=root)
    assert proc.returncode == 0, proc.stderr
    for name, x in data.items():
        out = root / "out" / name.removeprefix("in/").replace(".npy", ".pw.npy")
        np.testing.assert_allclose(np.load(out), reference_conv(x, W), rtol=1e-5, atol=1e-5)
    lines = proc.stderr.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == 3
    assert lines[-1].startswith("3 files: 3 ok, 0 failed")


def test_bad_file_does_not_stop_the_others(tree):
    root, _ = tree
    np.save(root / "in" / "wrong.npy", np.ones((2, 2, 7), np.float32))
    (root / "in" / "junk.npy").write_bytes(b"not npy")
    proc = run_cli("batch", "w.npy", "in", "--out-dir", "out", "--suffix", "", "--json", cwd=root)
    assert proc.returncode == 2, proc.stderr
    doc = json.loads(proc.stdout)
    status = {item["path"].split("/")[-1]: item["status"] for item in doc}
    assert status == {
        "a.npy": "ok",
        "b.npy": "ok",
        "c.npy": "ok",
        "wrong.npy": "failed",
        "junk.npy": "failed",
    }
    assert [item["exit_code"] for item in doc if item["status"] == "failed"] == [2, 2]
    assert all(item["error"] for item in doc if item["status"] == "failed")
    assert all(item["error"] is None and item["exit_code"] == 0 for item in doc if item["status"] == "ok")
    assert "5 files: 3 ok, 2 failed" in proc.stderr  # the summary, on stderr with --json too
    assert not (root / "out" / "wrong.npy").exists() and not (root / "out" / "junk.npy").exists()
    assert "FAIL" in proc.stderr and "channel mismatch" in proc.stderr
    assert leftovers(root / "out") == []


def test_fail_fast_skips_the_rest(tree):
    root, _ = tree
    (root / "bad.npy").write_bytes(b"nope")
    proc = run_cli(
        "batch",
        "w.npy",
        "bad.npy",
        "in/a.npy",
        "in/c.npy",
        "--out-dir",
        "out",
        "--fail-fast",
        "--json",
        cwd=root,
    )
    assert proc.returncode == 2
    assert [item["status"] for item in json.loads(proc.stdout)] == ["failed", "skipped", "skipped"]
    assert not list((root / "out").iterdir())


def test_parallel_jobs_give_the_same_outputs(tree):
    root, data = tree
    proc = run_cli(
        "batch", "w.npy", "in/a.npy", "in/c.npy", "in/sub/b.npy", "--out-dir", "out", "-j", "3", cwd=root
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("a", "c", "b"):
        assert (root / "out" / f"{name}.pw.npy").exists()


def test_colliding_output_names_are_refused_for_the_second(tree):
    root, _ = tree
    np.save(root / "a.npy", np.ones((2, 2, 3), np.float32))
    proc = run_cli("batch", "w.npy", "in/a.npy", "a.npy", "--out-dir", "out", cwd=root)
    assert proc.returncode == 2
    assert "would also be written" in proc.stderr


def test_existing_outputs_need_overwrite(tree):
    root, _ = tree
    assert run_cli("batch", "w.npy", "in/a.npy", "--out-dir", "out", cwd=root).returncode == 0
    again = run_cli("batch", "w.npy", "in/a.npy", "--out-dir", "out", cwd=root)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert run_cli("batch", "w.npy", "in/a.npy", "--out-dir", "out", "--overwrite", cwd=root).returncode == 0


def test_bad_weights_stop_before_any_file(tree):
    root, _ = tree
    proc = run_cli("batch", "1,,2", "in", "--out-dir", "out", cwd=root)
    assert proc.returncode == 2 and proc.stderr.startswith("pwconv: error:")
    assert not list((root / "out").iterdir())


def test_missing_out_dir_is_created_like_mkdir_p(tree):
    root, _ = tree
    proc = run_cli("batch", "w.npy", "in", "--out-dir", "new/deeper", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (root / "new" / "deeper").rglob("*.npy")) == [
        "a.pw.npy",
        "b.pw.npy",
        "c.pw.npy",
    ]


def test_out_dir_that_is_a_file_is_refused(tree):
    root, _ = tree
    (root / "plain").write_text("not a folder")
    proc = run_cli("batch", "w.npy", "in", "--out-dir", "plain", cwd=root)
    assert_clean_error(proc, 2, "--out-dir", "plain")


def test_h5_inputs_keep_their_format(tree):
    import h5py

    root, data = tree
    with h5py.File(root / "in" / "d.h5", "w") as handle:
        handle["x"] = data["in/a.npy"]
    proc = run_cli("batch", "w.npy", "in/d.h5", "--out-dir", "out", cwd=root)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(root / "out" / "d.pw.h5") as handle:
        np.testing.assert_allclose(
            handle["data"][...], reference_conv(data["in/a.npy"], W), rtol=1e-5, atol=1e-5
        )


def test_skip_existing_resumes_a_run_and_counts_the_skipped(tree):
    root, data = tree
    first = run_cli("batch", "w.npy", "in/a.npy", "--out-dir", "out", cwd=root)
    assert first.returncode == 0, first.stderr
    kept = (root / "out" / "a.pw.npy").read_bytes()
    proc = run_cli("batch", "w.npy", "in", "--out-dir", "out", "--skip-existing", "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    status = {item["path"]: (item["status"], item.get("reason")) for item in doc}
    assert status["in/a.npy"] == ("skipped", "exists")
    assert status["in/c.npy"][0] == status["in/sub/b.npy"][0] == "ok"
    assert "3 files: 2 ok, 0 failed, 1 skipped" in proc.stderr
    assert (root / "out" / "a.pw.npy").read_bytes() == kept  # not written again
    np.testing.assert_allclose(
        np.load(root / "out" / "sub" / "b.pw.npy"), reference_conv(data["in/sub/b.npy"], W), rtol=1e-5
    )
    both = run_cli("batch", "w.npy", "in", "--out-dir", "out", "--skip-existing", "--overwrite", cwd=root)
    assert_clean_error(both, 2, "--skip-existing", "--overwrite")


def test_glob_patterns_are_expanded_keeping_paths_below_the_pattern(tree):
    root, data = tree
    (root / "in" / "sub" / "a.npy").write_bytes(
        (root / "in" / "a.npy").read_bytes()
    )  # same name, other folder
    proc = run_cli("batch", "w.npy", "in/**/a.npy", "in/c.np?", "--out-dir", "out", "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    written = sorted(str(p.relative_to(root / "out")) for p in (root / "out").rglob("*.npy"))
    assert written == ["a.pw.npy", "c.pw.npy", "sub/a.pw.npy"]
    np.testing.assert_allclose(
        np.load(root / "out" / "c.pw.npy"), reference_conv(data["in/c.npy"], W), rtol=1e-5
    )
    nothing = run_cli("batch", "w.npy", "in/*.tif", "--out-dir", "out", cwd=root)
    assert nothing.returncode == 2 and "in/*.tif" in nothing.stderr


def test_fail_fast_with_jobs_starts_no_new_file_after_a_failure(tree):
    root, _ = tree
    (root / "bad.npy").write_bytes(b"nope")
    many = []
    for i in range(12):
        # big enough that one file takes far longer than refusing bad.npy does
        np.save(root / f"m{i}.npy", np.ones((512, 512, 3), np.float32))
        many.append(f"m{i}.npy")
    order = [*many[:4], "bad.npy", *many[4:]]
    proc = run_cli("batch", "w.npy", *order, "--out-dir", "out", "--fail-fast", "-j", "2", "--json", cwd=root)
    assert proc.returncode == 2
    files = json.loads(proc.stdout)
    assert files[4]["status"] == "failed"
    # After the failure no file starts; the other thread finishes the one it had begun (and,
    # on a loaded machine, the one it began while bad.npy was being refused).
    assert sum(item["status"] == "ok" for item in files[5:]) <= 2
    assert all(item["reason"] == "not started" for item in files if item["status"] == "skipped")
    assert len(list((root / "out").iterdir())) <= 6
