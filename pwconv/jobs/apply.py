"""``pwconv apply``: read an input, apply the filters, write the output, report."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pwconv import __version__
from pwconv.core.conv import ConvPlan, Nodata, output_dtype, plan_for
from pwconv.core.filters import literal_dtype
from pwconv.core.words import counted
from pwconv.engines.base import Engine, Progress, Timings
from pwconv.errors import ShapeError, UsageError
from pwconv.io import pictures
from pwconv.io.digests import sha256_hex
from pwconv.io.interface import Sink, SinkRequest, Source
from pwconv.io.operands import Operand, Weights, read_weights
from pwconv.io.registry import (
    check_distinct,
    default_output_dtype,
    format_named,
    limit_library_caches,
    open_sink,
    open_source,
    retarget_output,
    stored_output_dtype,
)
from pwconv.io.spec import Spec, parse_spec
from pwconv.io.stores import PIECE, is_url, scrub, streamed_upload_parts
from pwconv.jobs.options import (
    ApplyOptions,
    check_decoded_piece,
    check_output,
    held_output_bytes,
    nodata_value,
    resolved_layout,
)
from pwconv.jobs.report import Report, describe_bias, describe_input, describe_weights


def make_plan(
    source: Source, weights: Weights, options: ApplyOptions, output: Spec | None = None
) -> tuple[ConvPlan, np.dtype | None]:
    """Check the weights and options against an input's shape and dtype.

    Returns the plan and, when the output is integers that the plan computes in another
    type (``dtype="uint8"`` on float data, an image output), the dtype to saturate into.
    """
    dtype: Any = options.dtype
    if dtype is None and output is not None:
        dtype = default_output_dtype(output, np.dtype(source.dtype), source.description.is_image)
    ratio = weights.denominator
    if dtype is None and weights.filters.literal and ratio is None:
        dtype = literal_dtype(source.dtype, weights.filters.array).name

    def plan_with(out_dtype: Any) -> ConvPlan:
        bias = None if weights.bias is None else weights.bias.array
        conv = dataclasses.replace(options.conv, dtype=out_dtype)
        return plan_for(source.shape, source.dtype, weights.filters.array, bias, conv)

    plan = plan_with(None)
    if ratio is not None and plan.out_dtype.kind not in "fc":
        plan = plan_with(np.float64)  # a ratio is not a whole number
    if options.dtype is None and output is not None:  # a dtype not asked for: one the format stores
        natural = plan.out_dtype if dtype is None else output_dtype(dtype)
        stored = stored_output_dtype(output, natural)
        dtype = dtype if stored == natural else stored
    target = None if dtype is None else output_dtype(dtype)
    saturate_to = None
    if target is not None and target.kind in "iu" and target != plan.out_dtype:
        saturate_to = target  # computed in the natural type, then rounded and clipped
    elif target is not None and target != plan.out_dtype:
        plan = plan_with(target)
    if ratio is not None:
        plan = _with_denominator(plan, source, ratio, options)
    _check_plan(plan, options, saturate_to)
    return plan, saturate_to


def with_divide_by(weights: Weights, options: ApplyOptions) -> Weights:
    """The weights with ``--divide-by``'s denominator bank loaded beside them (once, for every
    file of a batch)."""
    if options.divide_by is None:
        return weights
    if weights.denominator is not None:
        raise UsageError(
            f"expected one denominator, found [[divide_by]] {options.divide_by!r} and the bank's own "
            f"({weights.filters.source}); drop [[divide_by]]"
        )
    if options.index is not None:
        raise UsageError(
            "expected [[index]] or [[divide_by]], found both; an index brings its own denominator"
        )
    return dataclasses.replace(weights, denominator=read_weights(options.divide_by, options.divide_by_bias))


def bound_weights(weights: Weights, source: Source, options: ApplyOptions) -> Weights:
    """A named table's columns bound to ``source``'s bands: by ``--bands``, by the input's band
    names (common names or the sensor's band ids), or in order where the input names none."""
    table = weights.table
    if options.constants is not None:
        raise UsageError(f"expected [[index]] for [[constants]], found WEIGHTS {weights.filters.source!r}")
    if table is None:
        if options.bands is not None:
            raise UsageError(
                f"expected [[index]] or a named bank for [[bands]], found WEIGHTS {weights.filters.source!r}; "
                "drop [[bands]]"
            )
        return weights
    from pwconv.core.indices import band_of, parse_bindings
    from pwconv.core.layout import parse_layout

    axis = parse_layout(options.layout, len(source.shape)).channel_axis
    channels = int(source.shape[axis])
    labels = source.description.labels.get(axis)
    bindings = parse_bindings(options.bands)
    wanted = len(table.bands)
    if not bindings and (not labels or options.ignore_channel_names):
        if channels != wanted:
            example = ",".join(f"{name}={i + 1}" for i, name in enumerate(table.band_names[:3]))
            raise ShapeError(
                f"expected the {wanted} bands of {table.name} ({', '.join(table.band_names)}), found "
                f"{channels} unnamed bands; bind them with [[bands={example},...]] (from 1)"
            )
        columns = list(range(wanted))
    else:
        columns = [band_of(names, channels, labels, bindings) for names in table.bands]
        for i, column in enumerate(columns):
            if column in columns[:i]:
                first = table.band_names[columns.index(column)]
                raise UsageError(
                    f"expected a band of its own for each of {table.name}'s bands, found {first} and "
                    f"{table.band_names[i]} both bound to band {column + 1}; check [[bands]]"
                )
    matrix = np.zeros((table.weights.shape[0], channels), dtype=np.float64)
    matrix[:, columns] = table.weights
    return dataclasses.replace(
        weights, filters=dataclasses.replace(weights.filters, array=matrix), table=None
    )


def _computed(array: list[list[float]] | list[float], said: str) -> Operand:
    values = np.asarray(array, dtype=np.float64)
    return Operand(values, said, sha256_hex(values.tobytes()), None)


def index_weights(source: Source, options: ApplyOptions) -> Weights:
    """The banks of ``options.index`` (named spectral indices) bound to ``source``'s bands:
    numerators as the filters, denominators as the ratio's denominator."""
    from pwconv.core.indices import index_banks, parse_bindings, parse_constants
    from pwconv.core.layout import parse_layout

    assert options.index is not None
    if options.divide_by is not None:
        raise UsageError(
            "expected [[index]] or [[divide_by]], found both; an index brings its own denominator"
        )
    if options.bias is not None:
        raise UsageError(
            "expected no [[bias]] with [[index]], found one; an index's constants are [[constants]]"
        )
    names = [n.strip().lower() for n in options.index.split(",") if n.strip()]
    axis = parse_layout(options.layout, len(source.shape)).channel_axis
    labels = source.description.labels.get(axis)
    banks = index_banks(
        names,
        int(source.shape[axis]),
        labels,
        parse_bindings(options.bands),
        parse_constants(options.constants),
    )
    said = f"index {', '.join(names)}"
    return Weights(
        _computed(banks[0], f"{said} (numerators)"),
        _computed(banks[1], f"{said} (constant terms)"),
        names=tuple(names),
        denominator=Weights(
            _computed(banks[2], f"{said} (denominators)"),
            _computed(banks[3], f"{said} (denominator constants)"),
        ),
    )


def _with_denominator(plan: ConvPlan, source: Source, ratio: Weights, options: ApplyOptions) -> ConvPlan:
    """The plan of a ratio of two mixes: the denominator bank planned over the same input,
    in the numerator's dtype; it has one filter per output channel, or one for all."""
    if plan.out_dtype.kind not in "f":
        raise UsageError(
            f"expected a real float output for a ratio, found {plan.out_dtype}; give [[dtype=float32]] or float64"
        )
    bias = None if ratio.bias is None else ratio.bias.array
    conv = dataclasses.replace(options.conv, dtype=plan.out_dtype)
    said = ratio.filters.source
    try:
        denominator = plan_for(source.shape, source.dtype, ratio.filters.array, bias, conv)
    except ShapeError as exc:
        raise ShapeError(f"in the denominator bank {said!r}: {exc}") from None
    if denominator.out_channels not in (1, plan.out_channels):
        raise ShapeError(
            f"expected a denominator bank of {counted(plan.out_channels, 'filter')} (one per output channel) or 1, "
            f"found {denominator.out_channels} in {said!r}; give one denominator per numerator filter"
        )
    return dataclasses.replace(plan, denominator=denominator)


def _check_plan(plan: ConvPlan, options: ApplyOptions, saturate_to: np.dtype | None) -> None:
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


def resolve_nodata(
    options: ApplyOptions, source: Source, out_dtype: np.dtype, stored: np.dtype | None = None
) -> Nodata | None:
    """What counts as nodata in the input, and what the output writes there (None: no masking).

    A float output marks nodata with NaN unless ``out_nodata`` says otherwise (the input's own
    value, say 0, is a valid result there); an integer output keeps the input's value when it
    holds it. ``stored`` is the dtype written when it is not ``out_dtype`` (saturation).
    """
    value = nodata_value(options.nodata, source.description.nodata)
    if value is None:
        return None
    nan = math.isnan(value)
    written = stored or out_dtype
    if options.out_nodata is not None:
        out_value = float(options.out_nodata)
    elif written.kind in "fc":
        out_value = math.nan
    elif _holds(written, value):
        out_value = value
    else:
        raise UsageError(
            f"expected an output nodata value that {written} holds, found {value:g} from the input; "
            "pass [[out_nodata]] with one, or a float [[dtype]]"
        )
    if not _holds(written, out_value):
        raise UsageError(
            f"expected an output nodata value that {written} holds, found {out_value:g}; change [[out_nodata]]"
        )
    return Nodata(None if nan else value, nan, out_value, stored)


def _holds(dtype: np.dtype, value: float) -> bool:
    if dtype.kind in "fc":
        return True
    if not math.isfinite(value) or value != int(value):
        return False
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def with_channel_dim(options: ApplyOptions, source: Source) -> ApplyOptions:
    """The options with the input's layout settled: ``channel_dim`` (a NetCDF dimension name)
    or, for the ``auto`` layout, a band-like dimension, as the axis number; else channels-last."""
    layout = resolved_layout(options.layout, options.channel_dim, source.description.dimensions)
    return options if layout == options.layout else dataclasses.replace(options, layout=layout)


def output_attrs(input_text: str, weights: Weights, plan: ConvPlan) -> dict[str, Any]:
    """What an HDF5 or Zarr output records about how it was made."""
    filters = weights.filters
    return {
        "pwconv_version": __version__,
        "input": scrub(input_text),
        "weights_source": scrub(filters.source),
        "weights_sha256": filters.sha256,
        "weights_tensor": (filters.spec.member or "") if filters.spec else "",
        "bias_source": scrub(weights.bias.source) if weights.bias else "",
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
    labels: tuple[str, ...] | None = None


def _channels_to_end(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :] + (shape[axis],)


def open_output(
    spec: Spec, plan: ConvPlan, options: ApplyOptions, output: OutputSettings
) -> tuple[Sink, SinkRequest]:
    """The output's sink, and what it was asked to hold. Engines always write blocks of
    ``plan.out_shape`` in ``plan.out_dtype`` into it (squeezing, saturating and moving the
    channels to where the format keeps them happen here, in wrappers)."""
    block_shape, saturate_to = output.block_shape, output.saturate_to
    axis = plan.channel_axis
    squeeze = options.squeeze
    shape = squeezed(plan.out_shape, axis, squeeze)
    block_shape = squeezed(block_shape, axis, squeeze) if block_shape else None
    channel_axis = max(axis - 1, 0) if squeeze else axis
    row = format_named(spec.format)
    move = row.channels_last and not squeeze and axis != len(shape) - 1
    if move:  # a channels-first result for a format that keeps channels last
        shape, channel_axis = _channels_to_end(shape, axis), len(shape) - 1
        block_shape = _channels_to_end(block_shape, axis) if block_shape else None
    if isinstance(options.output_chunks, tuple) and len(options.output_chunks) != len(shape):
        raise UsageError(
            f"expected [[chunks]] auto, none or {len(shape)} positive comma-separated sizes (the output "
            f"has {len(shape)} axes), found {options.chunks!r}"
        )
    chunks = options.output_chunks
    if isinstance(chunks, tuple):  # a chunk larger than its axis is the whole axis
        chunks = tuple(min(c, max(n, 1)) for c, n in zip(chunks, shape))
    request = SinkRequest(
        shape=shape,
        dtype=saturate_to or plan.out_dtype,
        channel_axis=channel_axis,
        overwrite=options.overwrite,
        attrs=output.attrs if output.nodata is None else {**output.attrs, "nodata": output.nodata},
        compression=options.compression,
        compression_level=options.compression_level,
        chunks=chunks,
        block_shape=block_shape,
        nodata=output.nodata,
        stride=plan.stride,
        options=options.writer_options,
        metadata=output.metadata,
        channel_labels=None if squeeze else output.labels,
        in_order=streamed_to_url(spec, options) and not move,
        buffer_bytes=options.max_bytes // 4,
    )
    sink: Sink = open_sink(spec, request)
    if saturate_to is not None or squeeze or move:
        from pwconv.io.adapters import ChannelsLastSink, SaturatingSink, SqueezedSink  # only where needed
    if move:
        sink = ChannelsLastSink(sink, axis, row.title)
    if saturate_to is not None:
        sink = SaturatingSink(sink, saturate_to)
    return (SqueezedSink(sink, axis) if squeeze else sink), request


def upload_buffer_bytes(max_bytes: int) -> int:
    """What the blocks give up to a streamed upload: its parts in flight and the one being
    filled, 8 MiB each, within a quarter of ``--max-memory`` (the upload holds two pieces at
    the least, 16 MiB, since object stores take parts of 5 MiB or more; past a quarter, that
    floor is not taken from the blocks)."""
    allowance = max_bytes // 4
    return min((streamed_upload_parts(allowance) + 1) * PIECE, allowance)


def streamed_to_url(spec: Spec, options: ApplyOptions) -> bool:
    """Whether the output is uploaded as its blocks come: a format that can, at a URL, written
    by the numpy engine, which then cuts the blocks front to back and writes them in order."""
    return options.engine != "dask" and is_url(spec.path) and format_named(spec.format).streamed_at_url


def choose_engine(
    plan: ConvPlan,
    in_spec: Spec,
    source: Source,
    out_spec: Spec,
    options: ApplyOptions,
    nodata: Nodata | None,
    *,
    held: int = 0,
) -> Engine:
    """The run on the engine ``options`` names, set up before the output is opened; its
    blocks take what ``--max-memory`` leaves beside an output held whole (``held`` bytes)."""
    max_bytes = options.max_bytes - held
    if options.engine == "dask":
        from pwconv.engines.dask_engine import DaskRun

        return DaskRun(plan, in_spec, source, max_bytes=max_bytes, scheduler=options.scheduler, nodata=nodata)
    from pwconv.engines.numpy_engine import NumpyRun

    sequential = format_named(out_spec.format).sequential or streamed_to_url(out_spec, options)
    # Data at a URL is streamed even when it would fit in one block: reading one block then
    # overlaps writing the one before, where a single block pays the two transfers in series.
    stream = is_url(in_spec.path) or is_url(out_spec.path)
    return NumpyRun(
        plan, source, max_bytes=max_bytes, sequential_output=sequential, nodata=nodata, stream=stream
    )


def run_into(sink: Sink, engine: Engine, progress: Progress | None) -> Timings:
    """Run ``engine`` into ``sink`` and commit it; on any failure the sink is aborted."""
    try:
        timings = engine.run(sink, progress)
        commit_start = time.perf_counter()
        sink.commit()
        timings.save += time.perf_counter() - commit_start
    except BaseException:
        sink.abort()
        raise
    return timings


def check_channel_names(weights: Weights, source: Source, plan: ConvPlan, options: ApplyOptions) -> None:
    """A bank made for named channels must meet the same channels, in the same order."""
    wanted, found = weights.channel_names, source.description.labels.get(plan.channel_axis)
    if options.ignore_channel_names or not wanted or not found or tuple(wanted) == tuple(found):
        return
    raise UsageError(
        f"expected the input channels the bank was made for ({', '.join(wanted)}), found "
        f"{', '.join(found)}; reorder the input, or pass [[ignore_channel_names!]] to apply it anyway"
    )


def output_labels(weights: Weights, plan: ConvPlan) -> tuple[str, ...] | None:
    """The output channels' names: the bank's name for each filter, where it has them."""
    names = weights.names
    return tuple(names) if names and len(names) == plan.out_channels else None


def dropped_notes(
    source: Source, output: Spec, nodata: Nodata | None, labels: tuple[str, ...] | None, channels: int
) -> list[str]:
    """What the output's format cannot hold of what the input meant, said once each."""
    row = format_named(output.format)
    kind = os.path.splitext(output.path)[1].lstrip(".").upper() or row.title  # PNG, NPY, ...
    notes = pictures.dropped(source.description.metadata, channels, row.picture_metadata)
    if labels and not row.records_labels:
        notes.append(f"channel names dropped: {kind} output has none ({', '.join(labels[:8])})")
    kept = any(family in source.description.metadata for family in row.georeferencing_from)
    if source.description.georeferenced and not kept:
        notes.append(f"georeferencing dropped: {kind} output has none")
    if nodata is not None and not row.records_nodata:
        notes.append(
            f"nodata not recorded: {kind} has no nodata field; nodata pixels hold {nodata.out_value:g}"
        )
    return notes


def _output_doc(
    spec: Spec, shape: tuple[int, ...], dtype: np.dtype, sink: Sink, notes: list[str], timings: Timings,
    nodata: Nodata | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "path": spec.text,
        "shape": list(shape),
        "dtype": dtype.name,
        "clipped": sink.clipped(),
        "notes": [*sink.notes, *notes],
        "nodata": None
        if nodata is None
        else {
            "input": nodata.value,
            "nan": nodata.nan,
            "output": nodata.out_value,
            "pixels": timings.nodata_pixels,
            "replaced": timings.nodata_replaced,
        },
        # --divide-by: output values whose denominator was 0, written as the nodata (NaN without one)
        "zero_denominators": timings.zero_denominators,
    }


def apply_file(
    input: str,
    weights: str | Weights | None,
    output: str,
    options: ApplyOptions | None = None,
    *,
    dataset: str | None = None,
    weights_dataset: str | None = None,
    progress: Progress | None = None,
) -> Report:
    """Read ``input``, apply the filters, write ``output``; return the report.

    Nothing is visible under ``output`` unless the whole run succeeds.
    """
    options = options or ApplyOptions()
    start = time.perf_counter()
    in_spec = parse_spec(input, dataset)
    out_spec = parse_spec(output, what="output")
    check_output(options, out_spec, format_options=False)  # the input may still change its format
    if options.index is not None and weights:
        raise UsageError(
            f"expected WEIGHTS or [[index]], found both ({weights!r} and {options.index!r}); give one"
        )
    if options.index is None and not weights:
        raise UsageError("expected WEIGHTS (a file or a literal) or [[index]], found neither")
    loaded = (
        None
        if options.index is not None
        else weights
        if isinstance(weights, Weights)
        else read_weights(weights or "", options.bias, member=weights_dataset)
    )
    if loaded is not None:
        loaded = with_divide_by(loaded, options)
    check_distinct(out_spec, in_spec, *(loaded.specs if loaded else []))
    limit_library_caches(options.max_bytes)
    source = open_source(in_spec)
    try:
        out_spec = retarget_output(out_spec, source)
        check_output(options, out_spec)
        check_decoded_piece(source, options.max_bytes, in_spec.text)
        options = with_channel_dim(options, source)
        loaded = index_weights(source, options) if loaded is None else bound_weights(loaded, source, options)
        plan, saturate_to = make_plan(source, loaded, options, out_spec)
        check_channel_names(loaded, source, plan, options)
        labels = output_labels(loaded, plan)
        nodata = resolve_nodata(options, source, plan.out_dtype, saturate_to)
        held = held_output_bytes(out_spec, plan.out_shape, saturate_to or plan.out_dtype, options)
        if streamed_to_url(out_spec, options):
            held += upload_buffer_bytes(options.max_bytes)
        engine = choose_engine(plan, in_spec, source, out_spec, options, nodata, held=held)
        # A chunked output takes one chunk per block unless told its chunks.
        block_shape = (
            engine.block_shape if options.output_chunks == "auto" or options.engine == "dask" else None
        )
        attrs = output_attrs(in_spec.text, loaded, plan)
        if labels:
            attrs["channel_names"] = list(labels)
        settings = OutputSettings(
            attrs, block_shape, saturate_to, nodata.out_value if nodata else None,
            dict(source.description.metadata), labels,
        )  # fmt: skip
        sink, request = open_output(out_spec, plan, options, settings)
        load_seconds = time.perf_counter() - start
        timings = run_into(sink, engine, progress)
    finally:
        source.close()
    return Report(
        input={**describe_input(in_spec.text, plan), "notes": list(source.description.notes)},
        weights=describe_weights(loaded, plan),
        output=_output_doc(
            out_spec,
            request.shape,
            request.dtype,
            sink,
            dropped_notes(source, out_spec, nodata, labels, plan.out_channels),
            timings,
            nodata,
        ),
        bias=describe_bias(loaded),
        groups=plan.groups,
        stride=plan.stride,
        engine=engine.name,
        blocks=timings.blocks,
        seconds={
            "load": load_seconds + timings.load,
            "compute": timings.compute,
            "save": timings.save,
            "total": time.perf_counter() - start,
        },
        flops=plan.flops,
    )
