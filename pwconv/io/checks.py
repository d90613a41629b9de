"""What every reader checks of its input before trusting it: the path, the dtype, a zip member."""

from __future__ import annotations

import os
import stat
from typing import Any

import numpy as np

from pwconv.errors import FormatError, InputFileError
from pwconv.io.stores import is_url


def numeric_dtype(dtype: Any, where: str) -> np.dtype:
    """``dtype`` as a numpy dtype if it holds numbers, else a one-line error naming ``where``."""
    try:
        found = np.dtype(dtype)
    except TypeError:
        raise FormatError(f"expected a numeric array in {where}, found an unknown dtype {dtype!r}") from None
    if found.hasobject:
        raise FormatError(
            f"expected a numeric array in {where}, found an object array; pwconv never unpickles "
            "data: save a numeric array instead"
        )
    if found.kind not in "biufc":
        raise FormatError(f"expected a numeric array in {where}, found dtype {found}; convert it to numbers")
    return found


def first_line(exc: BaseException, limit: int = 160) -> str:
    """A library's exception as one short line for a message (its type when it says nothing)."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]


def check_readable(path: str, what: str = "input") -> None:
    """Raise a one-line error for a missing, unreadable or directory input path (a URL's
    reader finds out by asking for it)."""
    if is_url(path):
        return
    if not os.path.exists(path):
        raise InputFileError(f"expected an existing {what} file, found no file at {path!r}; check the path")
    if os.path.isdir(path) and not path.rstrip("/").endswith(".zarr"):
        raise InputFileError(f"expected a {what} file, found a directory at {path!r}")
    check_regular(path, what)
    if not os.access(path, os.R_OK):
        raise InputFileError(f"expected a readable {what} file, found {path!r} without read permission")


def check_regular(path: str, what: str = "input") -> None:
    """Refuse a FIFO, socket or device named like a file: reading one may block for ever
    (stdin, ``-``, is the place for a stream)."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise InputFileError(
            f"expected a regular {what} file, found {kind} at {path!r}; save the data to a file, or pipe it to '-'"
        )


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def label_text(value: object) -> str:
    """One label as text: bytes decoded, floats without trailing zeros.

    >>> label_text(b"B2"), label_text(np.float32(450.0)), label_text(3)
    ('B2', '450', '3')
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


# Whether inputs may point at other files (HDF5 external or virtual storage, external links,
# links out of a Zarr store): refused unless the user passes --allow-external.
_external = {"allowed": False}


def allow_external(allowed: bool) -> None:
    """Let inputs read data from other files they name (``--allow-external``)."""
    _external["allowed"] = bool(allowed)


def refuse_external(path: str, found: str) -> None:
    """Refuse an input that points at another file, unless the user allowed it."""
    if not _external["allowed"]:
        raise FormatError(
            f"expected {path!r} to hold its own data, found {found}; pwconv reads no other file an "
            "input points at: pass --allow-external if you trust the file"
        )


def lies_outside(root: str, path: str) -> bool:
    """Whether ``path`` (links followed) lies outside the folder ``root``."""
    top = os.path.realpath(root)
    return os.path.commonpath([top, os.path.realpath(path)]) != top


def link_leaving(root: str) -> str | None:
    """The first symbolic link under the folder ``root`` whose target lies outside it."""
    top = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            entry = os.path.join(folder, name)
            if os.path.islink(entry) and lies_outside(top, entry):
                return f"{os.path.relpath(entry, root)} -> {os.path.realpath(entry)}"
    return None
