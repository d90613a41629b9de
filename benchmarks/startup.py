"""Start-up cost: `pwconv apply` on the 28x28x192 sample, whole process, against
`python -c "import numpy"` (interleaved runs, best and median).

    python benchmarks/startup.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import use_bytecode_cache  # noqa: F401 - pwconv from bytecode, as installed

ROOT = Path(__file__).resolve().parents[1]


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeats: int = 15) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.npy")
        commands = {
            "python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
            "pwconv apply (sample)": [
                sys.executable,
                "-m",
                "pwconv",
                "apply",
                str(ROOT / "sample_data/input_28x28x192.npy"),
                str(ROOT / "sample_data/filters_64x192.npy"),
                "-o",
                out,
                "--overwrite",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for cmd in commands.values():
            _time(cmd)  # warm the page cache and .pyc files
        for _ in range(repeats):
            for name, cmd in commands.items():
                times[name].append(_time(cmd))
    return {name: {"best": min(t), "median": statistics.median(t)} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    result = measure(args.repeats)
    base = result["python -c 'import numpy'"]
    for name, stats in result.items():
        print(
            f"{name:28s} best {stats['best'] * 1e3:7.1f} ms  median {stats['median'] * 1e3:7.1f} ms  "
            f"ratio (median) {stats['median'] / base['median']:.2f}x"
        )


if __name__ == "__main__":
    main()
