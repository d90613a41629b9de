"""``pwconv info``: shape, dtype, size, storage and a layout guess, without reading data."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pwconv.core.filters import reading_for
from pwconv.errors import PwconvError, UsageError
from pwconv.io.registry import array_specs, companion_bias, open_source
from pwconv.io.spec import Spec, parse_spec
from pwconv.jobs.options import band_dimension, channel_dim_axis


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


def array_info(spec: Spec, channels: int | None = None, channel_dim: str | None = None) -> dict[str, Any]:
    """What ``info`` says of one array; with ``channels``, whether it is a 1x1 filter bank
    for that many input channels (and which bias belongs to it); ``channel_dim`` names the
    dimension that holds the channels (as apply takes it), else a band-like one is named."""
    source = open_source(spec)
    try:
        shape = tuple(source.shape)
        dtype = np.dtype(source.dtype)
        name = source.description.name
        info: dict[str, Any] = {
            "path": spec.text if name is None else f"{spec.path}:{name}",
            "shape": list(shape),
            "dtype": dtype.name,
            "bytes": math.prod(shape) * dtype.itemsize,
            "layout_guess": guess_layout(shape),
            "storage": source.storage(),
            "reader": source.description.reader,  # which code path reads the data
            # names along an axis (band descriptions, a NetCDF coordinate), by axis number
            "labels": {str(axis): list(names) for axis, names in source.description.labels.items()},
            "dimensions": list(source.description.dimensions or ()) or None,
            # the dimension apply and fit take as the channels by default (its name says band)
            "channel_dimension": _channel_dimension(source.description.dimensions, channel_dim),
        }
    finally:
        source.close()
    if channels is not None:
        fits = reading_for(shape, channels)
        info["filter_bank"] = (
            None
            if fits is None
            else {
                "read_as": fits[0],
                "filters": fits[1],
                "bias": companion_bias(spec if name is None else dataclasses.replace(spec, member=name)),
            }
        )
    return info


@dataclass
class FileInfo:
    """One FILE argument: the arrays it holds, or why it could not be described."""

    path: str
    arrays: list[dict[str, Any]]
    failure: PwconvError | None = None

    @property
    def exit_code(self) -> int:
        return self.failure.exit_code if self.failure else 0


def _channel_dimension(dimensions: tuple[str, ...] | None, channel_dim: str | None) -> str | None:
    if channel_dim is None:
        return band_dimension(dimensions)
    channel_dim_axis(dimensions, channel_dim)  # refuses a name the input does not have
    return channel_dim


def describe_file(
    path: str, dataset: str | None = None, channels: int | None = None, channel_dim: str | None = None
) -> FileInfo:
    """Every array ``path`` stands for (each tensor of a container named whole)."""
    try:
        if channels is not None and channels < 1:
            raise UsageError(f"expected [[channels]] of at least 1, found {channels}")
        spec = parse_spec(path, dataset)
        if spec.path == "-":
            raise UsageError("expected a file for info, found '-'; give a path")
        return FileInfo(path, [array_info(s, channels, channel_dim) for s in array_specs(spec)])
    except PwconvError as exc:
        return FileInfo(path, [], exc)


def describe_files(
    paths: list[str], dataset: str | None = None, channels: int | None = None, channel_dim: str | None = None
) -> list[FileInfo]:
    """:func:`describe_file` for each path; one unreadable file does not stop the others."""
    return [describe_file(path, dataset, channels, channel_dim) for path in paths]
