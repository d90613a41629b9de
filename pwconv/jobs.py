"""Library functions behind the commands: one call per command, returning a report.

The CLI parses options into these calls and prints what they return; nothing here prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pwconv import __version__
from pwconv.core.blocks import parse_size
from pwconv.core.conv import ConvPlan, plan_conv
from pwconv.core.weights import literal_dtype
from pwconv.errors import PwconvError, ShapeError, UsageError
from pwconv.io.base import Source
from pwconv.io.sources import Weights, check_distinct, load_weights, open_sink, open_source
from pwconv.io.spec import parse_spec

DEFAULT_MAX_MEMORY = "512MiB"


@dataclass(frozen=True)
class ApplyOptions:
    """Everything about a run except which files it reads and writes."""

    layout: str = "channels-last"
    weights_layout: str = "auto"
    bias: str | None = None
    groups: int = 1
    stride: int = 1
    dtype: str | None = None
    squeeze: bool = False
    overwrite: bool = False
    max_memory: str = DEFAULT_MAX_MEMORY
    compression: str | None = None
    chunks: str = "auto"
    engine: str = "numpy"
    scheduler: str = "threads"


@dataclass
class Report:
    """What a run did: shapes, dtypes, how the weights were read, and where time went."""

    input: dict[str, Any]
    weights: dict[str, Any]
    output: dict[str, Any]
    bias: str | None
    groups: int
    stride: int
    engine: str
    blocks: int
    seconds: dict[str, float] = field(default_factory=dict)
    flops: int = 0

    @property
    def gflops(self) -> float:
        compute = self.seconds.get("compute", 0.0)
        return self.flops / compute / 1e9 if compute > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "pwconv": __version__,
            "input": self.input,
            "weights": self.weights,
            "bias": self.bias,
            "output": self.output,
            "groups": self.groups,
            "stride": self.stride,
            "engine": self.engine,
            "blocks": self.blocks,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "flops": self.flops,
            "gflops_per_s": round(self.gflops, 3),
        }


@dataclass(frozen=True)
class LoadedWeights:
    """Filters and bias loaded once, reusable across inputs (``pwconv batch``)."""

    filters: Weights
    bias: Weights | None


def load_filter_bank(
    weights: str, bias: str | None = None, weights_dataset: str | None = None
) -> LoadedWeights:
    """Load the filters and the optional bias (files or literals)."""
    w = load_weights(weights, weights_dataset)
    b = load_weights(bias, what="bias") if bias is not None else None
    return LoadedWeights(w, b)


def make_plan(source: Source, loaded: LoadedWeights, options: ApplyOptions) -> ConvPlan:
    """Check the weights and options against an input's shape and dtype."""
    dtype = options.dtype
    if dtype is None and loaded.filters.literal:
        dtype = literal_dtype(source.dtype, loaded.filters.array).name
    plan = plan_conv(
        source.shape,
        source.dtype,
        loaded.filters.array,
        None if loaded.bias is None else loaded.bias.array,
        layout=options.layout,
        groups=options.groups,
        stride=options.stride,
        weights_layout=options.weights_layout,
        dtype=dtype,
    )
    if 0 in plan.in_shape:
        raise ShapeError(
            f"expected a non-empty input, found shape {plan.in_shape}; there is nothing to convolve"
        )
    if options.squeeze and plan.out_channels != 1:
        raise UsageError(
            f"expected one filter for --squeeze (it drops a size-1 channel axis), found {plan.out_channels}; "
            "drop --squeeze"
        )
    return plan


def output_attrs(input_text: str, loaded: LoadedWeights, plan: ConvPlan) -> dict[str, Any]:
    """What an HDF5 or Zarr output records about how it was made."""
    return {
        "pwconv_version": __version__,
        "input": input_text,
        "weights_source": loaded.filters.source,
        "weights_sha256": loaded.filters.sha256,
        "layout": plan.layout.name,
        "channel_axis": plan.channel_axis,
    }


def output_shape(plan: ConvPlan, squeeze: bool) -> tuple[int, ...]:
    shape = plan.out_shape
    if squeeze:
        axis = plan.channel_axis
        return shape[:axis] + shape[axis + 1 :]
    return shape


