"""TIFF files through tifffile (extra ``pwconv[image]``): any channel count and dtype.

A TIFF is presented as (H, W, C), channels last, whatever its storage: the samples of a
contiguous (HWC) or planar (CHW) image, or the pages of a multi-page stack, become the
channels, in storage order. Uncompressed contiguous files are memory-mapped. Tiled, striped
or compressed files have the strips or tiles a block needs read at their offsets and decoded
by pwconv on every core (:mod:`pwconv.io.formats.tiffblocks`: uncompressed, deflate, zstd
and LZW, with any predictor tifffile writes but its x2/x4 floating-point ones); other codecs
go through tifffile's zarr view, which decodes them on one thread. Either way only the
pieces a block needs are decoded, so large files stream with bounded memory. BigTIFF is
read and, for outputs over 4 GiB, written.

Outputs: uncompressed TIFFs are written block by block into a memory-mapped temp file
(several processes may write at once); a deflate, zstd or LZW output is cut into strips,
each encoded on the codec threads as soon as it is complete (with the predictor asked for),
and tifffile writes the encoded strips in order during the run, so that a compressed TIFF
may be larger than memory too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from pwconv.errors import FormatError, PwconvError, UsageError, require_extra
from pwconv.io import codecs
from pwconv.io.atomic import FileSink, check_output_path, setting_up
from pwconv.io.checks import check_readable, first_line, numeric_dtype
from pwconv.io.formats.tiffblocks import BlockLayout, TiffBlocks, tifffile_layout
from pwconv.io.formats.tiffwriter import BIGTIFF_BYTES, TIFFFILE_NAMES, EncodedBlocks
from pwconv.io.interface import Backend, BlockWriter, Description, SinkRequest, Source
from pwconv.io.pictures import kept_for, picture_metadata
from pwconv.io.rawio import box_of, raw_paths_enabled, transfer_runs
from pwconv.io.stores import RangedFile, RemoteObject, is_url, shown

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

_STRIP_BYTES = 1 << 18  # a compressed output's strips: tifffile's own choice (about 256 KiB)


def _tifffile() -> Any:
    return require_extra("tifffile", "image", "TIFF files")


class TiffSource(Source):
    """The first series of a TIFF file as (H, W, C)."""

    def __init__(self, path: str) -> None:
        tifffile = _tifffile()
        check_readable(path)
        self.path = path
        self._chunk_rows: int | None = None
        self._blocks: TiffBlocks | None = None
        # At a URL (a multi-page TIFF, which GDAL would read one page of, see raster.py):
        # tifffile parses the pages through ranged reads, and the blocks are fetched by spans.
        self._remote = RemoteObject(path) if is_url(path) else None
        self._file = RangedFile(self._remote) if self._remote is not None else None
        try:
            self._tif = tifffile.TiffFile(path if self._file is None else self._file)
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files
            self._network_failure(exc)
            raise FormatError(
                f"expected a TIFF file at {shown(path)!r}, found one tifffile cannot open ({first_line(exc)})"
            ) from None
        try:
            self._describe()
        except BaseException:
            self._tif.close()
            raise

    def _describe(self) -> None:
        try:
            series = self._tif.series[0]
            axes, shape, page = series.axes, tuple(int(n) for n in series.shape), series.pages[0]
            self._page_info = {
                "compression": page.compression.name.lower(),
                "tiled": bool(page.is_tiled),
                "planar": int(page.planarconfig) == 2,
                "bit_depth": int(page.bitspersample),
                "photometric": page.photometric.name.lower(),
            }
            dtype = series.dtype
            self._picture = _picture_of(
                page, math.prod(shape[i] for i, a in enumerate(axes) if a not in "YX")
            )
        except Exception as exc:  # noqa: BLE001
            raise FormatError(
                f"expected a readable TIFF at {shown(self.path)!r}, found damaged tags ({first_line(exc)})"
            ) from None
        if "Y" not in axes or "X" not in axes:
            raise FormatError(f"expected an image (Y and X axes) in {shown(self.path)!r}, found axes {axes}")
        self.dtype = numeric_dtype(dtype, repr(shown(self.path)))
        others = [i for i, a in enumerate(axes) if a not in "YX"]
        self._y, self._x = axes.index("Y"), axes.index("X")
        self._order = [self._y, self._x, *others]
        self._axes, self._storage_shape = axes, shape
        self.shape = (shape[self._y], shape[self._x], math.prod(shape[i] for i in others))
        self._pages = len(self._tif.pages)
        self._array = self._open_data(series)

    def _open_data(self, series: Any) -> Any:
        tifffile = _tifffile()
        if raw_paths_enabled():
            try:
                if self._remote is not None:
                    raise OSError("no memory map of a URL")
                array = tifffile.memmap(self.path, series=0, mode="r")
                self.description = Description(
                    is_image=True, reader="memory map", metadata=self._picture, labels=self._labels()
                )
                return array
            except Exception:  # noqa: BLE001 - not contiguous and uncompressed: decode by segment
                pass
            blocks = self._own_blocks(series)
            if blocks is not None:
                return blocks
        try:
            zarr = require_extra("zarr", "image", "tiled or compressed TIFF files")
            array = zarr.open(series.aszarr(), mode="r")
            self._chunk_rows = int(array.chunks[self._y])
            self.description = Description(
                is_image=True, reader="tifffile", metadata=self._picture, labels=self._labels()
            )
            return array
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, (FormatError, UsageError)):
                raise
            raise FormatError(
                f"expected readable image data in {shown(self.path)!r}, found ({first_line(exc)})"
            ) from None

    def _own_blocks(self, series: Any) -> TiffBlocks | None:
        """pwconv's own reader of the series' strips or tiles, where it reads them."""
        try:
            found = tifffile_layout(self._tif, series)
        except Exception as exc:  # noqa: BLE001 - tifffile reads tags lazily, and they may be damaged
            raise FormatError(
                f"expected a readable TIFF at {shown(self.path)!r}, found damaged tags ({first_line(exc)})"
            ) from None
        if found is None or found[0].shape != self.shape:
            return None
        layout, where = found
        self._blocks = TiffBlocks.of_file(self.path, self._remote, layout, where, None)
        self._chunk_rows = layout.block[0]
        self.description = Description(
            is_image=True, reader=f"block offsets, {layout.codec or 'raw'}", metadata=self._picture,
            labels=self._labels(),
        )  # fmt: skip
        return self._blocks

    def _network_failure(self, exc: Exception) -> None:
        """Raise the URL's own error (no access, the network) where ``exc`` came of one,
        rather than calling the file damaged."""
        if isinstance(exc, PwconvError):
            raise exc
        if self._file is not None and self._file.failure is not None:
            raise self._file.failure from None

    def _labels(self) -> dict[int, tuple[str, ...]]:
        """An OME-TIFF's channel names, as the labels of the channel axis."""
        names = _ome_channel_names(self._tif)
        return {2: names} if names and len(names) == self.shape[2] else {}

    def chunks(self) -> tuple[int, ...] | None:
        if self._blocks is not None:
            return (*self._blocks.layout.block, self.shape[2])
        return None if self._chunk_rows is None else (self._chunk_rows, self.shape[1], self.shape[2])

    def decoded_piece(self) -> tuple[int, str] | None:
        if self._chunk_rows is None:  # memory-mapped
            return None
        kind = "tile" if self._page_info["tiled"] else "strip"
        if self._blocks is not None:
            layout = self._blocks.layout
            return math.prod(layout.chunks) * self.dtype.itemsize, f"a {kind}"
        return math.prod(int(c) for c in self._array.chunks) * self.dtype.itemsize, f"a {kind}"

    def storage(self) -> dict[str, Any]:
        return {
            "format": "tiff",
            "axes": self._axes,
            **self._page_info,
            "bigtiff": bool(self._tif.is_bigtiff),
            "pages": self._pages,
            "data_bytes": math.prod(self.shape) * self.dtype.itemsize,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._blocks is not None:
            return self._blocks.read(index + (slice(None),) * (3 - len(index)))
        stored: list[Any] = [slice(None)] * len(self._storage_shape)
        stored[self._y], stored[self._x] = index[0], index[1]
        try:
            data = np.asarray(self._array[tuple(stored)])
        except Exception as exc:  # noqa: BLE001 - codecs and offsets past the end
            self._network_failure(exc)
            raise FormatError(
                f"cannot read {shown(self.path)!r}: its image data is damaged ({first_line(exc)})"
            ) from None
        block = data.transpose(self._order)
        block = block.reshape(block.shape[0], block.shape[1], -1)
        return block[:, :, index[2]] if len(index) > 2 else block

    def close(self) -> None:
        if self._blocks is not None:
            self._blocks.close()
        self._array = self._blocks = None
        self._tif.close()


_ICC_TAG, _X_RESOLUTION, _Y_RESOLUTION, _RESOLUTION_UNIT = 34675, 282, 283, 296
_PER_INCH = {2: 1.0, 3: 2.54}  # ResolutionUnit: inch, centimetre


_MAX_OME_BYTES = 1 << 20  # OME-XML past this is not read for names


def _ome_channel_names(tif: Any) -> tuple[str, ...] | None:
    """The Name of each Channel of the first OME Image, or None (not OME, or unnamed)."""
    if not tif.is_ome:
        return None
    text = tif.ome_metadata or ""
    if len(text) > _MAX_OME_BYTES:
        return None
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None
    image = next((e for e in root.iter() if e.tag.endswith("}Image") or e.tag == "Image"), None)
    channels = [e for e in (image.iter() if image is not None else ()) if e.tag.endswith("Channel")]
    names = tuple(c.get("Name", "") for c in channels)
    return names if names and all(names) else None


def _picture_of(page: Any, channels: int) -> dict[str, Any]:
    """A TIFF page's colour profile and resolution (as dots per inch)."""
    tags = page.tags
    icc = tags.get(_ICC_TAG)
    x, y, unit = tags.get(_X_RESOLUTION), tags.get(_Y_RESOLUTION), tags.get(_RESOLUTION_UNIT)
    dpi = None
    scale = _PER_INCH.get(int(unit.value) if unit is not None else 2)
    if x is not None and y is not None and scale is not None:
        (xn, xd), (yn, yd) = x.value, y.value
        if xd and yd:
            dpi = (xn / xd * scale, yn / yd * scale)
    return picture_metadata(
        icc_profile=bytes(icc.value) if icc is not None else None, dpi=dpi, exif=None, channels=channels
    )


def _picture_tags(request: SinkRequest, channels: int) -> dict[str, Any]:
    """tifffile's write options for what a TIFF keeps of an input picture's metadata."""
    kept = kept_for(request.metadata, channels, request.stride)
    options: dict[str, Any] = {}
    if "dpi" in kept:
        options.update(resolution=kept["dpi"], resolutionunit="INCH")
    if "icc_profile" in kept:
        options["extratags"] = [(_ICC_TAG, 7, None, kept["icc_profile"], True)]
    return options


def _layout(shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    channels = shape[2] if len(shape) == 3 else 1
    if channels in (3, 4) and dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        extra = {"extrasamples": ("unassalpha",)} if channels == 4 else {}
        return {"photometric": "rgb", "planarconfig": "contig", **extra}
    return {"photometric": "minisblack", **({"planarconfig": "contig"} if channels > 1 else {})}


class TiffSink(FileSink):
    """A TIFF output: blocks written at their offsets into an uncompressed temp file, or
    compressed strips written in order by tifffile as they are complete
    (:class:`~pwconv.io.formats.tiffwriter.EncodedBlocks`)."""

    def __init__(self, path: str, request: SinkRequest) -> None:
        tifffile = _tifffile()
        shape, dtype = request.shape, np.dtype(request.dtype)
        if len(shape) not in (2, 3):
            raise UsageError(
                f"expected an (H, W, C) result for TIFF output, found shape {shape}; write .npy, .h5 or .zarr"
            )
        super().__init__(path)
        self.dtype = dtype
        self._stored_shape = shape if len(shape) == 2 or shape[2] > 1 else shape[:2]
        self._compression = request.compression
        self._level = request.compression_level
        self._picture_tags = _picture_tags(request, shape[2] if len(shape) == 3 else 1)
        self._strips: EncodedBlocks | None = None
        self._fd = -1
        self._offset = 0
        self._predictor = _predictor(request, dtype)
        with setting_up(self, path):
            if self._compression:
                encoding = self._encoding()
                self._strips = EncodedBlocks(
                    self._stored_shape,
                    encoding,
                    self._level,
                    repr(path),
                    tiled=False,
                    hold=request.buffer_bytes // 4,
                )
                self._strips.start(
                    self.temp.path, lambda file, strips: self._write_file(file, strips, encoding)
                )
            else:
                # tifffile lays out an uncompressed contiguous image; blocks are then written at
                # their offsets with plain file writes (a writable map of the whole output would
                # keep every page written resident).
                big = math.prod(shape) * dtype.itemsize > BIGTIFF_BYTES
                layout = tifffile.memmap(
                    self.temp.path,
                    shape=self._stored_shape,
                    dtype=dtype,
                    bigtiff=big,
                    **_layout(shape, dtype),
                    **self._picture_tags,
                )
                self._offset = int(layout.offset)
                del layout
                self._fd = os.open(self.temp.path, os.O_RDWR)

    def _encoding(self) -> BlockLayout:
        """How the compressed output's strips are stored (rows per strip: tifffile's choice,
        about 256 KiB a strip)."""
        compression = self._compression
        assert compression is not None
        if compression != "deflate" and not codecs.can_decode(compression):
            require_extra("imagecodecs", "codecs", f"{compression} TIFF output")
        shape, dtype = self._stored_shape, self.dtype
        samples = shape[2] if len(shape) == 3 else 1
        rows = min(max(1, _STRIP_BYTES // (shape[1] * samples * dtype.itemsize)), shape[0])
        return BlockLayout((shape[0], shape[1], samples), dtype, (rows, shape[1]), samples, compression,
                           self._predictor)  # fmt: skip

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        stored = index[: len(self._stored_shape)]
        box, _ = box_of(stored, self._stored_shape)
        if self._strips is not None:
            self._strips.write(box, block)
            return
        data = np.ascontiguousarray(block, dtype=self.dtype)
        transfer_runs(
            self._fd, self._offset, self._stored_shape, box, data, write=True, name=repr(self.target)
        )

    def parallel_writer(self) -> BlockWriter | None:
        if self._compression:
            return None
        return _TiffBlockWriter(self.temp.path, len(self._stored_shape))

    def _write_file(self, file: BinaryIO, strips: Iterator[bytes], layout: BlockLayout) -> None:
        """tifffile writing ``file`` from ``strips`` (encoded as ``layout`` says, in order),
        on the strip writer's thread."""
        _tifffile().imwrite(
            file,
            strips,  # encoded strips, which tifffile writes as they are
            shape=self._stored_shape,
            dtype=self.dtype,
            compression=TIFFFILE_NAMES[layout.codec or ""],
            predictor=self._predictor if self._predictor > 1 else None,
            rowsperstrip=layout.block[0],
            **_layout(self._stored_shape, self.dtype),
            **self._picture_tags,
        )

    def finish(self) -> None:
        if self._strips is not None:
            self._strips.finish()
        self.close_quietly()

    def close_quietly(self) -> None:
        if self._strips is not None:
            self._strips.drop()
            self._strips = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _predictor(request: SinkRequest, dtype: np.dtype) -> int:
    """The predictor a compressed TIFF output is asked for (``--co predictor=2``), checked
    against its compression and dtype: 1 (none) without one."""
    text = next((v for k, v in request.options.items() if k.lower() == "predictor"), None)
    if text is None:
        return 1
    if text not in ("1", "2", "3"):
        raise UsageError(
            f"expected [[co]] predictor=1, 2 or 3 for TIFF output (none, horizontal for integers, floating "
            f"point for floats), found predictor={text}"
        )
    predictor = int(text)
    if predictor > 1 and request.compression is None:
        raise UsageError(
            f"expected [[compression]] deflate, zstd or lzw with predictor={predictor} (it only helps a "
            "compressed TIFF), found none; add [[compression=deflate]]"
        )
    wanted = {2: "iu", 3: "f"}.get(predictor, "iuf")
    if dtype.kind not in wanted:
        fix = "predictor=3 for floating point" if predictor == 2 else "predictor=2 for integers"
        raise UsageError(
            f"expected {'an integer' if predictor == 2 else 'a floating-point'} output for predictor={predictor}, "
            f"found {dtype}; use {fix}"
        )
    return predictor


class _TiffBlockWriter:
    """``writer[index] = block`` into the memory-mapped temp TIFF, from any process."""

    def __init__(self, path: str, ndim: int) -> None:
        self.path, self.ndim = os.path.abspath(path), ndim

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        target = _tifffile().memmap(self.path, mode="r+")
        view = index[: self.ndim]
        target[view] = block.reshape(target[view].shape)
        target.flush()
        del target


class TiffFormat(Backend):
    """Plain TIFF through tifffile: any channel count and dtype (GeoTIFFs go to the raster format)."""

    def open_source(self, spec: Spec) -> TiffSource:
        return TiffSource(spec.path)

    def open_sink(self, spec: Spec, request: SinkRequest) -> TiffSink:
        check_output_path(spec.path, request.overwrite)
        return TiffSink(spec.path, request)

    def default_dtype(self, input_dtype: np.dtype, input_is_image: bool) -> np.dtype | None:
        """A TIFF output keeps an image input's dtype (uint16 in, uint16 out); else numpy's rule."""
        return input_dtype if input_is_image else None
