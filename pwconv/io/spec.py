"""Turn a path argument (``file.npy``, ``file.h5:/group/ds``, ``-``) into a :class:`Spec`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pwconv.errors import UsageError

H5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".he5")
NPY_EXTENSIONS = (".npy",)
ZARR_EXTENSIONS = (".zarr",)
KNOWN = ".npy, .h5/.hdf5, .zarr or - for stdin/stdout"


@dataclass(frozen=True)
class Spec:
    """Where a tensor lives: ``kind`` is npy, h5, zarr or stream (stdin/stdout)."""

    kind: str
    path: str
    dataset: str | None = None

    @property
    def text(self) -> str:
        if self.kind == "stream":
            return "-"
        return f"{self.path}:{self.dataset}" if self.dataset else self.path


def _kind_of(path: str) -> str | None:
    lower = path.lower().rstrip("/")
    if lower.endswith(NPY_EXTENSIONS):
        return "npy"
    if lower.endswith(H5_EXTENSIONS):
        return "h5"
    if lower.endswith(ZARR_EXTENSIONS):
        return "zarr"
    return None


def parse_spec(text: str, dataset: str | None = None, *, what: str = "input") -> Spec:
    """Parse a path argument.

    >>> parse_spec("data.h5:/group/x")
    Spec(kind='h5', path='data.h5', dataset='/group/x')
    """
    if text == "-":
        if dataset:
            raise UsageError(f"expected no dataset for {what} '-' (an npy stream), found {dataset!r}")
        return Spec("stream", "-")
    path, inner = text, None
    if _kind_of(text) is None and ":" in text:
        head, _, tail = text.rpartition(":")
        if _kind_of(head) in ("h5", "zarr"):
            path, inner = head, tail or None
    kind = _kind_of(path)
    if kind is None:
        ext = os.path.splitext(path)[1] or "no extension"
        raise UsageError(
            f"expected {what} {text!r} to be {KNOWN}, found {ext}; rename the file or convert it"
        )
    if inner and dataset and inner != dataset:
        raise UsageError(
            f"expected one dataset name for {what} {text!r}, found {inner!r} in the path and "
            f"{dataset!r} from --dataset; give only one"
        )
    inner = inner or dataset
    if inner and kind == "npy":
        raise UsageError(f"expected no dataset for the .npy {what} {path!r}, found {inner!r}")
    if inner and kind == "h5" and not inner.startswith("/"):
        inner = "/" + inner
    return Spec(kind, path, inner)
