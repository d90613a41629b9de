"""Geospatial rasters through rasterio (extra ``pwconv[geo]``): GeoTIFF/COG, VRT, ENVI, JPEG2000.

Bands are the channels: a raster is presented as (rows, cols, bands), so no layout is needed.
Blocks are windows aligned to the file's internal blocks. The output keeps the input's CRS,
transform (scaled by the stride), block layout and the nodata value; its driver comes from
the extension, new GeoTIFFs are tiled and deflate-compressed unless creation options
(``--co KEY=VALUE``) say otherwise. A TIFF carrying GeoTIFF tags is read here, never by the
plain TIFF reader, so that its georeferencing is not silently lost.
"""

from __future__ import annotations

import math
import os
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, UsageError, WriteError
from pwconv.io.atomic import FileSink, check_output_path, place_companion, setting_up, write_failure
from pwconv.io.checks import check_readable, first_line, lies_outside, numeric_dtype, refuse_external
from pwconv.io.formats.tiffblocks import TiffBlocks, gdal_layout
from pwconv.io.gdal import gdal_flag, option_warnings, rasterio_module
from pwconv.io.interface import Backend, Description, Sink, SinkRequest, Source
from pwconv.io.rawio import raw_paths_enabled
from pwconv.io.stores import (
    RemoteObject,
    gdal_failure,
    gdal_open_settings,
    gdal_path,
    is_url,
    shown,
    url_path,
)

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

# GeoTIFF tags: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory.
_GEO_TAGS = {33550, 33922, 34264, 34735}
# Where a TIFF's first directory is and how it is laid out, by version (42 classic, 43 BigTIFF):
# (offset of the pointer in the header, its format, entry count format, bytes per entry).
_IFD_LAYOUT = {42: (4, "I", "H", 12), 43: (8, "Q", "Q", 20)}
_DRIVERS = {
    ".tif": "GTiff",
    ".tiff": "GTiff",
    ".vrt": "VRT",
    ".img": "ENVI",
    ".dat": "ENVI",
    ".jp2": "JP2OpenJPEG",
}
_WRITES = {".tif", ".tiff", ".img", ".dat"}
# Drivers that write a raster block by block into its file (the others copy a finished one).
_WRITES_IN_PLACE = {"GTiff", "ENVI"}
# The dtypes each driver stores. GeoTIFF could hold 64-bit integers, but most GIS tools
# cannot read them: they are refused there too, with the dtype that works.
_DRIVER_DTYPES = {
    "GTiff": ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64", "complex64", "complex128"),
    "ENVI": ("uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "complex64",
             "complex128"),
    "JP2OpenJPEG": ("uint8", "int16", "uint16", "int32", "uint32"),
}  # fmt: skip


def _check_dtype(driver: str, dtype: np.dtype, path: str) -> None:
    """Refuse, before anything is written, a dtype the driver cannot store."""
    takes = _DRIVER_DTYPES.get(driver)
    if takes is None or dtype.name in takes:
        return
    fix = "float32" if "float32" in takes else ("int32" if dtype.kind in "iuf" else takes[0])
    raise UsageError(
        f"expected a dtype that {driver} stores ({', '.join(takes)}), found {dtype} for {path!r}; "
        f"pass [[dtype={fix}]] or write another format"
    )


