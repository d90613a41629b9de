"""``--engine dask``: the numpy kernel mapped over a dask array, on any dask scheduler.

Inputs are read by small picklable readers (no data travels with the task graph); outputs
are written block by block into a temp file or folder that is renamed when complete.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pwconv.errors import UsageError
from pwconv.io.sources import open_source, require
from pwconv.io.spec import Spec

SCHEDULERS = ("threads", "processes", "synchronous")


class FileBlocks:
    """A lazily read .npy or HDF5 dataset that dask slices; it opens the file per read."""

    def __init__(self, spec: Spec, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.spec, self.shape, self.dtype, self.ndim = spec, shape, np.dtype(dtype), len(shape)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        source = open_source(self.spec)
        try:
            return np.asarray(source.read(index))
        finally:
            source.close()


class NpyBlockWriter:
    """``target[index] = block`` into a preallocated .npy file (for ``dask.array.store``)."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, np.dtype(dtype)

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        target = np.memmap(self.path, dtype=self.dtype, mode="r+", offset=self.offset, shape=self.shape)
        target[index] = block
        target.flush()
        del target


def _dask_input(spec: Spec, source: Any) -> Any:
    import dataclasses
    import os

    da = require("dask.array", "dask", "the dask engine")
    # Workers may run elsewhere (another folder, another machine on a shared filesystem).
    spec = dataclasses.replace(spec, path=os.path.abspath(spec.path))
    if spec.kind == "zarr":
        from pwconv.io.zarr_store import ZarrBlocks

        blocks = ZarrBlocks(spec.path, spec.dataset)
        return da.from_array(
            blocks,
            chunks=blocks.chunks,
            lock=False,
            asarray=True,
            fancy=False,
            name=f"pwconv-zarr-{spec.text}",
        )
    if spec.kind == "stream":
        raise UsageError("expected a file input for --engine dask, found '-'; pipes use the numpy engine")
    chunks: Any = "auto"
    native = source.chunks()
    if native:
        chunks = native
    reader = FileBlocks(spec, tuple(source.shape), source.dtype)
    return da.from_array(
        reader, chunks=chunks, lock=False, asarray=True, fancy=False, name=f"pwconv-read-{spec.text}"
    )


def _scheduler(name: str) -> tuple[dict[str, Any], Any]:
    """dask config for a local scheduler, or a distributed client for tcp://HOST:PORT."""
    if name in SCHEDULERS:
        return {"scheduler": name}, None
    if name.startswith(("tcp://", "tls://", "ucx://")):
        distributed = require("distributed", "dask", "--scheduler " + name)
        try:
            client = distributed.Client(name, timeout="10s", set_as_default=False)
        except OSError as exc:
            raise UsageError(
                f"expected a running dask scheduler at {name}, found none ({exc}); start one or check the address"
            ) from None
        return {}, client
    raise UsageError(
        f"expected --scheduler threads, processes, synchronous or tcp://HOST:PORT, found {name!r}"
    )


