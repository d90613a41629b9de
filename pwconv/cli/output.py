"""Everything the CLI prints: reports and errors to stderr, data and JSON to stdout."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def say(text: str, *, quiet: bool = False) -> None:
    """One line of human-readable output on stderr."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def error(message: str) -> None:
    print(f"pwconv: error: {message}", file=sys.stderr, flush=True)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def shape_text(shape: list[int] | tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape) if shape else "scalar"


def seconds_text(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def report_lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The apply report as (label, text) rows."""
    inp, w, out, sec = report["input"], report["weights"], report["output"], report["seconds"]
    rows = [
        (
            "input",
            f"{inp['path']}  {shape_text(inp['shape'])} {inp['dtype']}  "
            f"layout {inp['layout']} (channels on axis {inp['channel_axis']})",
        ),
        (
            "weights",
            f"{w['source']}  {shape_text(w['shape'])} {w['dtype']}  "
            f"read as {w['interpretation'].split(' read as ')[-1]}: "
            f"{w['matrix_shape'][0]} filters x {w['matrix_shape'][1]} channels",
        ),
    ]
    if report.get("bias"):
        rows.append(("bias", report["bias"]))
    if report["groups"] != 1 or report["stride"] != 1:
        rows.append(("options", f"groups {report['groups']}  stride {report['stride']}"))
    rows.append(("output", f"{out['path']}  {shape_text(out['shape'])} {out['dtype']}"))
    blocks = report["blocks"]
    rows.append(
        (
            "time",
            f"load {seconds_text(sec['load'])}  compute {seconds_text(sec['compute'])}  "
            f"save {seconds_text(sec['save'])}  total {seconds_text(sec['total'])}  "
            f"{report['gflops_per_s']:.1f} GFLOP/s  ({blocks} block{'s' if blocks != 1 else ''}, {report['engine']})",
        )
    )
    return rows


def print_rows(rows: list[tuple[str, str]], *, quiet: bool = False) -> None:
    if quiet:
        return
    if stderr_is_tty():
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold cyan")
        table.add_column()
        for label, text in rows:
            table.add_row(label, text)
        Console(stderr=True, highlight=False).print(table)
    else:
        width = max(len(label) for label, _ in rows)
        for label, text in rows:
            print(f"{label:<{width}}  {text}", file=sys.stderr)
        sys.stderr.flush()


class Progress:
    """A rich progress bar on stderr, shown only on a terminal and only after about a second."""

    def __init__(self, description: str, *, enabled: bool) -> None:
        self.description = description
        self.enabled = enabled and stderr_is_tty()
        # Jobs shorter than this never show a bar (PWCONV_PROGRESS_DELAY overrides, in seconds).
        self.delay = float(os.environ.get("PWCONV_PROGRESS_DELAY", "1.0"))
        self._start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            if time.perf_counter() - self._start < self.delay or done >= total:
                return
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=total)
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Callable[[int, int], None]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
