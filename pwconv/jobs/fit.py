"""``pwconv fit``: learn a filter bank (PCA, whitening, least squares) in one streamed pass.

Every input is read in blocks within ``max_memory``; each block's channel vectors are merged
into float64 moments (:mod:`pwconv.core.fit`), so peak memory does not grow with the files.
Pixels with nodata or NaN in any channel are left out and counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pwconv import __version__
from pwconv.core.blocks import parse_size, plan_blocks
from pwconv.core.conv import Nodata
from pwconv.core.fit import Moments, components_for, inverse_of, lstsq, mnf, pca, reconstruction
from pwconv.core.layout import parse_layout
from pwconv.errors import ShapeError, UsageError
from pwconv.io.atomic import published_with
from pwconv.io.interface import Source
from pwconv.io.registry import bank_specs, check_distinct, limit_library_caches, open_source, write_arrays
from pwconv.io.spec import Spec, parse_spec
from pwconv.jobs.options import (
    AUTO_LAYOUT,
    DEFAULT_MAX_MEMORY,
    check_decoded_piece,
    nodata_value,
    parse_nodata,
    resolved_layout,
)

SAMPLE_SEED = 0


@dataclass(frozen=True)
class FitOptions:
    """What every fit takes: where the channels are, what is nodata, how much to read."""

    layout: str = AUTO_LAYOUT
    # auto (each file's own: GeoTIFF nodata, NetCDF _FillValue), a number, nan or none;
    # NaN is always left out.
    nodata: str = "auto"
    sample: int | None = None
    max_memory: str = DEFAULT_MAX_MEMORY
    overwrite: bool = False
    channel_dim: str | None = None  # the channels by dimension name (NetCDF), as in apply
    dataset: str | None = None  # the array inside each container input, as in apply
    report: str | None = None  # an HTML page of the fit (pwconv[report])
    max_bytes: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_bytes", parse_size(self.max_memory))
        parse_nodata(self.nodata, "nodata", ("auto", "none"))
        if self.sample is not None and self.sample < 1:
            raise UsageError(f"expected [[sample]] of at least 1 pixel, found {self.sample}")

    def nodata_of(self, source: Source) -> float | None:
        """The value left out of ``source``'s pixels besides NaN (None: only NaN)."""
        value = nodata_value(self.nodata, source.description.nodata)
        return None if value is None or math.isnan(value) else value


@dataclass(frozen=True)
class Axes:
    """Where one input's channels are: a layout, or a dimension name that overrides it."""

    layout: str
    channel_dim: str | None = None

    def channel_axis(self, source: Source) -> int:
        layout = resolved_layout(self.layout, self.channel_dim, source.description.dimensions)
        return parse_layout(layout, len(source.shape)).channel_axis

    @property
    def flag(self) -> str:
        """The apply option that says the same."""
        if self.channel_dim is not None:
            return f" --channel-dim {self.channel_dim}"
        return "" if self.layout in (AUTO_LAYOUT, "channels-last") else f" --layout {self.layout}"


@dataclass
class Pixels:
    """What a pass over the inputs counted."""

    total: int = 0
    used: int = 0
    nodata: int = 0
    sampled: bool = False
    sample_note: str | None = None