def apply_with_dask(
    in_spec: Spec,
    loaded: Any,
    out_spec: Spec,
    options: Any,
    *,
    start: float,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Run ``pwconv apply`` on dask; returns the same report as the numpy engine."""
    require("dask.array", "dask", "--engine dask")
    import dask

    from pwconv.core.blocks import parse_size
    from pwconv.dask import apply_plan
    from pwconv.jobs import Report, describe_tensor, describe_weights, make_plan, output_attrs, output_shape

    if out_spec.kind == "stream":
        raise UsageError("expected a file output for --engine dask, found '-'; pipes use the numpy engine")
    remote = options.scheduler not in SCHEDULERS
    if out_spec.kind == "h5" and options.scheduler not in ("threads", "synchronous"):
        raise UsageError(
            f"expected --scheduler threads or synchronous for HDF5 output, found {options.scheduler}; "
            "HDF5 files cannot be written from several processes: write .zarr or .npy instead"
        )
    if options.squeeze:
        raise UsageError("expected no --squeeze with --engine dask; use the numpy engine or drop it")
    source = open_source(in_spec)
    try:
        plan = make_plan(source, loaded, options)
        chunk_bytes = min(parse_size(options.max_memory) // 4, 100_000_000)
        x = _dask_input(in_spec, source)
    finally:
        source.close()
    y = apply_plan(x, plan, chunk_bytes=max(chunk_bytes, 1 << 20))
    attrs = output_attrs(in_spec.text, loaded, plan)
    config, client = _scheduler(options.scheduler)
    load_seconds = time.perf_counter() - start
    compute_start = time.perf_counter()
    shape = output_shape(plan, False)
    try:
        with (
            dask.config.set(config),
            _local_threads(not remote and options.scheduler == "threads"),
            _progress(progress is not None and not remote),
        ):
            _store(y, out_spec, shape, plan, attrs, options, client, options_quiet=progress is None)
    finally:
        if client is not None:
            client.close()
    compute_seconds = time.perf_counter() - compute_start
    total = time.perf_counter() - start
    return Report(
        input=describe_tensor(in_spec.text, source, plan),
        weights=describe_weights(loaded.filters, plan),
        output={"path": out_spec.text, "shape": list(shape), "dtype": plan.out_dtype.name},
        bias=None if loaded.bias is None else loaded.bias.source,
        groups=plan.groups,
        stride=plan.stride,
        engine=f"dask ({options.scheduler})",
        blocks=math.prod(len(c) for c in y.chunks),
        seconds={"load": load_seconds, "compute": compute_seconds, "save": 0.0, "total": total},
        flops=plan.flops,
    )


def _store(
    y: Any,
    out_spec: Spec,
    shape: tuple[int, ...],
    plan: Any,
    attrs: dict[str, Any],
    options: Any,
    client: Any,
    options_quiet: bool = False,
) -> None:
    da: Any = require("dask.array", "dask", "the dask engine")

    def run(graph: Any) -> None:
        if client is None:
            graph.compute()
            return
        future = client.compute(graph)
        if sys.stderr.isatty() and not options_quiet:
            import contextlib

            from distributed import progress

            # distributed draws its bar on stdout; stdout is kept for data and --json.
            with contextlib.redirect_stdout(sys.stderr):
                progress(future)
        future.result()

    from pwconv.io.npy import NpySink
    from pwconv.io.sources import open_sink
    from pwconv.io.zarr_store import ZarrChunkWriter, ZarrSink

    # Zarr chunks follow the dask blocks: each task then writes whole chunks of its own.
    chunks = tuple(c[0] for c in y.chunks) if out_spec.kind == "zarr" else options.chunks
    sink = open_sink(
        out_spec,
        shape,
        plan.out_dtype,
        overwrite=options.overwrite,
        attrs=attrs,
        channel_axis=plan.channel_axis,
        compression=None if options.compression in (None, "none") else options.compression,
        chunks=chunks,
    )
    lock: Any = False
    target: Any
    if isinstance(sink, ZarrSink):
        target = ZarrChunkWriter(sink.folder)
    elif isinstance(sink, NpySink):
        target = NpyBlockWriter(sink._temp, sink.offset, shape, plan.out_dtype)  # noqa: SLF001
    else:  # HDF5: one writer at a time, in this process (the threaded scheduler)
        import threading

        target, lock = _SinkTarget(sink), threading.Lock()
    try:
        run(da.store(y, target, lock=lock, compute=False))
        sink.commit()
    except BaseException:
        sink.abort()
        raise


class _SinkTarget:
    """``target[index] = block`` through a sink's own write (for ``dask.array.store``)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        self.sink.write(index, block)


class _local_threads:
    """One BLAS thread per dask thread while the threaded scheduler runs in this process."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self._limits: Any = None
        self._kernel_threads = 0

    def __enter__(self) -> None:
        if not self.active:
            return
        from pwconv.core import kernels

        self._kernel_threads, kernels.threads = kernels.threads, 1
        try:
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(limits=1, user_api="blas")
        except ImportError:
            self._limits = None

    def __exit__(self, *exc: object) -> None:
        if not self.active:
            return
        from pwconv.core import kernels

        kernels.threads = self._kernel_threads
        if self._limits is not None:
            self._limits.restore_original_limits()


class _progress:
    """dask's progress bar on stderr, when stderr is a terminal."""

    def __init__(self, active: bool) -> None:
        self.active = active and sys.stderr.isatty()
        self._bar: Any = None

    def __enter__(self) -> None:
        if self.active:
            from dask.diagnostics import ProgressBar

            self._bar = ProgressBar(out=sys.stderr, minimum=1.0)
            self._bar.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
