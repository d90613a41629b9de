"""The 1x1 convolution on dask arrays: the numpy kernel mapped over blocks.

>>> import dask.array as da, numpy as np
>>> x = da.ones((8, 8, 3), chunks=(4, 8, 3))
>>> pointwise_conv(x, np.array([[1.0, 1.0, 1.0]])).compute()[0, 0].tolist()
[3.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pwconv.core.conv import ConvSettings, plan_for
from pwconv.engines.dask_engine import DEFAULT_CHUNK_BYTES, map_plan
from pwconv.errors import require_extra

__all__ = ["pointwise_conv"]


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
    require_extra("dask.array", "dask", "pwconv.dask")
    plan = plan_for(
        x.shape, x.dtype, filters, bias, ConvSettings(layout, groups, stride, weights_layout, dtype)
    )
    return map_plan(x, plan, chunk_bytes)