def _pixel_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def _blocks(
    shape: tuple[int, ...], axes: list[int], per_pixel: int, max_bytes: int
) -> list[tuple[slice, ...]]:
    """Blocks over the pixel axes (every axis but the channel axis), contiguous in pixel order."""
    budget = max(per_pixel, max_bytes // 4)  # the block, its float64 copy and the centred copy
    pixel_axes_shape = tuple(n for i, n in enumerate(shape) if i not in axes)
    return plan_blocks(pixel_axes_shape + (1,), len(pixel_axes_shape), per_pixel, budget, contiguous=True)


def _rows(source: Source, axis: int, pixel_index: tuple[slice, ...]) -> np.ndarray:
    index = pixel_index[:axis] + (slice(None),) + pixel_index[axis:]
    block = np.asarray(source.read(index))
    return np.moveaxis(block, axis, -1).reshape(-1, block.shape[axis])


class _Sampler:
    """A seeded random subset of the pixel positions, drawn once up front."""

    def __init__(self, totals: list[int], wanted: int | None, counts: Pixels) -> None:
        total = sum(totals)
        self.chosen: list[np.ndarray] | None = None
        if wanted is None:
            return
        if wanted >= total:
            counts.sample_note = f"--sample {wanted} is not below the {total} pixels: every pixel was used"
            return
        picks = np.sort(np.random.default_rng(SAMPLE_SEED).choice(total, size=wanted, replace=False))
        edges = np.cumsum([0, *totals])
        self.chosen = [picks[(picks >= a) & (picks < b)] - a for a, b in zip(edges[:-1], edges[1:])]
        counts.sampled = True

    def keep(self, file: int, start: int, count: int) -> np.ndarray | None:
        if self.chosen is None:
            return None
        picks = self.chosen[file]
        inside = picks[(picks >= start) & (picks < start + count)]
        return inside - start


def _valid(rows: np.ndarray, nodata: float | None) -> np.ndarray:
    """Rows with no nodata and no NaN in any channel (the same rule as ``apply``'s masking).

    NaN is looked for in each row's sum first (a sum is NaN when any term is, and one pass of
    numpy's einsum reads the block once, at memory speed); only rows whose sum is NaN are
    checked term by term, since two infinities of opposite sign also sum to NaN. Not a BLAS
    matrix-vector product: OpenBLAS's threads keep spinning after it and took a core from the
    scatter kernel's threads that follow (``fit mnf`` on 1 GiB, 2 cores: 2.4-3.6 s against
    1.8 s with one BLAS thread).
    """
    if nodata is not None and not math.isnan(nodata):
        return ~Nodata(nodata, True, math.nan).mask(rows, axis=1)
    if rows.dtype.kind not in "fc" or rows.shape[1] == 0:
        return np.ones(rows.shape[0], bool)
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.einsum("pc->p", rows)
    valid = ~np.isnan(sums)
    suspect = np.flatnonzero(~valid)
    if suspect.size:
        valid[suspect] = ~np.isnan(rows[suspect]).any(axis=1)
    return valid


def _open_all(specs: list[Spec], max_bytes: int) -> list[Source]:
    limit_library_caches(max_bytes)
    sources: list[Source] = []
    try:
        for spec in specs:
            sources.append(open_source(spec))
            check_decoded_piece(sources[-1], max_bytes, spec.text)
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


def _passes(sources: list[Source], layouts: list[Axes], options: FitOptions) -> Iterator[list[np.ndarray]]:
    """Blocks of valid (pixels, channels) rows, one list entry per source, in lockstep.

    All sources here share their pixel shape (the input and target of lstsq) or are read one
    after another (the inputs of pca: one source per call).
    """
    axes = [layout.channel_axis(s) for s, layout in zip(sources, layouts)]
    per_pixel = sum(s.shape[a] * (np.dtype(s.dtype).itemsize + 16) for s, a in zip(sources, axes))
    for index in _blocks(tuple(sources[0].shape), [axes[0]], per_pixel, options.max_bytes):
        pixel_index = index[:-1]
        yield [_rows(s, a, pixel_index) for s, a in zip(sources, axes)]
        for source, axis in zip(sources, axes):
            source.release(pixel_index[:axis] + (slice(None),) + pixel_index[axis:])


def _accumulate(
    groups: list[list[Spec]], layouts: list[Axes], options: FitOptions, joint: bool
) -> tuple[Moments, Pixels, list[int]]:
    """Moments over every pixel of every group (a group: the specs read in lockstep). A
    pixel with nodata (each file's own) or NaN in any channel of any file is left out."""
    counts = Pixels()
    opened = [_open_all(group, options.max_bytes) for group in groups]
    try:
        channel_counts = [[s.shape[lay.channel_axis(s)] for s, lay in zip(g, layouts)] for g in opened]
        shapes = [_pixel_shape(tuple(g[0].shape), layouts[0].channel_axis(g[0])) for g in opened]
        sampler = _Sampler([math.prod(shape) for shape in shapes], options.sample, counts)
        moments = Moments(sum(channel_counts[0]))
        for file, group in enumerate(opened):
            nodata = [options.nodata_of(source) for source in group]
            start = 0
            for rows in _passes(group, layouts, options):
                count = rows[0].shape[0]
                valid = np.logical_and.reduce([_valid(r, value) for r, value in zip(rows, nodata)])
                block = (
                    np.concatenate([r.astype(np.float64, copy=False) for r in rows], axis=1)
                    if joint
                    else rows[0]
                )
                keep = sampler.keep(file, start, count)
                if keep is not None:
                    block, valid = block[keep], valid[keep]
                counts.total += count if keep is None else len(keep)
                left_out = int(np.count_nonzero(~valid))
                counts.nodata += left_out
                moments.add(block[valid] if left_out else block)  # no copy where every pixel counts
                start += count
        counts.used = moments.count
        return moments, counts, channel_counts[0]
    finally:
        for group in opened:
            for source in group:
                source.close()


def _check_specs(specs: list[Spec], output: Spec) -> None:
    for part in bank_specs(output):  # none of the bank's files may be an input
        check_distinct(part, *specs)
    for spec in specs:
        if spec.path == "-":
            raise UsageError("expected files to fit, found '-'; fit reads every input in blocks, give paths")


def _bank_dtype(sources_dtypes: list[np.dtype]) -> np.dtype:
    """float32 when every input is float32 (so that applying the bank keeps float32), else float64."""
    return np.dtype(np.float32) if all(d == np.float32 for d in sources_dtypes) else np.dtype(np.float64)


@dataclass(frozen=True)
class _Header:
    pixel_shape: tuple[int, ...]
    channels: int
    dtype: np.dtype
    labels: tuple[str, ...] | None  # the channels' names (band descriptions, a coordinate)


def _headers(specs: list[Spec], layouts: list[Axes]) -> list[_Header]:
    """Each input's pixel shape, channel count and dtype, from its header (no data read)."""
    headers = []
    for spec, layout in zip(specs, layouts):
        source = open_source(spec)
        try:
            axis = layout.channel_axis(source)
            shape = tuple(source.shape)
            labels = source.description.labels.get(axis)
            headers.append(_Header(_pixel_shape(shape, axis), shape[axis], np.dtype(source.dtype), labels))
        finally:
            source.close()
    return headers


def _labels(
    names: list[str] | tuple[str, ...] | None, channel_names: tuple[str, ...] | None
) -> dict[str, np.ndarray]:
    """A bank's text arrays: a name per filter (its output channel) and, where the input's
    channels had names, the channels it was fitted on (``apply`` checks them)."""
    arrays = {"names": np.array(names)} if names else {}
    if channel_names:
        arrays["channel_names"] = np.array(channel_names)
    return arrays


def _apply_command(inputs: list[str], written: list[str], axes: Axes, dataset: str | None) -> str:
    """The apply command that uses the bank on the first input (``pwconv`` stands for the
    program as it was run; the command line writes it so)."""
    bias = f" --bias {written[1]}" if len(written) > 1 else ""  # an .npy bank's bias file
    member = f" --dataset {dataset}" if dataset else ""
    return f"pwconv apply {inputs[0]} {written[0]}{axes.flag}{member}{bias} -o OUTPUT"


@dataclass(frozen=True)
class _Prepared:
    """What a projection fit (pca, mnf) knows before it reads any pixel."""

    specs: list[Spec]
    out_spec: Spec
    axes: Axes
    headers: list[_Header]

    @property
    def channels(self) -> int:
        return self.headers[0].channels


def _prepare(inputs: list[str], output: str, k: float, options: FitOptions) -> _Prepared:
    """Parse and check the inputs and the bank's path, and ``k`` against the channels, from
    the headers alone."""
    if not inputs:
        raise UsageError("expected at least one input to fit, found none")
    components_for(k, np.ones(1))  # k is checked before any file is read
    specs = [parse_spec(text, options.dataset) for text in inputs]
    out_spec = parse_spec(output, what="output")
    _check_specs(specs, out_spec)
    axes = Axes(options.layout, options.channel_dim)
    headers = _headers(specs, [axes] * len(specs))
    channels = {h.channels for h in headers}
    if len(channels) > 1:
        raise ShapeError(
            f"expected inputs with the same number of channels, found {sorted(channels)}; fit each kind separately"
        )
    c = next(iter(channels))
    if k >= 1 and int(k) > c:
        raise UsageError(
            f"expected [[k]] of at most the {c} input channels, found {int(k)}; use [[k={c}]] or fewer"
        )
    return _Prepared(specs, out_spec, axes, headers)


def components_asked(k: float | None, reconstruct: int | None) -> float:
    """The components to keep: ``-k``, or the count ``--reconstruct`` keeps."""
    if reconstruct is None:
        if k is None:
            raise UsageError(
                "expected [[k]] (components to keep) or [[reconstruct]], found neither; e.g. -k 3"
            )
        return k
    if reconstruct < 1:
        raise UsageError(f"expected [[reconstruct]] of at least 1 component, found {reconstruct}")
    if k is not None and k != reconstruct:
        raise UsageError(
            f"expected one count of components, found [[k={k:g}]] and [[reconstruct={reconstruct}]]; give one of them"
        )
    return float(reconstruct)


def _projection_arrays(
    forward: tuple[np.ndarray, np.ndarray],
    inverse: tuple[np.ndarray, np.ndarray],
    dtype: np.dtype,
    prefix: str,
    labels: tuple[str, ...] | None,
    reconstruct: bool,
) -> dict[str, np.ndarray]:
    """A projection bank's arrays: the forward bank as ``weights`` and ``bias``, or, with
    ``reconstruct``, the C x C bank of forward then inverse there and the forward bank as
    ``forward_weights``; the inverse as ``inverse_weights`` and ``inverse_bias`` (applied with
    ``--bias auto``)."""
    k = forward[0].shape[0]
    arrays = {
        "inverse_weights": inverse[0].astype(dtype),
        "inverse_bias": inverse[1].astype(dtype),
    }
    if reconstruct:
        whole = reconstruction(*forward, *inverse)
        return {
            "weights": whole[0].astype(dtype),
            "bias": whole[1].astype(dtype),
            "forward_weights": forward[0].astype(dtype),
            "forward_bias": forward[1].astype(dtype),
            **arrays,
            **_labels(labels, labels),
        }
    names = [f"{prefix}{i + 1}" for i in range(k)]
    return {
        "weights": forward[0].astype(dtype),
        "bias": forward[1].astype(dtype),
        **arrays,
        **_labels(names, labels),
    }


def _projection_doc(
    method: str, prepared: _Prepared, written: list[str], arrays: dict[str, np.ndarray], counts: Pixels
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pwconv": __version__,
        "method": method,
        "inputs": [s.text for s in prepared.specs],
        "output": written,
        "bank": {
            "weights": list(arrays["weights"].shape),
            "dtype": arrays["weights"].dtype.name,
            "bias": True,
        },
        "pixels": _pixels_doc(counts),
    }
    if prepared.out_spec.format != "npy":  # an .npy bank holds the weights and bias alone
        if "forward_weights" in arrays:
            doc["forward"] = f"{written[0]}:forward_weights --bias auto"
        else:
            doc["inverse"] = f"{written[0]}:inverse_weights --bias auto"
    return doc


def fit_pca(
    inputs: list[str],
    output: str,
    k: float | None,
    options: FitOptions,
    *,
    whiten: bool = False,
    reconstruct: int | None = None,
) -> dict[str, Any]:
    """Principal components of the channel vectors of every input, written as a filter bank
    (with ``reconstruct``, the C x C bank that keeps that many components)."""
    start = time.perf_counter()
    count = components_asked(k, reconstruct)
    prepared = _prepare(inputs, output, count, options)
    _check_report(options)
    moments, counts, _ = _accumulate([[s] for s in prepared.specs], [prepared.axes], options, joint=False)
    if counts.used == 0:
        raise ShapeError(
            f"expected valid pixels to fit, found none: all {counts.total} are nodata or NaN; check [[nodata]]"
        )
    result = pca(moments, count, whiten)
    method = (
        "pca" + (" (whitened)" if whiten else "") + (f", reconstructed from {count:g}" if reconstruct else "")
    )
    dtype = _bank_dtype([h.dtype for h in prepared.headers])
    arrays = {
        **_projection_arrays(
            (result.weights, result.bias),
            inverse_of(result),
            dtype,
            "pc",
            prepared.headers[0].labels,
            bool(reconstruct),
        ),
        "mean": result.mean,
        "components": result.components,
        "explained_variance": result.explained_variance,
        "explained_variance_ratio": result.explained_variance_ratio,
        "n_pixels": np.array(result.n_pixels),
        "method": np.array([method]),  # for info BANK
    }
    # every variance, for the report's spectrum only
    spectrum = np.clip(np.linalg.eigvalsh(moments.covariance())[::-1], 0, None) if options.report else None
    picture = _projection_picture(
        method, prepared, arrays, counts, spectrum, len(result.explained_variance), options
    )
    written, report = _write_bank(prepared.out_spec, arrays, options, picture)
    return {
        **_projection_doc(method, prepared, written, arrays, counts),
        "components": int(result.weights.shape[0]),
        "explained_variance": result.explained_variance.tolist(),
        "explained_variance_ratio": result.explained_variance_ratio.tolist(),
        "explained_total": float(result.explained_variance_ratio.sum()),
        "seconds": round(time.perf_counter() - start, 6),
        "apply": _apply_command(inputs, written, prepared.axes, options.dataset),
        "report": report,
    }


#: Where ``fit mnf`` takes each pixel's neighbour for the noise estimate, as (row, column)
#: offsets; the names are Spectral Python's.
NOISE_DIRECTIONS = {"lowerright": (1, 1), "lowerleft": (1, -1), "right": (0, 1), "lower": (1, 0)}


def _pairs(x: np.ndarray, step: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel of a (rows, columns, ...) block and its neighbour ``step`` away, where both exist."""
    dr, dc = step
    rows = x.shape[0] - dr
    if dc >= 0:
        return x[:rows, : x.shape[1] - dc], x[dr:, dc:]
    return x[:rows, -dc:], x[dr:, : x.shape[1] + dc]


def _image_axes(source: Source, axes: Axes, text: str) -> tuple[int, int, int, list[int]]:
    """(channel, row, column axes, the other pixel axes) of an input to ``fit mnf``: its last
    two pixel axes are the image's rows and columns."""
    channel = axes.channel_axis(source)
    pixel = [a for a in range(len(source.shape)) if a != channel]
    if len(pixel) < 2:
        raise ShapeError(
            f"expected an image (rows and columns of pixels) for fit mnf, found shape {tuple(source.shape)} in "
            f"{text!r} with channels on axis {channel}; the noise comes from neighbouring pixels"
        )
    return channel, pixel[-2], pixel[-1], pixel[:-2]


def _mnf_moments(
    specs: list[Spec], axes: Axes, options: FitOptions, step: tuple[int, int]
) -> tuple[Moments, Moments, Pixels]:
    """In one pass over every input, by bands of whole rows (each band read with the next
    row, so that no neighbour pair is missed): the moments of the valid pixels and of the
    differences of valid neighbour pairs."""
    counts = Pixels()
    signal: Moments | None = None
    noise: Moments | None = None
    for spec in specs:
        (source,) = _open_all([spec], options.max_bytes)
        try:
            channel, row, col, outer = _image_axes(source, axes, spec.text)
            shape = tuple(source.shape)
            c = shape[channel]
            signal = signal or Moments(c)
            noise = noise or Moments(c)
            nodata = options.nodata_of(source)
            per_row = shape[col] * c * (np.dtype(source.dtype).itemsize + 40)
            band = max(1, options.max_bytes // 4 // per_row)
            for place in np.ndindex(*[shape[a] for a in outer]):
                for top in range(0, shape[row], band):
                    bottom = min(shape[row], top + band)
                    index = [slice(None)] * len(shape)
                    for axis, i in zip(outer, place):
                        index[axis] = slice(i, i + 1)
                    index[row] = slice(top, min(shape[row], bottom + step[0]))
                    block = np.asarray(source.read(tuple(index)))
                    x = np.moveaxis(block, (row, col, channel), (0, 1, 2)).reshape(
                        block.shape[row], shape[col], c
                    )
                    valid = _valid(x.reshape(-1, c), nodata).reshape(x.shape[:2])
                    own, own_valid = x[: bottom - top], valid[: bottom - top]
                    counts.total += own_valid.size
                    counts.nodata += int(np.count_nonzero(~own_valid))
                    first, second = _pairs(x, step)
                    if valid.all():  # the usual case: no masked copies
                        signal.add(own.reshape(-1, c))
                        noise.add_differences(first, second, x, step)
                    else:
                        signal.add(own[own_valid])
                        first_valid, second_valid = _pairs(valid, step)
                        both = first_valid & second_valid
                        noise.add(np.subtract(first[both], second[both], dtype=np.float64))
                    source.release(tuple(index))
        finally:
            source.close()
    assert signal is not None and noise is not None
    counts.used = signal.count
    return signal, noise, counts


def fit_mnf(
    inputs: list[str],
    output: str,
    k: float | None,
    options: FitOptions,
    *,
    noise_from: str = "lowerright",
    reconstruct: int | None = None,
) -> dict[str, Any]:
    """Minimum noise fraction of every input's pixels, written as a filter bank (with
    ``reconstruct``, the C x C bank that denoises by keeping that many components)."""
    start = time.perf_counter()
    if noise_from not in NOISE_DIRECTIONS:
        raise UsageError(
            f"expected [[noise_from]] one of {', '.join(NOISE_DIRECTIONS)}, found {noise_from!r}"
        )
    if options.sample is not None:
        raise UsageError(
            "expected every pixel for fit mnf (its noise comes from neighbours), found --sample; drop it"
        )
    count = components_asked(k, reconstruct)
    prepared = _prepare(inputs, output, count, options)
    _check_report(options)
    signal, noise, counts = _mnf_moments(prepared.specs, prepared.axes, options, NOISE_DIRECTIONS[noise_from])
    if counts.used == 0:
        raise ShapeError(
            f"expected valid pixels to fit, found none: all {counts.total} are nodata or NaN; check [[nodata]]"
        )
    result = mnf(signal, noise, count)
    kept = result.weights.shape[0]
    method = f"mnf (noise from {noise_from} differences)" + (
        f", reconstructed from {kept}" if reconstruct else ""
    )
    dtype = _bank_dtype([h.dtype for h in prepared.headers])
    arrays = {
        **_projection_arrays(
            (result.weights, result.bias),
            (result.inverse, result.inverse_bias),
            dtype,
            "mnf",
            prepared.headers[0].labels,
            bool(reconstruct),
        ),
        "mean": result.mean,
        "eigenvalues": result.eigenvalues,
        "noise_covariance": result.noise,
        "n_pixels": np.array(result.n_pixels),
        "method": np.array([method]),
    }
    picture = _projection_picture(method, prepared, arrays, counts, result.eigenvalues, kept, options)
    written, report = _write_bank(prepared.out_spec, arrays, options, picture)
    return {
        **_projection_doc(method, prepared, written, arrays, counts),
        "components": kept,
        "eigenvalues": result.eigenvalues.tolist(),
        "snr": (result.eigenvalues[:kept] - 1).tolist(),
        "noise_pairs": result.n_differences,
        "seconds": round(time.perf_counter() - start, 6),
        "apply": _apply_command(inputs, written, prepared.axes, options.dataset),
        "report": report,
    }


def fit_lstsq(
    input: str,
    target: str,
    output: str,
    options: FitOptions,
    *,
    target_layout: str | None = None,
    bias: bool = True,
    ridge: float = 0.0,
) -> dict[str, Any]:
    """The K x C bank (and bias) that maps INPUT's channel vectors onto TARGET's, written as a bank."""
    start = time.perf_counter()
    if not math.isfinite(ridge) or ridge < 0:
        raise UsageError(f"expected [[ridge]] of at least 0 (a finite number), found {ridge}")
    in_spec, target_spec = (
        parse_spec(input, options.dataset),
        parse_spec(target, options.dataset, what="target"),
    )
    out_spec = parse_spec(output, what="output")
    _check_specs([in_spec, target_spec], out_spec)
    axes = Axes(options.layout, options.channel_dim)
    layouts = [axes, Axes(target_layout) if target_layout else axes]
    headers = _headers([in_spec, target_spec], layouts)
    shapes = [h.pixel_shape for h in headers]
    if shapes[0] != shapes[1]:
        raise ShapeError(
            f"expected TARGET with the same pixels as INPUT, found {math.prod(shapes[1])} pixels {shapes[1]} "
            f"against {math.prod(shapes[0])} {shapes[0]}; give a target of the same size (or [[target_layout]])"
        )
    _check_report(options)
    moments, counts, channels = _accumulate([[in_spec, target_spec]], layouts, options, joint=True)
    if counts.used == 0:
        raise ShapeError(
            f"expected valid pixels to fit, found none: all {counts.total} are nodata or NaN; check [[nodata]]"
        )
    result = lstsq(moments, channels[0], bias=bias, ridge=ridge)
    method = "lstsq" + (f" (ridge {ridge:g})" if ridge else "")
    dtype = _bank_dtype([headers[0].dtype])
    arrays: dict[str, np.ndarray] = {"weights": result.weights.astype(dtype)}
    if result.bias is not None:
        arrays["bias"] = result.bias.astype(dtype)
    arrays |= {
        "rms": result.rms,
        "r2": result.r2,
        "condition": np.array(result.condition),
        "n_pixels": np.array(result.n_pixels),
        **_labels(headers[1].labels, headers[0].labels),
        "method": np.array([method]),
    }
    page = None
    if options.report is not None:
        from pwconv.jobs.figures import FitPicture, fit_report

        names = headers[1].labels or tuple(f"target {k}" for k in range(result.weights.shape[0]))
        page = fit_report(FitPicture(
            method, in_spec.text, result.weights, result.bias, tuple(names), headers[0].labels, counts.used,
            sample=_sample_grid(in_spec, layouts[0]), target=_sample_grid(target_spec, layouts[1]), r2=result.r2,
        ))  # fmt: skip
    written, report = _write_bank(out_spec, arrays, options, page)
    return {
        "pwconv": __version__,
        "method": method,
        "report": report,
        "inputs": [in_spec.text],
        "target": target_spec.text,
        "output": written,
        "bank": {"weights": list(result.weights.shape), "dtype": dtype.name, "bias": result.bias is not None},
        "pixels": _pixels_doc(counts),
        "rms": result.rms.tolist(),
        "r2": result.r2.tolist(),
        "condition": result.condition,
        "seconds": round(time.perf_counter() - start, 6),
        "apply": _apply_command([input], written, axes, options.dataset),
    }


#: The coarse grid a fit report draws the input on: at most this many rows and columns.
_REPORT_GRID = 96


def _sample_grid(spec: Spec, axes: Axes) -> np.ndarray:
    """An input on a coarse grid of its last two pixel axes, as (rows, columns, channels)
    float64, read a row at a time (the first position of any other pixel axis)."""
    source = open_source(spec)
    try:
        channel = axes.channel_axis(source)
        shape = tuple(source.shape)
        pixel = [a for a in range(len(shape)) if a != channel]
        row_axis, col_axis = ([None] + pixel)[-2:] if len(pixel) < 2 else pixel[-2:]
        rows = (
            range(0, shape[row_axis], max(1, -(-shape[row_axis] // _REPORT_GRID)))
            if row_axis is not None
            else [0]
        )
        col_step = max(1, -(-shape[col_axis] // _REPORT_GRID)) if col_axis is not None else 1
        lines = []
        for r in rows:
            index = [slice(0, 1)] * len(shape)
            index[channel] = slice(None)
            if col_axis is not None:
                index[col_axis] = slice(None)
            if row_axis is not None:
                index[row_axis] = slice(r, r + 1)
            block = np.moveaxis(np.asarray(source.read(tuple(index))), channel, -1)
            lines.append(block.reshape(-1, shape[channel])[::col_step].astype(np.float64))
        return np.stack(lines)
    finally:
        source.close()


def _write_bank(
    spec: Spec, arrays: dict[str, np.ndarray], options: FitOptions, page: bytes | None
) -> tuple[list[str], dict[str, Any] | None]:
    """The bank's files, and the report page with them: published together, or none."""
    if options.report is None or page is None:
        return write_arrays(spec, arrays, options.overwrite), None
    with published_with({options.report: page}):
        written = write_arrays(spec, arrays, options.overwrite)
    return written, {"path": options.report, "format": "html", "bytes": len(page)}


def _check_report(options: FitOptions) -> None:
    if options.report is None:
        return
    from pwconv.jobs.figures import check_report_target

    check_report_target(options.report, options.overwrite)  # an .html: never one of the inputs


def _projection_picture(
    method: str, prepared: _Prepared, arrays: dict[str, np.ndarray], counts: Pixels,
    spectrum: np.ndarray | None, kept: int, options: FitOptions,
) -> bytes | None:  # fmt: skip
    """The report page of a projection fit (``spectrum``: every variance or eigenvalue),
    drawn only when one is asked for."""
    if options.report is None:
        return None
    from pwconv.jobs.figures import FitPicture, fit_report

    weights = arrays.get("forward_weights", arrays["weights"])
    bias = arrays.get("forward_bias", arrays.get("bias"))
    prefix = "mnf" if method.startswith("mnf") else "pc"
    return fit_report(FitPicture(
        method, ", ".join(s.text for s in prepared.specs), np.asarray(weights, np.float64)[:kept],
        None if bias is None else np.asarray(bias, np.float64)[:kept], tuple(f"{prefix}{i + 1}" for i in range(kept)),
        prepared.headers[0].labels, counts.used, spectrum=spectrum,
        sample=_sample_grid(prepared.specs[0], prepared.axes),
    ))  # fmt: skip


def _pixels_doc(counts: Pixels) -> dict[str, Any]:
    return {
        "read": counts.total,
        "used": counts.used,
        "nodata": counts.nodata,
        "sampled": counts.sampled,
        "note": counts.sample_note,
    }
