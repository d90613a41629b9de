"""Sinks that change blocks on their way into another sink: dropping a size-1 channel axis,
saturating into an integer dtype. Each forwards everything else to the sink it wraps."""

from __future__ import annotations

import numpy as np

from pwconv.core.conv import saturate
from pwconv.io.interface import BlockWriter, Sink

Index = tuple[slice, ...]


class Conversion:
    """What a wrapper does to each block: small and picklable, so that parallel writers in
    other processes apply it too."""

    def __call__(self, index: Index, block: np.ndarray) -> tuple[Index, np.ndarray]:
        raise NotImplementedError


class SinkWrapper(Sink):
    """A sink around ``inner``: blocks pass through ``conversion``; commit, abort and notes
    are the inner sink's."""

    def __init__(self, inner: Sink, conversion: Conversion) -> None:
        self.inner, self.conversion = inner, conversion
        self.sequential = inner.sequential

    def write(self, index: Index, block: np.ndarray) -> None:
        self.inner.write(*self.conversion(index, block))

    def parallel_writer(self) -> BlockWriter | None:
        writer = self.inner.parallel_writer()
        return None if writer is None else _ConvertingWriter(writer, self.conversion)

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()

    @property
    def notes(self) -> list[str]:
        return self.inner.notes

    def clipped(self) -> dict[str, int] | None:
        return self.inner.clipped()


class _ConvertingWriter:
    def __init__(self, writer: BlockWriter, conversion: Conversion) -> None:
        self.writer, self.conversion = writer, conversion

    def __setitem__(self, index: Index, block: np.ndarray) -> None:
        index, block = self.conversion(index, block)
        self.writer[index] = block


class _DropAxis(Conversion):
    def __init__(self, axis: int) -> None:
        self.axis = axis

    def __call__(self, index: Index, block: np.ndarray) -> tuple[Index, np.ndarray]:
        axis = self.axis
        return index[:axis] + index[axis + 1 :], block.reshape(block.shape[:axis] + block.shape[axis + 1 :])


class _Saturate(Conversion):
    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.low = self.high = 0

    def __call__(self, index: Index, block: np.ndarray) -> tuple[Index, np.ndarray]:
        converted, low, high = saturate(block, self.dtype)
        self.low += low
        self.high += high
        return index, converted


class _ChannelsLast(Conversion):
    def __init__(self, axis: int) -> None:
        self.axis = axis

    def __call__(self, index: Index, block: np.ndarray) -> tuple[Index, np.ndarray]:
        axis = self.axis
        return index[:axis] + index[axis + 1 :] + (index[axis],), np.moveaxis(block, axis, -1)


class ChannelsLastSink(SinkWrapper):
    """A sink for a format that keeps channels last (TIFF samples, image bands, raster
    bands), fed by an engine whose channel axis is elsewhere: each block's channel axis
    is moved to the end on its way in."""

    def __init__(self, inner: Sink, axis: int, title: str) -> None:
        super().__init__(inner, _ChannelsLast(axis))
        self.axis, self.title = axis, title

    @property
    def notes(self) -> list[str]:
        note = f"channels moved from axis {self.axis} to the last axis, where {self.title} keeps them"
        return [note, *self.inner.notes]


class SqueezedSink(SinkWrapper):
    """A sink for an output whose size-1 channel axis is dropped (``squeeze``)."""

    def __init__(self, inner: Sink, axis: int) -> None:
        super().__init__(inner, _DropAxis(axis))


class SaturatingSink(SinkWrapper):
    """A sink of integers for results computed in another type: values are rounded to nearest
    and clipped into range (never wrapped), and the clipped values are counted."""

    def __init__(self, inner: Sink, dtype: np.dtype) -> None:
        self._saturate = _Saturate(dtype)
        super().__init__(inner, self._saturate)
        self.counted = True

    def parallel_writer(self) -> BlockWriter | None:
        writer = super().parallel_writer()
        if writer is not None:
            self.counted = False  # writers elsewhere cannot report their counts
        return writer

    def clipped(self) -> dict[str, int] | None:
        return {"low": self._saturate.low, "high": self._saturate.high} if self.counted else None
