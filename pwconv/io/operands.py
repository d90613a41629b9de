"""Filters and bias as given on the command line: a file of any registered format or a literal.

A tensor inside a model or bank file is named ``FILE:NAME``. A container named without a
tensor whose arrays include ``weights`` is a filter-bank file: its ``weights`` are the
filters and its ``bias``, if any, is applied. ``bias="auto"`` takes the bias that belongs to
the selected weights (the sibling ``bias`` of a ``.weight``/``kernel`` tensor, an ONNX Conv
node's B); without it, a bias that the file holds is reported as not applied.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pwconv.core.filters import parse_literal
from pwconv.errors import InputFileError, UsageError
from pwconv.io import digests
from pwconv.io.names import could_name_a_table
from pwconv.io.registry import companion_bias, format_named, list_arrays, open_source, read_labels, readable
from pwconv.io.spec import Spec, parse_spec
from pwconv.io.stores import RemoteObject, is_url

if TYPE_CHECKING:
    from pwconv.io.tables import Table

_LITERAL = re.compile(r"^[\s0-9eE+\-.,;]+$")


@dataclass(frozen=True)
class Operand:
    """One array given as weights or bias: its values and where they came from."""

    array: np.ndarray
    source: str  # the path (``file.h5:/w``, ``model.pt:head.weight``) or ``literal '2,3'``
    sha256: str  # of the file's bytes, or of the literal's text
    spec: Spec | None  # None for a literal; its member is the tensor's full name

    @property
    def literal(self) -> bool:
        return self.spec is None


@dataclass(frozen=True)
class Weights:
    """The filters and optional bias of a run, loaded once (``batch`` reuses them)."""

    filters: Operand
    bias: Operand | None = None
    bank: bool = False  # read from a filter-bank file (``weights`` + ``bias``)
    unused_bias: str | None = None  # a bias in the weights' file that was not applied
    names: tuple[str, ...] | None = None  # a bank's name for each filter (its output channels)
    channel_names: tuple[str, ...] | None = None  # the input channels the bank was made for
    #: a ratio of two mixes: the denominator bank (``--divide-by``, a bank's ``denominator``)
    denominator: Weights | None = None
    #: a named table (``tasseled-cap:landsat8``): its columns are bound to each input's bands
    table: Table | None = None

    @property
    def specs(self) -> list[Spec]:
        """The files these weights were read from, the denominator's included."""
        own = [o.spec for o in (self.filters, self.bias) if o is not None and o.spec is not None]
        return own + (self.denominator.specs if self.denominator else [])


def looks_like_literal(text: str) -> bool:
    return bool(_LITERAL.match(text)) and any(ch.isdigit() for ch in text) and not os.path.exists(text)


# A weights object at a URL larger than this has no digest: hashing it would fetch all of it
# (a model file whose one tensor was read by range).
_REMOTE_DIGEST_BYTES = 64 << 20


def _file_sha256(path: str) -> str:
    if is_url(path):
        if path.rstrip("/").lower().endswith(".zarr"):
            return ""
        remote = RemoteObject(path)
        if remote.size > _REMOTE_DIGEST_BYTES:
            return ""
        digest = digests.sha256(remote.size)
        for piece in remote.chunks():
            digest.update(piece)
        return digest.hexdigest()
    if os.path.isdir(path):
        return ""  # a store of many files (zarr): no single digest
    with open(path, "rb") as handle:
        digest = digests.sha256(os.fstat(handle.fileno()).st_size)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_operand(text: str, member: str | None = None, *, what: str = "weights") -> Operand:
    """Load one array from a file spec or an inline literal such as ``"2,3"``.

    >>> read_operand("1,0;0,1").array.shape
    (2, 2)
    """
    if looks_like_literal(text):
        return Operand(parse_literal(text), f"literal {text!r}", digests.sha256_hex(text.encode()), None)
    if text == "-":
        raise UsageError(f"expected a file or a literal for the {what}, found '-'; stdin is for the input")
    try:
        spec = parse_spec(text, member, what=what)
    except (UsageError, InputFileError):
        if not os.path.exists(text) and ("," in text or ";" in text):
            parse_literal(text)  # raises the literal's own error
        raise
    return _read_spec(spec)


