"""The typer application, shared options, and the error handling every command shares."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, Optional

import typer

from pwconv import __version__

app = typer.Typer(
    name="pwconv",
    help="Apply 1x1 (pointwise) convolutions to tensors in .npy, .h5 and .zarr files.",
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


# Options shared by apply, batch and explain, defined once.
LayoutOpt = Annotated[
    str,
    typer.Option(
        "--layout",
        help="Where the channels are: channels-last, channels-first, a letter string (NHWC, CHW, ...) or an axis number.",
    ),
]
WeightsLayoutOpt = Annotated[
    str, typer.Option("--weights-layout", help="How to read the filters: auto, kc, ck, oihw, hwio.")
]
BiasOpt = Annotated[Optional[str], typer.Option("--bias", help="Bias: a file or a literal such as '0.5,1'.")]
GroupsOpt = Annotated[int, typer.Option("--groups", help="Channel groups (as torch's groups).")]
StrideOpt = Annotated[int, typer.Option("--stride", help="Subsample every spatial axis by this step.")]
DtypeOpt = Annotated[
    Optional[str], typer.Option("--dtype", help="Output dtype (default: numpy's result type).")
]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="Dataset inside an .h5 input.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on stderr but errors.")]


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _finish(code: int) -> NoReturn:
    # Leave at once: a reader thread may still wait on a pipe that never closes.
    if code not in (130, 141):  # a closed or abandoned stdout would fail to flush
        sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def guarded(command: Callable[..., None]) -> Callable[..., None]:
    """Turn every failure of a command into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from pwconv.cli.output import error
        from pwconv.errors import PwconvError

        try:
            command(*args, **kwargs)
        except PwconvError as exc:
            error(str(exc))
            if exc.exit_code != 2:
                # A failed HDF5 write can leave the library unable to shut down cleanly.
                _finish(exc.exit_code)
            sys.exit(2)
        except KeyboardInterrupt:
            error("interrupted; no output was written")
            _finish(130)
        except BrokenPipeError:
            # The reader downstream went away (``| head``): stop quietly, as other tools do.
            _finish(141)
        except MemoryError:
            error("out of memory; lower --max-memory so the input is processed in smaller blocks")
            sys.exit(1)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            error(f"I/O failure: {exc.strerror or exc}{where}; check the disk and permissions")
            _finish(1)
        except Exception as exc:
            if os.environ.get("PWCONV_DEBUG"):
                raise
            error(f"internal error: {type(exc).__name__}: {exc} (set PWCONV_DEBUG=1 for a traceback)")
            sys.exit(1)

    return wrapper


def main() -> None:
    """Console-script entry point."""
    from pwconv.cli import apply, batch, explain, info  # noqa: F401 - registers the commands

    signal.signal(signal.SIGTERM, _on_sigterm)
    app(prog_name="pwconv")
