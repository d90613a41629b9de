"""PyTorch ``.pt``/``.pth``/``.bin`` state dicts, read without torch.

A file in torch's zip format (every ``torch.save`` since torch 1.6) is a pickle that names
its tensors plus one raw member per storage. The pickle is read by a restricted unpickler
that knows only what a state dict is made of: ordered dicts, lists, tuples, numbers,
strings, and tensors rebuilt from a storage. Anything else the pickle asks for (a module, a
function, any other class) is refused before it is built, so no code from the file runs,
and no torch is needed. A tensor is a strided view of its storage member, memory-mapped:
reading one tensor touches only that tensor's bytes. At a URL the zip's directory, the pickle
and the one tensor's storage are read by byte ranges, not the file. Nested dicts are
flattened to dotted names (``model.head.weight``).

torch's legacy format (``_use_new_zipfile_serialization=False``) is loaded with torch
itself, with ``weights_only=True``, when torch is installed.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, MissingExtraError
from pwconv.io.arrays import ArraySource, named
from pwconv.io.checks import check_readable, first_line
from pwconv.io.interface import Backend
from pwconv.io.names import pick_name, printable
from pwconv.io.stores import RangedFile, RemoteObject, is_url, local_copy, open_binary
from pwconv.io.zips import zip_damage, zip_member_guard

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

# torch's element types by the names its pickles use (storage classes, and dtypes for
# storages saved untyped), as numpy codes; "bfloat16" has no numpy type: its elements are
# read as 16-bit words and widened to float32, exactly.
_ELEMENTS = {
    "float32": "f4", "float64": "f8", "float16": "f2", "bfloat16": "bfloat16",
    "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "uint16": "u2", "uint32": "u4", "uint64": "u8",
}  # fmt: skip
_STORAGE_ELEMENTS = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}  # fmt: skip
# dtypes a state dict may hold that numpy has no type for: named in the error for that tensor
_OTHER_DTYPES = {
    "complex32", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "qint8", "quint8", "qint32", "quint4x2",
}  # fmt: skip
_PICKLE_LIMIT = 256 << 20  # a state dict's pickle names tensors; its data lies elsewhere


@dataclass(frozen=True)
class _TorchName:
    """A storage class or a dtype the pickle names: only its name is kept."""

    name: str


@dataclass(frozen=True)
class _Storage:
    key: str
    element: str  # a torch element type's name; "" for bytes (an untyped storage)
    numel: int


@dataclass(frozen=True)
class _Tensor:
    """A tensor as the pickle describes it: a strided window of one storage."""

    storage: _Storage
    element: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def word(self, where: str) -> np.dtype:
        """The dtype of one stored element; a type numpy cannot hold is refused here, when the
        tensor is used, so that the file's other tensors stay readable."""
        code = _ELEMENTS.get(self.element)
        if code is None:
            raise FormatError(
                f"expected a real numeric tensor at {where}, found torch dtype {printable(self.element)}; "
                "convert it with .float() before saving"
            )
        return np.dtype("u2" if code == "bfloat16" else code)

    def dtype(self, where: str) -> np.dtype:
        return np.dtype("f4") if self.element == "bfloat16" else self.word(where)


class _Refused(Exception):
    """The pickle asked for something a state dict does not hold."""


def _rebuild(storage: Any, offset: Any, shape: Any, stride: Any, element: Any) -> _Tensor:
    if not isinstance(storage, _Storage) or not isinstance(element, str):
        raise _Refused("a tensor without a storage")
    try:
        dims = tuple(int(n) for n in shape)
        steps = tuple(int(n) for n in stride)
        start = int(offset)
    except (TypeError, ValueError):
        raise _Refused("a tensor with a malformed shape") from None
    if len(dims) != len(steps) or len(dims) > 32 or min((*dims, *steps, start, 0)) < 0:
        raise _Refused(f"a tensor of shape {dims} and strides {steps}")
    code = _ELEMENTS.get(element)
    size = 1 if code is None else np.dtype("u2" if code == "bfloat16" else code).itemsize
    numel = storage.numel if storage.element else storage.numel // size
    last = start + sum((n - 1) * s for n, s in zip(dims, steps)) if all(dims) else start - 1
    if last >= numel:
        raise _Refused(f"a tensor reaching element {last} of a storage of {numel}")
    return _Tensor(storage, element, start, dims, steps)


