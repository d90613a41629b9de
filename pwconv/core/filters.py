"""Normalise a filter bank of any common shape to the canonical (K, C) matrix.

Readings (C is the number of input channels each filter sees, K the number of filters):

=========  =======================  ==========================================
name       shape                    where it comes from
=========  =======================  ==========================================
``c``      (C,)                     one filter
``kc``     (K, C)                   canonical; rows are filters
``ck``     (C, K)                   columns are filters (``x @ w`` style)
``oihw``   (K, C, 1, ...)           torch ``Conv1d/2d/3d.weight``
``hwio``   (1, ..., C, K)           keras / TensorFlow kernels
``chw``    (C, 1, ...)              one filter stored channels-first
``hwc``    (1, ..., C)              one filter stored channels-last
=========  =======================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pwconv.core.words import one_of
from pwconv.errors import FormatError, ShapeError, UsageError

WEIGHTS_LAYOUTS = ("auto", "kc", "ck", "oihw", "hwio")

_DESCRIPTIONS = {
    "c": "one filter (C,)",
    "kc": "(K, C)",
    "ck": "(C, K), transposed",
    "oihw": "torch-style (K, C, 1x1)",
    "hwio": "keras-style (1x1, C, K)",
    "chw": "one filter (C, 1x1)",
    "hwc": "one filter (1x1, C)",
}


class ChannelMismatch(ShapeError):
    """No reading of the filters takes the input's channel count; ``counts`` are those they take."""

    def __init__(self, shape: tuple[int, ...], in_channels: int, counts: set[int]) -> None:
        self.counts = counts
        super().__init__(
            f"channel mismatch: the input has {in_channels} channels per filter but filters of "
            f"shape {shape} take {one_of(counts)}"
        )


@dataclass(frozen=True)
class FilterBank:
    """Filters as a (K, C_per_group) matrix plus how they were read from the source shape."""

    matrix: np.ndarray
    reading: str
    source_shape: tuple[int, ...]

    @property
    def description(self) -> str:
        """How the source shape was read, e.g. ``(2, 1, 1) read as one filter (C, 1x1)``."""
        text = f"{self.source_shape} read as {_DESCRIPTIONS[self.reading]}"
        if self.square:
            text += " (square: rows taken as filters)"
        return text

    @property
    def square(self) -> bool:
        """A square (K, C) matrix, where reading columns as filters would also fit."""
        return self.reading == "kc" and self.matrix.shape[0] == self.matrix.shape[1] > 1


@dataclass(frozen=True)
class _Reading:
    name: str
    in_channels: int
    kernel: tuple[int, ...]
    to_matrix: Callable[[np.ndarray], np.ndarray]


def _readings(shape: tuple[int, ...], forced: str) -> list[_Reading]:
    nd = len(shape)
    out: list[_Reading] = []
    if nd == 1:
        out.append(_Reading("c", shape[0], (), lambda w: w.reshape(1, -1)))
        return out
    if nd == 2:
        out.append(_Reading("kc", shape[1], (), lambda w: w))
        out.append(_Reading("ck", shape[0], (), lambda w: w.T))
        return out
    out.append(_Reading("oihw", shape[1], shape[2:], lambda w: w.reshape(w.shape[0], w.shape[1])))
    out.append(_Reading("hwio", shape[-2], shape[:-2], lambda w: w.reshape(w.shape[-2], w.shape[-1]).T))
    if forced == "auto":
        out.append(_Reading("chw", shape[0], shape[1:], lambda w: w.reshape(1, -1)))
        out.append(_Reading("hwc", shape[-1], shape[:-1], lambda w: w.reshape(1, -1)))
    return out


