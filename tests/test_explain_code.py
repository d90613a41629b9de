"""explain --code: each snippet, run on its own, computes what ``pwconv apply`` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import WORKED_M, assert_clean_error, run_cli

TARGETS = ["numpy", "torch", "keras"]


def _run_snippet(code: str, cwd, name: str = "snippet.py") -> subprocess.CompletedProcess:
    (cwd / name).write_text(code + "\nnp.save('snippet_out.npy', y)\n")
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    return subprocess.run(
        [sys.executable, name], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def _needs(target: str) -> None:
    if target == "torch":
        pytest.importorskip("torch")
    if target == "keras":
        pytest.importorskip("torch")
        os.environ.setdefault("KERAS_BACKEND", "torch")  # the test extra has torch, not TensorFlow
        pytest.importorskip("keras")


@pytest.mark.parametrize("target", TARGETS)
def test_the_worked_example_snippet_prints_the_worked_result(tmp_path, target):
    _needs(target)
    np.save(tmp_path / "m.npy", WORKED_M)
    proc = run_cli("explain", "m.npy", "2,3", "--layout", "CHW", "--code", target, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    code = proc.stdout.decode()
    assert code.startswith("# pwconv's run as") and "multiplying elementwise" in code.lower()
    ran = _run_snippet(code, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "[[17 22]\n [27 32]]" in ran.stdout
    assert "output shape (1, 2, 2)" in ran.stdout


def _cases(tmp_path):
    """(input, weights, options, apply options) for the shapes and options a snippet must honour."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "hwc.npy", rng.standard_normal((5, 6, 4)).astype(np.float32))
    np.save(tmp_path / "chw.npy", rng.standard_normal((4, 5, 6)).astype(np.float32))
    np.save(tmp_path / "nhwc.npy", rng.standard_normal((2, 3, 5, 4)).astype(np.float32))
    np.save(tmp_path / "w.npy", rng.standard_normal((3, 4)).astype(np.float32))
    np.save(tmp_path / "wg.npy", rng.standard_normal((4, 2)).astype(np.float32))
    np.save(tmp_path / "ints.npy", rng.integers(0, 9, (3, 4, 5)))
    import h5py

    with h5py.File(tmp_path / "cube.h5", "w") as f:
        f["data/cube"] = rng.standard_normal((6, 5, 4)).astype(np.float64)
    cases = {
        "hwc bias": ("hwc.npy", "w.npy", ["--bias", "0.5,-1,2"]),
        "chw groups": ("chw.npy", "wg.npy", ["--layout", "CHW", "--groups", "2"]),
        "stride": ("hwc.npy", "w.npy", ["--stride", "2"]),
        "nhwc": ("nhwc.npy", "w.npy", []),
        "literal ints": ("ints.npy", "1,2,3;0,1,0", ["--layout", "CHW"]),
        "hdf5 member": ("cube.h5:/data/cube", "w.npy", []),
    }
    rasterio = pytest.importorskip("rasterio")
    zarr = pytest.importorskip("zarr")
    from rasterio.transform import from_origin

    bands = rng.standard_normal((4, 6, 5)).astype(np.float32)
    with rasterio.open(
        tmp_path / "geo.tif", "w", driver="GTiff", width=5, height=6, count=4, dtype="float32",
        crs="EPSG:4326", transform=from_origin(0, 1, 0.1, 0.1),
    ) as ds:  # fmt: skip
        ds.write(bands)
    zarr.create_array(str(tmp_path / "cube.zarr"), shape=(6, 5, 4), chunks=(3, 5, 4), dtype="float32")[:] = (
        np.moveaxis(bands, 0, -1)
    )
    cases["geotiff"] = ("geo.tif", "w.npy", [])
    cases["zarr"] = ("cube.zarr", "w.npy", ["--groups", "1"])
    torch = pytest.importorskip("torch")
    torch.save({"conv.weight": torch.from_numpy(rng.standard_normal((3, 4, 1, 1)).astype(np.float32)),
                "conv.bias": torch.from_numpy(np.array([1.0, 2.0, 3.0], np.float32))}, tmp_path / "m.pt")  # fmt: skip
    cases["model tensor"] = ("hwc.npy", "m.pt:conv.weight", ["--bias", "auto"])
    return cases


def test_each_snippet_computes_what_apply_writes(tmp_path):
    for target in TARGETS:
        _needs(target)
    program = []
    cases = _cases(tmp_path)
    for number, (case, (source, weights, options)) in enumerate(cases.items()):
        applied = run_cli("apply", source, weights, "-o", f"applied{number}.npy", *options, cwd=tmp_path)
        assert applied.returncode == 0, (case, applied.stderr)
        explained = run_cli(
            "explain", source, weights, *options, "--code", "all", "--json", "--at", _last_pixel(case),
            cwd=tmp_path,
        )  # fmt: skip
        assert explained.returncode == 0, (case, explained.stderr)
        code = json.loads(explained.stdout)[0]["code"]
        # Every snippet stands alone; they run one after another in one process (one start-up).
        program += [f"{code[t]}\nnp.save('{t}{number}.npy', y)\n" for t in TARGETS]
    ran = _run_snippet("".join(program), tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("output shape") == len(program) and ran.stdout.count(" . w[") == len(program)
    for number, case in enumerate(cases):
        expected = np.load(tmp_path / f"applied{number}.npy")
        for target in TARGETS:
            got = np.load(tmp_path / f"{target}{number}.npy")
            assert got.shape == expected.shape and got.dtype == expected.dtype, (case, target)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{case} {target}")


def _last_pixel(case: str) -> str:
    return {"stride": "2,2", "nhwc": "1,2,4", "chw groups": "4,5"}.get(case, "1,1")


def test_json_carries_the_snippets_and_all_means_every_target(tmp_path):
    np.save(tmp_path / "m.npy", WORKED_M)
    proc = run_cli("explain", "m.npy", "2,3", "--layout", "CHW", "--code", "all", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]
    assert sorted(doc["code"]) == sorted(TARGETS)
    assert "torch.nn.functional.conv2d" in doc["code"]["torch"] and "Conv2D" in doc["code"]["keras"]
    assert doc["results"][0]["sum"] == 17


@pytest.mark.parametrize(
    "args, fragment",
    [(["--code", "jax"], "expected --code numpy|torch|keras|all"), (["--code", "numpy"], "save the stream")],
)
def test_code_errors_are_one_line(tmp_path, args, fragment):
    np.save(tmp_path / "m.npy", WORKED_M)
    stdin = (tmp_path / "m.npy").read_bytes() if fragment == "save the stream" else None
    source = "-" if stdin else "m.npy"
    proc = run_cli("explain", source, "2,3", "--layout", "CHW", *args, stdin=stdin, cwd=tmp_path)
    assert_clean_error(proc, 2, fragment)
