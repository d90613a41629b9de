"""Open readers and writers by :class:`~pwconv.io.spec.Spec`, and load filter banks."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from pwconv.core.weights import parse_literal
from pwconv.errors import MissingExtraError, OutputExistsError, UsageError
from pwconv.io.base import Sink, Source, check_output_path, same_file
from pwconv.io.spec import Spec, parse_spec

_LITERAL = re.compile(r"^[\s0-9eE+\-.,;]+$")


def open_source(spec: Spec) -> Source:
    """A lazy reader for ``spec``; nothing but the header is read."""
    if spec.kind == "stream":
        from pwconv.io.npy import StreamSource

        return StreamSource()
    if spec.kind == "npy":
        from pwconv.io.npy import NpySource

        return NpySource(spec.path)
    if spec.kind == "h5":
        from pwconv.io.hdf5 import H5Source

        return H5Source(spec.path, spec.dataset)
    if spec.kind == "zarr":
        from pwconv.io.zarr_store import ZarrSource

        return ZarrSource(spec.path, spec.dataset)
    raise UsageError(f"expected an input format, found {spec.kind!r}")


def check_distinct(output: Spec, *inputs: Spec) -> None:
    """OUTPUT may never be one of the files read (it would be destroyed while read)."""
    if output.kind == "stream":
        return
    for other in inputs:
        if other.kind == "stream":
            continue
        if os.path.abspath(output.path) == os.path.abspath(other.path) or (
            os.path.exists(output.path) and same_file(output.path, other.path)
        ):
            raise OutputExistsError(
                f"output {output.text!r} is the same file as {other.text!r}, which is read; "
                "write to another file"
            )


def open_sink(
    spec: Spec,
    shape: tuple[int, ...],
    dtype: np.dtype,
    *,
    overwrite: bool,
    attrs: dict[str, Any],
    channel_axis: int,
    compression: str | None = None,
    chunks: str | tuple[int, ...] | None = "auto",
) -> Sink:
    """A writer that makes the output visible only when it is complete.

    ``chunks`` is ``auto``, ``none``, sizes as text (``"8,64,16"``) or a tuple.
    """
    if isinstance(chunks, str) and chunks not in ("auto", "none"):
        chunks = _parse_chunks(chunks, len(shape))
    if spec.kind == "stream":
        from pwconv.io.npy import StreamSink

        return StreamSink(shape, dtype)
    if spec.kind == "h5":
        if not (spec.dataset and os.path.exists(spec.path)):
            check_output_path(spec.path, overwrite)
        from pwconv.io.hdf5 import H5Sink

        return H5Sink(
            spec.path,
            spec.dataset,
            shape,
            dtype,
            overwrite=overwrite,
            attrs=attrs,
            channel_axis=channel_axis,
            compression=compression,
            chunks=chunks,
        )
    if spec.kind == "zarr":
        check_output_path(spec.path, overwrite)
        from pwconv.io.zarr_store import ZarrSink

        if spec.dataset:
            raise UsageError(
                f"expected a zarr output without an array name, found {spec.text!r}; write to {spec.path}"
            )
        return ZarrSink(
            spec.path,
            shape,
            dtype,
            overwrite=overwrite,
            attrs=attrs,
            chunks=chunks if isinstance(chunks, tuple) else None,
            channel_axis=channel_axis,
            compression=compression,
        )
    check_output_path(spec.path, overwrite)
    if compression:
        raise UsageError(
            "expected --compression only with HDF5 or Zarr output, found a .npy output; drop the option"
        )
    from pwconv.io.npy import NpySink

    return NpySink(spec.path, shape, dtype)


def _parse_chunks(text: str, ndim: int) -> tuple[int, ...]:
    try:
        chunks = tuple(int(v) for v in text.split(","))
    except ValueError:
        chunks = ()
    if len(chunks) != ndim or any(c < 1 for c in chunks):
        raise UsageError(
            f"expected --chunks auto, none or {ndim} positive comma-separated sizes, found {text!r}"
        )
    return chunks


@dataclass(frozen=True)
class Weights:
    """A filter bank as loaded: the array, where it came from and a SHA-256 to identify it."""

    array: np.ndarray
    source: str
    sha256: str
    literal: bool
    spec: Spec | None


def looks_like_literal(text: str) -> bool:
    return bool(_LITERAL.match(text)) and any(ch.isdigit() for ch in text) and not os.path.exists(text)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(text: str, dataset: str | None = None, *, what: str = "weights") -> Weights:
    """Load filters (or a bias) from a file spec or an inline literal such as ``"2,3"``.

    >>> load_weights("1,0;0,1").array.shape
    (2, 2)
    """
    if looks_like_literal(text):
        array = parse_literal(text)
        return Weights(array, f"literal {text!r}", hashlib.sha256(text.encode()).hexdigest(), True, None)
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
    digest = _file_sha256(spec.path) if spec.kind != "zarr" else ""
    return Weights(array, spec.text, digest, False, spec)


def require(module: str, extra: str, feature: str) -> Any:
    """Import an optional dependency or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"expected the optional package {module!r} for {feature}, found it not installed; "
            f"install it with: pip install 'pwconv[{extra}]'"
        ) from None
