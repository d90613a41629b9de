"""A TIFF's stored blocks (tiles or strips) read at their offsets and decoded by pwconv.

GDAL decodes the blocks a window meets one after another on the calling thread, and at a
URL it fetches them one request at a time: a 1 GiB deflate GeoTIFF read in 3.9 s where its
decoding alone takes 1.2 s on two cores, and a tiled one at a URL in 13-15 s where the bytes
take 2.3 s. tifffile's zarr view of a plain TIFF decodes on one thread too. Here GDAL or
tifffile still opens the file and says what it holds (shape, dtype, compression, predictor,
interleaving, and each block's offset and stored size); pwconv then reads the blocks a window
meets (positioned reads on disk, ranged requests at a URL, all of a window's in flight at
once), decodes them on one thread per core (:mod:`pwconv.io.codecs`) and undoes the predictor
itself.

Only files read the same way by the library take this path: little-endian (on a
little-endian machine), uncompressed, deflate, zstd or LZW, predictor none, horizontal or
floating point, whole bytes per sample. Anything else (JPEG, WebP, LERC, packed bits,
big-endian files) is read by GDAL or tifffile as before, as is every file with
``PWCONV_RAW_IO=0``. A GeoTIFF's LZW on disk stays GDAL's (see :func:`gdal_layout`).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError
from pwconv.io import codecs
from pwconv.io.rawio import BlockMemory, box_of, chunk_pieces, read_all, whole_slab
from pwconv.io.stores import shown

if TYPE_CHECKING:
    from pwconv.io.stores import RemoteObject

# GDAL's names for the compressions read here, and the codec that decodes each.
_CODECS = {"DEFLATE": "deflate", "ZSTD": "zstd", "LZW": "lzw"}
# A stored block larger than this many times its decoded size (plus a little) is a lie:
# deflate and zstd grow incompressible data by well under 1%, LZW by at most 12 bits a byte.
_STORED_GROWTH = 2
_STORED_SLACK = 1 << 16

#: Fetches byte ranges: (starts, ends) -> one bytes-like object per range.
Fetch = Callable[[list[int], list[int]], list[Any]]
#: Where a block is stored: its grid coordinates (row, col, plane) -> (offset, stored bytes).
Where = Callable[[tuple[int, ...]], tuple[int, int]]


@dataclass(frozen=True)
class BlockLayout:
    """How a TIFF's pixels are stored: the block grid, the samples each stored pixel holds
    (1 where each band has a plane of its own, all of a plane's bands where they are
    pixel-interleaved), the codec (None: raw) and the predictor (1, 2 or 3). Band ``b`` lies
    in plane ``b // samples``."""

    shape: tuple[int, int, int]  # rows, cols, bands
    dtype: np.dtype
    block: tuple[int, int]  # rows, cols of one block
    samples: int  # samples per pixel in one stored block
    codec: str | None
    predictor: int

    @property
    def chunks(self) -> tuple[int, int, int]:
        """One block's extent in (rows, cols, bands)."""
        return (self.block[0], self.block[1], self.samples)

    @property
    def row_bytes(self) -> int:
        """The bytes of one decoded row of a block."""
        return self.block[1] * self.samples * self.dtype.itemsize

    def rows_inside(self, row: int) -> int:
        """The rows of block row ``row`` that lie in the image: a strip at the bottom stores
        only those, a tile stores its whole height."""
        return min(self.block[0], self.shape[0] - row * self.block[0])

    def decoded_bytes(self, row: int) -> tuple[int, int]:
        """The bytes a block of block row ``row`` decodes to: at least its rows inside the
        image, at most its whole height."""
        return self.rows_inside(row) * self.row_bytes, self.block[0] * self.row_bytes


def gdal_layout(ds: Any, head: bytes, *, remote: bool) -> BlockLayout | None:
    """The layout of the GDAL dataset ``ds`` (a GeoTIFF whose first bytes are ``head``, at a
    URL where ``remote``), or None where GDAL must read it, or reads it as fast.

    LZW on disk is left to GDAL: imagecodecs' LZW decoder takes about 1.5x the CPU time of
    libtiff's, and GDAL decodes a window's blocks on every core too (``GDAL_NUM_THREADS``):
    1 GiB to a local npy, 5.2-5.5 s through GDAL against 5.2-6.2 s here, with 8 s of CPU
    against 9-10 s. At a URL GDAL fetches one tile a request, so pwconv reads LZW there.
    """
    if ds.driver != "GTiff" or len(set(ds.block_shapes)) != 1:
        return None
    order = {b"II": "little", b"MM": "big"}.get(head[:2])
    structure = {str(k).upper(): str(v).upper() for k, v in ds.tags(ns="IMAGE_STRUCTURE").items()}
    compression = structure.get("COMPRESSION", "NONE")
    codec = _CODECS.get(compression)
    predictor = structure.get("PREDICTOR", "1")
    interleave = structure.get("INTERLEAVE", "BAND")
    dtype = np.dtype(ds.dtypes[0])
    if (
        order != sys.byteorder
        or (codec == "lzw" and not remote)
        or (compression != "NONE" and (codec is None or not codecs.can_decode(codec)))
        or predictor not in ("1", "2", "3")
        or (predictor != "1" and dtype.kind not in "iuf")
        or (predictor == "3" and dtype.kind != "f")
        or structure.keys() & {"NBITS", "MINISWHITE"}
        or interleave not in ("BAND", "PIXEL")
    ):
        return None
    rows, cols = (int(n) for n in ds.block_shapes[0])
    samples = 1 if interleave == "BAND" else ds.count
    return BlockLayout((ds.height, ds.width, ds.count), dtype, (rows, cols), samples, codec, int(predictor))


