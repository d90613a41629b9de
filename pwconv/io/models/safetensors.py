"""``.safetensors`` files: a JSON header, then raw little-endian tensors. No code can run.

Only the header is parsed to list or open a tensor; reading maps just the selected tensor's
bytes. Every header field is checked against the file (offsets inside the data, sizes that
match shape and dtype, no overlaps) and the ``safetensors`` library validates it too (for a
local file: the library opens only files). At a URL the header and the one tensor are
fetched by byte ranges, not the file. bf16 tensors are widened to float32 exactly (bf16 is
the top half of a float32).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError
from pwconv.io.arrays import ArraySource, named
from pwconv.io.atomic import write_atomically
from pwconv.io.checks import check_readable, first_line
from pwconv.io.interface import Backend
from pwconv.io.names import json_labels, pick_name
from pwconv.io.stores import RemoteObject, is_url

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",  # widened to float32 when read
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def _fail(path: str, found: str) -> FormatError:
    return FormatError(
        f"expected a safetensors file at {path!r}, found {found}; write it again with safetensors.save_file"
    )


def read_header(path: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """(offset of the data, {name: {dtype, shape, data_offsets}}) after checking every entry."""
    offset, header, _ = read_header_metadata(path)
    return offset, header


def read_header_metadata(path: str) -> tuple[int, dict[str, dict[str, Any]], dict[str, str]]:
    """:func:`read_header` and the header's ``__metadata__`` (text only, as the format says)."""
    check_readable(path)
    size, read = _reader(path)
    head = read(0, min(8, size))
    if len(head) < 8:
        raise _fail(path, f"{len(head)} bytes, too short for a header")
    (length,) = struct.unpack("<Q", head)
    if length > min(_MAX_HEADER_BYTES, size - 8):
        raise _fail(path, f"a header length of {length} bytes in a file of {size}")
    raw = read(8, 8 + length)
    try:
        header = json.loads(raw.decode("utf8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail(path, "a header that is not JSON") from None
    if not isinstance(header, dict):
        raise _fail(path, f"a JSON {type(header).__name__} as header instead of an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "a __metadata__ entry that is not an object of strings")
    data_bytes = size - 8 - length
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"entry {name!r} without exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise _fail(path, f"tensor {name!r} of dtype {dtype!r} (pwconv reads {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise _fail(path, f"tensor {name!r} with shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(n) is int for n in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise _fail(path, f"tensor {name!r} with offsets {offsets!r} outside the {data_bytes} data bytes")
        if offsets[1] - offsets[0] != math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize:
            raise _fail(
                path,
                f"tensor {name!r} whose {offsets[1] - offsets[0]} bytes do not hold shape {shape} {dtype}",
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise _fail(path, f"tensors {first!r} and {second!r} that overlap")
    return 8 + length, header, metadata


def _reader(path: str) -> tuple[int, Callable[[int, int], bytes]]:
    """The size of the file or object at ``path`` and a function reading its bytes start..end."""
    if is_url(path):
        remote = RemoteObject(path)
        return remote.size, lambda start, end: bytes(remote.read_range(start, end))

    def read(start: int, end: int) -> bytes:
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read(end - start)

    return os.path.getsize(path), read


def _library_check(path: str) -> None:
    if is_url(path):
        return  # the library opens files only; pwconv's own checks of the header have run
    import safetensors  # a core dependency: small, and it runs no code from the file

    try:
        with safetensors.safe_open(path, framework="numpy"):
            pass
    except Exception as exc:  # noqa: BLE001 - the library raises its own error types
        raise _fail(path, f"a header the safetensors library refuses ({first_line(exc)})") from None


def _load(path: str, offset: int, entry: dict[str, Any]) -> np.ndarray:
    begin, _ = entry["data_offsets"]
    dtype = np.dtype(_DTYPES[entry["dtype"]])
    shape = tuple(entry["shape"])
    if not math.prod(shape):
        data = np.empty(shape, dtype)
    elif is_url(path):
        data = np.empty(shape, dtype)
        RemoteObject(path).read_into([offset + begin], data.nbytes, data.reshape(-1).view(np.uint8).data)
    else:
        data = np.array(np.memmap(path, dtype=dtype, mode="r", offset=offset + begin, shape=shape))
    if entry["dtype"] == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data


class SafetensorsFormat(Backend):
    """``.safetensors`` files: a checked JSON header, then one tensor's bytes."""

    def list_arrays(self, path: str) -> list[str]:
        return sorted(read_header(path)[1])

    def array_name(self, name: str) -> str:
        return name

    def open_source(self, spec: Spec) -> ArraySource:
        offset, header = read_header(spec.path)
        _library_check(spec.path)
        name = pick_name(spec.path, spec.member, sorted(header))
        entry = header[name]
        dtype = np.dtype(np.float32) if entry["dtype"] == "BF16" else np.dtype(_DTYPES[entry["dtype"]])
        storage = {
            "format": "safetensors",
            "tensor": name,
            "stored_dtype": entry["dtype"],
            "data_bytes": entry["data_offsets"][1] - entry["data_offsets"][0],
        }
        shape = tuple(entry["shape"])
        how = "byte ranges" if is_url(spec.path) else "memory map"
        return ArraySource(shape, dtype, lambda: _load(spec.path, offset, entry), storage, named(name, how))

    def read_labels(self, path: str, name: str) -> tuple[str, ...] | None:
        """A bank's names, kept in the header's text metadata as JSON lists of strings."""
        return json_labels(read_header_metadata(path)[2].get(name), f"{path}:{name}")

    def write_arrays(self, path: str, arrays: dict[str, np.ndarray], overwrite: bool) -> list[str]:
        """Named arrays as a ``.safetensors`` file, written atomically. Its tensors are numbers
        only: text arrays (a bank's names) go to the header's metadata as JSON lists."""
        from safetensors.numpy import save_file

        contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items() if a.dtype.kind != "U"}
        text = {
            name: json.dumps([str(v) for v in a.reshape(-1)])
            for name, a in arrays.items()
            if a.dtype.kind == "U"
        }
        write_atomically(path, overwrite, lambda temp: save_file(contiguous, temp, metadata=text or None))
        return [path]
