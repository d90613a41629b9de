"""info on model files and banks (one line per tensor, grouped kernels, ONNX Conv nodes, what
fit stored) and explain's own axis names and --dtype, all through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_clean_error, run_cli

torch = pytest.importorskip("torch")


def _model(path):
    """A state dict with a whole 1x1 bank, a grouped one, a 3x3 kernel and a depthwise 1x1."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(24, 16, 1),
        torch.nn.Conv2d(16, 16, 1, groups=4),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.Conv2d(16, 16, 1, groups=16, bias=False),
    )
    torch.save(model.state_dict(), path)
    return model


def _tensor_lines(stderr: str, names: list[str]) -> dict[str, str]:
    lines = {}
    for line in stderr.splitlines():
        first = line.split(" ", 1)[0]
        if first in names:
            assert first not in lines, f"{first} listed twice:\n{stderr}"
            lines[first] = line
    return lines


def test_state_dict_prints_one_line_per_tensor_and_marks_grouped_kernels(tmp_path):
    model = _model(tmp_path / "m.pt")
    names = list(model.state_dict())
    proc = run_cli("info", "m.pt", "--channels", "16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = _tensor_lines(proc.stderr, names)
    assert sorted(lines) == sorted(names)
    # a title, the column headings and one line per tensor: nothing repeated per tensor
    assert len(proc.stderr.strip().splitlines()) == len(names) + 2, proc.stderr
    assert "m.pt" in proc.stderr.splitlines()[0] and "7 tensors" in proc.stderr.splitlines()[0]
    assert (
        "16x4x1x1" in lines["1.weight"]
        and "--groups 4" in lines["1.weight"]
        and "1.bias" in lines["1.weight"]
    )
    assert "--groups 16" in lines["3.weight"]
    assert lines["2.weight"].rstrip().endswith("-")  # a 3x3 kernel is no 1x1 bank
    assert lines["0.weight"].rstrip().endswith("-")  # made for 24 channels, not 16


def test_the_groups_info_names_applies_the_kernel_as_torch_does(tmp_path):
    model = _model(tmp_path / "m.pt")
    x = np.random.default_rng(1).standard_normal((2, 16, 5, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    listed = run_cli("info", "m.pt", "--channels", "16", "--json", cwd=tmp_path)
    entries = {e["path"]: e for e in json.loads(listed.stdout)}
    for name, layer in (("1.weight", model[1]), ("3.weight", model[3])):
        groups = entries[f"m.pt:{name}"]["filter_bank"]["groups"]
        assert groups == layer.groups
        bias = ["--bias", "auto"] if layer.bias is not None else []
        args = ["x.npy", f"m.pt:{name}", "--groups", groups, *bias, "--layout", "NCHW", "-o", f"{name}.npy"]
        proc = run_cli("apply", *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        with torch.no_grad():
            expected = layer(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected, rtol=1e-5, atol=1e-5)


def test_onnx_lists_conv_nodes_that_select_their_weights(tmp_path):
    pytest.importorskip("onnx")
    model = _model(tmp_path / "m.pt")
    torch.onnx.export(model, torch.zeros(1, 24, 4, 4), tmp_path / "m.onnx", dynamo=False)
    proc = run_cli("info", "m.onnx", "--json", cwd=tmp_path)
    entries = json.loads(proc.stdout)
    nodes = {e["storage"]["conv_node"]: e for e in entries if e["storage"].get("conv_input") == "weights"}
    assert len(nodes) == 4
    grouped = [e for e in nodes.values() if e["storage"]["conv_group"] == 4]
    assert len(grouped) == 1 and grouped[0]["shape"] == [16, 4, 1, 1]
    text = run_cli("info", "m.onnx", cwd=tmp_path).stderr
    for node in nodes:
        assert node in text
    node = next(n for n, e in nodes.items() if e["storage"]["conv_group"] == 4)
    x = np.random.default_rng(2).standard_normal((16, 3, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    by_node = run_cli(
        "apply", "x.npy", f"m.onnx:{node}", "--groups", "4", "--layout", "CHW", "-o", "n.npy", cwd=tmp_path
    )
    assert by_node.returncode == 0, by_node.stderr
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(torch.from_numpy(x)[None], model[1].weight, groups=4)[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "n.npy"), expected, rtol=1e-5, atol=1e-5)


def test_info_on_a_fitted_bank_says_what_fit_stored(tmp_path):
    sklearn = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(3)
    pixels = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    np.save(tmp_path / "x.npy", pixels.reshape(20, 20, 6))
    fitted = run_cli("fit", "pca", "x.npy", "-k", "3", "-o", "bank.npz", cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    proc = run_cli("info", "bank.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    fit_line = next(line for line in proc.stderr.splitlines() if line.startswith("fit "))
    reference = sklearn.PCA(3).fit(pixels)
    assert "pca: 3 components" in fit_line and "from 400 pixels" in fit_line
    assert f"{100 * reference.explained_variance_ratio_.sum():.1f} %" in fit_line
    assert "pc1, pc2, pc3" in proc.stderr
    entry = next(
        e for e in json.loads(run_cli("info", "bank.npz", "--json", cwd=tmp_path).stdout) if "fit" in e
    )
    assert entry["path"] == "bank.npz:weights" and entry["fit"]["method"] == "pca"
    np.testing.assert_allclose(
        entry["fit"]["explained_variance_ratio"], reference.explained_variance_ratio_, rtol=1e-6
    )


def test_info_on_a_least_squares_bank_names_the_method_and_fit_quality(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10, 10, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x @ rng.standard_normal((3, 2)) + 0.5)
    assert run_cli("fit", "lstsq", "x.npy", "y.npy", "-o", "bank.h5", cwd=tmp_path).returncode == 0
    proc = run_cli("info", "bank.h5", cwd=tmp_path)
    fit_line = next(line for line in proc.stderr.splitlines() if line.startswith("fit "))
    assert fit_line.split()[1] == "lstsq:" and "R² 1, 1" in fit_line, fit_line


def test_explain_names_a_netcdf_inputs_axes_by_its_dimensions(tmp_path):
    h5netcdf = pytest.importorskip("h5netcdf")
    with h5netcdf.File(tmp_path / "c.nc", "w") as f:
        f.dimensions = {"band": 3, "lat": 4, "lon": 5}
        f.create_variable(
            "refl", ("band", "lat", "lon"), data=np.arange(60, dtype=np.float32).reshape(3, 4, 5)
        )
    proc = run_cli(
        "explain", "c.nc:refl", "0.5,0.25,0.25", "--channel-dim", "band", "--at", "2,3", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "(band, lat, lon)" in proc.stdout.decode() and "(K, lat, lon)" in proc.stdout.decode()
    doc = json.loads(run_cli("explain", "c.nc:refl", "0.5,0.25,0.25", "--channel-dim", "band", "--at", "2,3", "--json", cwd=tmp_path).stdout)[0]  # fmt: skip
    assert doc["input"]["axes"] == ["band", "lat", "lon"]
    assert doc["pixel"]["output_index"] == {"lat": 2, "lon": 3}
    assert doc["results"][0]["sum"] == pytest.approx(0.5 * 13 + 0.25 * 33 + 0.25 * 53)


def test_explain_dtype_shows_the_value_apply_writes(tmp_path):
    rng = np.random.default_rng(5)
    np.save(tmp_path / "rgb.npy", rng.integers(0, 256, (6, 7, 3), dtype=np.uint8))
    weights = "0.299,0.587,0.114"
    doc = json.loads(run_cli("explain", "rgb.npy", weights, "--dtype", "uint8", "--at", "4,5", "--json", cwd=tmp_path).stdout)[0]  # fmt: skip
    assert (
        run_cli("apply", "rgb.npy", weights, "--dtype", "uint8", "-o", "g.npy", cwd=tmp_path).returncode == 0
    )
    written = np.load(tmp_path / "g.npy")[4, 5, 0]
    result = doc["results"][0]
    assert doc["output"]["dtype"] == "uint8" and result["written"] == written
    assert abs(result["sum"] - written) <= 0.5 and result["sum"] != written
    text = run_cli(
        "explain", "rgb.npy", weights, "--dtype", "uint8", "--at", "4,5", cwd=tmp_path
    ).stdout.decode()
    assert f"-> {written} in uint8" in text


def test_info_system_names_the_kernels_and_blas_that_run():
    from pwconv.core import kernels

    proc = run_cli("info", "--system", "--json")
    assert proc.returncode == 0, proc.stderr
    (doc,) = json.loads(proc.stdout)
    assert doc["few_filter_kernel"] == kernels.instruction_set()
    assert doc["scatter_kernel"] == kernels.scatter_instruction_set()
    assert doc["cores"] >= 1 and doc["blas"].get("name")
    assert_clean_error(run_cli("info", "--system", "x.npy"), 2, "FILE... or --system")
    assert_clean_error(run_cli("info"), 2, "expected FILE...")
