"""The report of a run, built once and shared by every command's text and JSON output.

The same pieces carry the same keys everywhere: ``input`` (:func:`describe_input`),
``weights`` (:func:`describe_weights`), ``output``, ``bias``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pwconv import __version__
from pwconv.core.conv import ConvPlan
from pwconv.io.operands import Weights


def describe_input(path: str, plan: ConvPlan) -> dict[str, Any]:
    return {
        "path": path,
        "shape": list(plan.in_shape),
        "dtype": plan.in_dtype.name,
        "layout": plan.layout.name,
        "channel_axis": plan.channel_axis,
    }


def describe_weights(weights: Weights, plan: ConvPlan) -> dict[str, Any]:
    """How the filters were read: ``read_as`` is the reading's code, ``interpretation`` the sentence."""
    filters = weights.filters
    return {
        "source": filters.source,
        "shape": list(filters.array.shape),
        "dtype": filters.array.dtype.name,
        "read_as": plan.bank.reading,
        "interpretation": plan.bank.description,
        "square": plan.bank.square,
        "matrix_shape": list(plan.bank.matrix.shape),
        "sha256": filters.sha256,
        "bank": weights.bank,
        "unused_bias": weights.unused_bias,
        # a ratio of two mixes: where the denominator bank came from
        "denominator": None if weights.denominator is None else weights.denominator.filters.source,
    }


def describe_bias(weights: Weights) -> str | None:
    return None if weights.bias is None else weights.bias.source


@dataclass
class Report:
    """What a run did: shapes, dtypes, how the weights were read, and where time went."""

    input: dict[str, Any]
    weights: dict[str, Any]
    output: dict[str, Any]
    bias: str | None
    groups: int
    stride: int
    engine: str
    blocks: int
    seconds: dict[str, float] = field(default_factory=dict)
    flops: int = 0

    @property
    def gflops(self) -> float:
        compute = self.seconds.get("compute", 0.0)
        return self.flops / compute / 1e9 if compute > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "pwconv": __version__,
            "input": self.input,
            "weights": self.weights,
            "bias": self.bias,
            "output": self.output,
            "groups": self.groups,
            "stride": self.stride,
            "engine": self.engine,
            "blocks": self.blocks,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "flops": self.flops,
            "gflops_per_s": round(self.gflops, 3),
        }
