"""``pwconv info``: shape, dtype, size, storage and a layout guess, without reading data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pwconv.errors import PwconvError, UsageError
from pwconv.io.formats import array_specs, open_source
from pwconv.io.spec import Spec, parse_spec


def guess_layout(shape: tuple[int, ...]) -> str:
    """Guess where the channels are: spatial axes usually share one size, channels differ.

    >>> guess_layout((192, 28, 28))
    'channels-first'
    """
    if len(shape) < 3:
        return "channels-last"
    first = 0 if len(shape) == 3 else 1
    if len(set(shape[first:-1])) == 1 and shape[-1] != shape[first]:
        return "channels-last"
    if len(set(shape[first + 1 :])) == 1 and shape[first] != shape[-1]:
        return "channels-first"
    return "channels-last" if shape[-1] <= shape[first] else "channels-first"


def array_info(spec: Spec) -> dict[str, Any]:
    """What ``info`` says of one array."""
    source = open_source(spec)
    try:
        shape = tuple(source.shape)
        dtype = np.dtype(source.dtype)
        return {
            "path": spec.text,
            "shape": list(shape),
            "dtype": dtype.name,
            "bytes": math.prod(shape) * dtype.itemsize,
            "layout_guess": guess_layout(shape),
            "storage": source.storage(),
        }
    finally:
        source.close()


@dataclass
class FileInfo:
    """One FILE argument: the arrays it holds, or why it could not be described."""

    path: str
    arrays: list[dict[str, Any]]
    failure: PwconvError | None = None

    @property
    def exit_code(self) -> int:
        return self.failure.exit_code if self.failure else 0


def describe_file(path: str, dataset: str | None = None) -> FileInfo:
    """Every array ``path`` stands for (each dataset of a container named whole)."""
    try:
        spec = parse_spec(path, dataset)
        if spec.path == "-":
            raise UsageError("expected a file for info, found '-'; give a path")
        return FileInfo(path, [array_info(s) for s in array_specs(spec)])
    except PwconvError as exc:
        return FileInfo(path, [], exc)


def describe_files(paths: list[str], dataset: str | None = None) -> list[FileInfo]:
    """:func:`describe_file` for each path; one unreadable file does not stop the others."""
    return [describe_file(path, dataset) for path in paths]