def claims(path: str) -> bool:
    """Whether a ``.tif`` carries GeoTIFF tags (read from its first directory, no library)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None:
                return False
            version = struct.unpack(order + "H", head[2:4])[0]
            if version not in _IFD_LAYOUT:
                return False
            offset_at, offset_format, count_format, entry_bytes = _IFD_LAYOUT[version]
            (offset,) = struct.unpack_from(order + offset_format, head, offset_at)
            handle.seek(offset)
            (count,) = struct.unpack(order + count_format, handle.read(struct.calcsize(count_format)))
            entries = handle.read(entry_bytes * min(count, 4096))
            tags = {
                struct.unpack_from(order + "H", entries, i)[0]
                for i in range(0, len(entries) - 1, entry_bytes)
            }
    except (OSError, struct.error, ValueError, OverflowError):  # an offset past any file: not ours
        return False
    return bool(tags & _GEO_TAGS)


# How deep VRTs naming VRTs are followed, the largest VRT file parsed, and how much of a
# file's start is searched for the VRT's root element (GDAL looks in its first 1 KiB).
_VRT_DEPTH = 8
_VRT_BYTES = 16 << 20
_VRT_HEAD = 4096
_VRT_SOURCE_TAGS = ("SourceFilename", "SourceDataset")


def _vrt_sources(path: str) -> list[str]:
    """The files a VRT names (its sources, at any depth of its XML); [] for any other file.
    Only an XML text with ``<VRTDataset`` in its first bytes is read whole: GDAL opens such a
    file as a VRT, an XML declaration or comment before the root included. A binary file (a
    GeoTIFF whose description names a VRT) is not one."""
    import xml.etree.ElementTree as ElementTree

    with open(path, "rb") as handle:
        text = handle.read(_VRT_HEAD)
        if not (text.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"<" and b"<VRTDataset" in text):
            return []
        text += handle.read(_VRT_BYTES + 1 - len(text))
    if len(text) > _VRT_BYTES:
        raise FormatError(
            f"expected a VRT of at most {_VRT_BYTES >> 20} MiB at {path!r}, found a larger file"
        )
    try:
        root = ElementTree.fromstring(text)
    except (ElementTree.ParseError, ValueError, RecursionError) as exc:
        raise FormatError(f"expected a VRT whose XML parses at {path!r}, found ({first_line(exc)})") from None
    found = []
    folder = os.path.dirname(os.path.abspath(path))
    for element in root.iter():
        if element.tag in _VRT_SOURCE_TAGS and (element.text or "").strip():
            name = element.text.strip()  # type: ignore[union-attr]
            relative = {k.lower(): v for k, v in element.attrib.items()}.get(
                "relativetovrt", "0"
            ).strip() == "1"
            found.append(os.path.join(folder, name) if relative and not os.path.isabs(name) else name)
    return found


def _check_vrt_sources(path: str) -> None:
    """Refuse a VRT naming files outside its own folder (or URLs, GDAL's virtual file systems,
    connection strings) before GDAL opens any of them; VRTs naming VRTs are followed."""
    folder = os.path.dirname(os.path.abspath(path))
    pending, seen = [(path, 0)], set()
    while pending:
        current, depth = pending.pop()
        for source in _vrt_sources(current):
            if source.startswith("/vsi") or "://" in source or (":" in source and not os.path.exists(source)):
                refuse_external(path, f"a VRT source that is not a plain file ({source!r})")
            elif not os.path.isfile(source):
                found = (
                    "no such file" if not os.path.exists(source) else "something that is not a regular file"
                )
                raise FormatError(
                    f"expected the source {source!r} that {path!r} names, found {found}; check the VRT"
                )
            elif lies_outside(folder, source):
                refuse_external(path, f"a VRT source outside its folder ({source!r})")
            elif depth < _VRT_DEPTH and os.path.realpath(source) not in seen:
                seen.add(os.path.realpath(source))
                pending.append((source, depth + 1))


def _check_own_files(ds: Any, path: str) -> None:
    """Refuse a dataset for which GDAL reads files outside the input's folder."""
    if is_url(path):  # GDAL's own path of it: every file it reads lies under the same prefix
        folder = gdal_path(path).rpartition("/")[0] + "/"
        for name in ds.files:
            if not name.startswith(folder):
                refuse_external(shown(path), f"data in another file ({shown(name)!r})")
        return
    folder = os.path.dirname(os.path.abspath(path))
    for name in ds.files:
        if os.path.exists(name) and os.path.samefile(name, path):
            continue
        if not os.path.exists(name) or lies_outside(folder, name):
            refuse_external(path, f"data in another file ({name!r})")


class _SeveralPages(FormatError):
    """A plain (not georeferenced) TIFF of several pages at a URL: tifffile's to read."""


def _check_one_image(ds: Any, path: str) -> None:
    """Refuse a TIFF of several images (pages that are not overviews or masks): GDAL reads
    only the first, where pwconv reads a plain TIFF's pages as channels (through tifffile,
    which takes a plain one at a URL: :class:`_SeveralPages`)."""
    pages = len(ds.subdatasets) if ds.driver == "GTiff" else 0
    if pages < 2:
        return
    placed = ds.crs is not None or not ds.transform.is_identity
    if is_url(path) and not placed:
        raise _SeveralPages(f"{pages} pages")
    raise FormatError(
        f"expected one image in the GeoTIFF {shown(path)!r}, found {pages} pages, of which GDAL reads only the "
        f"first; write each page to a file of its own (gdal_translate GTIFF_DIR:2:{shown(path)} page2.tif) and "
        "stack them (page1.tif+page2.tif)"
    )


