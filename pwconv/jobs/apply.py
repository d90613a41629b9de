"""``pwconv apply``: read an input, apply the filters, write the output, report."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pwconv import __version__
from pwconv.core.conv import ConvPlan, Nodata, plan_conv
from pwconv.core.weights import literal_dtype
from pwconv.engines import numpy_engine
from pwconv.engines.numpy_engine import Timings
from pwconv.errors import ShapeError, UsageError
from pwconv.io.base import SaturatingSink, Sink, SinkRequest, Source, SqueezedSink
from pwconv.io.formats import (
    capabilities,
    check_distinct,
    default_output_dtype,
    open_sink,
    open_source,
    retarget_output,
)
from pwconv.io.spec import Spec, parse_spec
from pwconv.io.weights import Weights, read_weights
from pwconv.jobs.options import ApplyOptions, check_output
from pwconv.jobs.report import Report, describe_bias, describe_input, describe_weights


def load_weights(weights: str, options: ApplyOptions, dataset: str | None = None) -> Weights:
    """The filters and the bias that ``options`` names."""
    return read_weights(weights, options.bias, dataset=dataset)


def make_plan(
    source: Source, weights: Weights, options: ApplyOptions, output: Spec | None = None
) -> tuple[ConvPlan, np.dtype | None]:
    """Check the weights and options against an input's shape and dtype.

    Returns the plan and, when the output is integers that the plan computes in another
    type (``dtype="uint8"`` on float data, an image output), the dtype to saturate into.
    """
    dtype: Any = options.dtype
    if dtype is None and output is not None:
        dtype = default_output_dtype(output, np.dtype(source.dtype), bool(getattr(source, "is_image", False)))
    if dtype is None and weights.filters.literal:
        dtype = literal_dtype(source.dtype, weights.filters.array).name

    def plan_for(out_dtype: Any) -> ConvPlan:
        return plan_conv(
            source.shape,
            source.dtype,
            weights.filters.array,
            None if weights.bias is None else weights.bias.array,
            layout=options.layout,
            groups=options.groups,
            stride=options.stride,
            weights_layout=options.weights_layout,
            dtype=out_dtype,
        )

    plan = plan_for(None)
    target = None if dtype is None else _dtype(dtype)
    saturate_to = None
    if target is not None and target.kind in "iu" and target != plan.out_dtype:
        saturate_to = target  # computed in the natural type, then rounded and clipped
    elif target is not None and target != plan.out_dtype:
        plan = plan_for(target)
    if 0 in plan.in_shape:
        raise ShapeError(
            f"expected a non-empty input, found shape {plan.in_shape}; there is nothing to convolve"
        )
    if options.squeeze and plan.out_channels != 1:
        raise UsageError(
            f"expected one filter for [[squeeze]] (it drops a size-1 channel axis), found {plan.out_channels}; "
            "drop [[squeeze]]"
        )
    if saturate_to is not None and plan.out_dtype.kind == "c":
        raise UsageError(
            f"expected real results for {saturate_to} output, found {plan.out_dtype}; drop [[dtype]]"
        )
    return plan, saturate_to


def _dtype(value: Any) -> np.dtype:
    try:
        found = np.dtype(value)
    except TypeError:
        raise UsageError(f"expected a numpy dtype name such as float32, found {value!r}") from None
    if found.kind not in "iufc":
        raise UsageError(f"expected a numeric output dtype, found {found}")
    return found


def resolve_nodata(options: ApplyOptions, source: Source, out_dtype: np.dtype) -> Nodata | None:
    """What counts as nodata in the input, and what the output writes there (None: no masking)."""
    text = options.nodata
    if text == "none":
        return None
    if text == "auto":
        declared = getattr(source, "nodata", None)
        if declared is None:
            return None
        value = float(declared)
    else:
        value = float(text)
    nan = math.isnan(value)
    if options.out_nodata is not None:
        out_value = float(options.out_nodata)
    elif _holds(out_dtype, value):
        out_value = value
    elif out_dtype.kind in "fc":
        out_value = math.nan
    else:
        raise UsageError(
            f"expected an output nodata value that {out_dtype} holds, found {value:g} from the input; "
            "pass [[out_nodata]] with one, or a float [[dtype]]"
        )
    if not _holds(out_dtype, out_value):
        raise UsageError(
            f"expected an output nodata value that {out_dtype} holds, found {out_value:g}; change [[out_nodata]]"
        )
    return Nodata(None if nan else value, nan, out_value)


def _holds(dtype: np.dtype, value: float) -> bool:
    if dtype.kind in "fc":
        return True
    if math.isnan(value) or value != int(value):
        return False
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def with_channel_dim(options: ApplyOptions, source: Source) -> ApplyOptions:
    """``channel_dim`` (a NetCDF dimension name) turned into the layout's axis number."""
    if options.channel_dim is None:
        return options
    dims = getattr(source, "dimensions", None)
    if dims is None:
        raise UsageError(
            "expected an input with named dimensions (NetCDF) for [[channel_dim]], found none; use [[layout]]"
        )
    if options.channel_dim not in dims:
        raise UsageError(
            f"expected [[channel_dim]] among the dimensions {', '.join(dims)}, found {options.channel_dim!r}"
        )
    return dataclasses.replace(options, layout=str(dims.index(options.channel_dim)))


