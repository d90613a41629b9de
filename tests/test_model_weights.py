"""Weights straight from model files, written by the real libraries: torch, safetensors,
keras (torch backend), onnx and numpy. Each result is compared with the library's own
forward pass (or numpy) on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from .conftest import assert_clean_error, cli_in_process, leftovers, run_cli  # noqa: E402

RTOL = ATOL = 1e-5


def _torch_conv(c=6, k=4, groups=1, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(c, k, 1, bias=True, groups=groups).eval()


def _nchw(seed=1, c=6):
    return np.random.default_rng(seed).standard_normal((2, c, 5, 7)).astype(np.float32)


def _forward(layer, x):
    with torch.no_grad():
        return layer(torch.from_numpy(x)).numpy()


def _state_dict(layer, prefix="features.3.conv"):
    state = {f"{prefix}.{k}": v for k, v in layer.state_dict().items()}
    state["head.proj.weight"] = torch.randn(3, 4)
    return state


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_torch_conv_from_state_dict_matches_forward(tmp_path, fmt, groups):
    layer = _torch_conv(groups=groups)
    state = _state_dict(layer)
    if fmt == "pt":
        torch.save(state, tmp_path / "model.pt")
    else:
        safetensors_numpy.save_file({k: v.numpy() for k, v in state.items()}, tmp_path / "model.safetensors")
    x = _nchw()
    np.save(tmp_path / "x.npy", x)
    proc = run_cli(
        "apply", "x.npy", f"model.{fmt}:features.3.conv.weight", "--bias", "auto",
        "--layout", "NCHW", "--groups", str(groups), "-o", "y.npy", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _forward(layer, x), rtol=RTOL, atol=ATOL)
    assert "features.3.conv.bias" in proc.stderr


def test_layer_name_selects_its_weight_and_the_bias_is_reported_unused(tmp_path):
    layer = _torch_conv()
    torch.save(_state_dict(layer), tmp_path / "model.pt")
    np.save(tmp_path / "x.npy", _nchw())
    proc = run_cli(
        "apply", "x.npy", "model.pt:features.3.conv", "--layout", "NCHW", "-o", "y.npy", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "bias     none (the file has features.3.conv.bias; --bias auto applies it)" in proc.stderr
    expected = _forward(layer, _nchw()) - layer.bias.detach().numpy().reshape(1, -1, 1, 1)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=RTOL, atol=ATOL)


def test_bf16_safetensors_are_widened_exactly(tmp_path):
    weights = torch.randn(4, 6).to(torch.bfloat16)
    from safetensors.torch import save_file

    save_file({"w": weights}, str(tmp_path / "bf.safetensors"))
    x = np.random.default_rng(2).standard_normal((3, 3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("apply", "x.npy", "bf.safetensors", "-o", "y.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    exact = weights.float().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), x @ exact.T, rtol=RTOL, atol=ATOL)


def test_npz_filter_bank_applies_weights_and_bias(tmp_path):
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    np.savez(tmp_path / "bank.npz", weights=w, bias=b)
    x = rng.standard_normal((5, 5, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("apply", "x.npy", "bank.npz", "-o", "y.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "bank.npz:bias  (from the bank)" in proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), x @ w.T + b, rtol=RTOL, atol=ATOL)


def test_bank_files_in_h5_and_safetensors_too(tmp_path):
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((2, 3)), rng.standard_normal(2)
    with h5py.File(tmp_path / "bank.h5", "w") as handle:
        handle["weights"], handle["bias"] = w, b
    safetensors_numpy.save_file({"weights": w, "bias": b}, tmp_path / "bank.safetensors")
    x = rng.standard_normal((4, 4, 3))
    np.save(tmp_path / "x.npy", x)
    for bank in ("bank.h5", "bank.safetensors"):
        proc = run_cli("apply", "x.npy", bank, "-o", f"{bank}.npy", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(tmp_path / f"{bank}.npy"), x @ w.T + b, rtol=1e-12)


def _keras_model(k=4, c=6):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.Input((5, 7, c)), keras.layers.Conv2D(k, 1, name="mix"), keras.layers.Dense(3, name="head")]
    )
    for variable in model.layers[0].weights:  # a non-zero bias, so that it is checked
        variable.assign(np.random.default_rng(6).standard_normal(variable.shape).astype(np.float32))
    return keras, model


@pytest.mark.parametrize("saved", ["model.keras", "model.weights.h5", "legacy.h5"])
def test_keras_conv_matches_the_layer(tmp_path, saved):
    keras, model = _keras_model()
    if saved == "model.keras":
        model.save(tmp_path / saved)
    elif saved == "model.weights.h5":
        model.save_weights(tmp_path / saved)
    else:
        model.save(tmp_path / saved)  # Keras' legacy HDF5 model format
    x = np.random.default_rng(7).standard_normal((2, 5, 7, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("apply", "x.npy", f"{saved}:mix", "--bias", "auto", "-o", "y.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = np.asarray(keras.ops.convert_to_numpy(model.layers[0](x)))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=RTOL, atol=ATOL)


def _onnx_conv(tmp_path, external=False):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    layer = _torch_conv(seed=8)
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy()
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="Conv_12", kernel_shape=[1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, None, None])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph)
    onnx.checker.check_model(model)
    path = tmp_path / "model.onnx"
    if external:
        onnx.save_model(model, path, save_as_external_data=True, location="weights.data", size_threshold=0)
    else:
        onnx.save_model(model, path)
    return layer


@pytest.mark.parametrize("external", [False, True])
def test_onnx_conv_node_selects_w_and_b(tmp_path, external):
    layer = _onnx_conv(tmp_path, external)
    x = _nchw(seed=9)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli(
        "apply",
        "x.npy",
        "model.onnx:Conv_12",
        "--bias",
        "auto",
        "--layout",
        "NCHW",
        "-o",
        "y.npy",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _forward(layer, x), rtol=RTOL, atol=ATOL)


def test_info_lists_tensors_marks_banks_and_pairs_biases(tmp_path):
    torch.save(_state_dict(_torch_conv()), tmp_path / "model.pt")
    proc = run_cli("info", "model.pt", "--channels", "6", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    items = {item["path"].split(":", 1)[1]: item for item in json.loads(proc.stdout)}
    assert sorted(items) == ["features.3.conv.bias", "features.3.conv.weight", "head.proj.weight"]
    assert items["features.3.conv.weight"]["filter_bank"] == {
        "read_as": "oihw",
        "filters": 4,
        "groups": 1,
        "bias": "features.3.conv.bias",
    }
    assert items["head.proj.weight"]["filter_bank"] is None
    assert items["features.3.conv.weight"]["shape"] == [4, 6, 1, 1]


def test_output_records_the_weights_provenance(tmp_path):
    layer = _torch_conv()
    safetensors_numpy.save_file(
        {k: v.numpy() for k, v in _state_dict(layer).items()}, tmp_path / "m.safetensors"
    )
    np.save(tmp_path / "x.npy", _nchw())
    proc = run_cli(
        "apply", "x.npy", "m.safetensors:features.3.conv.weight", "--bias", "auto", "--layout", "NCHW",
        "-o", "y.h5", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import hashlib

    with h5py.File(tmp_path / "y.h5") as handle:
        attrs = dict(handle["/data"].attrs)
    assert attrs["weights_tensor"] == "features.3.conv.weight"
    assert attrs["bias_source"] == "m.safetensors:features.3.conv.bias"
    assert attrs["weights_sha256"] == hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()


# --- bad input: exit 2, one line, no output ----------------------------------------------------


def _refused(tmp_path, weights, *fragments, extra=()):
    if not (tmp_path / "x.npy").exists():
        np.save(tmp_path / "x.npy", np.ones((2, 2, 6), np.float32))
    proc = run_cli("apply", "x.npy", weights, *extra, "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert not (tmp_path / "out.npy").exists() and leftovers(tmp_path) == []


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran-code",))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    torch.save({"w": torch.zeros(4, 6), "evil": _RunsCode()}, tmp_path / "evil.pt")
    _refused(tmp_path, "evil.pt:w", "unpickling")
    assert not (tmp_path / "ran-code").exists()


def test_npz_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", w=np.array([{"a": 1}], dtype=object))
    _refused(tmp_path, "obj.npz", "object array")


def _safetensors_with_header(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize(
    "header, data, fragment",
    [
        ({"w": {"dtype": "F32", "shape": [4, 6], "data_offsets": [0, 96]}}, b"\0" * 10, "outside"),
        (
            {
                "w": {"dtype": "F32", "shape": [2, 6], "data_offsets": [0, 48]},
                "v": {"dtype": "F32", "shape": [2, 6], "data_offsets": [24, 72]},
            },
            b"\0" * 72,
            "overlap",
        ),
        ({"w": {"dtype": "F32", "shape": [4, 6], "data_offsets": [0, 95]}}, b"\0" * 96, "do not hold"),
        ({"w": {"dtype": "Q7", "shape": [4, 6], "data_offsets": [0, 96]}}, b"\0" * 96, "dtype"),
    ],
)
def test_lying_safetensors_headers(tmp_path, header, data, fragment):
    _safetensors_with_header(tmp_path / "bad.safetensors", header, data)
    _refused(tmp_path, "bad.safetensors", fragment)


def test_huge_safetensors_header_length(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
    _refused(tmp_path, "bad.safetensors", "header length")


def test_zip_bomb_inside_keras_archive(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.weights.h5", bytes(64 << 20))
    _refused(tmp_path, "bomb.keras:mix", "zip bomb")


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "npz", "keras", "onnx"])
def test_truncated_model_files(tmp_path, fmt):
    layer = _torch_conv()
    state = _state_dict(layer)
    path = tmp_path / f"m.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    elif fmt == "safetensors":
        safetensors_numpy.save_file({k: v.numpy() for k, v in state.items()}, path)
    elif fmt == "npz":
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    elif fmt == "keras":
        _, model = _keras_model()
        model.save(path)
    else:
        _onnx_conv(tmp_path)
        (tmp_path / "model.onnx").rename(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    name = {"keras": "mix", "onnx": "W"}.get(fmt, "features.3.conv.weight")
    _refused(tmp_path, f"m.{fmt}:{name}", "m." + fmt)


def test_a_3x3_conv_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(4, 6, 3, 3)}, tmp_path / "k3.pt")
    _refused(tmp_path, "k3.pt:conv.weight", "1x1", "3x3")


def test_a_missing_name_lists_the_closest(tmp_path):
    torch.save(_state_dict(_torch_conv()), tmp_path / "m.pt")
    _refused(tmp_path, "m.pt:features.3.conv.wieght", "features.3.conv.weight", "closest")


def test_bias_auto_without_a_bias_in_the_file(tmp_path):
    torch.save({"w.weight": torch.zeros(4, 6)}, tmp_path / "nb.pt")
    _refused(tmp_path, "nb.pt:w.weight", "--bias auto", "none", extra=("--bias", "auto"))


def test_a_model_file_as_input_needs_a_tensor_name(tmp_path):
    torch.save(_state_dict(_torch_conv()), tmp_path / "m.pt")
    proc = run_cli("apply", "m.pt", "1,1,1", "-o", "out.npy", cwd=tmp_path)
    assert_clean_error(proc, 2, "expected one tensor", "m.pt:")
    assert not (tmp_path / "out.npy").exists()


def test_model_formats_are_read_only(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2, 3)))
    assert_clean_error(
        run_cli("apply", "x.npy", "1,1,1", "-o", "y.pt", cwd=tmp_path), 2, "only reads", ".npy"
    )


def test_missing_extra_is_named(tmp_path):
    blocked, weights, extra = "onnx", "m.onnx:W", "onnx"
    np.save(tmp_path / "x.npy", np.ones((2, 2, 6), np.float32))
    (tmp_path / weights.split(":")[0]).write_bytes(b"placeholder")
    proc = cli_in_process(tmp_path, [blocked], ["apply", "x.npy", weights, "-o", "y.npy"])
    assert proc.returncode == 2, proc.stderr
    assert f"pip install 'pwconv[{extra}]'" in proc.stderr.splitlines()[0]
    assert not (tmp_path / "y.npy").exists()


def _every_dtype_state() -> dict:
    """A state dict as models hold them, with every element type and the tensor shapes that
    make a reader get strides and offsets right (views, expansions, empty, scalar)."""
    torch.manual_seed(3)
    state = _state_dict(_torch_conv())
    state["extra"] = {
        "bf16": torch.randn(4, 6).to(torch.bfloat16),
        "half": [torch.randn(2, 3).half(), torch.randn(3).double()],
        "ints": (torch.arange(-4, 4, dtype=torch.int8), torch.arange(6, dtype=torch.int64).view(2, 3)),
        "u16": torch.tensor([1, 65535, 7], dtype=torch.int32).to(torch.uint16),
        "mask": torch.tensor([True, False]),
        "view": torch.arange(24.0).view(4, 6)[1:, ::2].t(),
        "expanded": torch.ones(3, 1).expand(3, 4),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
    }
    return state


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, torch.Tensor):
        out[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else key, item, out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flat(f"{prefix}.{i}", item, out)
    return out


def test_state_dict_reads_without_torch_installed_and_matches_torch_load(tmp_path):
    torch.save(_every_dtype_state(), tmp_path / "m.pt")
    expected = _flat("", torch.load(tmp_path / "m.pt", weights_only=True), {})
    code = (
        "import sys, numpy as np\n"
        "sys.modules['torch'] = None\n"
        "from pwconv import load_array\n"
        "from pwconv.io.registry import array_specs\n"
        "from pwconv.io.spec import parse_spec\n"
        "names = [s.member for s in array_specs(parse_spec('m.pt'))]\n"
        "np.savez('read.npz', **{n.replace('.', '__'): load_array('m.pt:' + n) for n in names})\n"
        "print(','.join(names))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().split(",") == list(expected)
    read = np.load(tmp_path / "read.npz")
    for name, tensor in expected.items():
        want = tensor.detach()
        want = want.float().numpy() if want.dtype == torch.bfloat16 else want.numpy()
        got = read[name.replace(".", "__")]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_apply_from_a_state_dict_without_torch_matches_the_layer(tmp_path):
    layer = _torch_conv()
    torch.save(_state_dict(layer), tmp_path / "model.pt")
    x = np.random.default_rng(1).standard_normal((2, 6, 5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["apply", "x.npy", "model.pt:features.3.conv", "--bias", "auto", "--layout", "NCHW", "-o", "y.npy"]
    proc = cli_in_process(tmp_path, ["torch"], args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "loaded:"  # no model library was imported
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _forward(layer, x), rtol=RTOL, atol=ATOL)


def test_legacy_torch_file_without_torch_names_the_cpu_build(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2, 6), np.float32))
    torch.save({"w": torch.ones(4, 6)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    proc = cli_in_process(tmp_path, ["torch"], ["apply", "x.npy", "old.pt:w", "-o", "y.npy"])
    assert proc.returncode == 2, proc.stderr
    assert "legacy format" in proc.stderr.splitlines()[0]
    assert "download.pytorch.org/whl/cpu" in proc.stderr.splitlines()[0]
    assert not (tmp_path / "y.npy").exists()
    with_torch = run_cli("apply", "x.npy", "old.pt:w", "-o", "y.npy", "--json", cwd=tmp_path)
    assert with_torch.returncode == 0, with_torch.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.full((2, 2, 4), 6, np.float32))


@pytest.mark.parametrize(
    "dtype, named", [(torch.complex64, "ComplexFloat"), (torch.float8_e4m3fn, "float8_e4m3fn")]
)
def test_tensor_numpy_cannot_hold_is_refused_others_read(tmp_path, dtype, named):
    torch.save({"odd": torch.ones(4, 6).to(dtype), "w": torch.ones(4, 6)}, tmp_path / "m.pt")
    _refused(tmp_path, "m.pt:odd", "real numeric tensor", named)
    np.save(tmp_path / "x.npy", np.ones((2, 2, 6), np.float32))
    assert run_cli("apply", "x.npy", "m.pt:w", "-o", "y.npy", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"not a zip and not a pickle", "neither"),
        (b"PK\x03\x04" + b"\0" * 40, "damaged zip"),
    ],
)
def test_damaged_torch_file_is_one_line(tmp_path, payload, fragment):
    (tmp_path / "m.pt").write_bytes(payload)
    _refused(tmp_path, "m.pt:w", fragment)


def test_torch_file_cut_short_is_one_line(tmp_path):
    torch.save({"w": torch.ones(64, 64)}, tmp_path / "m.pt")
    raw = (tmp_path / "m.pt").read_bytes()
    cut = raw.index(b"PK\x01\x02")  # the central directory kept, the data cut
    (tmp_path / "m.pt").write_bytes(raw[: cut - 8000] + raw[cut:])
    np.save(tmp_path / "x.npy", np.ones((2, 2, 64), np.float32))
    proc = run_cli("apply", "x.npy", "m.pt:w", "-o", "y.npy", cwd=tmp_path)
    assert_clean_error(proc, 2)
    assert not (tmp_path / "y.npy").exists()


def test_npy_run_imports_no_model_library(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2, 3), np.float32))
    np.save(tmp_path / "w.npy", np.ones((2, 3), np.float32))
    proc = cli_in_process(tmp_path, [], ["apply", "x.npy", "w.npy", "-o", "y.npy"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "loaded:"