def _allowed(shape: tuple[int, ...], weights_layout: str) -> list[_Reading]:
    readings = _readings(shape, weights_layout)
    if weights_layout == "auto":
        return readings
    if weights_layout == "kc" and len(shape) <= 2:
        return readings[:1]
    if weights_layout == "ck" and len(shape) <= 2:
        return readings[-1:]
    if weights_layout == "oihw" and len(shape) >= 3:
        return readings[:1]
    if weights_layout == "hwio" and len(shape) >= 3:
        return readings[1:2]
    if weights_layout in ("oihw", "hwio") and len(shape) == 2:
        # A 2-d torch weight is (K, C), a 2-d keras kernel is (C, K).
        return readings[:1] if weights_layout == "oihw" else readings[-1:]
    if weights_layout in ("kc", "ck") and len(shape) > 2:
        raise UsageError(
            f"expected a 1-d or 2-d filter bank for [[weights_layout={weights_layout}]], found shape "
            f"{shape}; use [[weights_layout=oihw|hwio|auto]]"
        )
    raise UsageError(
        f"expected [[weights_layout]] one of {', '.join(WEIGHTS_LAYOUTS)}, found {weights_layout!r}"
    )


def _kernel_text(kernel: tuple[int, ...]) -> str:
    return "x".join(str(k) for k in kernel)


def normalise_filters(filters: np.ndarray, in_channels: int, weights_layout: str = "auto") -> FilterBank:
    """Read ``filters`` as a (K, in_channels) matrix.

    ``in_channels`` is the number of channels each filter sees (C, or C / groups).

    >>> normalise_filters(np.array([2, 3]), 2).matrix.tolist()
    [[2, 3]]
    """
    if weights_layout not in WEIGHTS_LAYOUTS:
        raise UsageError(
            f"expected a weights layout in {', '.join(WEIGHTS_LAYOUTS)}, found {weights_layout!r}"
        )
    w = np.asarray(filters)
    if w.dtype.hasobject or w.dtype.kind not in "biufc":
        raise FormatError(
            f"expected numeric filters, found dtype {w.dtype}; save the filters as a numeric array"
        )
    shape = tuple(int(n) for n in w.shape)
    if w.ndim == 0:
        raise ShapeError(
            "expected filters of shape (K, C) or (C,), found a 0-d scalar; "
            "write one weight per input channel, e.g. '2,3'"
        )
    if w.size == 0:
        raise ShapeError(f"expected a non-empty filter bank, found shape {shape}")
    if w.ndim == 2 and weights_layout in ("auto", "kc") and shape[1] == in_channels:
        # The canonical (K, C) form: no other reading is consulted.
        return FilterBank(
            matrix=w if w.flags.c_contiguous else np.ascontiguousarray(w), reading="kc", source_shape=shape
        )
    readings = _allowed(shape, weights_layout)
    matching = [r for r in readings if r.in_channels == in_channels]
    fitting = [r for r in matching if all(k == 1 for k in r.kernel)]
    if not fitting:
        if matching:
            kernel = matching[0].kernel
            raise ShapeError(
                f"pwconv applies 1x1 kernels; got {_kernel_text(kernel)} (filters of shape {shape}); "
                "use a 1x1 filter bank, or a convolution library for larger kernels"
            )
        raise ChannelMismatch(shape, in_channels, {r.in_channels for r in readings})
    if len(fitting) > 1 and fitting[0].name == "kc":
        # (K, C) is the canonical form: a square matrix is read row-per-filter.
        fitting = fitting[:1]
    chosen = fitting[0]
    matrix = chosen.to_matrix(w)
    for other in fitting[1:]:
        alt = other.to_matrix(w)
        if alt.shape != matrix.shape or not np.array_equal(alt, matrix):
            names = ", ".join(r.name for r in fitting)
            raise ShapeError(
                f"ambiguous filters: shape {shape} fits {in_channels} input channels as {names}; "
                f"choose one with [[weights_layout={fitting[0].name}|{fitting[1].name}]]"
            )
    return FilterBank(matrix=np.ascontiguousarray(matrix), reading=chosen.name, source_shape=shape)


def reading_for(shape: tuple[int, ...], in_channels: int) -> tuple[str, int] | None:
    """(reading, K) when a tensor of ``shape`` is a 1x1 bank of K filters for ``in_channels``
    channels (no data needed), else None. Vectors are not counted: they are usually biases.

    >>> reading_for((64, 192, 1, 1), 192)
    ('oihw', 64)
    """
    if len(shape) < 2:
        return None
    for reading in _readings(tuple(shape), "auto"):
        if reading.in_channels == in_channels and all(k == 1 for k in reading.kernel):
            filters = {"kc": shape[0], "ck": shape[-1], "oihw": shape[0], "hwio": shape[-1]}.get(
                reading.name, 1
            )
            return reading.name, int(filters)
    return None


