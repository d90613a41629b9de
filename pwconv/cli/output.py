"""Everything the CLI prints: reports and errors to stderr, data and JSON to stdout."""

from __future__ import annotations

import errno
import functools
import io
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from pwconv import errors
from pwconv.core.words import counted
from pwconv.engines import interrupts
from pwconv.errors import PwconvError, UsageError
from pwconv.io.stores import scrub


def examples(commands: list[str]) -> str:
    """A command's help epilog: its examples, kept on their own lines.

    >>> print(examples(["python -m pwconv info x.npy"]))
    Examples:
    <BLANKLINE>
    \b
      python -m pwconv info x.npy
    """
    return "Examples:\n\n\b\n" + "\n".join(f"  {command}" for command in commands)


def program_as_run() -> str:
    """How the user started pwconv, for commands printed as hints: ``python -m pwconv`` when
    run that way (a bare ``pwconv`` may be the system's password-file tool)."""
    first = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "pwconv"
    return "python -m pwconv" if first in ("__main__.py", "-m", "-c") else first


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def say(text: str, *, quiet: bool = False) -> None:
    """One line of human-readable output on stderr."""
    if not quiet:
        print(scrub(text), file=sys.stderr, flush=True)


def error(message: str) -> None:
    print(f"pwconv: error: {scrub(message)}", file=sys.stderr, flush=True)


class ClosedStdout(io.TextIOBase):
    """What ``sys.stdout`` is when pwconv was started with stdout closed (``>&-``): any write
    fails as an I/O error, so nothing is lost silently and the run does not exit 0."""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    @property
    def buffer(self) -> ClosedStdout:
        return self


def check_stdout_open(needed: bool, what: str = "--json") -> None:
    """Refuse, before any work, a run that must write to a closed stdout."""
    if needed and isinstance(sys.stdout, ClosedStdout):
        raise UsageError(
            f"expected an open stdout for {what}, found it closed; run with stdout open (> out.npy) "
            "or write to a file"
        )


def entry(
    path: str | None, doc: dict[str, Any] | None = None, *, exit_code: int = 0, error: str | None = None
) -> dict[str, Any]:
    """One entry of a ``--json`` list: the file it is about, how it ended, and what was found.

    Every ``--json`` prints a list of these, one per array described or file processed, a
    failed one included, so that a script reads every run the same way.

    >>> entry("x.npy", {"shape": [2]})
    {'path': 'x.npy', 'exit_code': 0, 'error': None, 'shape': [2]}
    """
    return {"path": path, "exit_code": exit_code, "error": error, **(doc or {})}


# What the running command promised on stdout with --json, so that a failure anywhere still
# prints its entry: the path the entry would be about, and whether the list is out already.
_json_run: dict[str, Any] = {"wanted": False, "path": None, "emitted": False}


def emit_json(entries: list[dict[str, Any]]) -> None:
    import json  # only for --json: start-up

    _json_run["emitted"] = True
    sys.stdout.write(scrub(json.dumps(entries, indent=2)) + "\n")
    sys.stdout.flush()


def _json_subject(kwargs: dict[str, Any]) -> str | None:
    """The path a command's one entry is about: INPUT for apply and explain, the bank written
    for fit; none for batch and info, whose entries are per file."""
    if "files" in kwargs or "out_dir" in kwargs:
        return None
    if "inputs" in kwargs or "target" in kwargs:  # fit pca, fit lstsq
        return kwargs.get("output")
    return kwargs.get("input")