def output_attrs(input_text: str, weights: Weights, plan: ConvPlan) -> dict[str, Any]:
    """What an HDF5 or Zarr output records about how it was made."""
    return {
        "pwconv_version": __version__,
        "input": input_text,
        "weights_source": weights.filters.source,
        "weights_sha256": weights.filters.sha256,
        "weights_tensor": weights.filters.spec.dataset or "" if weights.filters.spec else "",
        "bias_source": weights.bias.source if weights.bias else "",
        "layout": plan.layout.name,
        "channel_axis": plan.channel_axis,
    }


def squeezed(shape: tuple[int, ...], axis: int, squeeze: bool) -> tuple[int, ...]:
    """``shape`` as written: ``squeeze`` drops the (size-1) channel axis."""
    return shape[:axis] + shape[axis + 1 :] if squeeze else shape


@dataclass(frozen=True)
class OutputSettings:
    """What the run decided about its output beyond the options."""

    attrs: dict[str, Any]
    block_shape: tuple[int, ...] | None = None
    saturate_to: np.dtype | None = None
    nodata: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def open_output(spec: Spec, plan: ConvPlan, options: ApplyOptions, output: OutputSettings) -> Sink:
    """The output's sink; engines always write blocks of ``plan.out_shape`` in ``plan.out_dtype``
    into it (squeezing and saturating happen here, in wrappers)."""
    block_shape, saturate_to = output.block_shape, output.saturate_to
    axis = plan.channel_axis
    squeeze = options.squeeze
    shape = squeezed(plan.out_shape, axis, squeeze)
    if isinstance(options.output_chunks, tuple) and len(options.output_chunks) != len(shape):
        raise UsageError(
            f"expected [[chunks]] auto, none or {len(shape)} positive comma-separated sizes (the output "
            f"has {len(shape)} axes), found {options.chunks!r}"
        )
    request = SinkRequest(
        shape=shape,
        dtype=saturate_to or plan.out_dtype,
        channel_axis=max(axis - 1, 0) if squeeze else axis,
        overwrite=options.overwrite,
        attrs=output.attrs if output.nodata is None else {**output.attrs, "nodata": output.nodata},
        compression=options.compression,
        chunks=options.output_chunks,
        block_shape=squeezed(block_shape, axis, squeeze) if block_shape else None,
        quality=options.quality,
        nodata=output.nodata,
        stride=plan.stride,
        creation_options=options.creation_options,
        metadata=output.metadata,
    )
    sink: Sink = open_sink(spec, request)
    if saturate_to is not None:
        sink = SaturatingSink(sink, saturate_to)
    return SqueezedSink(sink, axis) if squeeze else sink