def _read_spec(spec: Spec) -> Operand:
    source = open_source(spec)
    try:
        array = source.read(tuple(slice(0, n) for n in source.shape))
        name = source.description.name  # the tensor a model format resolved the name to
    finally:
        source.close()
    if name is not None:
        spec = dataclasses.replace(spec, member=name)
    # A tensor read by range out of a container at a URL has no digest: it would fetch it all.
    row = format_named(spec.format)
    ranged_member = is_url(spec.path) and row.containers and row.ranged
    digest = "" if ranged_member else _file_sha256(readable(spec).path)
    return Operand(np.asarray(array), spec.text, digest, spec)


def _names(spec: Spec) -> list[str]:
    return list_arrays(spec) if format_named(spec.format).containers else []


#: The arrays of a filter-bank file; a ratio's bank holds ``numerator`` (or ``weights``),
#: ``bias`` and ``denominator``, ``denominator_bias``.
_BANK_ARRAYS = ("weights", "numerator", "bias", "denominator", "denominator_bias")


def _bank_names(spec: Spec) -> dict[str, str]:
    """The bank's array names as the format spells them (``/weights`` in HDF5)."""
    backend = format_named(spec.format).load()
    return {name: backend.array_name(name) for name in _BANK_ARRAYS}


def _read_bank(spec: Spec, bank: dict[str, str], bias: str | None) -> Weights:
    if "weights" in bank and "numerator" in bank:
        raise InputFileError(
            f"expected 'weights' or 'numerator' in the bank {spec.path!r}, found both; keep one"
        )
    if "denominator_bias" in bank and "denominator" not in bank:
        raise InputFileError(
            f"expected a 'denominator' beside 'denominator_bias' in the bank {spec.path!r}, found none"
        )

    def member(key: str) -> Operand | None:
        return _read_spec(dataclasses.replace(spec, member=bank[key])) if key in bank else None

    filters = member("weights") or member("numerator")
    assert filters is not None
    used = member("bias")
    if bias not in (None, "auto"):
        used = read_operand(bias, what="bias")
    denominator = member("denominator")
    return Weights(
        filters,
        used,
        bank=True,
        names=read_labels(spec, "names"),
        channel_names=read_labels(spec, "channel_names"),
        denominator=None if denominator is None else Weights(denominator, member("denominator_bias")),
    )


def read_weights(filters: str, bias: str | None = None, *, member: str | None = None) -> Weights:
    """Load the filters and the bias: ``bias`` is a file, a literal, ``"auto"`` or None."""
    table = None
    if could_name_a_table(filters):
        from pwconv.io.tables import table_named

        table = table_named(filters)
    if table is not None:
        if member is not None:
            raise UsageError(
                f"expected no [[weights_dataset]] for the named bank {table.name!r}, found {member!r}"
            )
        own = None if table.bias is None else Operand(table.bias, f"{table.name} (bias)", table.sha256, None)
        used = own if bias in (None, "auto") else read_operand(bias, what="bias")
        filters_operand = Operand(table.weights, table.name, table.sha256, None)
        return Weights(filters_operand, used, bank=True, names=table.outputs, table=table)
    if looks_like_literal(filters) or filters == "-":
        if bias == "auto":
            raise UsageError(
                f"expected weights from a model or bank file for [[bias=auto]], found {filters!r}; "
                "give the bias as a file or a literal"
            )
        return Weights(read_operand(filters, member), read_operand(bias, what="bias") if bias else None)
    try:
        spec = parse_spec(filters, member, what="weights")
    except (UsageError, InputFileError):
        read_operand(filters, member)  # raises the literal's or the name's own error
        raise
    names = _names(spec) if spec.member is None else []
    bank = {key: name for key, name in _bank_names(spec).items() if name in names}
    if "weights" in bank or "numerator" in bank:  # a filter-bank file
        return _read_bank(spec, bank, bias)
    weights = _read_spec(spec)
    assert weights.spec is not None
    belonging = companion_bias(weights.spec)
    if bias == "auto":
        if belonging is None:
            raise UsageError(
                f"expected a bias that belongs to {weights.source!r} for [[bias=auto]], found none in "
                f"{spec.path!r}; name one with [[bias=FILE:NAME]] or drop the option"
            )
        return Weights(weights, _read_spec(dataclasses.replace(weights.spec, member=belonging)))
    if bias is None:
        return Weights(weights, unused_bias=belonging)
    return Weights(weights, read_operand(bias, what="bias"))
