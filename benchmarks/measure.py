"""What every benchmark here measures a command with: wall time and peak RSS of its own process."""

from __future__ import annotations

import compileall
import os
import subprocess
import time
from pathlib import Path


def use_bytecode_cache() -> None:
    """Let the measured processes load pwconv's modules from compiled bytecode, as an
    installed pwconv does (pip compiles it): with ``PYTHONDONTWRITEBYTECODE`` set (as on
    this project's machines) an editable install compiled every module from source in every
    process, about 50 ms of a 180 ms start-up. pwconv's package is compiled once here and
    the variable is dropped for the processes the benchmark starts."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_dir(str(Path(__file__).resolve().parents[1] / "pwconv"), quiet=1)


use_bytecode_cache()


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