# tifffile's numbers for the compressions read here (8 and 32946 are both deflate; 34926 is
# zstd's older number), and its page axes whose layout is one of ours.
_TIFF_CODECS = {1: None, 5: "lzw", 8: "deflate", 32946: "deflate", 50000: "zstd", 34926: "zstd"}
_PAGE_AXES = {"YX": False, "YXS": False, "SYX": True}  # axes: one plane per sample
_YCBCR = 6


def tifffile_layout(tif: Any, series: Any) -> tuple[BlockLayout, Where] | None:
    """The layout of tifffile's ``series`` of ``tif`` as (rows, cols, channels), its channels
    the series' other axes and the pages' samples in storage order, with the function that
    finds a block (row, col, plane) in it; or None where tifffile must read it.

    Each page is a plane (its samples pixel-interleaved) or as many planes as it has samples
    (planar); plane ``p`` lies in page ``p // planes_per_page``. The pages' tags are the first
    page's, as tifffile reads them; a page's block offsets are read when first needed.
    """
    page = series.keyframe
    axes, shape = str(page.axes), tuple(int(n) for n in page.shape)
    k, codec = len(axes), _TIFF_CODECS.get(int(page.compression), "unknown")
    dtype = page.dtype
    if (
        sys.byteorder != "little"
        or tif.byteorder != "<"
        or axes not in _PAGE_AXES
        or tuple(int(n) for n in series.shape[-k:]) != shape
        or str(series.axes)[-k:] != axes
        or math.prod(int(n) for n in series.shape[:-k]) != len(series.pages)
        or codec == "unknown"
        or (codec is not None and not codecs.can_decode(codec))
        or dtype is None
        or np.dtype(dtype).kind not in "iuf"
        or int(page.bitspersample) != np.dtype(dtype).itemsize * 8
        or int(page.imagedepth) != 1
        or int(page.fillorder) != 1
        or int(page.photometric) == _YCBCR
        or int(page.predictor) not in (1, 2, 3)
        or (int(page.predictor) == 2 and np.dtype(dtype).kind not in "iuf")
        or (int(page.predictor) == 3 and np.dtype(dtype).kind != "f")
    ):
        return None
    dtype = np.dtype(dtype)
    planar = _PAGE_AXES[axes]
    rows, cols = int(page.imagelength), int(page.imagewidth)
    spp = int(page.samplesperpixel)
    if page.is_tiled:
        block = (int(page.tilelength), int(page.tilewidth))
    else:
        block = (min(int(page.rowsperstrip) or rows, rows), cols)
    if spp != {"YX": 1, "YXS": shape[-1], "SYX": shape[0]}[axes] or min(block) < 1:
        return None
    samples = 1 if planar else spp
    planes_per_page = spp if planar else 1
    across, down = -(-cols // block[1]), -(-rows // block[0])
    channels = math.prod(int(n) for n in series.shape) // (rows * cols)
    layout = BlockLayout((rows, cols, channels), dtype, block, samples, codec, int(page.predictor))

    pages: dict[int, tuple[Any, Any] | None] = {}  # a page's offsets and byte counts, once read

    def where(coords: tuple[int, ...]) -> tuple[int, int]:
        row, col, plane = coords
        number = plane // planes_per_page
        if number not in pages:
            held = series.pages[number]
            pages[number] = None if held is None else (held.dataoffsets, held.databytecounts)
        found = pages[number]
        if found is None:  # a page the file lacks: tifffile reads zeros
            return (0, 0)
        index = (plane % planes_per_page) * across * down + row * across + col
        if index >= min(len(found[0]), len(found[1])):
            return (-1, 0)  # fewer blocks than the page's size needs: refused as damaged
        offset, count = int(found[0][index]), int(found[1][index])
        return (offset, count) if offset and count else (0, 0)

    return layout, where


def _positioned(fd: int, name: str) -> Fetch:
    """A :data:`Fetch` of one range at a time from the open file ``fd`` (positioned reads,
    so that every codec thread reads its own block, into its own buffer: valid until the
    thread reads its next block)."""

    def fetch(starts: list[int], ends: list[int]) -> list[Any]:
        data = codecs.read_buffer(ends[0] - starts[0])
        read_all(fd, data.data, starts[0], name)
        return [data]

    return fetch


class TiffBlocks:
    """A TIFF's blocks read through ``fetch`` and decoded on every core.

    ``where`` gives a block's (offset, stored bytes) from its grid coordinates (row, col,
    plane), GDAL's figures, checked here against the file's ``size``; a block never written
    (no bytes) reads as ``fill`` (the nodata value where the dtype holds it, else 0), as GDAL
    reads it. ``fetch`` takes all of a window's ranges at once where ``batched`` (requests in
    flight together), else one block's on the thread that decodes it (positioned reads).
    """

    def __init__(
        self,
        layout: BlockLayout,
        where: Where,
        fetch: Fetch,
        *,
        batched: bool,
        size: int,
        name: str,
        fill: float | None,
    ) -> None:
        self.layout, self._where, self._fetch, self._batched = layout, where, fetch, batched
        self._size, self.name = size, name
        self._fd: int | None = None  # the file it reads, where it opened one (see of_file)
        self._fill = _fill_value(fill, layout.dtype)
        self._places: dict[tuple[int, ...], tuple[int, int]] = {}
        self._lock = threading.Lock()  # GDAL's dataset is not to be used from two threads
        self._memory = BlockMemory(keep=2)  # a window's box is assembled in a kept buffer

    @classmethod
    def of_file(
        cls, path: str, remote: RemoteObject | None, layout: BlockLayout, where: Where, fill: float | None
    ) -> TiffBlocks:
        """The blocks of the file at ``path``: at a URL (``remote``), a window's blocks fetched
        at once, by spans; on disk, each block by a positioned read on the thread that decodes
        it, from a descriptor :meth:`close` closes."""
        if remote is not None:
            return cls(layout, where, remote.read_spans, batched=True, size=remote.size, name=repr(shown(path)),
                       fill=fill)  # fmt: skip
        fd = os.open(path, os.O_RDONLY)
        blocks = cls(layout, where, _positioned(fd, path), batched=False, size=os.fstat(fd).st_size, name=repr(path),
                     fill=fill)  # fmt: skip
        blocks._fd = fd
        return blocks

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _place(self, coords: tuple[int, ...]) -> tuple[int, int]:
        """Where block ``coords`` is stored and how many of its bytes to read: checked to lie
        in the file, hold the block's rows (raw) or not claim more bytes than its pixels
        could take (compressed)."""
        with self._lock:
            if coords not in self._places:
                self._places[coords] = self._where(coords)
            offset, stored = self._places[coords]
        layout = self.layout
        least, most = layout.decoded_bytes(coords[0])
        if layout.codec is not None:
            most = _STORED_GROWTH * most + _STORED_SLACK
        fits = stored >= least if layout.codec is None else stored <= most
        if offset < 0 or stored < 0 or offset + stored > self._size or (stored and not fits):
            expected = f"at least {least}" if layout.codec is None else f"at most {most}"
            raise FormatError(
                f"expected block {coords} of {self.name} within its {self._size} bytes and {expected} bytes "
                f"long, found {stored} bytes at byte {offset}; the file is damaged, write it again"
            )
        return offset, (min(stored, least) if layout.codec is None else stored)

    def _decoded(self, coords: tuple[int, ...], data: Any, into: np.ndarray | None = None) -> np.ndarray:
        """The rows of block ``coords`` inside the image (see :func:`decoded_block`)."""
        return decoded_block(self.layout, coords[0], data, f"block {coords} of {self.name}", into)

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """Any selection (steps too) of (rows, cols, bands): its step-1 box read, then stepped.

        Of an uncompressed block, only the rows the selection meets are read: a window whose
        rows cut across large tiles (64 bands of 512 x 512 float32: 64 MiB each) otherwise
        fetched every tile it met whole, for each window that met it."""
        box, steps = box_of(index, self.layout.shape)
        out = self._memory.empty(tuple(b - a for a, b in box), self.layout.dtype)
        if not out.size:
            return out[steps]
        layout = self.layout
        raw = layout.codec is None and layout.predictor == 1
        stored = []
        for piece in chunk_pieces(box, layout.chunks):
            offset, size = self._place(piece.coords)
            if size and raw:  # rows are stored one after another: read those needed
                rows = piece.inner[0]
                offset, size = (
                    offset + rows.start * layout.row_bytes,
                    (rows.stop - rows.start) * layout.row_bytes,
                )
            if size:
                stored.append((piece, offset, size))
            else:
                out[piece.outer] = self._fill
        fetched: list[Any] = [None] * len(stored)
        if self._batched:
            fetched = self._fetch([o for _, o, _ in stored], [o + n for _, o, n in stored])

        def one(i: int) -> None:
            piece, offset, size = stored[i]
            data = fetched[i] if self._batched else self._fetch([offset], [offset + size])[0]
            if raw:
                rows = np.frombuffer(data, layout.dtype, size // layout.dtype.itemsize)
                rows = rows.reshape(-1, layout.block[1], layout.samples)
                out[piece.outer] = rows[(slice(None),) + piece.inner[1:]]
            elif (slab := whole_slab(out, piece, layout.chunks)) is not None:
                self._decoded(piece.coords, data, into=slab)
            else:
                out[piece.outer] = self._decoded(piece.coords, data)[piece.inner]

        codecs.in_parallel(one, range(len(stored)))
        return out[steps]


def decoded_block(
    layout: BlockLayout, row: int, data: Any, name: str, into: np.ndarray | None = None
) -> np.ndarray:
    """The rows inside the image of a block of block row ``row``, from its stored bytes, as
    (rows, cols, samples) in the file's dtype (a buffer valid until this thread's next
    decode; or, with ``into``, a whole block's run of a box, those values written there);
    damaged bytes are a one-line error naming ``name``."""
    least, most = layout.decoded_bytes(row)
    if into is not None:
        if layout.codec is None or layout.predictor == 3 or not least == most == into.nbytes:
            into[...] = decoded_block(layout, row, data, name)  # through this thread's buffer
            return into
        codecs.decode_into(layout.codec, data, into, name)  # straight into the box, undone there
        pixels = into.reshape(-1).view(np.uint8)
    else:
        if layout.codec is not None:
            data = codecs.decode_between(layout.codec, data, least, most, name)
        pixels = np.frombuffer(data, np.uint8, least)
        if not pixels.flags.writeable and layout.predictor != 1:
            pixels = pixels.copy()
    shape = (layout.rows_inside(row), layout.block[1], layout.samples)
    if layout.predictor == 2:  # each sample the difference from the one to its left
        same_width = pixels.view(f"u{layout.dtype.itemsize}").reshape(shape)
        np.cumsum(same_width, axis=1, dtype=same_width.dtype, out=same_width)
        return same_width.view(layout.dtype)
    if layout.predictor == 3:
        return _unpredicted_floats(pixels, shape, layout.dtype)
    return pixels.view(layout.dtype).reshape(shape)


def predicted(pixels: np.ndarray, predictor: int) -> np.ndarray:
    """``pixels`` (rows, cols, samples) as TIFF stores them under ``predictor`` before
    compression: unchanged (1); each sample the difference from the same sample one pixel to
    its left, wrapping (2, integers); or each row's values as byte planes, most significant
    first, each byte the difference from the one a pixel to its left (3, floats)."""
    if predictor == 1:
        return pixels
    rows, cols, samples = pixels.shape
    if predictor == 2:
        same_width = pixels.view(f"u{pixels.dtype.itemsize}")
        out = np.empty_like(same_width)
        out[:, :1] = same_width[:, :1]
        np.subtract(same_width[:, 1:], same_width[:, :-1], out=out[:, 1:])
        return out
    itemsize = pixels.dtype.itemsize
    big_endian = pixels.astype(pixels.dtype.newbyteorder(">")).view(np.uint8)
    planes = big_endian.reshape(rows, cols * samples, itemsize).transpose(0, 2, 1)
    planes = np.ascontiguousarray(planes).reshape(rows, itemsize * cols, samples)
    out = np.empty_like(planes)
    out[:, :1] = planes[:, :1]
    np.subtract(planes[:, 1:], planes[:, :-1], out=out[:, 1:])
    return out


def _fill_value(nodata: float | None, dtype: np.dtype) -> Any:
    """What a block never written holds: the nodata value where ``dtype`` holds it exactly."""
    if nodata is None:
        return 0
    try:
        value = np.array(nodata).astype(dtype)
        exact = bool(value == nodata) or (math.isnan(nodata) and dtype.kind in "fc")
    except (OverflowError, ValueError):
        return 0
    return value if exact else 0


def _unpredicted_floats(pixels: np.ndarray, shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    """Undo TIFF's floating-point predictor (3): each row holds its values' bytes as planes,
    most significant first, each byte the difference from the same plane's byte one pixel
    to its left."""
    rows, cols, samples = shape
    itemsize = dtype.itemsize
    planes = pixels.reshape(rows, itemsize * cols, samples)
    np.cumsum(planes, axis=1, dtype=np.uint8, out=planes)
    values = planes.reshape(rows, itemsize, cols * samples).transpose(0, 2, 1)
    big_endian = np.ascontiguousarray(values).view(dtype.newbyteorder(">"))
    return big_endian.reshape(shape)
