"""The fault matrix: every writer under every fault, each ending the same way.

Writers: every output format pwconv writes (a file, a dataset added to or replaced in an HDF5
container, a Zarr store, a raster and its sidecars, a picture, a filter bank and its bias
file, a pipe). Faults: a full disk (a small tmpfs the test mounts where it may, else
``RLIMIT_FSIZE``; ``/dev/full`` for a pipe), a read-only folder (that tmpfs remounted
read-only, else a folder of mode 0555 with file modes binding), SIGTERM and SIGINT while the
output is written (its input still arriving on stdin), SIGTERM at the worst moment (every
byte written, nothing renamed yet), and SIGKILL there followed by a rerun.

Each ends with the documented exit code, one line on stderr, no traceback, the folder exactly
as it was (an edited container byte-identical) and no temp file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from .conftest import assert_clean_error, file_size_limit, permissions_apply, wait_for_temp

pytest.importorskip("rasterio")
pytest.importorskip("PIL")
pytest.importorskip("h5netcdf")
pytest.importorskip("zarr")
pytest.importorskip("safetensors")

SHAPE = (512, 512, 3)
MIX = "1,0,0;0,1,0;0,0,1"
DISK = 64 << 10  # bytes: every output here is larger


@dataclass(frozen=True)
class Writer:
    output: str
    extra: tuple[str, ...] = ()
    kind: str = "array"  # "array" (any input), "geo" (a georeferenced input), "bank" (fit)
    held: bool = False  # encoded whole at the end: --max-memory must hold it twice

    def command(self, inputs: Path, stdin: bool = False) -> list[str]:
        if self.kind == "bank":
            return ["fit", "pca", str(inputs / "spectra.npy"), "-k", "200", "-o", self.output]
        source = "-" if stdin else str(inputs / ("geo.tif" if self.kind == "geo" else "in.npy"))
        limit = "4MiB" if self.held else "1MiB"
        return ["apply", source, MIX, "-o", self.output, "--dtype", "u1", "--max-memory", limit, *self.extra]


WRITERS = {
    "npy": Writer("y.npy"),
    "hdf5": Writer("y.h5"),
    "hdf5 gzip": Writer("y.h5", ("--compression", "gzip")),  # whole chunks encoded by pwconv
    "hdf5 dataset added": Writer("keep.h5:/c"),
    "hdf5 dataset replaced": Writer("keep.h5:/a", ("--overwrite",)),
    "zarr": Writer("y.zarr"),
    "zarr zstd": Writer("y.zarr", ("--compression", "zstd")),
    "tiff": Writer("y.tif"),
    "tiff deflate": Writer("y.tif", ("--compression", "deflate")),  # strips written by a thread of their own
    "tiff zstd": Writer("y.tif", ("--compression", "zstd", "--co", "predictor=2")),
    "netcdf": Writer("y.nc"),
    "netcdf gzip": Writer("y.nc", ("--compression", "gzip:1")),
    "png": Writer("y.png", held=True),
    "jpeg": Writer("y.jpg", held=True),
    "webp": Writer("y.webp", held=True),
    "bmp": Writer("y.bmp", held=True),
    "envi": Writer("y.img"),
    "jpeg2000": Writer("y.jp2", held=True),
    "geotiff": Writer("y.tif", kind="geo"),  # deflate tiles encoded and written by pwconv
    "geotiff by gdal": Writer("y.tif", ("--co", "COMPRESS=NONE"), kind="geo"),
    "bank npy": Writer("b.npy", kind="bank"),
    "bank npz": Writer("b.npz", kind="bank"),
    "bank safetensors": Writer("b.safetensors", kind="bank"),
    "bank hdf5": Writer("b.h5", kind="bank"),
}
STREAMED = [name for name, writer in WRITERS.items() if writer.kind == "array"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The inputs, outside every output folder: random bytes (no picture codec shrinks them
    below the small disk), the same as a GeoTIFF, and spectra to fit a bank of 200 filters."""
    import rasterio
    from rasterio.transform import from_origin

    folder = tmp_path_factory.mktemp("inputs")
    data = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    np.save(folder / "in.npy", data)
    profile = {"driver": "GTiff", "width": SHAPE[1], "height": SHAPE[0], "count": SHAPE[2], "dtype": "uint8"}
    with rasterio.open(
        folder / "geo.tif", "w", crs="EPSG:32633", transform=from_origin(5e5, 4.6e6, 10, 10), **profile
    ) as ds:
        ds.write(np.moveaxis(data, -1, 0))
    np.save(folder / "spectra.npy", np.random.default_rng(1).random((64, 64, 300)).astype(np.float32))
    return folder


