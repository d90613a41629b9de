"""Parse a layout specification once into a frozen :class:`Layout`.

A layout says which axis of the input holds the channels, which axes are batch axes and
which are spatial (the ones ``stride`` subsamples).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pwconv.errors import UsageError

LAYOUT_CHOICES = "channels-last, channels-first, a letter string such as NHWC or CHW, or an axis number"


@dataclass(frozen=True)
class Layout:
    """A resolved layout for a tensor of ``ndim`` axes.

    >>> parse_layout("NCHW", 4).channel_axis
    1
    """

    ndim: int
    channel_axis: int
    batch_axes: tuple[int, ...]
    spatial_axes: tuple[int, ...]
    name: str

    @property
    def letters(self) -> str:
        """One letter per axis: C for channels, N for batch, S for spatial."""
        marks = ["S"] * self.ndim
        marks[self.channel_axis] = "C"
        for axis in self.batch_axes:
            marks[axis] = "N"
        return "".join(marks)


def _implied_batch_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
    # Tensors of 4 or more axes are taken to lead with a batch axis (NHWC, NCHW, NDHWC ...);
    # smaller ones (HWC, CHW, LC) have none. Letter layouts say it explicitly.
    if ndim >= 4 and channel_axis != 0:
        return (0,)
    return ()


def parse_layout(spec: str | int, ndim: int) -> Layout:
    """Resolve ``spec`` for a tensor with ``ndim`` axes (see :func:`_parse_layout`)."""
    try:
        return _parse_cached(spec, ndim)
    except TypeError:  # unhashable spec: let the parser report it
        return _parse_layout(spec, ndim)


@lru_cache(maxsize=256)
def _parse_cached(spec: str | int, ndim: int) -> Layout:
    return _parse_layout(spec, ndim)


def _parse_layout(spec: str | int, ndim: int) -> Layout:
    """Resolve ``spec`` for a tensor with ``ndim`` axes.

    ``channels-last`` puts C on the last axis; ``channels-first`` on axis 0 for tensors of up
    to 3 axes (CHW) and on axis 1 from 4 axes on (NCHW, NCDHW). A letter string names every
    axis and has exactly one C; N marks batch axes, any other letter a spatial axis.

    >>> parse_layout("channels-first", 3).channel_axis
    0
    """
    if ndim < 1:
        raise UsageError(
            "expected an input with at least one axis (the channels), found a 0-d scalar; "
            "save the data as an array of shape (..., C)"
        )
    if isinstance(spec, bool):
        raise UsageError(f"expected a layout ({LAYOUT_CHOICES}), found {spec!r}")
    if isinstance(spec, int) or (
        isinstance(spec, str) and spec.lstrip("-").isascii() and spec.lstrip("-").isdigit()
    ):
        axis = int(spec)
        if not -ndim <= axis < ndim:
            raise UsageError(
                f"expected a channel axis between {-ndim} and {ndim - 1} for a {ndim}-d input, "
                f"found {axis}; pass a valid axis number or a layout name"
            )
        axis %= ndim
        batch = _implied_batch_axes(ndim, axis)
        return _build(ndim, axis, batch, f"axis {axis}")
    if not isinstance(spec, str):
        raise UsageError(f"expected a layout ({LAYOUT_CHOICES}), found {spec!r}")
    key = spec.strip().lower().replace("_", "-")
    if key in ("channels-last", "last", "nhwc-like"):
        axis = ndim - 1
        return _build(ndim, axis, _implied_batch_axes(ndim, axis), "channels-last")
    if key in ("channels-first", "first"):
        axis = 0 if ndim <= 3 else 1
        return _build(ndim, axis, _implied_batch_axes(ndim, axis), "channels-first")
    letters = spec.strip().upper()
    if not letters.isalpha():
        raise UsageError(f"expected a layout ({LAYOUT_CHOICES}), found {spec!r}")
    if letters.count("C") != 1:
        raise UsageError(
            f"expected a layout with exactly one C (the channel axis), found {spec!r}; "
            "write it like NHWC or CHW"
        )
    if len(set(letters)) != len(letters):
        raise UsageError(f"expected each letter once in a layout, found {spec!r}")
    if len(letters) != ndim:
        raise UsageError(
            f"expected a layout with one letter per axis, found {spec!r} ({len(letters)} letters) "
            f"for a {ndim}-d input; use {ndim} letters or channels-last/channels-first"
        )
    axis = letters.index("C")
    batch = tuple(i for i, letter in enumerate(letters) if letter == "N")
    return _build(ndim, axis, batch, letters)


def _build(ndim: int, axis: int, batch: tuple[int, ...], name: str) -> Layout:
    spatial = tuple(i for i in range(ndim) if i != axis and i not in batch)
    return Layout(ndim=ndim, channel_axis=axis, batch_axes=batch, spatial_axes=spatial, name=name)
