"""Turn a path argument (``file.npy``, ``file.h5:/group/ds``, ``-``) into a :class:`Spec`."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

from pwconv.errors import InputFileError, UsageError
from pwconv.io.registry import JOIN, STACK, STREAM, format_of, known_suffixes, sniff
from pwconv.io.stores import is_url, local_path, shown


@dataclass(frozen=True)
class Spec:
    """Where a tensor lives: the registry's ``format`` name, the path, and the ``member`` of a
    container that holds it (an HDF5 dataset, a Zarr array, a model's tensor), if any."""

    format: str
    path: str
    member: str | None = None

    @property
    def text(self) -> str:
        """The spec as messages and reports show it (a URL without its secrets)."""
        if self.format == STREAM.name:
            return "-"
        path = (
            JOIN.join(shown(part) for part in self.path.split(JOIN))
            if self.format == STACK.name
            else shown(self.path)
        )
        return f"{path}:{self.member}" if self.member else path


def stack_parts(text: str) -> list[str] | None:
    """The files of a stack argument, or None where ``text`` is not one (a single file,
    even one whose name holds a ``+``).

    >>> stack_parts("B2.tif+B3.tif")
    ['B2.tif', 'B3.tif']
    """
    if JOIN not in text or os.path.exists(text):
        return None
    parts = [local_path(part) for part in text.split(JOIN)]
    return parts if len(parts) > 1 and all(parts) else None


def parse_spec(text: str, dataset: str | None = None, *, what: str = "input") -> Spec:
    """Parse a path argument.

    >>> parse_spec("data.h5:/group/x")
    Spec(format='hdf5', path='data.h5', member='/group/x')
    """
    if text == "-":
        if dataset:
            raise UsageError(f"expected no dataset for {what} '-' (an npy stream), found {dataset!r}")
        return Spec(STREAM.name, "-")
    parts = stack_parts(text) if what != "output" else None
    if parts is not None:
        if dataset:
            raise UsageError(f"expected no dataset for the stack {shown(text)!r}, found {dataset!r}")
        return Spec(STACK.name, JOIN.join(parts))
    text = local_path(text)
    path, inner = text, None
    fmt = format_of(text)
    if fmt is None and ":" in text:
        head, _, tail = text.rpartition(":")
        container = format_of(head)
        if container is not None and container.containers:
            path, inner, fmt = head, tail or None, container
    remote = is_url(path)
    if fmt is None and what != "output" and not remote and not os.path.exists(path):
        raise InputFileError(f"expected an existing {what} file, found no file at {path!r}; check the path")
    if fmt is None:
        ext = os.path.splitext(urllib.parse.urlsplit(path).path if remote else path)[1] or "no extension"
        sniffed = sniff(path) if what == "input" and not remote else None
        fix = (
            f"its content is {sniffed.name}: rename it to {sniffed.suffixes[0]}"
            if sniffed is not None
            else "rename the file or convert it"
        )
        raise UsageError(
            f"expected {what} {shown(text)!r} to be {known_suffixes()} or - for stdin/stdout, found {ext}; {fix}"
        )
    if inner and dataset and inner != dataset:
        raise UsageError(
            f"expected one dataset name for {what} {text!r}, found {inner!r} in the path and "
            f"{dataset!r} from [[dataset]]; give only one"
        )
    inner = inner or dataset
    if inner and not fmt.containers:
        raise UsageError(f"expected no dataset for the {fmt.name} {what} {path!r}, found {inner!r}")
    if inner:
        inner = fmt.load().array_name(inner)
    return Spec(fmt.name, path, inner)
