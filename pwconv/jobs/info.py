"""``pwconv info``: shape, dtype, size, storage and a layout guess, without reading data."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pwconv.core.filters import bank_reading
from pwconv.errors import PwconvError, UsageError
from pwconv.io.registry import array_specs, companion_bias, format_named, open_source, read_labels
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
        fits = bank_reading(shape, channels)
        info["filter_bank"] = (
            None
            if fits is None
            else {
                "read_as": fits[0],
                "filters": fits[1],
                "groups": fits[2],  # the --groups that applies it (1: a whole bank)
                "bias": companion_bias(spec if name is None else dataclasses.replace(spec, member=name)),
            }
        )
    return info


#: What ``fit`` stores beside a bank's weights, and what ``info BANK`` reports of it.
_FIT_TEXT = ("method", "names", "channel_names")


def fit_summary(spec: Spec, shapes: dict[str, list[int]]) -> dict[str, Any] | None:
    """What ``fit`` stored in a bank file (method, components, explained variance, the
    filters' and the fitted channels' names), read from its small arrays; None for a file
    that is not a fitted bank. ``shapes``: each array's shape, by its name in the file."""
    members = {name.lstrip("/"): name for name in shapes}  # HDF5 names its datasets /weights
    if "weights" not in members or spec.member:
        return None
    text = {name: read_labels(spec, name) for name in _FIT_TEXT}
    numbers: dict[str, np.ndarray] = {}
    for name in ("explained_variance_ratio", "eigenvalues", "r2", "rms", "condition", "n_pixels"):
        if name in members:
            source = open_source(dataclasses.replace(spec, member=members[name]))
            try:
                if math.prod(source.shape) <= 1 << 16:  # a summary, not a tensor
                    numbers[name] = np.asarray(source.read(tuple(slice(None) for _ in source.shape)))
            finally:
                source.close()
    if not numbers and text["method"] is None:
        return None  # named arrays, not what fit writes
    method = (
        text["method"][0] if text["method"] else ("pca" if "explained_variance_ratio" in numbers else "lstsq")
    )
    summary: dict[str, Any] = {"method": method, "filter_names": list(text["names"] or []) or None}
    summary["channel_names"] = list(text["channel_names"] or []) or None
    if "explained_variance_ratio" in numbers:
        ratio = numbers["explained_variance_ratio"].astype(float).ravel()
        summary |= {"explained_variance_ratio": ratio.tolist(), "explained_total": float(ratio.sum())}
    if "eigenvalues" in numbers:  # MNF: each eigenvalue is 1 + the component's signal-to-noise ratio
        summary["snr"] = (numbers["eigenvalues"].astype(float).ravel() - 1).tolist()
        forward = members.get("forward_weights", members["weights"])  # a reconstruction keeps its own
        summary["components"] = int(shapes[forward][0])
    for name in ("r2", "rms"):
        if name in numbers:
            summary[name] = numbers[name].astype(float).ravel().tolist()
    if "condition" in numbers:
        summary["condition"] = float(numbers["condition"])
    if "n_pixels" in numbers:
        summary["pixels"] = int(numbers["n_pixels"])
    return summary


@dataclass
class FileInfo:
    """One FILE argument: the arrays it holds, or why it could not be described."""

    path: str
    arrays: list[dict[str, Any]]
    failure: PwconvError | None = None
    #: A model file or a bank named whole: one line per tensor says more than a block each.
    tensors: bool = False
    title: str = ""  # the format, as messages write it

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
        specs = array_specs(spec)
        arrays = [array_info(s, channels, channel_dim) for s in specs]
        whole = spec.member is None and len(specs) > 1
        row = format_named(spec.format)
        shapes = {s.member or "": a["shape"] for s, a in zip(specs, arrays)}
        summary = fit_summary(spec, shapes) if whole and row.banks else None
        for array, part in zip(arrays, specs):
            if summary is not None and (part.member or "").lstrip("/") == "weights":
                array["fit"] = summary
        tensors = whole and (row.family == "model" or summary is not None)
        return FileInfo(path, arrays, tensors=tensors, title=row.title)
    except PwconvError as exc:
        return FileInfo(path, [], exc)


def describe_files(
    paths: list[str], dataset: str | None = None, channels: int | None = None, channel_dim: str | None = None
) -> list[FileInfo]:
    """:func:`describe_file` for each path; one unreadable file does not stop the others."""
    return [describe_file(path, dataset, channels, channel_dim) for path in paths]


def system_doc() -> dict[str, Any]:
    """The machine and the compute paths pwconv runs on: CPU, cores, the C kernels' instruction
    sets, and the BLAS numpy uses (its kernel where threadpoolctl can tell)."""
    import os
    import platform

    import numpy as np

    from pwconv import __version__
    from pwconv.core import calibration, kernels
    from pwconv.io import codecs

    cpu = calibration.cpu_model()
    blas: dict[str, Any] = dict(calibration.blas_build())
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            blas |= {"kernel": pools[0].get("architecture"), "threads": pools[0].get("num_threads")}
    except ImportError:
        blas["kernel"] = None  # threadpoolctl (the bench extra) says which; not installed
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "pwconv": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": cpu,
        "cores": cores,
        "few_filter_kernel": kernels.instruction_set(),
        "scatter_kernel": kernels.scatter_instruction_set(),
        "kernels_enabled": kernels.enabled,
        "kernel_rule": calibration.describe(),
        "calibrated": calibration.verdicts(),
        "blas": blas,
        "deflate": codecs.deflate_implementation(),
    }
