"""The kernel's threads: split jobs taken as threads come free, and positioned writes split
over them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from pwconv.core import kernels
from pwconv.errors import WriteError
from pwconv.io import rawio


def test_every_job_runs_once_and_a_slowed_thread_takes_fewer(monkeypatch):
    monkeypatch.setattr(kernels, "threads", 2)
    done: list[tuple[int, str]] = []
    lock = threading.Lock()

    def part(job: int) -> None:
        # the helper is slowed, as by an engine's writer on its core
        time.sleep(0.002 if threading.current_thread() is threading.main_thread() else 0.02)
        with lock:
            done.append((job, threading.current_thread().name))

    kernels.run_jobs(part, list(range(24)))
    assert sorted(job for job, _ in done) == list(range(24))
    on_main = sum(1 for _, name in done if name == "MainThread")
    assert on_main > 12  # the calling thread took more than its equal share


def test_an_error_in_a_job_is_raised_in_the_caller(monkeypatch):
    monkeypatch.setattr(kernels, "threads", 2)

    def part(job: int) -> None:
        if job == 5:
            raise ValueError("job 5 failed")

    with pytest.raises(ValueError, match="job 5 failed"):
        kernels.run_jobs(part, list(range(8)))


def test_the_helper_threads_do_not_hold_up_the_exit():
    code = (
        "import numpy as np, threading\n"
        "from pwconv.core import kernels\n"
        "kernels.threads = 2\n"
        "kernels.run_jobs(lambda job: None, [1, 2, 3])\n"
        "print(sorted(t.daemon for t in threading.enumerate() if t.name.startswith('pwconv-kernel')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[True]"


@pytest.mark.parametrize("position", [0, 100, 4096, 5000])
@pytest.mark.parametrize("size", [100, (3 << 20) + 7, (5 << 20) + 4093])
def test_a_large_write_split_over_threads_lands_whole(tmp_path, monkeypatch, position, size):
    monkeypatch.setattr(kernels, "threads", 2)
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    path = tmp_path / "out.bin"
    with open(path, "wb") as handle:
        rawio.write_all(handle.fileno(), memoryview(data), position, "out.bin")
    written = np.fromfile(path, np.uint8)
    assert written.size == position + size
    np.testing.assert_array_equal(written[position:], data)


def test_a_refused_split_write_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "threads", 2)
    path = tmp_path / "ro.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(WriteError, match="cannot write ro.bin: the file system refused it") as caught:
            rawio.write_all(fd, memoryview(np.zeros(4 << 20, np.uint8)), 0, "ro.bin")
    finally:
        os.close(fd)
    assert "\n" not in str(caught.value)
