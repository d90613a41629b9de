"""Where the few-filter kernels and BLAS trade places from one CPU to another.

The built-in rules (:func:`kernels.accepts`, :func:`kernels.accepts_planes`) come from
tables measured on three CPUs. They agree but for three regions (:data:`REGIONS`): on an
Intel Xeon with AVX-512 the kernel took 0.5-0.95x BLAS's time there, on an AMD EPYC (family
25) whose AVX-512 runs on 256-bit units 1.0-1.7x (one thread), and no rule of channels and
filters alone holds on both. In those regions the kernel runs by default on Intel CPUs (and,
for the AVX2 code's channels-last cases, everywhere: an AVX2 AMD EPYC measured 0.35-0.92x),
BLAS elsewhere.

``pwconv info --system --calibrate`` settles them for the machine it runs on instead: it
times the kernel against BLAS there and keeps the verdicts for this CPU, kernel code path,
BLAS and core count in ``$XDG_CACHE_HOME/pwconv/kernels.json`` (``~/.cache`` by default;
``PWCONV_CALIBRATION`` names another file). Outside the three regions nothing moves. A file
of another machine, or one pwconv did not write, is ignored.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from pwconv.errors import WriteError

_VERSION = 1


class Region(NamedTuple):
    """Cases (float32) where the measured CPUs disagreed, and the cells timed for them."""

    name: str
    layout: str  # "rows" (channels-last) or "planes" (channels-first)
    filters: tuple[int, int]  # K, inclusive
    channels: tuple[int, int]  # C, inclusive
    cells: tuple[tuple[int, int], ...]  # (C, K) timed

    def holds(self, layout: str, k: int, c: int) -> bool:
        return (
            layout == self.layout
            and self.filters[0] <= k <= self.filters[1]
            and self.channels[0] <= c <= self.channels[1]
        )

    def default(self, code: str, vendor: str) -> bool:
        """Whether the kernel takes the region without a calibration: where it was measured
        to win (``code``: the kernels' code path, ``vendor``: the CPU's vendor string)."""
        return vendor == "GenuineIntel" or (self.layout == "rows" and code == "avx2+fma")


_ANY = 1 << 30
REGIONS = (
    Region(
        "channels-last, 2-4 filters under 128 channels", "rows", (2, 4), (1, 127), ((32, 3), (64, 2), (64, 4))
    ),
    Region("channels-first, 33-64 filters", "planes", (33, 64), (1, _ANY), ((128, 64), (256, 48))),
    Region(
        "channels-first, 17-32 filters over 512+ channels",
        "planes",
        (17, 32),
        (512, _ANY),
        ((512, 24), (1024, 32)),
    ),
)

# Input bytes of a timed cell: beyond the caches for the memory-bound channels-last cells.
_ROWS_BYTES = 64 << 20
_PLANES_BYTES = 16 << 20
_ROUNDS = 2
_REPEATS = 3
_PAUSE = 0.2  # s; OpenBLAS's threads stop spinning within about 0.1 s of a call

_loaded: tuple[str, dict[str, bool]] | None = None  # (code path, verdicts)

#: Set by tests and benchmarks: True or False settles every case of the regions, before any
#: calibration or default.
override: bool | None = None


def cache_path() -> str:
    """``PWCONV_CALIBRATION``, else ``kernels.json`` in the user's cache folder."""
    if os.environ.get("PWCONV_CALIBRATION"):
        return os.environ["PWCONV_CALIBRATION"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pwconv", "kernels.json")


@functools.cache
def _cpu() -> tuple[tuple[str, str], ...]:
    """The first processor's vendor, family, model and name from ``/proc/cpuinfo``."""
    cpu: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "model name") and key not in cpu:
                    cpu[key] = value.strip()
                elif not line.strip() and cpu:
                    break
    except OSError:
        import platform

        cpu["processor"] = platform.processor() or platform.machine()
    return tuple(cpu.items())


def cpu_model() -> str:
    """The CPU's name as the system gives it (``info --system``, benchmarks)."""
    import platform

    facts = dict(_cpu())
    return facts.get("model name") or facts.get("processor") or platform.processor() or platform.machine()


def blas_build() -> dict[str, str]:
    """The BLAS numpy was built with: ``name`` and ``version`` (empty where numpy cannot say)."""
    try:
        found = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[func-returns-value]
        return {"name": found.get("name"), "version": found.get("version")}
    except (TypeError, KeyError, AttributeError):
        return {}


def machine() -> dict[str, Any]:
    """What a calibration holds for: the CPU, the kernels' code path, BLAS, the cores."""
    from pwconv.core import kernels

    build = blas_build()
    blas = f"{build['name']} {build['version']}" if build else ""
    return {"cpu": dict(_cpu()), "kernel": kernels.instruction_set(), "blas": blas, "cores": kernels.threads}


def verdicts() -> dict[str, bool]:
    """This machine's calibrated regions: name -> whether the kernel won there (``{}``
    without a calibration for this machine, or with an unreadable file)."""
    global _loaded
    from pwconv.core import kernels

    path = kernels.instruction_set()  # a switch of code path (tests, benchmarks) asks again
    if _loaded is None or _loaded[0] != path:
        file = cache_path()
        _loaded = (path, _read(file, machine()) if os.path.exists(file) else {})
    return _loaded[1]


