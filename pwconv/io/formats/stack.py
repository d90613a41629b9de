"""Several files as the channels of one input: ``B2.tif+B3.tif+B4.tif`` (bands stored one
file each, as Landsat and Sentinel-2 scenes ship them).

Each part is read by its own format, lazily; the parts must share their pixels (rows and
columns), their georeferencing (CRS and transform) and their nodata. The channels are the
parts' channels in the order given, named by each part's band names or, for a single-band
part without one, by its file name.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import ShapeError, UsageError
from pwconv.io import codecs
from pwconv.io.interface import Backend, Description, Source

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from pwconv.io.spec import Spec

# Parts read at once: a scene's bands (Sentinel-2 has 13).
_PART_THREADS = 16


_pool: list[ThreadPoolExecutor] = []
_lock = threading.Lock()


def _part_threads() -> ThreadPoolExecutor:
    """The threads that read a stack's parts at once (their own: a part's reader runs its
    requests and codecs on the other pools)."""
    with _lock:
        if not _pool:
            from concurrent.futures import ThreadPoolExecutor

            _pool.append(ThreadPoolExecutor(_PART_THREADS, thread_name_prefix="pwconv-stack"))
        return _pool[0]


def _pixels(source: Source, text: str) -> tuple[tuple[int, int], int]:
    shape = tuple(source.shape)
    if len(shape) == 2:
        return (int(shape[0]), int(shape[1])), 1
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1])), int(shape[2])
    raise ShapeError(
        f"expected each file of a stack to be rows x columns (x bands), found shape {shape} in {text!r}; "
        "stack single images or rasters"
    )


def _grid(source: Source) -> tuple[Any, Any] | None:
    geo = source.description.metadata.get("raster")
    return None if not geo else (geo.get("crs"), geo.get("transform"))


def _labels(source: Source, text: str, channels: int, given: str | None) -> tuple[str, ...]:
    """A part's channel names: ``given`` (a STAC common name), else its own band names, else
    its file name; numbered where one name serves several channels."""
    own = source.description.labels.get(2) if len(source.shape) == 3 and given is None else None
    if own:
        return tuple(own)
    stem = given or os.path.splitext(os.path.basename(text))[0]
    return (stem,) if channels == 1 else tuple(f"{stem}_{i + 1}" for i in range(channels))


class StackSource(Source):
    """The parts' channels side by side, as (rows, columns, channels)."""

    def __init__(self, texts: list[str], parts: list[Source], labels: list[str] | None = None) -> None:
        """``labels``: a name per part (a STAC asset's common name) instead of its own."""
        self.texts, self.parts = texts, parts
        pixels, counts = zip(*(_pixels(p, t) for p, t in zip(parts, texts)))
        for text, found in zip(texts[1:], pixels[1:]):
            if found != pixels[0]:
                raise ShapeError(
                    f"expected the files of a stack to share their pixels, found {pixels[0][0]}x{pixels[0][1]} in "
                    f"{texts[0]!r} and {found[0]}x{found[1]} in {text!r}; resample them to one grid first"
                )
        grids = [_grid(p) for p in parts]
        for text, grid in zip(texts[1:], grids[1:]):
            if grid != grids[0]:
                raise ShapeError(
                    f"expected the files of a stack to share their CRS and transform, found {texts[0]!r} and "
                    f"{text!r} placed differently; reproject them to one grid first"
                )
        nodata = {p.description.nodata for p in parts}
        if len(nodata) > 1:
            raise UsageError(
                f"expected the files of a stack to share their nodata, found {sorted(map(str, nodata))}; "
                "give one with [[nodata]] VALUE"
            )
        self.counts = list(counts)
        self.shape = (*pixels[0], sum(self.counts))
        self.dtype = np.result_type(*(p.dtype for p in parts))
        first = parts[0].description
        given: list[str | None] = list(labels) if labels else [None] * len(parts)
        names = tuple(name for p, t, c, g in zip(parts, texts, counts, given) for name in _labels(p, t, c, g))
        self.description = Description(
            nodata=next(iter(nodata)), reader=" + ".join(p.description.reader or "?" for p in parts),
            metadata=dict(first.metadata), georeferenced=first.georeferenced, labels={2: names},
            notes=first.notes,
        )  # fmt: skip

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The block's pixels of every part, the parts read at once (at URLs each part's
        requests wait on the network: one part after another, their waits added up)."""
        pixels = tuple(index[:2])

        def one(i: int) -> np.ndarray:
            part, count = self.parts[i], self.counts[i]
            block = np.asarray(part.read(pixels if len(part.shape) == 2 else (*pixels, slice(None))))
            return block.reshape(*block.shape[:2], count).astype(self.dtype, copy=False)

        if len(self.parts) == 1:
            blocks = [one(0)]
        else:
            blocks = codecs.in_parallel(one, range(len(self.parts)), _part_threads())
        whole = np.concatenate(blocks, axis=2)
        return whole[:, :, index[2]] if len(index) > 2 else whole

    def release(self, index: tuple[slice, ...]) -> None:
        for part in self.parts:
            part.release(tuple(index[: len(part.shape)]) if len(part.shape) == 2 else tuple(index))

    def storage(self) -> dict[str, Any]:
        return {"format": "stack", "files": list(self.texts), "channels per file": list(self.counts)}

    def decoded_piece(self) -> tuple[int, str] | None:
        pieces = [p.decoded_piece() for p in self.parts]
        found = [piece for piece in pieces if piece is not None]
        return (sum(size for size, _ in found), found[0][1]) if found else None

    def output_format(self, output: Spec) -> str | None:
        return self.parts[0].output_format(output)

    def close(self) -> None:
        for part in self.parts:
            part.close()


class StackFormat(Backend):
    """Files joined with ``+``: each part opened by its own format."""

    def open_source(self, spec: Spec) -> Source:
        from pwconv.io.registry import JOIN
        from pwconv.io.spec import parse_spec

        texts = spec.path.split(JOIN)
        specs = [parse_spec(text) for text in texts]
        for text, part in zip(texts, specs):
            if part.path == "-":  # (a part holds no "+": it is never a stack itself)
                raise UsageError(f"expected files in a stack, found {text!r}; join files with '+'")
        return open_stack(texts, specs)


def open_stack(texts: list[str], specs: list[Spec], labels: list[str] | None = None) -> StackSource:
    """The stack of the parts ``specs`` (written ``texts``): each part opened by its own
    format, all at once (at URLs each opening waits on a few requests). Where any fails, the
    first in the order given is raised; the parts already open are closed, and so they are
    when the parts do not make a stack."""
    from pwconv.io.registry import open_source

    opened: list[Source | None] = [None] * len(specs)

    def one(i: int) -> None:
        opened[i] = open_source(specs[i])

    try:
        codecs.in_parallel(one, range(len(specs)), _part_threads())
        return StackSource(texts, [source for source in opened if source is not None], labels=labels)
    except BaseException:
        for source in opened:
            if source is not None:
                source.close()
        raise
