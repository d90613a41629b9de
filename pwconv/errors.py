"""Exceptions raised by pwconv.

Every error pwconv raises on purpose is a :class:`PwconvError`. Its message is one line that
says what was expected, what was found and how to fix it; ``exit_code`` is what the command
line returns for it. The subclasses also derive from the matching built-in exception so that
callers who catch ``ValueError`` or ``OSError`` keep working.

A message names an option of the call as ``[[name]]``, ``[[name=value]]`` (``value`` may
list choices as ``a|b|c``) or ``[[name!]]`` for a switch that is turned on. ``str(error)`` words it as a Python keyword
(``layout='channels-first'``) and :meth:`PwconvError.for_cli` as a flag
(``--layout channels-first``), so that the library never speaks of flags and the command
line never speaks of keywords.

>>> e = UsageError("expected one filter, found 2; use [[layout=channels-first]]")
>>> str(e), e.for_cli()
("expected one filter, found 2; use layout='channels-first'", 'expected one filter, found 2; use --layout channels-first')
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import Any

_OPTION = re.compile(r"\[\[([a-z_]+)(!|=[^\]]*)?\]\]")


def _choices(value: str, quote: bool) -> str:
    items = [repr(v) if quote else v for v in value.split("|")]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _as_keyword(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value is None:
        return name
    return f"{name}=True" if value == "!" else f"{name}={_choices(value[1:], quote=True)}"


# Keywords whose command-line flag has another name.
_FLAGS = {"k": "-k"}


def _as_flag(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    if value is None or value == "!":
        return flag
    return f"{flag} {_choices(value[1:], quote=False)}"


class PwconvError(Exception):
    """Base class of all pwconv errors (bad input: exit code 2)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.template = message

    def __str__(self) -> str:
        return _OPTION.sub(_as_keyword, self.template)

    def for_cli(self) -> str:
        """The message with options worded as command-line flags."""
        return _OPTION.sub(_as_flag, self.template)


class UsageError(PwconvError, ValueError):
    """Options that do not fit together, or an unknown option value."""


class ShapeError(PwconvError, ValueError):
    """Input, filters, bias, groups or stride whose shapes do not fit."""


class FormatError(PwconvError, ValueError):
    """A file that is not what its name says, is corrupt, or holds an unsupported dtype."""


class InputFileError(PwconvError, FileNotFoundError):
    """An input file or dataset that is missing or unreadable."""


class OutputExistsError(PwconvError, FileExistsError):
    """The output exists and overwriting was not asked for, or output equals input."""


class WriteError(PwconvError, OSError):
    """An I/O failure while writing the output (disk full, permission): exit code 1."""

    exit_code = 1


class NetworkError(PwconvError, ConnectionError):
    """Remote data the network failed to deliver or take (a timeout, a reset connection, a
    server error): exit code 1."""

    exit_code = 1


class MissingExtraError(PwconvError, ImportError):
    """An optional dependency is not installed."""


#: Set by the command line: the log records of libraries loaded for a file go nowhere (every
#: failure is reported once, in pwconv's own line). ``logging`` is imported only then, so
#: that a run that loads no such library does not pay for it.
quiet_library_logs = False
#: Set by the command line: the process runs one command, so optional integrations of the
#: libraries it loads (dask.array's scipy, pandas and xarray support) are left unimported.
command_line = False


def _silence_library_logs() -> None:
    import logging

    root = logging.getLogger()
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())  # instead of logging's last resort: stderr


def require_extra(module: str, extra: str, feature: str, *, load: bool = True) -> Any:
    """Import an optional dependency, or raise an error naming the extra that installs it.

    With ``load=False`` only check that it is installed (without the cost of importing it),
    for files pwconv reads and writes itself but that belong to that extra."""
    try:
        if not load:
            if importlib.util.find_spec(module) is None:
                raise ImportError(module)
            return None
        loaded = importlib.import_module(module)
        if quiet_library_logs:
            _silence_library_logs()
        return loaded
    except (ImportError, ValueError):
        raise MissingExtraError(
            f"expected the optional package {module!r} for {feature}, found it not installed; "
            f"install it with: pip install 'pwconv[{extra}]' (from a clone: pip install -e '.[{extra}]')"
        ) from None