class RasterSource(Source):
    """A raster's bands as (rows, cols, bands), read window by window."""

    def __init__(self, path: str) -> None:
        rasterio = rasterio_module()
        check_readable(path)
        self.path = path
        opened = path
        remote = None
        self._settings: dict[str, str] = {}  # GDAL's, for the file's opening and reads
        if is_url(path):
            remote = RemoteObject(path)  # a missing object, no access or no network: its own message
            opened = gdal_path(path)
            self._settings = gdal_open_settings(path)
        else:
            try:
                _check_vrt_sources(path)
            except OSError as exc:
                raise FormatError(
                    f"expected a readable raster at {path!r}, found ({first_line(exc)})"
                ) from None
        try:
            with rasterio.Env(**self._settings):
                self._ds = rasterio.open(opened)
        except Exception as exc:  # noqa: BLE001 - rasterio raises its own errors for bad files
            failed = gdal_failure(path, exc) if remote is not None else None
            if failed is not None:
                raise failed from None
            raise FormatError(
                f"expected a raster GDAL can read at {path!r}, found ({first_line(exc)})"
            ) from None
        ds = self._ds
        try:
            _check_own_files(ds, path)
            _check_one_image(ds, path)
        except FormatError:
            ds.close()
            raise
        dtypes = set(ds.dtypes)
        if len(dtypes) != 1:
            ds.close()
            raise FormatError(f"expected bands of one dtype in {path!r}, found {sorted(dtypes)}")
        self.dtype = numeric_dtype(ds.dtypes[0], repr(path))
        self.shape = (ds.height, ds.width, ds.count)
        geo = {"crs": ds.crs, "transform": ds.transform, "blocks": ds.block_shapes[0]}
        placed = ds.crs is not None or not ds.transform.is_identity
        names = ds.descriptions
        labels = {2: tuple(d or f"band {i + 1}" for i, d in enumerate(names))} if any(names) else {}
        self._tiles: TiffBlocks | None = None
        try:
            self._tiles = self._own_blocks(remote)
        except BaseException:
            self.close()
            raise
        reader = "rasterio" if self._tiles is None else f"block offsets, {self._tiles.layout.codec or 'raw'}"
        self.description = Description(
            nodata=ds.nodata, reader=reader, metadata={"raster": geo}, georeferenced=placed, labels=labels
        )

    def _own_blocks(self, remote: RemoteObject | None) -> TiffBlocks | None:
        """pwconv's own reader of the file's blocks (see :mod:`tiffblocks`), where it reads it."""
        if self._ds.driver != "GTiff" or not raw_paths_enabled():
            return None
        if remote is not None:
            head = bytes(remote.read_range(0, min(4, remote.size)))
        else:
            with open(self.path, "rb") as handle:
                head = handle.read(4)
        layout = gdal_layout(self._ds, head, remote=remote is not None)
        if layout is None:
            return None
        return TiffBlocks.of_file(self.path, remote, layout, self._block_place, self._ds.nodata)

    def _block_place(self, coords: tuple[int, ...]) -> tuple[int, int]:
        return _gdal_block(self._ds, coords, self.path)

    def chunks(self) -> tuple[int, ...] | None:
        rows, cols = self._ds.block_shapes[0]
        return (int(rows), int(cols), self.shape[2])

    def decoded_piece(self) -> tuple[int, str] | None:
        """GDAL decodes a compressed block whole (all bands of it, pixel-interleaved)."""
        if not self._ds.compression:
            return None
        rows, cols = self._ds.block_shapes[0]
        return int(rows) * int(cols) * self.shape[2] * self.dtype.itemsize, "a compressed block"

    def storage(self) -> dict[str, Any]:
        ds = self._ds
        return {
            "format": ds.driver,
            "crs": ds.crs.to_string() if ds.crs else None,
            "transform": list(ds.transform)[:6],
            "blocks": list(ds.block_shapes[0]),
            "nodata": ds.nodata,
            "bands": ds.count,
            "data_bytes": math.prod(self.shape) * self.dtype.itemsize,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._tiles is not None:
            return self._tiles.read(index + (slice(None),) * (3 - len(index)))
        from rasterio.windows import Window

        rows = range(*index[0].indices(self.shape[0]))
        cols = range(*index[1].indices(self.shape[1]))
        if not len(rows) or not len(cols):
            return np.empty((len(rows), len(cols), self.shape[2]), self.dtype)
        window = Window(cols.start, rows.start, cols[-1] - cols.start + 1, rows[-1] - rows.start + 1)
        try:
            # GDAL's messages go to logging, not straight to stderr; a VRT's sources open here
            with rasterio_module().Env(**self._settings):
                data = self._ds.read(window=window)
        except Exception as exc:  # noqa: BLE001
            failed = gdal_failure(self.path, exc) if is_url(self.path) else None
            if failed is not None:
                raise failed from None
            raise FormatError(f"cannot read {self.path!r}: its data is damaged ({first_line(exc)})") from None
        block = np.moveaxis(data, 0, -1)[:: rows.step, :: cols.step]
        return block[:, :, index[2]] if len(index) > 2 else block

    def output_format(self, spec: Spec) -> str | None:
        """Outputs named like rasters are written as rasters, keeping the georeferencing."""
        return "raster" if os.path.splitext(url_path(spec.path))[1].lower() in _WRITES else None

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._ds.close()


def _creation_options(
    driver: str, request: SinkRequest, shape: tuple[int, ...], blocks: Any
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if driver == "GTiff":
        rows, cols = blocks if blocks else (256, 256)
        tiles_fit = rows % 16 == 0 and cols % 16 == 0 and rows <= shape[0] and cols <= shape[1]
        options = {"tiled": True, "compress": "deflate", "num_threads": "all_cpus"}
        options |= (
            {"blockysize": rows, "blockxsize": cols} if tiles_fit else {"blockysize": 256, "blockxsize": 256}
        )
    options.update({key.lower(): value for key, value in request.options.items()})
    return options


def _placement(request: SinkRequest) -> tuple[Any, Any]:
    """The output's CRS and transform: the input's, the transform scaled by the stride."""
    geo = request.metadata.get("raster", {})
    transform = geo.get("transform")
    if transform is not None and request.stride > 1:
        transform = transform @ transform.scale(request.stride)
    return geo.get("crs"), transform


class RasterSink(FileSink):
    """A raster written window by window into a temp file renamed on commit."""

    def __init__(
        self, path: str, request: SinkRequest, driver: str, options: dict[str, Any], crs: Any, transform: Any
    ) -> None:
        """``options``: the creation options (lower-case keys, pwconv's defaults included)."""
        rasterio = rasterio_module()
        shape = request.shape
        self._driver = driver
        self._sparse = gdal_flag(options.get("sparse_ok", False))
        self._ds: Any = None
        super().__init__(path)
        self.temp.extras = self._sidecars(self.temp.path)
        with option_warnings() as unknown:
            with setting_up(self, path):  # any failure, or a signal, takes the temp file away
                try:
                    self._ds = rasterio.open(
                        self.temp.path, "w", driver=driver, width=shape[1], height=shape[0], count=shape[2],
                        dtype=np.dtype(request.dtype).name, crs=crs, transform=transform,
                        nodata=request.nodata, **options,
                    )  # fmt: skip
                except Exception as exc:  # noqa: BLE001
                    raise UsageError(
                        f"expected creation options {driver} takes, found a failure ({first_line(exc)})"
                    ) from None
        if unknown:
            self.abort()
            raise UsageError(
                f"expected creation options the {driver} driver knows, found: {unknown[0]}; check [[co]]"
            )
        for band, label in enumerate(request.channel_labels or (), start=1):
            self._ds.set_band_description(band, label)

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        from rasterio.windows import Window

        rows, cols = index[0], index[1]
        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        try:
            with rasterio_module().Env():  # GDAL's messages go to logging, not straight to stderr
                self._ds.write(np.moveaxis(block, -1, 0), window=window)
        except Exception as exc:  # noqa: BLE001
            raise write_failure(self.target, exc) from None

    def _sidecars(self, base: str) -> list[str]:
        """The files GDAL writes beside ``base``: ENVI's header, and the .aux.xml of
        anything it cannot store in the file itself."""
        return [base + ".aux.xml"] + ([os.path.splitext(base)[0] + ".hdr"] if self._driver == "ENVI" else [])

    def finish(self) -> None:
        rasterio = rasterio_module()
        ds, self._ds = self._ds, None  # closed at most once, even when closing fails
        height, width, raw_bytes = (
            ds.height,
            ds.width,
            ds.height * ds.width * ds.count * np.dtype(ds.dtypes[0]).itemsize,
        )
        with rasterio.Env():
            ds.close()
            # GDAL reports a failed write (a full disk) only on its own stderr and closes
            # "successfully": an ENVI file must hold all its raw bytes, the last row (at the
            # end of a GeoTIFF) must read back, and every block of a GeoTIFF must lie in the
            # file (a block whose write failed is recorded as never written, and reads as 0).
            problem = None
            if self._driver == "ENVI" and os.path.getsize(self.temp.path) < raw_bytes:
                problem = f"{os.path.getsize(self.temp.path)} of {raw_bytes} bytes written"
            try:
                with rasterio.open(self.temp.path) as written:
                    written.read(window=rasterio.windows.Window(0, height - 1, width, 1))
                    if self._driver == "GTiff" and not self._sparse:
                        problem = _missing_block(written, self.temp.path)
            except Exception as exc:  # noqa: BLE001 - rasterio's errors for a short file
                problem = first_line(exc)
        if problem is not None:
            raise WriteError(
                f"cannot write {self.target!r}: the file system did not take all of it ({problem}); "
                "free some space or write elsewhere"
            )

    def publish_companions(self) -> None:
        # The sidecars are published with the file (before it, so that the file appears
        # complete); one an old output had but this one does not is removed.
        for made, final in zip(self._sidecars(self.temp.path), self._sidecars(self.target)):
            place_companion(made, final)

    def close_quietly(self) -> None:
        ds, self._ds = self._ds, None
        if ds is not None:
            ds.close()


def _gdal_block(ds: Any, coords: tuple[int, ...], path: str) -> tuple[int, int]:
    """GDAL's offset and stored size of the block at (row, col, plane) of the GeoTIFF ``ds``
    (at ``path``); (0, 0) for one never written."""
    row, col, plane = coords  # plane 0 holds all bands where they are pixel-interleaved
    found = []
    for item in ("OFFSET", "SIZE"):
        text = ds.get_tag_item(f"BLOCK_{item}_{col}_{row}", "TIFF", bidx=plane + 1)
        try:
            found.append(int(text) if text else 0)
        except ValueError:
            raise FormatError(
                f"expected a block {item.lower()} for block {coords} of {shown(path)!r}, found {text!r}; "
                "the file is damaged, write it again"
            ) from None
    return (found[0], found[1]) if found[0] and found[1] else (0, 0)


def _missing_block(ds: Any, path: str) -> str | None:
    """The first block of the GeoTIFF ``ds`` (the file at ``path``) that is not in the file, if any."""
    rows, cols = ds.block_shapes[0]
    planes = ds.count if ds.interleaving is not None and ds.interleaving.name == "BAND" else 1
    size = os.path.getsize(path)
    for plane in range(planes):
        for row in range(-(-ds.height // rows)):
            for col in range(-(-ds.width // cols)):
                offset, stored = _gdal_block(ds, (row, col, plane), path)
                if not offset or offset + stored > size:
                    return f"block {row},{col} of band {plane + 1} missing"
    return None


class RasterFormat(Backend):
    """Rasters through rasterio (GDAL): GeoTIFF/COG, ENVI, JPEG 2000 and VRT (read only)."""

    def open_source(self, spec: Spec) -> Source:
        try:
            return RasterSource(spec.path)
        except _SeveralPages:  # a plain multi-page TIFF at a URL: its pages are channels
            from pwconv.io.formats.tiff import TiffSource

            return TiffSource(spec.path)

    def open_sink(self, spec: Spec, request: SinkRequest) -> Sink:
        """pwconv's own writer for a GeoTIFF it can write (:mod:`geotiff`), else GDAL's."""
        check_output_path(spec.path, request.overwrite)
        shape = request.shape
        if len(shape) != 3:
            raise UsageError(
                f"expected (rows, cols, bands) for a raster output, found shape {shape}; write .npy"
            )
        driver = _DRIVERS[os.path.splitext(spec.path)[1].lower()]
        _check_dtype(driver, np.dtype(request.dtype), spec.path)
        options = _creation_options(driver, request, shape, request.metadata.get("raster", {}).get("blocks"))
        crs, transform = _placement(request)
        if driver == "GTiff" and raw_paths_enabled():
            from pwconv.io.formats.geotiff import open_own

            own = open_own(spec.path, request, options, crs, transform)
            if own is not None:
                return own
        return RasterSink(spec.path, request, driver, options, crs, transform)

    def claims(self, path: str) -> bool:
        return claims(path)

    def encodes_whole(self, spec: Spec, compression: str | None) -> bool:
        # GDAL's JPEG 2000 driver only copies a finished raster: rasterio builds it in memory.
        return _DRIVERS.get(os.path.splitext(spec.path)[1].lower()) not in _WRITES_IN_PLACE

    def stored_dtype(self, dtype: np.dtype) -> np.dtype:
        """64-bit integer results are stored as float64 (exact up to 2**53), which GIS tools read."""
        return np.dtype(np.float64) if dtype.kind in "iu" and dtype.itemsize == 8 else dtype