def bank_reading(shape: tuple[int, ...], in_channels: int) -> tuple[str, int, int] | None:
    """(reading, K, groups) when a tensor of ``shape`` is a 1x1 bank for ``in_channels``
    channels: a whole one (groups 1), or a grouped kernel such as torch's (K, C/G, 1, 1),
    whose ``--groups G`` applies it. A 4-d kernel is read as (O, I, H, W) or (H, W, I, O)
    before a single (C, H, W) filter, which a model's tensors never are.

    >>> bank_reading((64, 192, 1, 1), 192), bank_reading((32, 1, 1, 1), 32)
    (('oihw', 64, 1), ('oihw', 32, 32))
    """
    shape = tuple(shape)
    if len(shape) == 4:
        for reading in _readings(shape, "oihw"):  # (O, I, H, W), then (H, W, I, O)
            seen, kernel = reading.in_channels, reading.kernel
            filters = shape[0] if reading.name == "oihw" else shape[-1]
            if not all(k == 1 for k in kernel) or seen > in_channels or in_channels % seen:
                continue
            groups = in_channels // seen
            if filters % groups == 0:
                return reading.name, int(filters), groups
    whole = reading_for(shape, in_channels)
    return None if whole is None else (whole[0], whole[1], 1)


def normalise_bias(bias: np.ndarray | None, n_filters: int) -> np.ndarray | None:
    """Return ``bias`` as a (K,) vector, or raise if it does not hold one value per filter."""
    if bias is None:
        return None
    b = np.asarray(bias)
    if b.dtype.hasobject or b.dtype.kind not in "biufc":
        raise FormatError(f"expected a numeric bias, found dtype {b.dtype}")
    non_unit = [n for n in b.shape if n != 1]
    if b.size != n_filters or len(non_unit) > 1:
        raise ShapeError(
            f"expected a bias with one value per filter ({n_filters} values), found shape "
            f"{tuple(b.shape)}; give {n_filters} comma-separated values or a ({n_filters},) array"
        )
    return b.reshape(n_filters)


def parse_literal(text: str) -> np.ndarray:
    """Parse an inline matrix literal: ``"2,3"`` -> (2,), ``"1,0,0;0,1,0"`` -> (2, 3).

    Whole numbers give an int64 array, anything else float64.

    >>> parse_literal("1,0;0,1").tolist()
    [[1, 0], [0, 1]]
    """
    rows_text = [row for row in text.strip().strip(";").split(";")]
    rows: list[list[str]] = [[v.strip() for v in row.split(",")] for row in rows_text]
    if not rows or any(v == "" for row in rows for v in row):
        raise UsageError(
            f"expected numbers separated by ',' (rows by ';'), found {text!r}; write e.g. '2,3' or '1,0;0,1'"
        )
    if len({len(row) for row in rows}) != 1:
        raise UsageError(
            f"expected rows of equal length in the matrix literal, found lengths "
            f"{[len(r) for r in rows]} in {text!r}"
        )
    try:
        as_int = [[int(v) for v in row] for row in rows]
        arr = np.array(as_int, dtype=np.int64)
    except (ValueError, OverflowError):
        try:
            arr = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
        except ValueError:
            raise UsageError(
                f"expected numbers separated by ',' (rows by ';'), found {text!r}; "
                "write e.g. '2,3' or '0.299,0.587,0.114'"
            ) from None
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"expected finite numbers in the matrix literal, found {text!r}")
    return arr[0] if len(rows) == 1 else arr


def literal_dtype(input_dtype: np.dtype, literal: np.ndarray) -> np.dtype:
    """The result dtype for an inline literal: it adopts the input's float type.

    Literals are typed numbers the way Python scalars are in numpy: ``0.5`` applied to
    float32 data gives float32, not float64.
    """
    input_dtype = np.dtype(input_dtype)
    if input_dtype.kind in "fc":
        return input_dtype
    return np.dtype(np.int64) if literal.dtype.kind in "biu" else np.dtype(np.float64)
