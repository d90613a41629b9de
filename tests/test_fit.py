"""pwconv fit: PCA (and whitening) and least squares in one streamed pass, against
scikit-learn and numpy.linalg.lstsq on the same pixels."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from .conftest import assert_clean_error, leftovers, run_cli

sklearn_decomposition = pytest.importorskip("sklearn.decomposition")
skimage_data = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")


def _sign_rule(rows):
    biggest = np.argmax(np.abs(rows), axis=1)
    signs = np.sign(rows[np.arange(len(rows)), biggest])
    return rows * signs[:, None]


def _cube(seed=0, shape=(40, 50), c=64):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((c, c)) * np.linspace(3, 0.1, c)
    return (rng.standard_normal((*shape, c)) @ mixing + rng.standard_normal(c)).astype(np.float64)


def _bank(path):
    with np.load(path) as bank:
        return {k: bank[k] for k in bank.files}


def _fit(tmp_path, *args):
    proc = run_cli("fit", *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("source", ["photo", "cube"])
def test_pca_matches_scikit_learn(tmp_path, source, whiten):
    if source == "photo":
        path = os.path.join(os.path.dirname(skimage_data.__file__), "astronaut.png")
        x = np.asarray(Image.open(path)).astype(np.float64)
        k = 2
    else:
        x = _cube()
        np.save(tmp_path / "cube.npy", x)
        path, k = "cube.npy", 10
    _fit(tmp_path, "pca", path, "-k", str(k), "-o", "bank.npz", *(["--whiten"] if whiten else []))
    bank = _bank(tmp_path / "bank.npz")
    rows = x.reshape(-1, x.shape[-1])
    reference = sklearn_decomposition.PCA(n_components=k, whiten=whiten, svd_solver="full").fit(rows)
    np.testing.assert_allclose(bank["components"], _sign_rule(reference.components_), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(bank["explained_variance"], reference.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(
        bank["explained_variance_ratio"], reference.explained_variance_ratio_, rtol=1e-6
    )
    assert int(bank["n_pixels"]) == rows.shape[0]
    # the bank applied with pwconv gives scikit-learn's projections (signs by the stated rule)
    proc = run_cli("apply", path, "bank.npz", "-o", "projected.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    signs = np.sign(np.sum(bank["components"] * reference.components_, axis=1))
    expected = reference.transform(rows) * signs
    got = np.load(tmp_path / "projected.npy").reshape(-1, k)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * scale)


def test_a_fraction_keeps_as_many_components_as_scikit_learn(tmp_path):
    x = _cube(seed=2, c=16)
    np.save(tmp_path / "cube.npy", x)
    doc = _fit(tmp_path, "pca", "cube.npy", "-k", "0.9", "-o", "bank.npz")
    reference = sklearn_decomposition.PCA(n_components=0.9, svd_solver="full").fit(x.reshape(-1, 16))
    assert doc["components"] == reference.n_components_


def test_two_files_give_the_bank_of_their_concatenation(tmp_path):
    x = _cube(seed=3, c=12)
    np.save(tmp_path / "a.npy", x[:15])
    np.save(tmp_path / "b.npy", x[15:])
    np.save(tmp_path / "all.npy", x)
    _fit(tmp_path, "pca", "a.npy", "b.npy", "-k", "4", "-o", "two.npz")
    _fit(tmp_path, "pca", "all.npy", "-k", "4", "-o", "one.npz")
    two, one = _bank(tmp_path / "two.npz"), _bank(tmp_path / "one.npz")
    for key in ("weights", "bias", "mean", "explained_variance"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-10, atol=1e-12)


def test_streamed_fit_equals_the_in_memory_fit(tmp_path):
    x = _cube(seed=4, shape=(200, 64), c=32)
    np.save(tmp_path / "cube.npy", x)
    whole = _fit(tmp_path, "pca", "cube.npy", "-k", "5", "-o", "whole.npz")
    streamed = _fit(tmp_path, "pca", "cube.npy", "-k", "5", "-o", "streamed.npz", "--max-memory", "64KiB")
    assert whole["pixels"]["used"] == streamed["pixels"]["used"] == 200 * 64
    a, b = _bank(tmp_path / "whole.npz"), _bank(tmp_path / "streamed.npz")
    for key in ("weights", "bias", "explained_variance"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_lstsq_matches_numpy(tmp_path, bias):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 40, 6))
    y = (
        x @ rng.standard_normal((4, 6)).T
        + (rng.standard_normal(4) if bias else 0)
        + 0.1 * rng.standard_normal((30, 40, 4))
    )
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    doc = _fit(tmp_path, "lstsq", "x.npy", "y.npy", "-o", "bank.npz", *([] if bias else ["--no-bias"]))
    rows, targets = x.reshape(-1, 6), y.reshape(-1, 4)
    design = np.hstack([rows, np.ones((len(rows), 1))]) if bias else rows
    solution, *_ = np.linalg.lstsq(design, targets, rcond=None)
    bank = _bank(tmp_path / "bank.npz")
    np.testing.assert_allclose(bank["weights"], solution[:6].T, rtol=1e-6, atol=1e-9)
    if bias:
        np.testing.assert_allclose(bank["bias"], solution[6], rtol=1e-6, atol=1e-9)
    else:
        assert "bias" not in bank
    residual = targets - design @ solution
    np.testing.assert_allclose(doc["rms"], np.sqrt((residual**2).mean(axis=0)), rtol=1e-6)
    r2 = 1 - (residual**2).sum(0) / ((targets - targets.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(doc["r2"], r2, rtol=1e-6)


def test_ridge_matches_the_closed_form(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((20, 25, 5))
    y = x @ rng.standard_normal((2, 5)).T + 3.0
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    _fit(tmp_path, "lstsq", "x.npy", "y.npy", "-o", "bank.npz", "--ridge", "50")
    rows, targets = x.reshape(-1, 5), y.reshape(-1, 2)
    xc, yc = rows - rows.mean(0), targets - targets.mean(0)
    closed = np.linalg.solve(xc.T @ xc + 50 * np.eye(5), xc.T @ yc).T
    bank = _bank(tmp_path / "bank.npz")
    np.testing.assert_allclose(bank["weights"], closed, rtol=1e-6)
    np.testing.assert_allclose(bank["bias"], targets.mean(0) - closed @ rows.mean(0), rtol=1e-6)


@pytest.mark.parametrize("suffix", ["npz", "safetensors", "h5", "npy"])
def test_every_bank_format_is_read_back_by_apply(tmp_path, suffix):
    x = _cube(seed=7, c=8)
    np.save(tmp_path / "cube.npy", x)
    doc = _fit(tmp_path, "pca", "cube.npy", "-k", "3", "-o", f"bank.{suffix}")
    if suffix == "npy":
        assert doc["output"] == ["bank.npy", "bank.bias.npy"]
        args = ["bank.npy", "--bias", "bank.bias.npy"]
    else:
        args = [f"bank.{suffix}"]
    proc = run_cli("apply", "cube.npy", *args, "-o", "out.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = x.reshape(-1, 8)
    reference = sklearn_decomposition.PCA(3, svd_solver="full").fit(rows)
    projected = np.load(tmp_path / "out.npy").reshape(-1, 3)
    # scikit-learn's projections up to each component's sign (the sign rule is checked above)
    np.testing.assert_allclose(np.abs(projected), np.abs(reference.transform(rows)), rtol=1e-6, atol=1e-9)


def test_nodata_and_nan_pixels_are_left_out_and_counted(tmp_path):
    x = _cube(seed=8, c=4)
    x[0, :5, 2] = -9999
    x[1, :3, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    doc = _fit(tmp_path, "pca", "x.npy", "-k", "2", "-o", "bank.npz", "--nodata", "-9999")
    assert doc["pixels"]["nodata"] == 8 and doc["pixels"]["used"] == x.shape[0] * x.shape[1] - 8
    rows = x.reshape(-1, 4)
    keep = ~(np.isnan(rows).any(1) | (rows == -9999).any(1))
    reference = sklearn_decomposition.PCA(2, svd_solver="full").fit(rows[keep])
    np.testing.assert_allclose(
        _bank(tmp_path / "bank.npz")["explained_variance"], reference.explained_variance_, rtol=1e-6
    )


def test_sample_is_seeded_and_counted(tmp_path):
    np.save(tmp_path / "x.npy", _cube(seed=9, c=6))
    first = _fit(tmp_path, "pca", "x.npy", "-k", "2", "-o", "a.npz", "--sample", "500")
    second = _fit(tmp_path, "pca", "x.npy", "-k", "2", "-o", "b.npz", "--sample", "500")
    assert first["pixels"]["used"] == second["pixels"]["used"] == 500 and first["pixels"]["sampled"]
    np.testing.assert_array_equal(_bank(tmp_path / "a.npz")["weights"], _bank(tmp_path / "b.npz")["weights"])
    everything = _fit(tmp_path, "pca", "x.npy", "-k", "2", "-o", "c.npz", "--sample", "100000")
    assert everything["pixels"]["used"] == 2000 and "every pixel was used" in everything["pixels"]["note"]


def test_fit_apply_explain_sequence_on_a_photo(tmp_path):
    photo = os.path.join(os.path.dirname(skimage_data.__file__), "coffee.png")
    _fit(tmp_path, "pca", photo, "-k", "1", "-o", "bank.npz")
    applied = run_cli("apply", photo, "bank.npz", "--dtype", "float64", "-o", "pc1.npy", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    explained = run_cli("explain", photo, "bank.npz", "--at", "5,7", "--json", cwd=tmp_path)
    assert explained.returncode == 0, explained.stderr
    doc = json.loads(explained.stdout)[0]
    assert doc["ok"] and abs(doc["results"][0]["sum"] - float(np.load(tmp_path / "pc1.npy")[5, 7, 0])) < 1e-9


# --- refused: exit 2, one line, no bank written ---------------------------------------------


def _refused(tmp_path, args, *fragments):
    proc = run_cli("fit", *args, cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert not any(p.name.startswith("bank") for p in tmp_path.iterdir()) and leftovers(tmp_path) == []


def test_k_larger_than_c(tmp_path):
    np.save(tmp_path / "x.npy", _cube(c=4))
    _refused(tmp_path, ["pca", "x.npy", "-k", "5", "-o", "bank.npz"], "at most the 4", "-k")


def test_files_with_different_channel_counts(tmp_path):
    np.save(tmp_path / "a.npy", _cube(c=4))
    np.save(tmp_path / "b.npy", _cube(c=5))
    _refused(
        tmp_path, ["pca", "a.npy", "b.npy", "-k", "2", "-o", "bank.npz"], "same number of channels", "[4, 5]"
    )


def test_target_with_other_pixels(tmp_path):
    np.save(tmp_path / "x.npy", _cube(c=4))
    np.save(tmp_path / "y.npy", np.zeros((10, 10, 2)))
    _refused(tmp_path, ["lstsq", "x.npy", "y.npy", "-o", "bank.npz"], "same pixels", "100")


def test_all_pixels_nodata(tmp_path):
    np.save(tmp_path / "x.npy", np.full((5, 5, 3), -1.0))
    _refused(tmp_path, ["pca", "x.npy", "-k", "1", "-o", "bank.npz", "--nodata", "-1"], "all 25", "--nodata")


def test_rank_deficient_lstsq_suggests_ridge(tmp_path):
    x = _cube(c=3)
    x[..., 2] = x[..., 0] + x[..., 1]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x[..., :1])
    _refused(tmp_path, ["lstsq", "x.npy", "y.npy", "-o", "bank.npz"], "rank-deficient", "--ridge")
    ok = run_cli("fit", "lstsq", "x.npy", "y.npy", "-o", "ridge.npz", "--ridge", "1e-3", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
