"""The typer application: the root options, and the commands registered on it."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, Optional

import typer

from pwconv import __version__
from pwconv.engines import interrupts

app = typer.Typer(
    name="pwconv",
    help="Apply 1x1 (pointwise) convolutions to the channels of tensors in files: arrays, rasters, "
    "images, NetCDF cubes, with filters from any model or bank file.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"pwconv {__version__} (1x1 convolution tool; not the shadow-utils password tool)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """pwconv: 1x1 convolutions on tensors in files."""


def _quiet_libraries() -> None:
    """Libraries' log records and Python warnings never reach stderr as extra lines: every
    failure is reported once, in pwconv's own line (PWCONV_DEBUG=1 shows them)."""
    import os

    if os.environ.get("PWCONV_DEBUG"):
        return
    import warnings

    from pwconv import errors

    errors.quiet_library_logs = True  # logging is quieted when a library is loaded
    errors.command_line = True
    warnings.simplefilter("ignore")
    from pwconv.cli import native

    native.capture()


# The commands, in the order `pwconv --help` lists them; each is defined in pwconv.cli.<name>.
COMMANDS = ("apply", "batch", "explain", "info", "banks", "export", "fit")


def _register(names: tuple[str, ...]) -> None:
    """Put these commands on the application. Each is built (its module imported, its options
    turned into the parser's) only when registered: a run registers the one it runs."""
    import importlib

    for name in names:
        module = importlib.import_module(f"pwconv.cli.{name}")
        if name == "fit":
            app.add_typer(module.fit_app)
        else:
            app.command(epilog=module.EXAMPLES)(getattr(module, name))


def _commands_for(argv: list[str]) -> tuple[str, ...]:
    """The commands a command line needs: the one it names, or all of them (for the root's
    help, its options, or a name that is not a command, so that the parser's error lists them)."""
    return (argv[1],) if len(argv) > 1 and argv[1] in COMMANDS else COMMANDS


def main() -> None:
    """Parse the command line and run its command; ends in ``SystemExit`` with the exit code
    (for callers in the same process; the ``pwconv`` command is :func:`command_line`)."""
    _quiet_libraries()
    from pwconv.cli import native

    native.return_large_blocks()
    _register(_commands_for(sys.argv))
    interrupts.install()
    if sys.stdout is None:  # started with stdout closed
        from pwconv.cli.output import ClosedStdout

        sys.stdout = ClosedStdout()
    try:
        code = app(prog_name="pwconv", standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - narrowed below to the parser's own errors
        if not _is_parser_error(exc):
            raise
        _usage_error(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def command_line() -> None:
    """The ``pwconv`` command (console script and ``python -m pwconv``): ``main()``, then an
    exit without the interpreter's teardown where nothing is left for it to do."""
    try:
        main()
    except SystemExit as done:
        code = 0 if done.code is None else done.code
        if not isinstance(code, int) or not _finished():
            raise
        os._exit(code)


def _finished() -> bool:
    """Do what an exit does for the outputs and the user (exit handlers, the streams'
    buffers), and say whether the process may now end at once. Freeing every module's objects
    takes 15-20 ms, more than the whole job on a small input; the outputs are committed or
    removed by now. A thread that is not a daemon (a thread pool's) is left to the normal exit,
    which waits for it."""
    import atexit
    import threading

    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if run_handlers is None or others:
        return False
    run_handlers()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a full disk behind > out.txt, a closed stream: the normal exit reports it
        return False
    return True


def _is_parser_error(exc: BaseException) -> bool:
    """The command-line parser's errors (typer keeps its click private: found by their shape)."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__) and hasattr(exc, "exit_code")


def _usage_error(exc: Any) -> None:
    """A usage error as one line: what was wrong, and where the help is; then its exit code."""
    from pwconv.cli.output import error

    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # bare `pwconv` / `pwconv fit`
        sys.stderr.write(ctx.get_help() + "\n")
        sys.exit(2)
    message = " ".join(str(exc.format_message()).split()).rstrip(".")
    where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    error(f"{message}{where}")
    sys.exit(int(exc.exit_code))
