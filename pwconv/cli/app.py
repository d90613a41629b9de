"""The typer application: the root options, and the commands registered on it."""

from __future__ import annotations

import signal
from typing import Annotated, Optional

import typer

from pwconv import __version__

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


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _quiet_libraries() -> None:
    """Libraries' log records and Python warnings never reach stderr as extra lines: every
    failure is reported once, in pwconv's own line (PWCONV_DEBUG=1 shows them)."""
    import os

    if os.environ.get("PWCONV_DEBUG"):
        return
    import warnings

    from pwconv import errors

    errors.quiet_library_logs = True  # logging is quieted when a library is loaded
    warnings.simplefilter("ignore")


def main() -> None:
    """Console-script entry point."""
    from pwconv.cli import apply, batch, explain, fit, info

    _quiet_libraries()
    for module, command in (
        (apply, apply.apply),
        (batch, batch.batch),
        (explain, explain.explain),
        (info, info.info),
    ):
        app.command(epilog=module.EXAMPLES)(command)
    app.add_typer(fit.fit_app)
    signal.signal(signal.SIGTERM, _on_sigterm)
    app(prog_name="pwconv")
