"""What every benchmark here measures a command with: wall time and peak RSS of its own process."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def best_of(commands: dict[str, list[str] | str], cwd: Path, repeats: int) -> dict[str, tuple[float, int]]:
    """Each command's best wall time and largest peak RSS over ``repeats`` rounds, the
    commands interleaved within a round so that a slow spell of the machine hits them all."""
    best = {name: (float("inf"), 0) for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            wall, rss = run(cmd, cwd)
            best[name] = (min(best[name][0], wall), max(best[name][1], rss))
    return best


def run(cmd: list[str] | str, cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes (largest process, pipelines included; wait4);
    ``env`` is added to the environment.

    The parent should stay small: a forked child starts with its parent's peak RSS.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **env} if env else None,
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
