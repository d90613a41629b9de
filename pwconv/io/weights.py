"""Filters and bias as given on the command line: a file of any registered format or a literal."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np

from pwconv.core.weights import parse_literal
from pwconv.errors import UsageError
from pwconv.io.formats import open_source
from pwconv.io.spec import Spec, parse_spec

_LITERAL = re.compile(r"^[\s0-9eE+\-.,;]+$")


@dataclass(frozen=True)
class Operand:
    """One array given as weights or bias: its values and where they came from."""

    array: np.ndarray
    source: str  # the path (``file.h5:/w``) or ``literal '2,3'``
    sha256: str  # of the file's bytes, or of the literal's text
    spec: Spec | None  # None for a literal

    @property
    def literal(self) -> bool:
        return self.spec is None


@dataclass(frozen=True)
class Weights:
    """The filters and optional bias of a run, loaded once (``batch`` reuses them)."""

    filters: Operand
    bias: Operand | None = None

    @property
    def specs(self) -> list[Spec]:
        """The files these weights were read from."""
        return [o.spec for o in (self.filters, self.bias) if o is not None and o.spec is not None]


def looks_like_literal(text: str) -> bool:
    return bool(_LITERAL.match(text)) and any(ch.isdigit() for ch in text) and not os.path.exists(text)


def _file_sha256(path: str) -> str:
    if os.path.isdir(path):
        return ""  # a store of many files (zarr): no single digest
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_operand(text: str, dataset: str | None = None, *, what: str = "weights") -> Operand:
    """Load one array from a file spec or an inline literal such as ``"2,3"``.

    >>> read_operand("1,0;0,1").array.shape
    (2, 2)
    """
    if looks_like_literal(text):
        return Operand(
            parse_literal(text), f"literal {text!r}", hashlib.sha256(text.encode()).hexdigest(), None
        )
    if text == "-":
        raise UsageError(f"expected a file or a literal for the {what}, found '-'; stdin is for the input")
    try:
        spec = parse_spec(text, dataset, what=what)
    except UsageError:
        if not os.path.exists(text) and ("," in text or ";" in text):
            parse_literal(text)  # raises the literal's own error
        raise
    source = open_source(spec)
    try:
        array = source.read(tuple(slice(0, n) for n in source.shape))
    finally:
        source.close()
    return Operand(np.asarray(array), spec.text, _file_sha256(spec.path), spec)


def read_weights(filters: str, bias: str | None = None, *, dataset: str | None = None) -> Weights:
    """Load the filters and the optional bias (files or literals)."""
    return Weights(
        read_operand(filters, dataset),
        read_operand(bias, what="bias") if bias is not None else None,
    )
