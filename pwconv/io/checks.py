"""What every reader checks of its input before trusting it: the path, the dtype, a zip member."""

from __future__ import annotations

import contextlib
import errno
import lzma
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from pwconv.errors import FormatError, InputFileError, PwconvError
from pwconv.io.names import printable
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


# What zipfile raises for a damaged archive: a directory or header it cannot parse, a member
# whose codec fails (zlib, lzma; bz2's is an OSError without errno), a local header asking for
# a feature zipfile lacks (NotImplementedError), a seek before the file's start (EINVAL).
ZIP_DAMAGE = (
    zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, zlib.error,
    lzma.LZMAError, OSError,
)  # fmt: skip


@contextlib.contextmanager
def zip_damage(message: str) -> Iterator[None]:
    """zipfile's errors for a damaged archive as one FormatError, ``message`` with ``{reason}``
    in it; pwconv's own errors (a network failure at a URL) and a failing disk (an OSError
    with its errno) pass as they are.

    >>> with zip_damage("expected a zip ({reason})"):
    ...     raise zipfile.BadZipFile("File is not a zip file")
    Traceback (most recent call last):
    pwconv.errors.FormatError: expected a zip (File is not a zip file)
    """
    try:
        yield
    except PwconvError:
        raise
    except ZIP_DAMAGE as exc:
        if isinstance(exc, OSError) and exc.errno not in (None, errno.EINVAL):
            raise
        raise FormatError(message.format(reason=first_line(exc))) from None


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


_ZIP_METHODS = (0, 8, 12, 14)  # stored, deflate, bzip2, lzma: what zipfile decodes


def zip_member_guard(path: str, info: Any, limit_ratio: int = 100) -> None:
    """Refuse a zip member that cannot be read as it is: encrypted, compressed with a method
    zipfile does not decode, or inflating far beyond its stored size (a zip bomb)."""
    name = printable(str(info.filename))
    if info.flag_bits & 0x1:
        raise FormatError(
            f"expected an unencrypted zip member in {path!r}, found {name!r} encrypted; "
            "save the arrays again without a password"
        )
    if info.compress_type not in _ZIP_METHODS:
        raise FormatError(
            f"expected a zip member stored or compressed with deflate, bzip2 or lzma in {path!r}, "
            f"found {name!r} with method {info.compress_type}; save the arrays again with numpy"
        )
    if (
        info.compress_size
        and info.file_size > (16 << 20)
        and info.file_size > limit_ratio * info.compress_size
    ):
        raise FormatError(
            f"expected an ordinary zip member in {path!r}, found {name!r} declaring "
            f"{info.file_size} bytes from {info.compress_size} (over {limit_ratio}x): refused as a zip bomb"
        )


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
