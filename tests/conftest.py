"""Shared helpers: run the real CLI in a subprocess (never a bare ``pwconv`` from PATH)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"

WORKED_M = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
WORKED_FILTER = np.array([2, 3])
WORKED_RESULT = np.array([[17, 22], [27, 32]])

# A calibration of the machine the tests run on (``pwconv info --system --calibrate``) would
# move products between kernel and BLAS: the tests see the built-in rule, in this process and
# in the runs it starts, unless a test names a calibration file of its own.
os.environ["PWCONV_CALIBRATION"] = os.path.join(os.sep, "nonexistent", "pwconv-tests", "kernels.json")


def permissions_apply() -> list[str]:
    """A command prefix under which file modes bind, as they do for a user: root's children
    run without the capabilities that bypass them (util-linux ``setpriv``)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes do not bind")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def file_size_limit(limit: int):
    """A ``preexec_fn`` under which the child may write files of at most ``limit`` bytes (a
    full disk where none can be mounted): a write past it fails with EFBIG, no SIGXFSZ."""

    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


class Interrupted(Exception):
    """What :func:`interrupted_after`'s signal raises."""


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """A signal whose handler raises :class:`Interrupted` in the main thread ``seconds`` into
    the block, wherever it waits (as SIGTERM's handler raises ``SystemExit``)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def wait_for_temp(folder: Path, proc: subprocess.Popen, seconds: float = 60.0) -> None:
    """Wait until a run has made its temp output in ``folder`` (it must still be running)."""
    import time

    deadline = time.monotonic() + seconds
    while not any("pwconv-part" in name for name in os.listdir(folder)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)


def run_cli(
    *args: str,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m pwconv ARGS`` (after ``prefix``, with ``env`` added to the environment);
    stdout as bytes, stderr as text."""
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "pwconv", *map(str, args)],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, **env} if env else None,
    )
    proc.stderr = proc.stderr.decode("utf-8", "replace")  # type: ignore[assignment]
    return proc


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """A failure is one line on stderr, with the given exit code, naming the fragments."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pwconv: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def leftovers(directory: Path) -> list[str]:
    """Temp files a failed run might have left behind."""
    return sorted(p.name for p in directory.iterdir() if "pwconv-part" in p.name)


@pytest.fixture
def worked(tmp_path: Path) -> Path:
    """The worked example as files in a fresh folder."""
    np.save(tmp_path / "M.npy", WORKED_M)
    np.save(tmp_path / "f.npy", WORKED_FILTER)
    np.save(tmp_path / "f211.npy", WORKED_FILTER.reshape(2, 1, 1))
    return tmp_path


# Packages that an .npy run must never import.
HEAVY = (
    "dask",
    "zarr",
    "distributed",
    "h5py",
    "rich",
    "torch",
    "onnx",
    "keras",
    "safetensors",
    "PIL",
    "tifffile",
    "matplotlib",
)


def cli_in_process(cwd: Path, blocked: list[str], args: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter where the ``blocked`` packages cannot be imported;
    the last stderr line lists the HEAVY packages the run loaded."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from pwconv.cli.app import main\n"
        f"sys.argv = ['pwconv'] + {args!r}\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        f"    heavy = sorted(m for m in {HEAVY!r} if sys.modules.get(m))\n"
        "    print('loaded:', ','.join(heavy), file=sys.stderr)\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def modules_imported_by(
    cwd: Path, args: list[str], names: tuple[str, ...], after: str = ""
) -> tuple[object, list[str]]:
    """Run the CLI with ``args`` in a fresh interpreter: its exit code, and which of ``names``
    it imported (listed before ``after``, Python run once the command is done)."""
    code = (
        "import sys\n"
        f"sys.argv = ['pwconv'] + {args!r}\n"
        "from pwconv.cli.app import main\n"
        "try:\n    main()\n    code = 0\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"loaded = [m for m in {names!r} if m in sys.modules]\n"
        f"{after}\n"
        "print(repr((code, loaded)), file=sys.__stdout__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip(), (proc.stdout, proc.stderr)
    import ast

    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def write_geotiff(
    path: Path, bands_first: np.ndarray, descriptions: tuple[str, ...] | list[str] = (), *,
    nodata: float | None = None, transform: object = None, crs: str = "EPSG:32633",
) -> None:  # fmt: skip
    """A (bands, rows, cols) array as a GeoTIFF written by rasterio, with band descriptions,
    nodata and a 30 m UTM grid unless told otherwise."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    count, height, width = bands_first.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=bands_first.dtype.name,
        crs=crs, transform=transform or from_origin(500000, 4200000, 30, 30), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(bands_first)
        for band, name in enumerate(descriptions, 1):
            dst.set_band_description(band, name)


def raster_facts(path: Path) -> dict:
    """What GDAL reads of a raster: profile, nodata (NaN as "nan"), tags, image structure,
    band descriptions, colour interpretation, block shapes and pixels."""
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path) as ds:
        profile = dict(ds.profile)
        nodata = profile.pop("nodata")
        return {
            "profile": profile,
            "nodata": "nan" if nodata is not None and np.isnan(nodata) else nodata,
            "tags": ds.tags(),
            "structure": ds.tags(ns="IMAGE_STRUCTURE"),
            "descriptions": ds.descriptions,
            "colorinterp": ds.colorinterp,
            "blocks": ds.block_shapes,
            "pixels": ds.read(),
        }


@pytest.fixture(params=["disk", "http"])
def located(request, tmp_path):
    """The name an input under ``tmp_path`` is read by: its path, or its URL."""
    if request.param == "disk":
        yield str
        return
    from tests.servers import RangeServerProcess

    server = RangeServerProcess(str(tmp_path))
    yield lambda path: f"{server.url}/{Path(path).relative_to(tmp_path).as_posix()}"
    server.stop()
