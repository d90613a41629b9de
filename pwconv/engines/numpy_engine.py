"""The default engine: blocks read, computed and written in a three-stage pipeline.

Reading block i+1 and writing block i-1 overlap computing block i (file reads and BLAS both
release the GIL), so streaming costs little over a single in-memory pass while memory stays
bounded by the block size.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from pwconv.core.blocks import plan_blocks
from pwconv.core.conv import ConvPlan, Nodata, compute_masked
from pwconv.engines.base import Progress, Timings, blas_beside_codecs
from pwconv.io import codecs
from pwconv.io.interface import Sink, Source

# A streamed block costs at most this much (input, conversions and output); larger blocks
# gain nothing in speed and cost memory.
STREAM_BLOCK_BYTES = 32 << 20
# ... but for data at a URL, whose block is read as requests of 8 MiB, up to 16 in flight:
# a block that fills them hides each request's latency behind the others (half of
# --max-memory at most, as any streamed block).
REMOTE_BLOCK_BYTES = 128 << 20


def pixel_bytes(plan: ConvPlan) -> int:
    """Memory one output position costs while its block is in flight."""
    spatial = len(plan.layout.spatial_axes)
    read = plan.in_channels * plan.in_dtype.itemsize * plan.stride**spatial
    convert = plan.in_channels * plan.compute_dtype.itemsize if plan.in_dtype != plan.compute_dtype else 0
    out = plan.out_channels * plan.out_dtype.itemsize
    cast = plan.out_channels * plan.compute_dtype.itemsize if plan.out_dtype != plan.compute_dtype else 0
    return read + convert + out + cast


def first_block_shape(
    plan: ConvPlan, source: Source, sequential_output: bool, max_bytes: int, stream: bool = False
) -> tuple[int, ...] | None:
    """The shape of the blocks :func:`run` will write when it streams (the last ones may be
    smaller), for outputs that chunk best along them; None for a single block."""
    blocks = _plan(plan, source, source.sequential or sequential_output, max_bytes, stream)
    if len(blocks) == 1:
        return None
    return tuple(len(range(*sl.indices(n))) for sl, n in zip(blocks[0], plan.out_shape))


def block_plan(
    plan: ConvPlan, source: Source, sink: Sink, max_bytes: int, stream: bool = False
) -> list[tuple[slice, ...]]:
    """Blocks of the output to compute: one when everything fits in ``max_bytes``, unless
    ``stream`` asks for streamed blocks anyway."""
    return _plan(plan, source, source.sequential or sink.sequential, max_bytes, stream)


def _plan(
    plan: ConvPlan, source: Source, contiguous: bool, max_bytes: int, stream: bool = False
) -> list[tuple[slice, ...]]:
    per_pixel = pixel_bytes(plan)
    pixels = plan.pixels
    if pixels * per_pixel <= max_bytes and not stream:
        budget = max_bytes
    else:
        # Two blocks are in flight at once (one being read or written, one computed).
        cap = REMOTE_BLOCK_BYTES if stream else STREAM_BLOCK_BYTES
        budget = max(per_pixel, min(max_bytes // 2, cap))
    align = {}
    chunks = source.chunks()
    if chunks and plan.stride == 1:
        align = {axis: c for axis, c in enumerate(chunks) if axis != plan.channel_axis}
    return plan_blocks(
        plan.out_shape,
        plan.channel_axis,
        per_pixel,
        budget,
        contiguous=contiguous,
        align=align,
        align_limit=max_bytes // 2,
        # a chunk per codec thread where chunks are decoded, so that every core decodes a block
        least_tiles=codecs.thread_count() if align and source.decoded_piece() is not None else 1,
        columns=not stream,  # at a URL, rows of tiles: neighbours in the file, fetched together
    )


def run(
    plan: ConvPlan,
    source: Source,
    sink: Sink,
    *,
    max_bytes: int,
    progress: Progress | None = None,
    nodata: Nodata | None = None,
    stream: bool = False,
) -> Timings:
    """Compute every block of ``plan`` from ``source`` into ``sink`` (not committed here);
    ``stream``: in streamed blocks even when one would fit."""
    blocks = block_plan(plan, source, sink, max_bytes, stream)
    reads = [plan.strided_index(index) for index in blocks]  # the input region of each block
    counted = 0 if nodata is not None else None
    timings = Timings(blocks=len(blocks), nodata_pixels=counted, nodata_replaced=counted)

    def load(read: tuple[slice, ...]) -> np.ndarray:
        start = time.perf_counter()
        data = source.read(read)
        timings.load += time.perf_counter() - start
        return data

    def save(index: tuple[slice, ...], block: np.ndarray) -> None:
        start = time.perf_counter()
        sink.write(index, block)
        timings.save += time.perf_counter() - start

    outputs = None
    if len(blocks) > 1:
        from pwconv.io.rawio import BlockMemory

        # The output buffers are reused: a fresh block's pages are zeroed by the kernel at
        # first touch, which cost as much as a third of writing the output to the page cache
        # (npy 64 -> 16). Two are in flight: one computed, one written.
        outputs = BlockMemory(keep=2)

    def compute(data: np.ndarray, read: tuple[slice, ...]) -> np.ndarray:
        start = time.perf_counter()
        result, masked = compute_masked(plan, data, nodata, empty=outputs.empty if outputs else None)
        if masked.pixels or masked.replaced:
            timings.nodata_pixels = (timings.nodata_pixels or 0) + masked.pixels
            timings.nodata_replaced = (timings.nodata_replaced or 0) + masked.replaced
        if plan.denominator is not None:
            timings.zero_denominators = (timings.zero_denominators or 0) + masked.zero_denominators
        source.release(read)
        timings.compute += time.perf_counter() - start
        return result

    if len(blocks) == 1:
        save(blocks[0], compute(load(reads[0]), reads[0]))
        if progress:
            progress(1, 1)
        return timings

    from pwconv.engines.workers import Pending, Worker  # threads only for runs of several blocks

    reader, writer = Worker(may_block=True), Worker()
    pending_read: Pending[np.ndarray] = reader.submit(load, reads[0])
    pending_write: Pending[None] | None = None
    finished = False
    blas = contextlib.ExitStack()
    try:
        for i, index in enumerate(blocks):
            data = pending_read.result()
            if i == 0 and codecs.started():  # the next blocks decode beside every product
                blas.enter_context(blas_beside_codecs())
            if i + 1 < len(blocks):
                pending_read = reader.submit(load, reads[i + 1])
            result = compute(data, reads[i])
            del data
            if pending_write is not None:
                pending_write.result()
            pending_write = writer.submit(save, index, result)
            if progress:
                progress(i + 1, len(blocks))
        if pending_write is not None:
            pending_write.result()
        finished = True
    finally:
        # On failure no read is waited for (one may block on a pipe), but the write in
        # progress is let finish (for at most 30 s: a pipe's reader may have stopped), so that
        # the caller aborts the sink after its last write: a write after the abort would put
        # a chunk file back into a temp store already removed.
        pending_read.cancel()
        if pending_write is not None:
            pending_write.cancel()
        reader.close(wait=finished)
        writer.close(wait=True, timeout=None if finished else 30.0)
        blas.close()
    return timings


def largest_block_bytes(plan: ConvPlan, blocks: list[tuple[slice, ...]]) -> int:
    """Memory of the largest block (for reports and tests)."""
    sizes = [
        math.prod(
            len(range(*sl.indices(n)))
            for i, (sl, n) in enumerate(zip(b, plan.out_shape))
            if i != plan.channel_axis
        )
        for b in blocks
    ]
    return max(sizes, default=0) * pixel_bytes(plan)


class NumpyRun:
    """One run on the default engine (the :class:`~pwconv.engines.base.Engine` protocol)."""

    name = "numpy"

    def __init__(
        self,
        plan: ConvPlan,
        source: Source,
        *,
        max_bytes: int,
        sequential_output: bool,
        nodata: Nodata | None = None,
        stream: bool = False,
    ) -> None:
        self.plan, self.source, self.max_bytes, self.nodata = plan, source, max_bytes, nodata
        self.stream = stream
        self.block_shape = first_block_shape(plan, source, sequential_output, max_bytes, stream)

    def run(self, sink: Sink, progress: Progress | None = None) -> Timings:
        return run(
            self.plan, self.source, sink, max_bytes=self.max_bytes, progress=progress, nodata=self.nodata,
            stream=self.stream,
        )  # fmt: skip
