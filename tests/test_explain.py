"""pwconv explain: the real calculation for one pixel, checked against the reference loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pwconv.core.reference import reference_conv
from pwconv.io.interface import Source
from pwconv.jobs.explain import ExplainRequest, explain
from pwconv.jobs.options import ApplyOptions

from .conftest import SAMPLES, assert_clean_error, run_cli


@pytest.mark.parametrize(
    ("at", "text"),
    [
        ("0,0", "1*2 + 5*3 = 17"),
        ("0,1", "2*2 + 6*3 = 22"),
        ("1,0", "3*2 + 7*3 = 27"),
        ("1,1", "4*2 + 8*3 = 32"),
    ],
)
def test_worked_example_shows_every_product_and_sum(at, text):
    proc = run_cli("explain", SAMPLES / "example_M.npy", "2,3", "--layout", "channels-first", "--at", at)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert text in out
    assert "2x2x2 (C, H, W)" in out and "1x2x2 (K, H, W)" in out
    assert "fast path: " + text.split(" = ")[1] in out
    assert "(2 * 2) x 2  @  2 x 1" in out


def test_default_pixel_is_the_first():
    proc = run_cli(
        "explain", SAMPLES / "example_M.npy", SAMPLES / "example_filter_2x1x1.npy", "--layout", "CHW"
    )
    assert proc.returncode == 0 and "1*2 + 5*3 = 17" in proc.stdout.decode()


def test_large_channel_count_is_elided_but_summed_exactly():
    proc = run_cli(
        "explain", SAMPLES / "input_28x28x192.npy", SAMPLES / "filters_64x192.npy", "--filters", "5"
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0
    assert "... 184 more terms ..." in out and "filter 5:" in out and " ok" in out


CASES = [
    dict(shape=(4, 5, 6), layout="channels-last", k=3, groups=1, stride=1, bias=False, at="2,3"),
    dict(shape=(6, 5, 4), layout="channels-first", k=4, groups=2, stride=1, bias=True, at="1,2"),
    dict(shape=(2, 7, 5, 6), layout="NHWC", k=6, groups=3, stride=2, bias=True, at="1,2,1"),
    dict(shape=(2, 6, 7, 5), layout="NCHW", k=2, groups=1, stride=3, bias=False, at="2,1"),
    dict(shape=(9, 40), layout="NC", k=5, groups=1, stride=1, bias=True, at="7"),
]


@pytest.mark.parametrize("case", CASES, ids=[c["layout"] for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_json_values_equal_the_reference_loop(tmp_path, case, dtype):
    rng = np.random.default_rng(len(case["shape"]) * 10 + case["k"])
    x = (rng.standard_normal(case["shape"]) * 50).astype(dtype)
    channels = (
        x.shape[1]
        if case["layout"] in ("NCHW",)
        else x.shape[0]
        if case["layout"] == "channels-first"
        else x.shape[-1]
    )
    w = rng.integers(-4, 5, size=(case["k"], channels // case["groups"])).astype(dtype)
    bias = rng.integers(-3, 4, size=case["k"]) if case["bias"] else None
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    args = [
        "explain",
        "x.npy",
        "w.npy",
        "--layout",
        case["layout"],
        "--groups",
        str(case["groups"]),
        "--stride",
        str(case["stride"]),
        "--at",
        case["at"],
        "--json",
        "--filters",
        ",".join(str(k) for k in range(case["k"])),
    ]
    if bias is not None:
        args += ["--bias", ",".join(str(b) for b in bias)]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]
    ref = reference_conv(x, w, bias, layout=case["layout"], groups=case["groups"], stride=case["stride"])
    axis = doc["input"]["channel_axis"]
    position = [int(v) for v in case["at"].split(",")]
    if len(position) < ref.ndim - 1:
        position = [0] + position  # batch axis left out
    index = tuple(position[:axis]) + (slice(None),) + tuple(position[axis:])
    expected = ref[index]
    got = np.array([item["sum"] for item in doc["results"]])
    fast = np.array([item["fast_path"] for item in doc["results"]])
    np.testing.assert_allclose(got, expected.astype(np.float64), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(fast, expected.astype(np.float64), rtol=1e-5, atol=1e-3)
    assert doc["ok"] is True
    assert doc["matrix"]["pixels"] * doc["matrix"]["filters"] == np.prod(ref.shape)


def test_explain_api_reports_groups(monkeypatch):
    import pwconv.jobs.explain as module

    x = np.arange(2 * 2 * 4, dtype=np.float64).reshape(2, 2, 4)

    class InMemory(Source):
        shape, dtype = x.shape, x.dtype

        def read(self, index):
            return x[index]

    monkeypatch.setattr(module, "open_source", lambda spec: InMemory())
    doc = explain(ExplainRequest("x.npy", "1,2;3,4", ApplyOptions(groups=2), at="1,1"))
    assert [r["channels"] for r in doc["results"]] == [[0, 2], [2, 4]]
    assert doc["results"][0]["sum"] == x[1, 1, 0] * 1 + x[1, 1, 1] * 2
    assert doc["results"][1]["sum"] == x[1, 1, 2] * 3 + x[1, 1, 3] * 4


def test_large_input_is_not_read_in_full(tmp_path):
    # A sparse 1 GiB npy: reading it all would take 1 GiB of memory.
    shape = (2048, 2048, 64)
    path = tmp_path / "big.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.truncate(handle.tell() + int(np.prod(shape)) * 4)
    np.save(tmp_path / "w.npy", np.ones((16, 64), np.float32))
    # Measured in a fresh parent: RUSAGE_CHILDREN of this test process holds earlier tests' children.
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'pwconv', 'explain', 'big.npy', 'w.npy', '--at', '1500,1000',"
        " '--json'], capture_output=True, text=True)\n"
        "print(p.stdout, file=sys.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stdout.split()[-1])
    assert peak_kib < 400 * 1024, peak_kib  # far below the 1 GiB file
    assert json.loads(proc.stderr)[0]["results"][0]["sum"] == 0.0


def test_pixel_outside_the_output_is_a_usage_error():
    proc = run_cli("explain", SAMPLES / "example_M.npy", "2,3", "--layout", "CHW", "--at", "2,0")
    assert_clean_error(proc, 2, "--at", "from 0 to 1")
    proc = run_cli("explain", SAMPLES / "example_M.npy", "2,3", "--layout", "CHW", "--at", "1")
    assert_clean_error(proc, 2, "2 coordinates")
    proc = run_cli("explain", SAMPLES / "example_M.npy", "2,3", "--layout", "CHW", "--filters", "1")
    assert_clean_error(proc, 2, "--filters")


def test_explain_reads_stdin(tmp_path):
    import io

    x = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5)
    buffer = io.BytesIO()
    np.save(buffer, x)
    proc = run_cli(
        "explain", "-", "1,1,1", "--layout", "CHW", "--at", "2,3", "--json", stdin=buffer.getvalue()
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["results"][0]["sum"] == x[:, 2, 3].sum()
