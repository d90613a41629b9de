"""PyTorch ``.pt``/``.pth``/``.bin`` state dicts, loaded with ``weights_only=True``.

torch's restricted unpickler builds tensors and plain containers only: a file that needs
anything else (a pickled module, arbitrary code) is refused and its code never runs. Files in
torch's zip format are memory-mapped, so reading one tensor touches only that tensor's bytes.
Nested dicts are flattened to dotted names (``model.head.weight``).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, require_extra
from pwconv.io.arrays import ArraySource, named
from pwconv.io.checks import check_readable, first_line
from pwconv.io.interface import Backend
from pwconv.io.names import pick_name

if TYPE_CHECKING:
    from pwconv.io.spec import Spec


def _load_tensors(path: str) -> dict[str, Any]:
    """Every tensor in the file by dotted name (data mapped, not read, where torch can)."""
    check_readable(path)
    status = os.stat(path)
    return _load_cached(os.path.abspath(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    # Listing, pairing a bias and reading all load the same file: once is enough.
    torch = require_extra("torch", "torch", "PyTorch files")
    import pickle

    try:
        try:
            loaded = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # torch's legacy (non-zip) format cannot be mapped: read it whole.
            loaded = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise FormatError(
            f"expected a PyTorch file of tensors at {path!r}, found one that needs arbitrary unpickling "
            "(it could run code), so it was refused; save model.state_dict() with torch.save"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        detail = first_line(exc)
        raise FormatError(
            f"expected a PyTorch file at {path!r}, found one torch cannot read ({detail}); "
            "check that it is complete"
        ) from None
    tensors: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors[prefix or "tensor"] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}" if prefix else str(i), item)

    walk("", loaded)
    return tensors


def _to_numpy(tensor: Any) -> np.ndarray:
    import torch

    tensor = tensor.detach()
    if tensor.is_quantized or tensor.layout != torch.strided:
        raise FormatError(f"expected a dense tensor, found a {tensor.layout} one; save it with .to_dense()")
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # exact: bf16 is the top half of a float32
    return np.array(tensor.contiguous().numpy())


class TorchFormat(Backend):
    """PyTorch checkpoints, loaded with weights_only (no code runs)."""

    def list_arrays(self, path: str) -> list[str]:
        return list(_load_tensors(path))

    def array_name(self, name: str) -> str:
        return name

    def open_source(self, spec: Spec) -> ArraySource:
        tensors = _load_tensors(spec.path)
        name = pick_name(spec.path, spec.member, list(tensors))
        tensor = tensors[name]
        import torch

        dtype = torch.empty(0, dtype=tensor.dtype)
        try:
            np_dtype = _to_numpy(dtype).dtype
        except (TypeError, RuntimeError):
            raise FormatError(
                f"expected a numeric tensor at {spec.path}:{name}, found dtype {tensor.dtype}"
            ) from None
        storage = {
            "format": "pytorch",
            "tensor": name,
            "stored_dtype": str(tensor.dtype).replace("torch.", ""),
        }
        return ArraySource(
            tuple(tensor.shape), np_dtype, lambda: _to_numpy(tensor), storage, named(name, "torch")
        )
