"""fit mnf against Spectral Python, and --reconstruct / inverse banks for pca and mnf, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_clean_error, run_cli

spectral = pytest.importorskip("spectral")

RTOL = 1e-6


def _cube(shape=(48, 56), channels=7, seed=0, dtype=np.float64):
    """Smooth signal in a few directions plus white noise: what MNF separates."""
    rng = np.random.default_rng(seed)
    smooth = rng.standard_normal((*shape, 3)).cumsum(0).cumsum(1) / 10
    cube = smooth @ rng.standard_normal((3, channels)) + 0.2 * rng.standard_normal((*shape, channels))
    return (cube + rng.uniform(0, 5, channels)).astype(dtype)


def _fit(tmp_path, *args):
    proc = run_cli("fit", "mnf", *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


def _same_up_to_sign(ours, reference):
    """Rows of ``ours`` equal rows of ``reference`` up to one sign each."""
    signs = np.sign(np.sum(ours * reference, axis=1))
    np.testing.assert_allclose(
        ours, reference * signs[:, None], rtol=RTOL, atol=1e-9 * np.abs(reference).max()
    )


@pytest.mark.parametrize("direction", ["lowerright", "lowerleft", "right", "lower"])
def test_mnf_agrees_with_spectral_python(tmp_path, direction):
    cube = _cube()
    np.save(tmp_path / "cube.npy", cube)
    # a small --max-memory cuts the image into bands of rows: no neighbour pair may be lost
    doc = _fit(
        tmp_path, "cube.npy", "-k", "4", "--noise-from", direction, "--max-memory", "32KiB", "-o", "mnf.npz"
    )
    result = spectral.mnf(spectral.calc_stats(cube), spectral.noise_from_diffs(cube, direction))
    np.testing.assert_allclose(doc["eigenvalues"], result.napc.eigenvalues, rtol=RTOL)
    bank = np.load(tmp_path / "mnf.npz")
    reference = result.get_reduction_transform(num=4)
    _same_up_to_sign(bank["weights"], reference._A)
    np.testing.assert_allclose(bank["noise_covariance"], result.noise.cov, rtol=RTOL)
    # the sign rule of fit pca: each component's largest coefficient is positive
    rows = bank["weights"]
    assert np.all(rows[np.arange(len(rows)), np.argmax(np.abs(rows), axis=1)] > 0)
    # apply of the bank gives the centred projections Spectral Python's reduce gives
    assert run_cli("apply", "cube.npy", "mnf.npz", "-o", "y.npy", cwd=tmp_path).returncode == 0
    ours = np.load(tmp_path / "y.npy").reshape(-1, 4)
    theirs = result.reduce(cube, num=4).reshape(-1, 4)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours, theirs * signs, rtol=1e-6, atol=1e-8)


def test_mnf_leaves_out_nodata_pixels_and_every_pair_that_touches_one(tmp_path):
    cube = _cube(seed=1)
    cube[5:9, 10:30] = -9999.0
    cube[20, 3, 2] = np.nan
    np.save(tmp_path / "cube.npy", cube)
    doc = _fit(tmp_path, "cube.npy", "-k", "3", "--nodata", "-9999", "-o", "mnf.npz")
    valid = ~(np.isnan(cube).any(axis=2) | (cube == -9999).any(axis=2))
    pairs = valid[:-1, :-1] & valid[1:, 1:]
    deltas = (cube[:-1, :-1] - cube[1:, 1:])[pairs]
    noise = np.cov(deltas, rowvar=False) / 2
    signal = np.cov(cube[valid], rowvar=False)
    values = np.sort(np.linalg.eigvals(np.linalg.solve(noise, signal)).real)[
        ::-1
    ]  # the same generalised problem
    assert doc["pixels"]["used"] == int(valid.sum()) and doc["noise_pairs"] == int(pairs.sum())
    np.testing.assert_allclose(doc["eigenvalues"], values, rtol=RTOL)


@pytest.mark.parametrize("method", ["pca", "mnf"])
def test_reconstruct_with_every_component_gives_the_input_back(tmp_path, method):
    cube = _cube(seed=2, dtype=np.float32)
    np.save(tmp_path / "cube.npy", cube)
    fitted = run_cli("fit", method, "cube.npy", "--reconstruct", "7", "-o", "r.npz", cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    assert run_cli("apply", "cube.npy", "r.npz", "-o", "back.npy", cwd=tmp_path).returncode == 0
    np.testing.assert_allclose(np.load(tmp_path / "back.npy"), cube, rtol=1e-4, atol=1e-4)


def test_mnf_reconstruct_denoises_as_spectral_python(tmp_path):
    cube = _cube(seed=3)
    np.save(tmp_path / "cube.npy", cube)
    _fit(tmp_path, "cube.npy", "--reconstruct", "3", "-o", "den.npz")
    assert run_cli("apply", "cube.npy", "den.npz", "-o", "den.npy", cwd=tmp_path).returncode == 0
    result = spectral.mnf(spectral.calc_stats(cube), spectral.noise_from_diffs(cube))
    np.testing.assert_allclose(
        np.load(tmp_path / "den.npy"), result.denoise(cube, num=3), rtol=1e-6, atol=1e-8
    )
    # the forward bank kept beside it, then the inverse, is the same reconstruction
    forward = run_cli(
        "apply", "cube.npy", "den.npz:forward_weights", "--bias", "auto", "-o", "f.npy", cwd=tmp_path
    )
    assert forward.returncode == 0, forward.stderr
    inverse = run_cli(
        "apply", "f.npy", "den.npz:inverse_weights", "--bias", "auto", "-o", "b.npy", cwd=tmp_path
    )
    assert inverse.returncode == 0, inverse.stderr
    np.testing.assert_allclose(
        np.load(tmp_path / "b.npy"), np.load(tmp_path / "den.npy"), rtol=1e-9, atol=1e-9
    )


def test_pca_reconstruct_matches_scikit_learns_inverse_transform(tmp_path):
    decomposition = pytest.importorskip("sklearn.decomposition")
    cube = _cube(seed=4)
    np.save(tmp_path / "cube.npy", cube)
    fitted = run_cli("fit", "pca", "cube.npy", "--reconstruct", "2", "-o", "r.h5", cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    assert run_cli("apply", "cube.npy", "r.h5", "-o", "r.npy", cwd=tmp_path).returncode == 0
    pixels = cube.reshape(-1, 7)
    model = decomposition.PCA(2).fit(pixels)
    expected = model.inverse_transform(model.transform(pixels)).reshape(cube.shape)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), expected, rtol=1e-8, atol=1e-8)
    # a whitened bank's inverse undoes the whitening too
    white = run_cli("fit", "pca", "cube.npy", "-k", "7", "--whiten", "-o", "w.npz", cwd=tmp_path)
    assert white.returncode == 0, white.stderr
    assert run_cli("apply", "cube.npy", "w.npz", "-o", "w.npy", cwd=tmp_path).returncode == 0
    back = run_cli("apply", "w.npy", "w.npz:inverse_weights", "--bias", "auto", "-o", "wb.npy", cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    np.testing.assert_allclose(np.load(tmp_path / "wb.npy"), cube, rtol=1e-8, atol=1e-8)


def test_info_on_an_mnf_bank_gives_the_signal_to_noise_ratios(tmp_path):
    cube = _cube(seed=5)
    np.save(tmp_path / "cube.npy", cube)
    doc = _fit(tmp_path, "cube.npy", "-k", "2", "-o", "mnf.npz")
    proc = run_cli("info", "mnf.npz", cwd=tmp_path)
    fit_line = next(line for line in proc.stderr.splitlines() if line.startswith("fit "))
    assert "2 components kept of 7" in fit_line
    assert f"{doc['snr'][0]:.4g}" in fit_line and f"{doc['snr'][1]:.4g}" in fit_line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["cube.npy", "-k", "3", "--reconstruct", "4"], ["-k 3", "--reconstruct 4"]),
        (["cube.npy"], ["-k", "--reconstruct"]),
        (["cube.npy", "-k", "2", "--noise-from", "up"], ["--noise-from", "lowerright", "'up'"]),
        (["cube.npy", "-k", "9"], ["at most the 7 input channels"]),
        (["pixels.npy", "-k", "2"], ["expected an image", "neighbouring pixels"]),
        (["flat.npy", "-k", "2"], ["noise covariance of full rank", "constant"]),
    ],
)
def test_bad_mnf_requests_are_one_line_errors_and_write_nothing(tmp_path, args, fragments):
    np.save(tmp_path / "cube.npy", _cube())
    np.save(tmp_path / "pixels.npy", np.random.default_rng(0).standard_normal((100, 7)))
    flat = _cube()
    flat[..., 1] = 3.0  # a constant channel: no noise to whiten by
    np.save(tmp_path / "flat.npy", flat)
    proc = run_cli("fit", "mnf", *args, "-o", "bank.npz", cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert not (tmp_path / "bank.npz").exists()
