"""The 1x1 convolution on dask arrays: the numpy kernel mapped over blocks.

>>> import dask.array as da, numpy as np
>>> x = da.ones((8, 8, 3), chunks=(4, 8, 3))
>>> pointwise_conv(x, np.array([[1.0, 1.0, 1.0]])).compute()[0, 0].tolist()
[3.0]
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pwconv.core.conv import ConvPlan, compute_block, plan_conv
from pwconv.io.sources import require

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
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1, user_api="blas")
        except ImportError:
            pass


def _apply_block(block: np.ndarray, plan: ConvPlan) -> np.ndarray:
    _one_blas_thread_in_workers()
    return compute_block(plan, block)


def apply_plan(x: Any, plan: ConvPlan, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Any:
    """Map :func:`~pwconv.core.conv.compute_block` over ``x`` (a dask array) for ``plan``."""
    da = require("dask.array", "dask", "the dask engine")
    axis = plan.channel_axis
    if plan.stride > 1:
        x = x[plan.strided_index(tuple(slice(0, n) for n in plan.out_shape))]
    chunk_bytes = int(chunk_bytes)
    # The channel axis whole, the other axes 'auto' within chunk_bytes.
    spec = {a: (-1 if a == axis else "auto") for a in range(x.ndim)}
    x = x.rechunk(spec, block_size_limit=chunk_bytes)
    chunks = tuple((plan.out_channels,) if a == axis else c for a, c in enumerate(x.chunks))
    result = da.map_blocks(
        _apply_block,
        x,
        plan=plan,
        dtype=plan.out_dtype,
        chunks=chunks,
        meta=np.empty((0,) * x.ndim, plan.out_dtype),
    )
    return result


def pointwise_conv(
    x: Any,
    filters: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    layout: str | int = "channels-last",
    groups: int = 1,
    stride: int = 1,
    weights_layout: str = "auto",
    dtype: Any = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Any:
    """Same arguments and results as :func:`pwconv.pointwise_conv`, lazily, on a dask array.

    The channel axis becomes one chunk and the other axes are chunked to about
    ``chunk_bytes`` (100 MB); each block runs the numpy kernel (no Python loop per pixel).
    """
    require("dask.array", "dask", "pwconv.dask")
    plan = plan_conv(
        x.shape,
        x.dtype,
        filters,
        bias,
        layout=layout,
        groups=groups,
        stride=stride,
        weights_layout=weights_layout,
        dtype=dtype,
    )
    return apply_plan(x, plan, chunk_bytes)
