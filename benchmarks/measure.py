"""What every benchmark here measures a command with: wall time and peak RSS of its own process."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def run(cmd: list[str] | str, cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes (largest process, pipelines included; wait4).

    The parent should stay small: a forked child starts with its parent's peak RSS.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        shell=isinstance(cmd, str),
        executable="/bin/bash" if isinstance(cmd, str) else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err}")
    return wall, usage.ru_maxrss * 1024
