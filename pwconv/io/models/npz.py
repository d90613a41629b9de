"""``.npz`` archives (numpy.savez): one member read at a time, never unpickled.

Each member's npy header is read with pwconv's strict parser, so an object array (which
would need unpickling) is refused before any of its data is read. A filter-bank file is an
``.npz`` with ``weights`` and, optionally, ``bias``.
"""

from __future__ import annotations

import contextlib
import math
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, PwconvError
from pwconv.io.arrays import ArraySource, named
from pwconv.io.atomic import write_atomically
from pwconv.io.checks import check_readable
from pwconv.io.formats.npy import read_exact, read_header
from pwconv.io.interface import Backend
from pwconv.io.names import pick_name
from pwconv.io.stores import open_binary
from pwconv.io.zips import ZIP_DAMAGE, zip_damage, zip_member_guard

if TYPE_CHECKING:
    from pwconv.io.spec import Spec


@contextlib.contextmanager
def _open_zip(path: str) -> Iterator[zipfile.ZipFile]:
    """The archive, local or at a URL (then its directory and members are read by range)."""
    check_readable(path)
    with open_binary(path) as handle:
        with zip_damage(
            f"expected an .npz archive at {path!r}, found one that is not a readable zip ({{reason}}); "
            "save it with numpy.savez"
        ):
            archive = zipfile.ZipFile(handle)
        with archive:
            yield archive


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's arrays by name; every one checked readable as it is (not encrypted, a
    method zipfile decodes, no zip bomb)."""
    members = {i.filename[: -len(".npy")]: i for i in archive.infolist() if i.filename.endswith(".npy")}
    for info in members.values():
        zip_member_guard(str(archive.filename), info)
    return members


def _is_text(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bool:
    """Whether a member holds text (a bank's names), from its header alone."""
    try:
        with archive.open(info) as stream:
            return read_header(stream, where, text=True)[1].kind == "U"
    except PwconvError:
        raise
    except ZIP_DAMAGE:
        return False  # damaged: listed, and refused with its own error when read


def _load(path: str, info: zipfile.ZipInfo, where: str, *, text: bool = False) -> np.ndarray:
    with zip_damage(f"cannot read {where}: the archive is damaged ({{reason}}); save it again"):
        with open_binary(path) as handle, zipfile.ZipFile(handle) as archive, archive.open(info) as stream:
            shape, dtype, fortran = read_header(stream, where, text=text)
            data = np.empty(math.prod(shape) * dtype.itemsize, np.uint8)
            read_exact(stream, data.data, where)
    array = data.view(dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


class NpzFormat(Backend):
    """``.npz`` archives: members read one at a time through the strict npy header parser."""

    def list_arrays(self, path: str) -> list[str]:
        """The numeric members (text members, a bank's names, are labels: :meth:`read_labels`)."""
        with _open_zip(path) as archive:
            members = _members(archive)
            return sorted(n for n, info in members.items() if not _is_text(archive, info, f"{path}:{n}"))

    def read_labels(self, path: str, name: str) -> tuple[str, ...] | None:
        with _open_zip(path) as archive:
            info = _members(archive).get(name)
            if info is None or not _is_text(archive, info, f"{path}:{name}"):
                return None
            zip_member_guard(path, info)
        return tuple(str(v) for v in _load(path, info, f"{path}:{name}", text=True).reshape(-1))

    def array_name(self, name: str) -> str:
        return name[: -len(".npy")] if name.endswith(".npy") else name

    def open_source(self, spec: Spec) -> ArraySource:
        with _open_zip(spec.path) as archive:
            members = _members(archive)
            name = pick_name(spec.path, spec.member, sorted(members), "array")
            info = members[name]
            zip_member_guard(spec.path, info)
            where = f"{spec.path}:{name}"
            with zip_damage(f"cannot read {where}: the archive is damaged ({{reason}}); save it again"):
                with archive.open(info) as stream:
                    shape, dtype, fortran = read_header(stream, where)
                    header_bytes = stream.tell()
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header_bytes + nbytes:
            raise FormatError(
                f"expected {nbytes} data bytes in {where} for shape {shape} {dtype}, found "
                f"{info.file_size - header_bytes}; the member is damaged, save the archive again"
            )
        storage: dict[str, Any] = {
            "format": "npz",
            "member": name,
            "compressed": info.compress_type != zipfile.ZIP_STORED,
            "data_bytes": nbytes,
        }
        return ArraySource(shape, dtype, lambda: _load(spec.path, info, where), storage, named(name, "zip"))

    def write_arrays(self, path: str, arrays: dict[str, np.ndarray], overwrite: bool) -> list[str]:
        """A filter-bank (or any named arrays) ``.npz``, written atomically."""

        def write(temp: str) -> None:
            with open(temp, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy types only the keyword flag

        write_atomically(path, overwrite, write)
        return [path]
