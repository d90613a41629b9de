"""Exceptions raised by pwconv.

Every error pwconv raises on purpose is a :class:`PwconvError`. Its message is one line that
says what was expected, what was found and how to fix it; ``exit_code`` is what the command
line returns for it. The subclasses also derive from the matching built-in exception so that
callers who catch ``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations


class PwconvError(Exception):
    """Base class of all pwconv errors (bad input: exit code 2)."""

    exit_code = 2


class UsageError(PwconvError, ValueError):
    """Options that do not fit together, or an unknown option value."""


class ShapeError(PwconvError, ValueError):
    """Input, filters, bias, groups or stride whose shapes do not fit."""


class FormatError(PwconvError, ValueError):
    """A file that is not what its name says, is corrupt, or holds an unsupported dtype."""


class InputFileError(PwconvError, FileNotFoundError):
    """An input file or dataset that is missing or unreadable."""


class OutputExistsError(PwconvError, FileExistsError):
    """The output exists and ``--overwrite`` was not given, or output equals input."""


class WriteError(PwconvError, OSError):
    """An I/O failure while writing the output (disk full, permission): exit code 1."""

    exit_code = 1


class MissingExtraError(PwconvError, ImportError):
    """An optional dependency is not installed."""