def apply_file(
    input: str,
    weights: str | LoadedWeights,
    output: str,
    options: ApplyOptions | None = None,
    *,
    dataset: str | None = None,
    weights_dataset: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Read ``input``, apply the filters, write ``output``; return the report.

    Nothing is visible under ``output`` unless the whole run succeeds.
    """
    options = options or ApplyOptions()
    start = time.perf_counter()
    in_spec = parse_spec(input, dataset)
    out_spec = parse_spec(output, what="output")
    if options.engine not in ("numpy", "dask"):
        raise UsageError(f"expected --engine numpy or dask, found {options.engine!r}")
    max_bytes = parse_size(options.max_memory)
    if options.compression not in (None, "none", "gzip", "lzf", "zstd"):
        raise UsageError(f"expected --compression gzip, lzf, zstd or none, found {options.compression!r}")
    if options.compression == "zstd" and out_spec.kind != "zarr":
        raise UsageError("expected --compression zstd only with .zarr output; use gzip or lzf for HDF5")
    compression = None if options.compression in (None, "none") else options.compression
    loaded = (
        weights
        if isinstance(weights, LoadedWeights)
        else load_filter_bank(weights, options.bias, weights_dataset)
    )
    read_specs = [in_spec] + [
        w.spec for w in (loaded.filters, loaded.bias) if w is not None and w.spec is not None
    ]
    check_distinct(out_spec, *read_specs)
    if options.engine == "dask":
        from pwconv.engines.dask_engine import apply_with_dask

        return apply_with_dask(in_spec, loaded, out_spec, options, start=start, progress=progress)

    source = open_source(in_spec)
    try:
        plan = make_plan(source, loaded, options)
        attrs = output_attrs(in_spec.text, loaded, plan)
        load_seconds = time.perf_counter() - start
        sink = open_sink(
            out_spec,
            output_shape(plan, options.squeeze),
            plan.out_dtype,
            overwrite=options.overwrite,
            attrs=attrs,
            channel_axis=plan.channel_axis if not options.squeeze else max(plan.channel_axis - 1, 0),
            compression=compression,
            chunks=options.chunks,
        )
        try:
            from pwconv.engines.numpy_engine import run

            timings = run(plan, source, sink, max_bytes=max_bytes, squeeze=options.squeeze, progress=progress)
            commit_start = time.perf_counter()
            sink.commit()
            timings.save += time.perf_counter() - commit_start
        except BaseException:
            sink.abort()
            raise
    finally:
        source.close()
    total = time.perf_counter() - start
    return Report(
        input=describe_tensor(in_spec.text, source, plan),
        weights=describe_weights(loaded.filters, plan),
        output={
            "path": out_spec.text,
            "shape": list(output_shape(plan, options.squeeze)),
            "dtype": plan.out_dtype.name,
        },
        bias=None if loaded.bias is None else loaded.bias.source,
        groups=plan.groups,
        stride=plan.stride,
        engine="numpy",
        blocks=timings.blocks,
        seconds={
            "load": load_seconds + timings.load,
            "compute": timings.compute,
            "save": timings.save,
            "total": total,
        },
        flops=plan.flops,
    )


def describe_tensor(path: str, source: Source, plan: ConvPlan) -> dict[str, Any]:
    return {
        "path": path,
        "shape": list(source.shape),
        "dtype": np.dtype(source.dtype).name,
        "layout": plan.layout.name,
        "channel_axis": plan.channel_axis,
    }


def describe_weights(weights: Weights, plan: ConvPlan) -> dict[str, Any]:
    return {
        "source": weights.source,
        "shape": list(weights.array.shape),
        "dtype": weights.array.dtype.name,
        "read_as": plan.bank.reading,
        "interpretation": plan.bank.description,
        "matrix_shape": list(plan.bank.matrix.shape),
        "sha256": weights.sha256,
    }


def tensor_info(path: str, dataset: str | None = None) -> dict[str, Any]:
    """Shape, dtype, size, storage and a layout guess for a file, without reading its data."""
    spec = parse_spec(path, dataset)
    if spec.kind == "stream":
        raise UsageError("expected a file for info, found '-'; give a path")
    source = open_source(spec)
    try:
        shape = tuple(source.shape)
        dtype = np.dtype(source.dtype)
        info = {
            "path": spec.text,
            "shape": list(shape),
            "dtype": dtype.name,
            "bytes": math.prod(shape) * dtype.itemsize,
            "layout_guess": guess_layout(shape),
            "storage": source.storage(),
        }
    finally:
        source.close()
    return info


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


@dataclass
class FileResult:
    """One input of a batch: its output, and the report or the error."""

    input: str
    output: str | None
    report: Report | None = None
    error: str | None = None
    exit_code: int = 0
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"input": self.input, "output": self.output, "exit_code": self.exit_code}
        if self.skipped:
            doc["status"] = "skipped"
        elif self.error is not None:
            doc["status"] = "failed"
            doc["error"] = self.error
        else:
            doc["status"] = "ok"
            doc["report"] = self.report.as_dict() if self.report else None
        return doc


INPUT_SUFFIXES = (".npy", ".h5", ".hdf5", ".zarr")


def expand_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """(input, output name relative to the output folder) for files and walked folders.

    Folders are walked for .npy and .h5 files and .zarr stores, keeping relative paths.
    """
    import os

    found: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item) and not item.rstrip("/").endswith(".zarr"):
            for root, dirs, files in os.walk(item):
                stores = sorted(d for d in dirs if d.lower().endswith(".zarr"))
                dirs[:] = sorted(d for d in dirs if d not in stores)
                for name in sorted(files + stores):
                    if name.lower().endswith(INPUT_SUFFIXES):
                        path = os.path.join(root, name)
                        found.append((path, os.path.relpath(path, item)))
        else:
            try:
                path = parse_spec(item).path  # drops a ":/dataset" part
            except PwconvError:
                path = item  # a bad name fails as that file's own error, not the whole batch's
            found.append((item, os.path.basename(path.rstrip("/")) or item))
    return found


def output_name(relative: str, suffix: str) -> str:
    """``a/x.npy`` -> ``a/x{suffix}.npy``."""
    import os

    stem, ext = os.path.splitext(relative)
    return f"{stem}{suffix}{ext}"


def batch_files(
    weights: str,
    inputs: list[str],
    out_dir: str,
    options: ApplyOptions,
    *,
    suffix: str = ".pw",
    jobs: int = 1,
    fail_fast: bool = False,
    weights_dataset: str | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Apply one filter bank (loaded and checked once) to every input; a bad file does not stop the rest."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    if jobs < 1:
        raise UsageError(f"expected --jobs of at least 1, found {jobs}")
    if not os.path.isdir(out_dir):
        raise UsageError(
            f"expected an existing output folder for --out-dir, found none at {out_dir!r}; create it first"
        )
    loaded = load_filter_bank(weights, options.bias, weights_dataset)
    planned = expand_inputs(inputs)
    if not planned:
        raise UsageError("expected at least one .npy or .h5 input, found none; check the paths")
    claimed: dict[str, str] = {}
    tasks: list[tuple[str, str, str | None]] = []  # (input, output, why it cannot run)
    for path, relative in planned:
        target = os.path.join(out_dir, output_name(relative, suffix))
        key = os.path.abspath(target)
        if key in claimed:
            tasks.append(
                (
                    path,
                    target,
                    f"output {target!r} would also be written for {claimed[key]!r}; rename one input",
                )
            )
        else:
            claimed[key] = path
            tasks.append((path, target, None))
    stop = False

    def one(task: tuple[str, str, str | None]) -> FileResult:
        path, target, problem = task
        if stop:
            return FileResult(path, target, skipped=True)
        if problem is not None:
            return FileResult(path, target, error=problem, exit_code=2)
        try:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            report = apply_file(path, loaded, target, options)
            return FileResult(path, target, report=report)
        except PwconvError as exc:
            return FileResult(path, target, error=str(exc), exit_code=exc.exit_code)
        except OSError as exc:
            return FileResult(path, target, error=f"I/O failure: {exc.strerror or exc}", exit_code=1)

    results: list[FileResult] = []

    def record(result: FileResult) -> None:
        nonlocal stop
        results.append(result)
        if on_result:
            on_result(result)
        if fail_fast and result.exit_code:
            stop = True

    if jobs == 1:
        for task in tasks:
            record(one(task))
    else:
        with ThreadPoolExecutor(jobs, thread_name_prefix="pwconv-batch") as pool:
            for result in pool.map(one, tasks):
                record(result)
    return results


def batch_exit_code(results: list[FileResult]) -> int:
    """1 if any runtime failure, else 2 if any bad input, else 0."""
    codes = {r.exit_code for r in results}
    return 1 if 1 in codes else 2 if 2 in codes else 0