def _container(folder: Path) -> None:
    import h5py

    with h5py.File(folder / "keep.h5", "w") as handle:
        handle["a"] = np.arange(100, dtype=np.float32).reshape(10, 10)
        handle["b"] = np.ones((4, 4), np.uint8)


def _state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _stream_bytes(data: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, data)
    return buffer.getvalue()


@contextlib.contextmanager
def _small_disk(folder: Path, size: int):
    """A tmpfs of ``size`` bytes at ``folder``; False (and a plain folder) where none can be mounted."""
    folder.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _run(
    command: list[str], cwd: Path, prefix: tuple[str, ...] | list[str] = (), **options
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "pwconv", *command],
        cwd=cwd,
        capture_output=True,
        timeout=300,
        **options,
    )
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    return proc


def _assert_as_before(folder: Path, before: dict[str, str]) -> None:
    after = _state(folder)
    assert after == before, sorted(set(after) ^ set(before)) or "a file's bytes changed"


# --- a full disk ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_full_disk(tmp_path, inputs, name):
    writer = WRITERS[name]
    folder = tmp_path / "disk"
    with _small_disk(folder, DISK) as mounted:
        _container(folder)
        before = _state(folder)
        limit = {} if mounted else {"preexec_fn": file_size_limit(DISK)}
        proc = _run(writer.command(inputs), folder, **limit)
        assert_clean_error(proc, 1, "cannot write")
        _assert_as_before(folder, before)


def test_a_full_disk_behind_a_pipe(inputs):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "pwconv", "apply", str(inputs / "in.npy"), MIX, "-o", "-"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    assert_clean_error(proc, 1, "No space left on device")


# --- a read-only folder -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_read_only_folder(tmp_path, inputs, name):
    writer = WRITERS[name]
    folder = tmp_path / "disk"
    with _small_disk(folder, 4 << 20) as mounted:
        _container(folder)
        before = _state(folder)
        prefix: list[str] = []
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            prefix = permissions_apply()
            folder.chmod(0o555)
        try:
            proc = _run(writer.command(inputs), folder, prefix)
        finally:
            if not mounted:
                folder.chmod(0o755)
        assert_clean_error(proc, 1, "Read-only file system" if mounted else "ermission")
        _assert_as_before(folder, before)


# --- signals while the output is written ------------------------------------------------------


def _default_sigint() -> None:
    # A suite started in the background passes SIGINT on ignored: give the run the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
@pytest.mark.parametrize("name", STREAMED)
def test_a_signal_while_the_output_is_written(tmp_path, inputs, name, sig, code, word):
    writer = WRITERS[name]
    _container(tmp_path)
    before = _state(tmp_path)
    data = np.load(inputs / "in.npy")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pwconv", *writer.command(inputs, stdin=True)],
        cwd=tmp_path, stdin=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint,
    )  # fmt: skip
    proc.stdin.write(_stream_bytes(data)[: data.nbytes // 3])  # a third: the rest never comes
    proc.stdin.flush()
    wait_for_temp(tmp_path, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)  # stdin stays open until the run has ended: the signal, not an end of data
    stderr = proc.communicate(timeout=60)[1].decode()
    completed = subprocess.CompletedProcess(proc.args, proc.returncode, b"", stderr)
    assert_clean_error(completed, code, f"{word}; no output was written")
    _assert_as_before(tmp_path, before)


# The run stops itself just before its outputs are renamed into place: every byte written,
# nothing published (INSIDE: just after the renames began, with the signals held). The
# parent then signals it and lets it go on.
_STOP_AT_PUBLISHING = """
import contextlib, os, signal, sys
import pwconv.io.atomic as atomic
held = atomic.signals_held
INSIDE = {inside}
@contextlib.contextmanager
def stopped():
    renames = sys._getframe(2).f_code.co_name != "__init__"  # not a temp file's creation
    if renames and not INSIDE:
        os.kill(os.getpid(), signal.SIGSTOP)
    with held():
        if renames and INSIDE:
            os.kill(os.getpid(), signal.SIGSTOP)
        yield
atomic.signals_held = stopped
sys.argv[0] = "pwconv"
from pwconv.cli.app import main
main()
"""
_STOP_BEFORE_PUBLISHING = _STOP_AT_PUBLISHING.format(inside=False)


def _stopped_before_publishing(command: list[str], cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _STOP_BEFORE_PUBLISHING, *command], cwd=cwd, stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL, preexec_fn=_default_sigint,
    )  # fmt: skip
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), (status, proc.stderr.read())
    return proc


