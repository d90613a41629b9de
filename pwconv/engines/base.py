"""What every engine offers: one run of a plan from a source into a sink, and its timings."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pwconv.io.interface import Sink

#: ``progress(done, total)``: called as blocks finish.
Progress = Callable[[int, int], None]


@dataclass
class Timings:
    """Seconds spent in each phase (phases overlap when streaming) and the block count."""

    load: float = 0.0
    compute: float = 0.0
    save: float = 0.0
    blocks: int = 0
    nodata_pixels: int | None = None  # None: not counted (another process computed)
    nodata_replaced: int | None = None  # computed values equal to the output nodata, replaced
    zero_denominators: int | None = None  # --divide-by: values whose denominator was 0
    block_shapes: list[tuple[int, ...]] = field(default_factory=list)


class Engine(Protocol):
    """One run, set up before its output is opened: ``block_shape`` (the shape of the blocks
    it will write, None for one block) lets a chunked output take one chunk per block."""

    @property
    def name(self) -> str: ...

    @property
    def block_shape(self) -> tuple[int, ...] | None: ...

    def run(self, sink: Sink, progress: Progress | None = None) -> Timings:
        """Compute every block into ``sink`` (not committed here)."""
        ...


@contextlib.contextmanager
def blas_beside_codecs() -> Iterator[None]:
    """While it lasts, BLAS runs on the calling thread only, and channels-last products are
    split over pwconv's kernel threads instead (nothing where threadpoolctl is missing).

    OpenBLAS's own threads spin for a while after each product, waiting for the next: beside
    pwconv's codec threads they took the cores the decoding needed. Measured on a 1 GiB
    deflate GeoTIFF on two cores (16 -> 4 bands, a product BLAS runs), to a local npy:
    2.9-3.7 s with BLAS's threads, 2.3-2.7 s without (three runs each, interleaved).
    """
    from pwconv.core import kernels

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    limits = threadpool_limits(limits=1, user_api="blas")
    kernels.blas_in_one_thread = True
    try:
        yield
    finally:
        kernels.blas_in_one_thread = False
        limits.restore_original_limits()
