"""``engine="dask"``: the numpy kernel mapped over a dask array, on any dask scheduler.

Inputs are read by small picklable readers (no data travels with the task graph); outputs
are written through the sink's parallel writer where the format has one, else through the
sink itself from this process, one block at a time.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pwconv import errors
from pwconv.core.blocks import check_block_count
from pwconv.core.conv import ConvPlan, Nodata, compute_masked
from pwconv.engines.base import Progress, Timings
from pwconv.engines.schedulers import IN_PROCESS_SCHEDULERS, LOCAL_SCHEDULERS, check_scheduler
from pwconv.errors import UsageError, require_extra
from pwconv.io.interface import Sink, Source
from pwconv.io.registry import parallel_reader
from pwconv.io.spec import Spec

DEFAULT_CHUNK_BYTES = 100_000_000

_limited_pid: int | None = None


def _one_blas_thread_in_workers() -> None:
    """In a worker process, run BLAS and the C kernel on one thread (workers share the cores).

    The threaded scheduler runs in the caller's process; the engine limits threads there
    for the duration of the run instead.
    """
    global _limited_pid
    if _limited_pid == os.getpid():
        return
    _limited_pid = os.getpid()
    in_worker = False
    try:
        from distributed import get_worker

        get_worker()
        in_worker = True
    except (ImportError, ValueError):
        import multiprocessing

        in_worker = multiprocessing.parent_process() is not None
    if in_worker:
        from pwconv.core import kernels

        kernels.threads = 1
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1, user_api="blas")


def _check_chunk_count(source: Source, chunks: Any) -> None:
    """Refuse, before dask lists them, more chunks than a plan may have (a header's absurd shape)."""
    if chunks == "auto":  # dask aims at 128 MiB chunks
        count = math.prod(source.shape) * source.dtype.itemsize // (128 << 20) + 1
        check_block_count(count, source.shape, 128 << 20)
    else:
        count = math.prod(-(-n // max(int(c), 1)) for n, c in zip(source.shape, chunks))
        check_block_count(count, source.shape, math.prod(int(c) for c in chunks) * source.dtype.itemsize)


def chunk_budget(max_bytes: int, scheduler: str) -> int:
    """Bytes of one input chunk: every worker of this machine holds a chunk and its result at
    once, so that all of them together stay within ``max_bytes`` (a cluster's workers are
    other machines: there a chunk takes a quarter of it, as a block does here)."""
    workers = (os.cpu_count() or 1) if scheduler in ("threads", "processes") else 1
    return max(min(max_bytes // (2 * workers + 2), DEFAULT_CHUNK_BYTES), 1 << 20)


def read_chunks(source: Source, axis: int, chunk_bytes: int, native: Any) -> tuple[tuple[int, ...], ...]:
    """The chunks the input is read in: the channel axis whole, the others as large as
    ``chunk_bytes`` allows, aligned to the file's own chunks where it has them."""
    da = _dask_array()
    spec = tuple(-1 if a == axis else "auto" for a in range(len(source.shape)))
    previous = None if native == "auto" else tuple(int(c) for c in native)
    count = math.prod(source.shape) * source.dtype.itemsize // chunk_bytes + 1
    check_block_count(count, source.shape, chunk_bytes)
    return tuple(
        da.core.normalize_chunks(
            spec, source.shape, limit=chunk_bytes, dtype=source.dtype, previous_chunks=previous
        )
    )


def _apply_block(block: np.ndarray, plan: ConvPlan, nodata: Nodata | None = None) -> np.ndarray:
    _one_blas_thread_in_workers()
    return compute_masked(plan, block, nodata)[0]


def map_plan(
    x: Any, plan: ConvPlan, chunk_bytes: int = DEFAULT_CHUNK_BYTES, nodata: Nodata | None = None
) -> Any:
    """Map :func:`~pwconv.core.conv.compute_block` over ``x`` (a dask array) for ``plan``."""
    da = _dask_array()
    axis = plan.channel_axis
    if plan.stride > 1:
        x = x[plan.strided_index(tuple(slice(0, n) for n in plan.out_shape))]
    # The channel axis whole, the other axes 'auto' within chunk_bytes.
    spec = {a: (-1 if a == axis else "auto") for a in range(x.ndim)}
    x = x.rechunk(spec, block_size_limit=int(chunk_bytes))
    chunks = tuple((plan.out_channels,) if a == axis else c for a, c in enumerate(x.chunks))
    return da.map_blocks(
        _apply_block,
        x,
        plan=plan,
        nodata=nodata,
        dtype=plan.out_dtype,
        chunks=chunks,
        meta=np.empty((0,) * x.ndim, plan.out_dtype),
    )


#: Packages dask.array imports for integrations the engine never uses (sparse and FFT chunks,
#: dataframes, labelled arrays, GPUs): about 0.65 s of the engine's start when installed.
_UNUSED_INTEGRATIONS = ("scipy", "pandas", "xarray", "sparse", "cupy", "cupyx")


def _dask_array() -> Any:
    """``dask.array``; in the command-line process without its unused integrations (they
    stay importable afterwards: only this import skips them)."""
    if "dask.array" in sys.modules or not errors.command_line:
        return require_extra("dask.array", "dask", "the dask engine")
    skipped = [name for name in _UNUSED_INTEGRATIONS if name not in sys.modules]
    for name in skipped:
        sys.modules[name] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        return require_extra("dask.array", "dask", "the dask engine")
    finally:
        for name in skipped:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


class DaskRun:
    """One run on dask: the task graph is built first, so its block shape is known before the
    output is opened (formats that chunk their output take one chunk per block)."""

    def __init__(
        self,
        plan: ConvPlan,
        spec: Spec,
        source: Source,
        *,
        max_bytes: int,
        scheduler: str,
        nodata: Nodata | None = None,
    ) -> None:
        da = _dask_array()
        check_scheduler(scheduler)
        self.scheduler = scheduler
        reader = parallel_reader(spec, source)
        native: Any = reader.chunks or source.chunks() or "auto"  # every parallel reader has .chunks
        _check_chunk_count(source, native)
        chunk_bytes = chunk_budget(max_bytes, scheduler)
        chunks = read_chunks(source, plan.channel_axis, chunk_bytes, native)
        x = da.from_array(
            reader, chunks=chunks, lock=False, asarray=True, fancy=False, name=f"pwconv-read-{spec.text}"
        )
        self.result = map_plan(x, plan, chunk_bytes, nodata)
        self.block_shape = tuple(int(c[0]) for c in self.result.chunks)
        self.blocks = math.prod(len(c) for c in self.result.chunks)

    @property
    def name(self) -> str:
        return f"dask ({self.scheduler})"

    def run(self, sink: Sink, progress: Progress | None = None) -> Timings:
        """Compute every block into ``sink`` (not committed here)."""
        da = _dask_array()
        import dask

        writer = sink.parallel_writer()
        lock: Any = False
        target: Any = writer
        if writer is None:
            if self.scheduler not in IN_PROCESS_SCHEDULERS:
                raise UsageError(
                    f"expected [[scheduler=threads|synchronous]] for this output, found {self.scheduler}; "
                    "its format cannot be written from several processes: write .zarr or .npy instead"
                )
            target, lock = _SinkTarget(sink), threading.Lock()
        start = time.perf_counter()
        graph = da.store(self.result, target, lock=lock, compute=False)
        if self.scheduler in LOCAL_SCHEDULERS:
            with (
                dask.config.set(scheduler=self.scheduler),
                _one_blas_thread_here(self.scheduler == "threads"),
                _local_progress(progress is not None),
            ):
                graph.compute()
        else:
            _compute_on_cluster(graph, self.scheduler, show_progress=progress is not None)
        return Timings(compute=time.perf_counter() - start, blocks=self.blocks)


def _compute_on_cluster(graph: Any, address: str, *, show_progress: bool) -> None:
    distributed = require_extra("distributed", "dask", "a dask cluster")
    try:
        client = distributed.Client(address, timeout="10s", set_as_default=False)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"expected a running dask scheduler at {address}, found none ({exc}); start one or check the address"
        ) from None
    try:
        future = client.compute(graph)
        if show_progress and sys.stderr.isatty():
            # distributed draws its bar on stdout; stdout is kept for data and JSON.
            with contextlib.redirect_stdout(sys.stderr):
                distributed.progress(future)
        future.result()
    finally:
        client.close()


class _SinkTarget:
    """``target[index] = block`` through a sink's own write (for ``dask.array.store``)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        self.sink.write(index, block)


@contextlib.contextmanager
def _one_blas_thread_here(active: bool) -> Iterator[None]:
    """One BLAS thread per dask thread while the threaded scheduler runs in this process."""
    if not active:
        yield
        return
    from pwconv.core import kernels

    saved, kernels.threads = kernels.threads, 1
    limits: Any = None
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=1, user_api="blas")
    try:
        yield
    finally:
        kernels.threads = saved
        if limits is not None:
            limits.restore_original_limits()


@contextlib.contextmanager
def _local_progress(active: bool) -> Iterator[None]:
    """dask's progress bar on stderr, when stderr is a terminal."""
    if not (active and sys.stderr.isatty()):
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr, minimum=1.0):
        yield
