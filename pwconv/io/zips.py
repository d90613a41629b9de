"""What the readers of zip archives (npz, Keras, torch) check of an archive before trusting it;
apart from ``checks`` so that a run on other files never imports zipfile."""

from __future__ import annotations

import contextlib
import errno
import lzma
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

from pwconv.errors import FormatError, PwconvError
from pwconv.io.checks import first_line
from pwconv.io.names import printable

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