def _rebuild_tensor_v2(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> _Tensor:
    return _rebuild(storage, offset, shape, stride, getattr(storage, "element", None))


def _rebuild_tensor_v3(
    storage: Any, offset: Any, shape: Any, stride: Any, grad: Any, hooks: Any, dtype: Any, *_: Any
) -> _Tensor:
    # torch's element types with no storage class of their own (uint16, ...) are saved as
    # bytes, with the dtype beside them.
    if not isinstance(dtype, _TorchName):
        raise _Refused("a tensor without a dtype")
    return _rebuild(storage, offset, shape, stride, dtype.name)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data  # an nn.Parameter saved as such: its tensor is all that counts here


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return _TorchName("")
        if module == "torch" and (name.endswith("Storage") or name in _ELEMENTS or name in _OTHER_DTYPES):
            # a storage class or a dtype: kept as a name, never built; one numpy cannot hold
            # is refused when its tensor is used
            return _TorchName(_STORAGE_ELEMENTS.get(name, name))
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"a stored object {printable(repr(pid)[:60])}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _TorchName) or not isinstance(numel, int) or numel < 0:
            raise _Refused("a storage of an unknown kind")
        return _Storage(str(key), kind.name, numel)


def _refused_message(path: str, what: str) -> str:
    return (
        f"expected a PyTorch file of tensors at {path!r}, found one that asks for {what} (not a "
        "tensor or plain container, and unpickling it could run code), so it was refused; save "
        "model.state_dict() with torch.save"
    )


def _data_offset(handle: Any, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the file: after its local header."""
    header = b""
    if info.header_offset >= 0:
        handle.seek(info.header_offset)
        header = handle.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise FormatError(f"expected a zip local header for {printable(info.filename)!r}, found none")
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_length + extra_length


@dataclass(frozen=True)
class _Archive:
    path: str
    tensors: dict[str, _Tensor]
    members: dict[str, zipfile.ZipInfo]  # storage key -> its member (stored, not compressed)
    big_endian: bool
    remote: RemoteObject | None  # the object at a URL, opened once for every read of it

    def read(self, tensor: _Tensor, where: str) -> np.ndarray:
        info = self.members.get(tensor.storage.key)
        if info is None:
            raise FormatError(
                f"expected the storage {printable(tensor.storage.key)!r} in {self.path!r}, found no such "
                "member; the file is damaged, save it again"
            )
        word = tensor.word(where).newbyteorder(">" if self.big_endian else "<")
        count = tensor.storage.numel if tensor.storage.element else tensor.storage.numel // word.itemsize
        if count * word.itemsize > info.file_size:
            raise FormatError(
                f"expected {count * word.itemsize} bytes for a storage in {self.path!r}, found "
                f"{info.file_size}; the file is damaged, save it again"
            )
        if count == 0 or math.prod(tensor.shape) == 0:
            return np.zeros(tensor.shape, tensor.dtype(where))
        flat = self._storage(info, word, count)
        window = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :],
            tensor.shape,
            tuple(s * word.itemsize for s in tensor.stride),
            writeable=False,
        )
        if tensor.element == "bfloat16":  # the top half of a float32: exact
            return (window.astype(np.uint32) << 16).view(np.float32)
        return np.array(window, dtype=word.newbyteorder("="))

    def _storage(self, info: zipfile.ZipInfo, word: np.dtype, count: int) -> np.ndarray:
        """A storage's first ``count`` elements: mapped from a local file, fetched by range
        from a URL (the member's local header first, for where its bytes start)."""
        remote = self.remote
        with RangedFile(remote) if remote else open(self.path, "rb") as handle:
            start = _data_offset(handle, info)
        short = FormatError(
            f"expected a storage of {count} elements in {self.path!r}, found the file shorter; "
            "it is damaged or incomplete"
        )
        if remote is None:
            try:
                return np.memmap(self.path, word, "r", offset=start, shape=(count,))
            except (ValueError, OSError):
                raise short from None
        if start + count * word.itemsize > remote.size:
            raise short
        flat = np.empty(count, word)
        remote.read_into([start], flat.nbytes, flat.view(np.uint8).data)
        return flat


def _flatten(loaded: Any) -> dict[str, Any]:
    tensors: dict[str, Any] = {}

    def walk(prefix: str, value: Any, depth: int) -> None:
        if depth > 64:
            raise FormatError("expected a state dict nested a few levels deep, found over 64 levels")
        if isinstance(value, _Tensor) or type(value).__name__ == "Tensor":
            tensors[prefix or "tensor"] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item, depth + 1)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}" if prefix else str(i), item, depth + 1)

    walk("", loaded, 0)
    return tensors


def _read_archive(path: str, handle: Any) -> _Archive:
    damaged = f"expected a PyTorch file at {path!r}, found a damaged zip archive ({{reason}}); check that it is complete"
    with zip_damage(damaged):
        with zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
            pickles = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
            if len(pickles) != 1:
                raise FormatError(
                    f"expected one data.pkl in the PyTorch file {path!r}, found {len(pickles)}; "
                    "save the state dict with torch.save"
                )
            prefix = pickles[0].filename.split("/")[0] + "/"
            zip_member_guard(path, pickles[0])
            if pickles[0].file_size > _PICKLE_LIMIT:
                raise FormatError(
                    f"expected a state dict's pickle of under {_PICKLE_LIMIT >> 20} MiB in {path!r}, "
                    f"found {pickles[0].file_size} bytes"
                )
            members: dict[str, zipfile.ZipInfo] = {}
            for info in infos:
                if info.filename.startswith(prefix + "data/") and not info.is_dir():
                    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                        raise FormatError(
                            f"expected the tensors in {path!r} stored uncompressed, as torch.save "
                            f"writes them, found {printable(info.filename)!r} compressed; save it again"
                        )
                    members[info.filename[len(prefix) + 5 :]] = info
            order = b"little"
            if prefix + "byteorder" in archive.namelist():
                order = archive.read(prefix + "byteorder").strip()
            raw = archive.read(pickles[0])
    try:
        loaded = _StateDictUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise FormatError(_refused_message(path, str(exc))) from None
    except RecursionError:
        raise FormatError(f"expected a PyTorch file at {path!r}, found a pickle nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many types
        raise FormatError(
            f"expected a PyTorch file at {path!r}, found a pickle that does not load "
            f"({type(exc).__name__}: {first_line(exc)}); check that it is complete"
        ) from None
    remote = handle.remote if isinstance(handle, RangedFile) else None
    return _Archive(path, _flatten(loaded), members, order == b"big", remote)


def _legacy_tensors(path: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise MissingExtraError(
            f"expected torch for {path!r}, a file in torch's legacy format (before torch 1.6), found it "
            "not installed; save it again with torch.save, or install torch's CPU build: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu"
        ) from None
    try:
        loaded = torch.load(local_copy(path) if is_url(path) else path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise FormatError(_refused_message(path, first_line(exc, 80))) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise FormatError(
            f"expected a PyTorch file at {path!r}, found one torch cannot read ({first_line(exc)}); "
            "check that it is complete"
        ) from None
    return _flatten(loaded)


def _load_tensors(path: str) -> _Archive | dict[str, Any]:
    """Every tensor in the file by dotted name (data mapped, not read)."""
    check_readable(path)
    if is_url(path):
        return _load_cached(path, 0, 0)  # an object is taken as unchanged for the process
    status = os.stat(path)
    return _load_cached(os.path.abspath(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int, size: int) -> _Archive | dict[str, Any]:
    # Listing, pairing a bias and reading all load the same file: once is enough. The file is
    # opened once (at a URL, one object for every request).
    with open_binary(path) as handle:
        try:
            zipped = zipfile.is_zipfile(handle)
        except zipfile.BadZipFile:  # a directory damaged past is_zipfile's own checks
            zipped = True  # (_read_archive says what is wrong)
        magic = b""
        if not zipped:
            handle.seek(0)
            magic = bytes(handle.read(4))
        if zipped or magic == b"PK\x03\x04":
            return _read_archive(path, handle)
    if magic[:2] == b"\x80\x02":  # a pickle (protocol 2): torch's format before 1.6
        return _legacy_tensors(path)
    raise FormatError(
        f"expected a PyTorch file (a zip archive written by torch.save) at {path!r}, found neither "
        "torch's zip format nor its legacy one; check the file"
    )


def _tensors(loaded: _Archive | dict[str, Any]) -> dict[str, Any]:
    return loaded.tensors if isinstance(loaded, _Archive) else loaded


def _legacy_source(path: str, name: str, tensor: Any) -> ArraySource:
    import torch

    if tensor.is_quantized or tensor.layout != torch.strided:
        raise FormatError(f"expected a dense tensor, found a {tensor.layout} one; save it with .to_dense()")
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # exact: bf16 is the top half of a float32
    try:
        np_dtype = np.dtype(torch.empty(0, dtype=tensor.dtype).numpy().dtype)
    except (TypeError, RuntimeError):
        raise FormatError(f"expected a numeric tensor at {path}:{name}, found dtype {tensor.dtype}") from None
    storage = {"format": "pytorch (legacy)", "tensor": name, "stored_dtype": str(tensor.dtype)[6:]}
    return ArraySource(
        tuple(tensor.shape),
        np_dtype,
        lambda: tensor.contiguous().numpy().copy(),
        storage,
        named(name, "torch"),
    )


class TorchFormat(Backend):
    """PyTorch state dicts, read by a restricted unpickler (no code runs, no torch needed)."""

    def list_arrays(self, path: str) -> list[str]:
        return list(_tensors(_load_tensors(path)))

    def array_name(self, name: str) -> str:
        return name

    def open_source(self, spec: Spec) -> ArraySource:
        loaded = _load_tensors(spec.path)
        tensors = _tensors(loaded)
        name = pick_name(spec.path, spec.member, list(tensors))
        tensor = tensors[name]
        if not isinstance(loaded, _Archive):
            return _legacy_source(spec.path, name, tensor)
        where = f"{spec.path}:{name}"
        storage = {"format": "pytorch", "tensor": name, "stored_dtype": tensor.element}
        return ArraySource(
            tensor.shape,
            tensor.dtype(where),
            lambda: loaded.read(tensor, where),
            storage,
            named(name, "pwconv (torch zip, no code run)"),
        )