def _read(path: str, here: dict[str, Any]) -> dict[str, bool]:
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
        if doc.get("version") != _VERSION or doc.get("machine") != here:
            return {}
        names = {region.name for region in REGIONS}
        return {
            entry["region"]: entry["kernel"] is True
            for entry in doc["regions"]
            if entry.get("region") in names and isinstance(entry.get("kernel"), bool)
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return {}  # a file pwconv did not write, or cut short: the built-in rule stands


def kernel_kept(layout: str, k: int, c: int) -> bool:
    """Whether the kernel takes a float32 case the built-in rule gives it: every case outside
    the regions; inside, :data:`override`, this machine's calibration or the region's default
    settles it."""
    region = next((r for r in REGIONS if r.holds(layout, k, c)), None)
    if region is None:
        return True
    if override is not None:
        return override
    return verdicts().get(region.name, _default(region))


def _default(region: Region) -> bool:
    from pwconv.core import kernels

    return region.default(kernels.instruction_set(), dict(_cpu()).get("vendor_id", ""))


class Cell(NamedTuple):
    region: str
    layout: str
    channels: int
    filters: int
    blas_ms: float
    kernel_ms: float

    @property
    def ratio(self) -> float:
        return self.kernel_ms / self.blas_ms


def calibrate() -> tuple[list[Cell], dict[str, bool]]:
    """Time the kernel against BLAS at the regions' cells where the kernel can run (each side
    twice, 3 calls after a pause, the best of all), and write the verdicts for this machine:
    the kernel keeps a region where it took at most BLAS's time (geometric mean of the cells)."""
    global _loaded, override
    from pwconv.core import kernels

    rng = np.random.default_rng(0)
    cells: list[Cell] = []
    found: dict[str, bool] = {}
    kept, override = override, True  # every cell the built-in rule gives the kernel is timed
    try:
        for region in REGIONS:
            timed = [cell for c, k in region.cells if (cell := _time(region, c, k, rng)) is not None]
            if timed:
                cells += timed
                mean = float(np.exp(np.mean([np.log(cell.ratio) for cell in timed])))
                found[region.name] = mean <= 1.0
    finally:
        override = kept
    if kernels.instruction_set() != "unavailable":
        _write(cache_path(), cells, found)
    _loaded = (kernels.instruction_set(), found)
    return cells, found


def _time(region: Region, c: int, k: int, rng: np.random.Generator) -> Cell | None:
    from pwconv.core import conv, kernels

    w = rng.standard_normal((k, c), dtype=np.float32)
    blas: Callable[[], Any]
    kernel: Callable[[], Any]
    if region.layout == "rows":
        x = rng.random((_ROWS_BYTES // 4 // c, c), dtype=np.float32)
        out = np.empty((x.shape[0], k), np.float32)
        if not kernels.accepts(x, w, out):
            return None
        wt = w.T

        def blas() -> None:
            conv._matmul_rows(x, wt, out)

        def kernel() -> None:
            kernels.apply_rows(x, w, out)
    else:
        pixels = 4096
        x = rng.random((max(1, _PLANES_BYTES // 4 // c // pixels), c, pixels), dtype=np.float32)
        out = np.empty((x.shape[0], k, pixels), np.float32)
        if not kernels.accepts_planes(x, w, out):
            return None

        def blas() -> None:
            np.matmul(w, x, out=out)

        def kernel() -> None:
            kernels.apply_planes(x, w, out)

    best = {"blas": float("inf"), "kernel": float("inf")}
    order = [("blas", blas), ("kernel", kernel)]
    for _ in range(_ROUNDS):  # in turn, so that a slow spell of the machine hits both
        for name, call in order:
            # BLAS's threads spin for a while after a call, on the cores the kernel's threads
            # would take: each side is timed after a pause, as in a run that uses it alone.
            time.sleep(_PAUSE)
            call()
            for _ in range(_REPEATS):
                start = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - start)
        order.reverse()
    return Cell(region.name, region.layout, c, k, best["blas"] * 1e3, best["kernel"] * 1e3)


def _write(path: str, cells: list[Cell], found: dict[str, bool]) -> None:
    import json

    doc = {
        "version": _VERSION,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "regions": [
            {
                "region": name,
                "kernel": won,
                "cells": [
                    {
                        "channels": x.channels,
                        "filters": x.filters,
                        "blas_ms": round(x.blas_ms, 3),
                        "kernel_ms": round(x.kernel_ms, 3),
                    }  # fmt: skip
                    for x in cells
                    if x.region == name
                ],
            }
            for name, won in found.items()
        ],
    }
    folder = os.path.dirname(path)
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=1)
        os.replace(temp, path)
    except OSError as exc:
        try:
            os.remove(temp)
        except OSError:
            pass
        raise WriteError(
            f"expected to keep the calibration in {path!r}, found: {exc.strerror or exc}; "
            "set PWCONV_CALIBRATION to a file in a writable folder"
        ) from None


def describe() -> str:
    """What settles the regions here, in a line (``info --system``, benchmarks)."""
    found = verdicts()
    if found:
        where = f"this machine's calibration ({cache_path()})"
    else:
        found = {region.name: _default(region) for region in REGIONS}
        where = "the built-in rule for this CPU (`pwconv info --system --calibrate` measures it)"
    sides = {
        "kernel": [n for n, won in found.items() if won],
        "BLAS": [n for n, won in found.items() if not won],
    }
    return f"{where}: " + ", ".join(
        f"{side} for {'; '.join(names)}" for side, names in sides.items() if names
    )
