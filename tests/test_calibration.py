"""The per-machine calibration of the kernel-or-BLAS choice (``pwconv info --system --calibrate``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pwconv import pointwise_conv
from pwconv.core import calibration, kernels
from pwconv.core.reference import reference_conv
from tests.conftest import assert_clean_error, run_cli

needs_kernel = pytest.mark.skipif(
    kernels.instruction_set() == "unavailable", reason="C kernel not built or CPU without AVX2/FMA"
)

ROWS = calibration.REGIONS[0]  # channels-last, 2-4 filters under 128 channels


@pytest.fixture
def calibration_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A calibration file of the test's own, read afresh."""
    path = tmp_path / "cache" / "kernels.json"
    monkeypatch.setenv("PWCONV_CALIBRATION", str(path))
    monkeypatch.setattr(calibration, "_loaded", None)
    yield path
    calibration._loaded = None


def write(path: Path, verdicts: dict[str, bool], machine: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "version": 1,
        "machine": machine or calibration.machine(),
        "date": "2026-12-07",
        "regions": [{"region": name, "kernel": won, "cells": []} for name, won in verdicts.items()],
    }
    path.write_text(json.dumps(doc))


def rows_case(c: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(c + k)
    x = rng.standard_normal((4096, c)).astype(np.float32)
    return x, rng.standard_normal((k, c)).astype(np.float32), np.empty((4096, k), np.float32)


def default_here(region: calibration.Region) -> bool:
    vendor = dict(calibration._cpu()).get("vendor_id", "")
    return region.default(kernels.instruction_set(), vendor)


@pytest.mark.parametrize(
    ("region", "code", "vendor", "kernel"),
    [
        (0, "avx512f", "GenuineIntel", True),  # 0.5-0.95x BLAS on the Intel Xeon
        (0, "avx512f", "AuthenticAMD", False),  # 1.0-1.7x on the AMD EPYC with 256-bit units
        (0, "avx2+fma", "AuthenticAMD", True),  # 0.35-0.92x on the AVX2 AMD EPYC
        (1, "avx512f", "GenuineIntel", True),
        (1, "avx512f", "AuthenticAMD", False),
        (2, "avx512f", "AuthenticAMD", False),
        (2, "avx512f", "HygonGenuine", False),  # a CPU nobody measured: BLAS, the safe side
    ],
)
def test_the_regions_default_to_the_side_measured_faster_on_that_cpu(region, code, vendor, kernel) -> None:
    assert calibration.REGIONS[region].default(code, vendor) is kernel


@needs_kernel
def test_a_calibration_settles_its_regions_and_nothing_else_moves(calibration_file: Path) -> None:
    inside, outside = rows_case(64, 3), rows_case(256, 3)
    assert kernels.accepts(*inside) is default_here(ROWS)
    assert kernels.accepts(*outside)

    for won in (False, True):
        write(calibration_file, {ROWS.name: won})
        calibration._loaded = None
        assert kernels.accepts(*inside) is won
        assert kernels.accepts(*outside)
        wide = [a.astype(np.float64) for a in inside]  # the regions are float32's
        assert kernels.accepts(*wide)
        x, w, _ = inside
        scale = np.abs(x).max() * np.abs(w).sum(axis=1).max()
        np.testing.assert_allclose(pointwise_conv(x, w), reference_conv(x, w), rtol=1e-5, atol=1e-5 * scale)


@needs_kernel
@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"version": 1, "machine": null, "regions": 3}',
        '{"version": 2}',
        "[" * 100_000 + "]" * 100_000,
        "\x00\xff\xfe",
    ],
)
def test_a_file_pwconv_did_not_write_leaves_the_built_in_rule(calibration_file: Path, text: str) -> None:
    calibration_file.parent.mkdir(parents=True)
    calibration_file.write_bytes(text.encode("latin-1"))
    assert calibration.verdicts() == {}
    assert kernels.accepts(*rows_case(64, 3)) is default_here(ROWS)
    proc = run_cli("info", "--system", env={"PWCONV_CALIBRATION": str(calibration_file)})
    assert proc.returncode == 0 and "built-in rule" in proc.stdout.decode() + proc.stderr, proc.stderr


@needs_kernel
def test_a_calibration_of_another_machine_is_not_used(calibration_file: Path) -> None:
    verdict = not default_here(ROWS)  # a verdict the default would not give
    other = calibration.machine() | {"cores": calibration.machine()["cores"] + 1}
    write(calibration_file, {ROWS.name: verdict}, other)
    assert calibration.verdicts() == {}
    assert kernels.accepts(*rows_case(64, 3)) is not verdict
    if "avx512f" in kernels.instruction_sets():  # the AVX-512 code's calibration is not the AVX2 code's
        write(calibration_file, {ROWS.name: False})
        calibration._loaded = None
        kernels.use_instruction_set("avx2+fma")
        try:
            assert kernels.accepts(*rows_case(64, 3))  # the AVX2 code's default
        finally:
            kernels.use_instruction_set("avx512f")
        assert not kernels.accepts(*rows_case(64, 3))


@needs_kernel
def test_calibrate_times_the_regions_and_the_next_runs_use_it(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "pwconv" / "kernels.json"
    env = {"PWCONV_CALIBRATION": "", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run_cli("info", "--system", "--calibrate", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)[0]
    doc = json.loads(path.read_text())
    assert report["calibration"] == str(path)
    assert doc["machine"] == calibration.machine() and doc["version"] == 1
    # the channels-last region is the kernel's on every code path (from 64 channels on AVX2)
    assert ROWS.name in report["regions"]
    assert {entry["region"]: entry["kernel"] for entry in doc["regions"]} == report["regions"]
    for cell in report["cells"]:
        assert cell["blas_ms"] > 0 and cell["kernel_ms"] > 0
        assert cell["ratio"] == pytest.approx(cell["kernel_ms"] / cell["blas_ms"])
    for entry in doc["regions"]:
        ratios = [cell["kernel_ms"] / cell["blas_ms"] for cell in entry["cells"]]
        assert entry["kernel"] == (float(np.exp(np.mean(np.log(ratios)))) <= 1.0)

    proc = run_cli("info", "--system", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    system = json.loads(proc.stdout)[0]
    assert system["calibrated"] == report["regions"]
    assert "this machine's calibration" in system["kernel_rule"]


def test_calibrate_refusals_are_one_line(tmp_path: Path) -> None:
    proc = run_cli("info", "--calibrate")
    assert_clean_error(proc, 2, "--calibrate with --system")
    proc = run_cli("info", "--system", "--calibrate", env={"PWCONV_KERNEL": "blas"})
    assert_clean_error(proc, 2, "PWCONV_KERNEL=blas")
    if kernels.instruction_set() != "unavailable":
        blocked = tmp_path / "file"
        blocked.write_text("a file where the folder would go")
        target = blocked / "pwconv" / "kernels.json"
        proc = run_cli("info", "--system", "--calibrate", env={"PWCONV_CALIBRATION": str(target)})
        assert_clean_error(proc, 1, str(target), "PWCONV_CALIBRATION")
        assert list(tmp_path.iterdir()) == [blocked]