def _emit_failure_entry(code: int, message: str) -> None:
    """With --json, the run's failure as its list of one entry (unless the list is out)."""
    if not _json_run["wanted"] or _json_run["emitted"] or isinstance(sys.stdout, ClosedStdout):
        return
    try:
        emit_json([entry(_json_run["path"], exit_code=code, error=message)])
    except (OSError, ValueError):
        pass  # stdout itself failed; the line on stderr stands


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
            f"{counted(w['matrix_shape'][0], 'filter')} x {counted(w['matrix_shape'][1], 'channel')}"
            + ("; --weights-layout ck reads columns as filters" if w.get("square") else ""),
        ),
    ]
    if report.get("bias"):
        rows.append(("bias", report["bias"] + ("  (from the bank)" if w.get("bank") else "")))
    elif w.get("unused_bias"):
        rows.append(("bias", f"none (the file has {w['unused_bias']}; --bias auto applies it)"))
    if report["groups"] != 1 or report["stride"] != 1:
        rows.append(("options", f"groups {report['groups']}  stride {report['stride']}"))
    rows.append(("output", f"{out['path']}  {shape_text(out['shape'])} {out['dtype']}"))
    clipped = out.get("clipped")
    if clipped is not None:
        rows.append(
            (
                "clipped",
                f"{clipped['low']} low, {clipped['high']} high (rounded to nearest and saturated into {out['dtype']})",
            )
        )
    nodata = out.get("nodata")
    if nodata is not None:
        marker = "NaN" if nodata["nan"] else f"{nodata['input']:g}"
        pixels = "not counted" if nodata["pixels"] is None else counted(nodata["pixels"], "pixel")
        rows.append(
            (
                "nodata",
                f"{marker} in any input channel -> {nodata['output']:g} in every output channel: {pixels}",
            )
        )
        if nodata.get("replaced"):
            rows.append(
                (
                    "replaced",
                    f"{nodata['replaced']} computed values equal to the output nodata {nodata['output']:g} "
                    "were written as the next value, so that they do not read as nodata",
                )
            )
    if out.get("zero_denominators") is not None:
        zeros = out["zero_denominators"]
        fill = "NaN" if nodata is None else f"{nodata['output']:g}"
        rows.append(("divided", f"{counted(zeros, 'value')} with a zero denominator written as {fill}"))
    for note in [*inp.get("notes", []), *out.get("notes", [])]:
        rows.append(("note", note))
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


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A title line and one line per row under column headings, on stderr (rich on a
    terminal, aligned plain text otherwise)."""
    if stderr_is_tty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold cyan")
        for name in columns:
            table.add_column(name)
        for row in rows:
            table.add_row(*row)
        Console(stderr=True, highlight=False).print(table)
        return
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    print(title, file=sys.stderr)
    for row in [columns, *rows]:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip(), file=sys.stderr)
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


def _leave_after_failure(code: int) -> NoReturn:
    # os._exit, not sys.exit: after a failed write, or a signal that came in the middle of a
    # library's call, h5py or GDAL can crash while the interpreter shuts down (their cleanup
    # of a file left in a bad state), which would turn the exit code into a signal. Nothing
    # else skips that cleanup; the outputs are already aborted here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _leave(code: int) -> NoReturn:
    # While the engine's reader thread may still be blocked inside a read of stdin (Ctrl-C
    # on ``cat big.npy | pwconv ...``), it holds that stream's lock, and the interpreter's
    # shutdown would abort on it ("could not acquire lock ... at interpreter shutdown").
    # Then leave without that shutdown; the outputs are already aborted here.
    from pwconv.engines.workers import reader_may_block

    if reader_may_block():
        _leave_after_failure(code)
    sys.exit(code)


def _leave_quietly_on_broken_pipe() -> NoReturn:
    # The reader downstream went away (``| head``). Point stdout at /dev/null so that the
    # interpreter's final flush does not fail again, and stop as other tools do.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    _leave(141)


def _quiet_abandoned_tasks() -> None:
    # zarr (under tifffile) reads chunks as asyncio tasks; after one fails, its siblings'
    # errors are logged with a traceback when they are collected at exit. The failure was
    # already reported in one line.
    import logging

    logging.getLogger("asyncio").disabled = True


def discard_unpublished() -> None:
    from pwconv.io.atomic import discard_unpublished as discard

    discard()


def _what_was_written() -> str:
    """After a signal: which outputs are complete (a batch run may have written some)."""
    from pwconv.io.atomic import published

    done = published()
    if not done:
        return "no output was written"
    last = os.path.basename(done[-1])
    return f"{len(done)} output(s) written whole before it (last {last!r}), nothing else was written"


def _fail(message: str, code: int = 1) -> None:
    error(message)
    _emit_failure_entry(code, message)


def guarded(command: Callable[..., None]) -> Callable[..., None]:
    """Turn every failure of a command into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from pwconv.io.checks import allow_external

        allow_external(kwargs.get("allow_external", False))
        _json_run.update(
            wanted=bool(kwargs.get("json_report")) and kwargs.get("output") != "-",
            path=_json_subject(kwargs),
            emitted=False,
        )
        if errors.quiet_library_logs:  # here, after typer has put its own hook in place
            from pwconv.cli import native

            native.quiet_destructor_errors()
        try:
            try:
                command(*args, **kwargs)
            except Exception:
                # A signal whose exception was raised inside a library's call comes back as that
                # library's error (h5py: "operation not defined for data type class"): the run
                # ends as the signal asked, not as a failed write.
                interrupts.check()
                raise
        except PwconvError as exc:
            discard_unpublished()
            error(exc.for_cli())
            _emit_failure_entry(exc.exit_code, exc.for_cli())
            _quiet_abandoned_tasks()
            if exc.exit_code != 2:
                _leave_after_failure(exc.exit_code)
            _leave(2)
        except KeyboardInterrupt:
            discard_unpublished()
            error(f"interrupted; {_what_was_written()}")
            _emit_failure_entry(130, "interrupted")
            _leave_after_failure(130)
        except SystemExit as exc:
            if isinstance(exc.code, int) and exc.code > 128:  # SIGTERM, turned into an exit by main()
                discard_unpublished()
                error(f"terminated; {_what_was_written()}")
                _emit_failure_entry(exc.code, "terminated")
                _leave_after_failure(exc.code)
            raise
        except BrokenPipeError:
            _leave_quietly_on_broken_pipe()
        except MemoryError:
            _fail("out of memory; lower --max-memory so the input is processed in smaller blocks")
            sys.exit(1)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            _fail(f"I/O failure: {exc.strerror or exc}{where}; check the disk and permissions")
            _leave_after_failure(1)
        except Exception as exc:
            if os.environ.get("PWCONV_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set PWCONV_DEBUG=1 for a traceback)")
            sys.exit(1)

    return wrapper