def _layers(sink: Any) -> list[Any]:
    """The sink and the sinks it wraps (squeezing, saturating), outermost first."""
    layers = [sink]
    while hasattr(layers[-1], "sink"):
        layers.append(layers[-1].sink)
    return layers


def clipped_counts(sink: Sink) -> dict[str, int] | None:
    """Values clipped into an integer output's range (None when nothing was saturated or the
    counts stayed in other processes)."""
    for layer in _layers(sink):
        if isinstance(layer, SaturatingSink) and layer.counted:
            return {"low": layer.clipped_low, "high": layer.clipped_high}
    return None


def sink_notes(sink: Any) -> list[str]:
    """What the output's writer wants said (a lossy format, say)."""
    return list(getattr(_layers(sink)[-1], "notes", []))


def apply_file(
    input: str,
    weights: str | Weights,
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
    check_output(options, out_spec)
    loaded = weights if isinstance(weights, Weights) else load_weights(weights, options, weights_dataset)
    check_distinct(out_spec, in_spec, *loaded.specs)
    source = open_source(in_spec)
    try:
        out_spec = retarget_output(out_spec, source)
        check_output(options, out_spec)
        options = with_channel_dim(options, source)
        plan, saturate_to = make_plan(source, loaded, options, out_spec)
        nodata = resolve_nodata(options, source, saturate_to or plan.out_dtype)
        engine_name = "numpy"
        block_shape = None
        run: Callable[[Sink], Timings]
        if options.engine == "dask":
            from pwconv.engines.dask_engine import DaskRun

            job = DaskRun(
                plan, in_spec, source, max_bytes=options.max_bytes, scheduler=options.scheduler, nodata=nodata
            )
            engine_name, block_shape = job.name, job.block_shape

            def run(sink: Sink) -> Timings:
                return job.run(sink, progress)
        else:
            if options.output_chunks == "auto":  # a chunked output takes one chunk per block
                sequential = capabilities(out_spec).sequential
                block_shape = numpy_engine.first_block_shape(plan, source, sequential, options.max_bytes)

            def run(sink: Sink) -> Timings:
                return numpy_engine.run(
                    plan, source, sink, max_bytes=options.max_bytes, progress=progress, nodata=nodata
                )

        attrs = output_attrs(in_spec.text, loaded, plan)
        metadata = source.output_metadata() if hasattr(source, "output_metadata") else {}
        settings = OutputSettings(
            attrs, block_shape, saturate_to, nodata.out_value if nodata else None, metadata
        )
        sink = open_output(out_spec, plan, options, settings)
        load_seconds = time.perf_counter() - start
        try:
            timings = run(sink)
            commit_start = time.perf_counter()
            sink.commit()
            timings.save += time.perf_counter() - commit_start
        except BaseException:
            sink.abort()
            raise
    finally:
        source.close()
    output_doc: dict[str, Any] = {
        "path": out_spec.text,
        "shape": list(squeezed(plan.out_shape, plan.channel_axis, options.squeeze)),
        "dtype": (saturate_to or plan.out_dtype).name,
        "clipped": clipped_counts(sink),
        "notes": sink_notes(sink),
        "nodata": None
        if nodata is None
        else {
            "input": nodata.value,
            "nan": nodata.nan,
            "output": nodata.out_value,
            "pixels": timings.nodata_pixels,
        },
    }
    return Report(
        input={**describe_input(in_spec.text, plan), "notes": getattr(source, "notes", [])},
        weights=describe_weights(loaded, plan),
        output=output_doc,
        bias=describe_bias(loaded),
        groups=plan.groups,
        stride=plan.stride,
        engine=engine_name,
        blocks=timings.blocks,
        seconds={
            "load": load_seconds + timings.load,
            "compute": timings.compute,
            "save": timings.save,
            "total": time.perf_counter() - start,
        },
        flops=plan.flops,
    )
