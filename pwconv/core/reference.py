"""The literal per-pixel loop: the oracle for tests and ``pwconv explain``; never the fast path."""

from __future__ import annotations

from typing import Any

import numpy as np

from pwconv.core.conv import ConvPlan, ConvSettings, apply_stride, plan_for


def pixel_terms(plan: ConvPlan, pixel: np.ndarray, k: int) -> list[tuple[Any, Any]]:
    """The (input value, weight) pairs that filter ``k`` multiplies at one pixel."""
    cg = plan.filters.shape[1]
    group = k // (plan.out_channels // plan.groups)
    channels = pixel[group * cg : (group + 1) * cg]
    weights = plan.bank.matrix[k]
    return [(channels[j].item(), weights[j].item()) for j in range(cg)]


def pixel_value(plan: ConvPlan, pixel: np.ndarray, k: int) -> Any:
    """Filter ``k`` at one pixel, summed term by term in Python numbers (exact for integers)."""
    total: Any = 0
    for value, weight in pixel_terms(plan, pixel, k):
        total = total + value * weight
    if plan.bias is not None:
        total = total + plan.bias[k].item()
    return total


def reference_conv(
    x: np.ndarray,
    filters: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    layout: str | int = "channels-last",
    groups: int = 1,
    stride: int = 1,
    weights_layout: str = "auto",
    dtype: np.dtype | type | str | None = None,
) -> np.ndarray:
    """Same contract as :func:`pwconv.pointwise_conv`, computed one pixel and filter at a time.

    >>> m = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    >>> reference_conv(m, np.array([2, 3]), layout="CHW").tolist()
    [[[17, 22], [27, 32]]]
    """
    x = np.asarray(x)
    plan = plan_for(
        x.shape, x.dtype, filters, bias, ConvSettings(layout, groups, stride, weights_layout, dtype)
    )
    axis = plan.channel_axis
    pixels_first = np.moveaxis(apply_stride(plan, x), axis, -1)
    result = np.empty(pixels_first.shape[:-1] + (plan.out_channels,), dtype=object)
    for index in np.ndindex(pixels_first.shape[:-1]):
        pixel = pixels_first[index]
        for k in range(plan.out_channels):
            result[index + (k,)] = pixel_value(plan, pixel, k)
    return np.moveaxis(result, -1, axis).astype(plan.out_dtype)