@pytest.mark.parametrize("name", list(WRITERS))
def test_sigterm_when_every_byte_is_written_but_nothing_renamed(tmp_path, inputs, name):
    writer = WRITERS[name]
    _container(tmp_path)
    before = _state(tmp_path)
    proc = _stopped_before_publishing(writer.command(inputs), tmp_path)
    assert any("pwconv-part" in p for p in os.listdir(tmp_path))
    proc.send_signal(signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    stderr = proc.communicate(timeout=60)[1].decode()
    completed = subprocess.CompletedProcess(proc.args, proc.returncode, b"", stderr)
    assert_clean_error(completed, 143, "terminated; no output was written")
    _assert_as_before(tmp_path, before)


@pytest.mark.parametrize("name", list(WRITERS))
def test_sigkill_then_a_rerun_leaves_only_the_output(tmp_path, inputs, name):
    writer = WRITERS[name]
    _container(tmp_path)
    before = _state(tmp_path)
    proc = _stopped_before_publishing(writer.command(inputs), tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    left = _state(tmp_path)
    assert any("pwconv-part" in p for p in left)  # what a SIGKILL leaves (temps are hidden files)
    assert {k: v for k, v in left.items() if not k.startswith(".")} == before
    rerun = _run(writer.command(inputs), tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    after = _state(tmp_path)
    assert not [p for p in after if p.startswith(".")], sorted(after)
    assert {k: v for k, v in after.items() if k in before and k != "keep.h5"} == {
        k: v for k, v in before.items() if k != "keep.h5"
    }


def test_a_signal_during_the_renames_lets_them_finish_and_says_so(tmp_path, inputs):
    """An ENVI raster is its data and its header: a SIGTERM that arrives while they are renamed
    is held until both are in place, and the one line says the output is whole."""
    script = _STOP_AT_PUBLISHING.format(inside=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *WRITERS["envi"].command(inputs)], cwd=tmp_path, stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    proc.send_signal(signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    stderr = proc.communicate(timeout=60)[1].decode()
    completed = subprocess.CompletedProcess(proc.args, proc.returncode, b"", stderr)
    assert_clean_error(completed, 143, "terminated; 1 output(s) written whole before it (last 'y.img')")
    assert sorted(os.listdir(tmp_path)) == ["y.hdr", "y.img"]
    import rasterio

    with rasterio.open(tmp_path / "y.img") as ds:
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), np.load(inputs / "in.npy"))


# --- every reader, given what is not a regular file -------------------------------------------

_OPEN_EACH = """
import json, signal, sys
from pwconv.errors import PwconvError
from pwconv.io.operands import read_weights
from pwconv.io.registry import open_source
from pwconv.io.spec import parse_spec

def blocked(signum, frame):
    raise TimeoutError
signal.signal(signal.SIGALRM, blocked)
found = {}
for path in sys.argv[1:]:
    for role, read in (("input", lambda p: open_source(parse_spec(p)).close()), ("weights", read_weights)):
        signal.alarm(20)
        try:
            read(path)
            found[f"{role} {path}"] = "read"
        except PwconvError as exc:
            found[f"{role} {path}"] = exc.for_cli()
        except TimeoutError:
            found[f"{role} {path}"] = "blocked"
        except BaseException as exc:
            found[f"{role} {path}"] = f"{type(exc).__name__}: {exc}"
        finally:
            signal.alarm(0)
print(json.dumps(found))
"""


def test_every_reader_refuses_a_fifo_or_device_named_like_its_file(tmp_path):
    import json

    from pwconv.io.registry import FORMATS

    suffixes = sorted({s for fmt in FORMATS for s in (*fmt.suffixes, *fmt.claims)})
    names = []
    for number, suffix in enumerate(suffixes):
        os.mkfifo(tmp_path / f"fifo{number}{suffix}")
        os.symlink(tmp_path / f"fifo{number}{suffix}", tmp_path / f"link{number}{suffix}")
        os.symlink("/dev/zero", tmp_path / f"zero{number}{suffix}")
        names += [f"fifo{number}{suffix}", f"link{number}{suffix}", f"zero{number}{suffix}"]
    proc = subprocess.run(
        [sys.executable, "-c", _OPEN_EACH, *names], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert len(found) == 2 * len(names)
    wrong = {
        case: text
        for case, text in found.items()
        if not (
            "expected a regular" in text and ("a FIFO" in text or "a device" in text) and "\n" not in text
        )
    }
    assert not wrong, wrong


def test_a_fifo_in_a_batch_folder_is_refused_by_name_and_the_rest_still_run(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((4, 4, 3), np.float32))
    os.mkfifo(folder / "b.npy")
    proc = _run(["batch", MIX, str(folder), "--out-dir", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 2, proc.stderr  # a file that failed on its input
    assert "b.npy" in proc.stderr and "FIFO" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["a.pw.npy"]
