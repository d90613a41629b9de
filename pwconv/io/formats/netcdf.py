"""NetCDF-4 variables through h5netcdf (extra ``pwconv[geo]``; NetCDF-4 is HDF5 underneath).

``file.nc:VARIABLE`` reads a variable; its dimension names are known, so the channel axis can
be named (``--channel-dim band``). Its ``_FillValue`` (or ``missing_value``) is its nodata.
The output is a NetCDF-4 file with the same variable name: the other dimensions and their
coordinate variables copied, the channel dimension kept by name with length K (its old
coordinate no longer holds and is dropped), the global attributes kept, ``history``
extended, and the variable's own attributes kept only where they still hold (its grid
mapping). Classic NetCDF-3 files are refused with the conversion that fixes them.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, PwconvError, UsageError, require_extra
from pwconv.io import codecs
from pwconv.io.atomic import FileSink, check_output_path, setting_up, write_failure
from pwconv.io.checks import check_readable, first_line, label_text, numeric_dtype
from pwconv.io.formats.hdf5 import (
    GZIP_LEVEL,
    ChunkSpans,
    DeflateChunks,
    DeflateChunkWriter,
    chunk_spans,
    deflate_layout,
    raw_layout,
    read_prefetched,
)
from pwconv.io.interface import Backend, Description, SinkRequest, Source
from pwconv.io.names import pick_name, printable
from pwconv.io.rawio import RawChunks, raw_paths_enabled
from pwconv.io.stores import RangedFile, RemoteObject, is_url, shown

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

# A mix of channels keeps its grid mapping, units and name (pwconv's provenance goes into
# the history); standard_name and valid ranges may no longer hold and are dropped.
_KEEP_VARIABLE_ATTRS = ("grid_mapping", "units", "long_name")
_MAX_LABELS = 4096  # a coordinate longer than this is data, not labels


def _h5py_strings() -> Any:
    import h5py

    return h5py.string_dtype()


def _h5netcdf() -> Any:
    return require_extra("h5netcdf", "geo", "NetCDF files")


def _open(path: str) -> Any:
    return _opened(path)[0]


def _opened(path: str) -> tuple[Any, RangedFile | None]:
    """The h5netcdf file at ``path``, and for a URL the file object it is read through (only
    the metadata and chunks that are used are fetched)."""
    h5netcdf = _h5netcdf()
    check_readable(path)
    remote = RangedFile(RemoteObject(path)) if is_url(path) else None
    if remote is not None:
        head = remote.read(4)
        remote.seek(0)
    else:
        with open(path, "rb") as handle:
            head = handle.read(4)
    if head[:3] == b"CDF":
        raise FormatError(
            f"expected a NetCDF-4 (HDF5) file at {path!r}, found classic NetCDF-3; convert it with: "
            f"nccopy -k nc4 {path} converted.nc"
        )
    try:
        return h5netcdf.File(path if remote is None else remote, "r"), remote
    except Exception as exc:  # noqa: BLE001
        if remote is not None:
            remote.raise_failure()  # the network's error, not h5py's account of it
        raise FormatError(
            f"expected a NetCDF-4 file at {path!r}, found one that cannot be read ({first_line(exc)})"
        ) from None


def _data_variables(handle: Any) -> list[str]:
    """Variables that are neither coordinates of a dimension nor scalars (a grid mapping)."""
    return [name for name, var in handle.variables.items() if name not in handle.dimensions and var.ndim > 0]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _readable_attrs(obj: Any) -> dict[str, Any]:
    """An object's attributes as plain values; one of a type h5py cannot read (a compound, an
    opaque blob) is left out: attributes describe the data, they are never needed to read it."""
    values = {}
    for name in list(obj.attrs):
        try:
            value = _plain(obj.attrs[name])
        except Exception:  # noqa: BLE001 - h5py raises several types for unreadable attributes
            continue
        if isinstance(value, (str, bytes, int, float, np.ndarray)):
            values[str(name)] = value
    return values


def _fill_value(attrs: dict[str, Any]) -> tuple[float | None, tuple[str, ...]]:
    """The variable's nodata from ``_FillValue`` (else ``missing_value``): one number. Anything
    else there (empty, text, bytes) is not a nodata value: ignored, and the report says so."""
    for key in ("_FillValue", "missing_value"):
        if key not in attrs:
            continue
        value = attrs[key]
        array = np.asarray(value) if not isinstance(value, (str, bytes)) else None
        if array is not None and array.size and array.dtype.kind in "biuf":
            return float(array.reshape(-1)[0]), ()
        shown = printable(repr(value)[:40])
        return None, (f"{key} ignored: expected a number, found {shown}; pass --nodata to set one",)
    return None, ()


def _layout(dataset: Any, fd: int | RemoteObject, name: str) -> RawChunks | DeflateChunks | None:
    """Where an HDF5 dataset's chunks lie, for pwconv to read (unfiltered) or decode (gzip)
    itself; None where h5netcdf reads it."""
    raw = raw_layout(dataset, fd, name)
    return raw if raw is not None else deflate_layout(dataset, fd, name)


def _remote_places(
    remote: RemoteObject, name: str
) -> tuple[RawChunks | DeflateChunks | None, ChunkSpans | None]:
    """Where the chunks of variable ``name`` lie in a NetCDF-4 object, read once by h5py
    through a file object of its own (h5netcdf does not hand out its HDF5 dataset): the
    chunks of an unfiltered or gzip variable, which pwconv fetches and reads itself, or else
    their spans, for h5netcdf's reads to fetch a block's chunks at once. (None, None) where
    HDF5 does not say."""
    import h5py  # h5netcdf's own dependency

    try:
        with h5py.File(RangedFile(remote), "r") as handle:
            dataset = handle.get(name)
            if not isinstance(dataset, h5py.Dataset):
                return None, None
            found = _layout(dataset, remote, f"{shown(remote.url)}:{name}") if raw_paths_enabled() else None
            if found is None:
                return None, chunk_spans(dataset)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        return None, None  # the reads that follow meet the same trouble and say so
    found.check_inside(remote.size)
    return found, None


def _local_chunks(path: str, name: str) -> tuple[RawChunks | DeflateChunks, int] | None:
    """A local unfiltered or gzip variable's stored chunks for pwconv to read (gzip: decode on
    every core), with the file descriptor they are read through; None where h5netcdf reads it.
    Found through h5py's own handle (h5netcdf's is not public), closed again once the chunks
    are listed."""
    import h5py  # h5netcdf's own dependency

    fd = os.open(path, os.O_RDONLY)
    try:
        with h5py.File(path, "r") as handle:
            dataset = handle.get(name)
            found = _layout(dataset, fd, f"{path}:{name}") if isinstance(dataset, h5py.Dataset) else None
        if found is not None:
            found.check_inside(os.fstat(fd).st_size)
            return found, fd
    except (OSError, ValueError):
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


class NetcdfSource(Source):
    """One NetCDF variable, read by hyperslab."""

    def __init__(self, path: str, variable: str | None) -> None:
        self.path = path
        self._local: tuple[RawChunks | DeflateChunks, int] | None = None  # and its file descriptor
        self._remote_chunks: RawChunks | DeflateChunks | None = None
        self._file, self._remote = _opened(path)
        try:
            names = _data_variables(self._file)
            self.variable = pick_name(path, variable, names, "variable")
            var = self._file.variables[self.variable]
            self.dimensions = tuple(var.dimensions)
            self.shape = tuple(int(n) for n in var.shape)
            self.dtype = numeric_dtype(var.dtype, f"{path}:{self.variable}")
            attrs = _readable_attrs(var)
            self.nodata, notes = _fill_value(attrs)
            self._var = var
            self._spans: ChunkSpans | None = None
            if self._remote is not None:
                self._remote_chunks, self._spans = _remote_places(self._remote.remote, var.name)
            template = self._template()
            raster = _raster_georeferencing(template["netcdf"], self.dimensions)
            if raster is not None:  # a GeoTIFF or ENVI output gets the same CRS and transform
                template["raster"] = raster
            labels = _axis_labels(template["netcdf"]["coordinates"], self.dimensions, self.shape)
            self.description = Description(
                labels=labels,
                dimensions=self.dimensions,
                nodata=self.nodata,
                reader="h5netcdf",
                metadata=template,
                georeferenced=bool(template["netcdf"]["scalars"]),  # a CF grid mapping
                notes=notes,
            )
            # last: nothing after it can fail and leave its file descriptor open
            self._local = (
                _local_chunks(path, var.name) if self._remote is None and raw_paths_enabled() else None
            )
            chunks = self._local[0] if self._local is not None else self._remote_chunks
            if chunks is not None:
                reader = "raw offsets"
                if isinstance(chunks, DeflateChunks):
                    reader = f"chunk offsets, {codecs.deflate_implementation()}"
                self.description = dataclasses.replace(self.description, reader=reader)
        except PwconvError:
            self._file.close()
            raise
        except Exception as exc:  # noqa: BLE001 - h5netcdf reads dimensions and attributes lazily
            self._file.close()
            if self._remote is not None:
                self._remote.raise_failure()
            raise FormatError(
                f"expected a NetCDF-4 variable in {path!r}, found one that cannot be read "
                f"({first_line(exc)}); check that the file was written as NetCDF-4"
            ) from None
        except BaseException:
            self._file.close()
            raise

    def chunks(self) -> tuple[int, ...] | None:
        chunks = self._var.chunks
        return tuple(int(c) for c in chunks) if chunks else None

    def decoded_piece(self) -> tuple[int, str] | None:
        chunks = self.chunks()
        if not chunks or not (self._var.compression or self._var.shuffle or self._var.fletcher32):
            return None
        return math.prod(chunks) * self.dtype.itemsize, "a compressed chunk"

    def storage(self) -> dict[str, Any]:
        return {
            "format": "netcdf4",
            "variable": self.variable,
            "dimensions": list(self.dimensions),
            "nodata": self.nodata,
            "data_bytes": math.prod(self.shape) * self.dtype.itemsize,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._local is not None:
            return self._local[0].read(index)
        if self._remote_chunks is not None:
            return self._remote_chunks.read(index)
        try:
            if self._remote is not None and self._spans is not None:
                return read_prefetched(self._var, self._remote, self._spans, index)
            return np.asarray(self._var[index])
        except Exception as exc:  # noqa: BLE001
            if self._remote is not None:
                self._remote.raise_failure()
            raise FormatError(f"cannot read {self.path}:{self.variable}: {first_line(exc)}") from None

    def _template(self) -> dict[str, Any]:
        """What a NetCDF output copies: dimensions, coordinates, attributes, grid mapping."""
        handle = self._file
        coordinates = {}
        for dim in self.dimensions:
            if dim in handle.variables:
                coord = handle.variables[dim]
                coordinates[dim] = (np.asarray(coord[...]), _readable_attrs(coord))
        var_attrs = {k: v for k, v in _readable_attrs(self._var).items() if k in _KEEP_VARIABLE_ATTRS}
        extra = {}
        mapping = var_attrs.get("grid_mapping")
        if isinstance(mapping, str) and mapping in handle.variables:
            extra[mapping] = _readable_attrs(handle.variables[mapping])
        return {
            "netcdf": {
                "variable": self.variable,
                "dimensions": self.dimensions,
                "coordinates": coordinates,
                "global_attrs": _readable_attrs(handle),
                "variable_attrs": var_attrs,
                "scalars": extra,
            }
        }

    def output_format(self, spec: Spec) -> str | None:
        """A georeferenced variable written under a raster's name is written as a raster."""
        raster_names = (".tif", ".tiff", ".img", ".dat")
        georeferenced = "raster" in self.description.metadata
        return "raster" if georeferenced and spec.path.lower().endswith(raster_names) else None

    def close(self) -> None:
        if self._local is not None:
            os.close(self._local[1])
            self._local = None
        self._file.close()


def _axis_labels(
    coordinates: dict[str, Any], dimensions: tuple[str, ...], shape: tuple[int, ...]
) -> dict[int, tuple[str, ...]]:
    """Each dimension's coordinate values as text, where they name positions rather than
    place them (not x or y) and are few enough to be names."""
    labels = {}
    for axis, dim in enumerate(dimensions):
        values = coordinates.get(dim, (None,))[0]
        placed = dim.lower() in _X_NAMES + _Y_NAMES
        if (
            values is not None
            and not placed
            and values.shape == (shape[axis],)
            and shape[axis] <= _MAX_LABELS
        ):
            labels[axis] = tuple(label_text(v) for v in values.reshape(-1))
    return labels


_X_NAMES, _Y_NAMES = ("x", "lon", "longitude", "easting"), ("y", "lat", "latitude", "northing")


def _raster_georeferencing(template: dict[str, Any], dimensions: tuple[str, ...]) -> dict[str, Any] | None:
    """A raster's CRS and transform from a CF grid mapping (crs_wkt) and regular 1-D x/y
    coordinates, for a 3-D variable whose y dimension comes before its x dimension."""
    wkt = next((a.get("crs_wkt") or a.get("spatial_ref") for a in template["scalars"].values()), None)
    xs = [d for d in dimensions if d.lower() in _X_NAMES and d in template["coordinates"]]
    ys = [d for d in dimensions if d.lower() in _Y_NAMES and d in template["coordinates"]]
    if not isinstance(wkt, str) or len(dimensions) != 3 or not xs or not ys:
        return None
    if dimensions.index(ys[0]) > dimensions.index(xs[0]):
        return None
    x, y = (np.asarray(template["coordinates"][d][0], np.float64) for d in (xs[0], ys[0]))
    if (
        x.size < 2
        or y.size < 2
        or not (np.allclose(np.diff(x), x[1] - x[0]) and np.allclose(np.diff(y), y[1] - y[0]))
    ):
        return None
    from pwconv.io.gdal import rasterio_module

    rasterio = rasterio_module("georeferenced NetCDF written as a raster")
    from affine import Affine

    dx, dy = x[1] - x[0], y[1] - y[0]
    transform = Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2)
    return {"crs": rasterio.crs.CRS.from_wkt(wkt), "transform": transform, "blocks": None}


def _write_grid_mapping(
    handle: Any, var: Any, raster: dict[str, Any], stride: int, shape: tuple[int, ...]
) -> None:
    """A raster's georeferencing as CF has it: x and y coordinates of the cell centres and a
    grid-mapping variable with the CRS as WKT (and GDAL's GeoTransform), named by the data
    variable's ``grid_mapping``."""
    transform = raster["transform"]
    if stride > 1:
        transform = transform @ transform.scale(stride)
    x0, dx, y0, dy = transform.c, transform.a, transform.f, transform.e
    handle.create_variable("x", ("x",), data=x0 + dx * (np.arange(shape[1]) + 0.5))
    handle.create_variable("y", ("y",), data=y0 + dy * (np.arange(shape[0]) + 0.5))
    crs = raster["crs"]
    mapping = handle.create_variable("spatial_ref", (), dtype="i4")
    mapping.attrs.update(
        {
            "crs_wkt": crs.to_wkt(),
            "spatial_ref": crs.to_wkt(),  # the name GDAL reads too
            "GeoTransform": " ".join(f"{v!r}" for v in (x0, dx, transform.b, y0, transform.d, dy)),
        }
    )
    var.attrs["grid_mapping"] = "spatial_ref"


class NetcdfSink(FileSink):
    """A new NetCDF-4 file written block by block into a temp file renamed on commit."""

    def __init__(self, path: str, variable: str | None, request: SinkRequest) -> None:
        h5netcdf = _h5netcdf()
        template = request.metadata.get("netcdf")
        shape, axis = request.shape, request.channel_axis
        raster = request.metadata.get("raster") if len(shape) == 3 and axis == 2 else None
        if template and len(template["dimensions"]) == len(shape):
            dims = list(template["dimensions"])
        elif raster:  # (rows, cols, bands) of a raster: CF's y, x and a band dimension
            dims, template = ["y", "x", "band"], None
        else:
            dims = [f"dim_{i}" for i in range(len(shape))]
            dims[axis] = "channel"
            template = None
        name = variable or (template["variable"] if template else "data")
        super().__init__(path)
        self._file: Any = None
        self._h5: Any = None  # h5py's handle, where the chunks are written directly
        self._chunk_writer: DeflateChunkWriter | None = None
        with setting_up(self, path):
            self._file = h5netcdf.File(self.temp.path, "w")
            self._file.dimensions = dict(zip(dims, shape))
            if template:
                for dim, (values, attrs) in template["coordinates"].items():
                    if dim != dims[axis] and values.shape == (self._file.dimensions[dim].size,):
                        coord = self._file.create_variable(dim, (dim,), data=values)
                        coord.attrs.update(attrs)
                for scalar, attrs in template["scalars"].items():
                    self._file.create_variable(scalar, (), dtype="i4").attrs.update(attrs)
                self._file.attrs.update(template["global_attrs"])
            history = (
                f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ} pwconv "
                f"{request.attrs.get('pwconv_version', '')}: 1x1 convolution of {request.attrs.get('input', '?')} "
                f"with {request.attrs.get('weights_source', '?')}"
            )
            old = str(self._file.attrs.get("history", "")).rstrip("\n")
            self._file.attrs["history"] = f"{old}\n{history}" if old else history
            options: dict[str, Any] = {"compression": "gzip"} if request.compression else {}
            if request.compression and request.compression_level:
                options["compression_opts"] = request.compression_level
            self._var = self._file.create_variable(
                name, tuple(dims), dtype=np.dtype(request.dtype), fillvalue=request.nodata, **options
            )
            if template:
                self._var.attrs.update(template["variable_attrs"])
            if "long_name" not in self._var.attrs:
                self._var.attrs["long_name"] = f"pwconv 1x1 convolution of {request.attrs.get('input', name)}"
            if raster and raster.get("crs") is not None:
                _write_grid_mapping(self._file, self._var, raster, request.stride, shape)
            if request.channel_labels:  # the output channels' names, as their coordinate
                self._file.create_variable(
                    dims[axis],
                    (dims[axis],),
                    dtype=_h5py_strings(),
                    data=np.array(request.channel_labels, object),
                )
            if request.compression == "gzip" and raw_paths_enabled() and self._var.chunks:
                self._write_chunks_directly(f"{path}:{name}", name, request.compression_level or GZIP_LEVEL)

    def _write_chunks_directly(self, where: str, name: str, level: int) -> None:
        """Close h5netcdf (NetCDF's metadata is complete) and write the variable's chunks,
        encoded on every core, through h5py into the same file."""
        import h5py  # h5netcdf's own dependency

        file, self._file = self._file, None
        file.close()
        self._h5 = h5py.File(self.temp.path, "r+")
        self._chunk_writer = DeflateChunkWriter(self._h5[name], where, level)

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        if self._chunk_writer is not None:
            self._chunk_writer.write_box(index, block)
            return
        try:
            self._var[index] = block
        except (OSError, ValueError) as exc:
            raise write_failure(self.target, exc) from None

    def finish(self) -> None:
        # Closed at most once: a second close of a file whose first close failed (a full disk)
        # crashes HDF5.
        if self._chunk_writer is not None:
            self._chunk_writer.flush()
            self._chunk_writer = None
            handle, self._h5 = self._h5, None
            handle.close()
            return
        file, self._file = self._file, None
        file.close()

    def close_quietly(self) -> None:
        handle, self._h5 = self._h5, None
        self._chunk_writer = None
        if handle is not None:
            handle.close()
        # After a failure, only the HDF5 file under it is closed: h5netcdf's close (also its
        # __del__) would first write NetCDF's attributes into a file HDF5 may hold in a bad
        # state (a full disk), which crashes HDF5. The wrapper is then marked closed so that
        # it never tries; the temp file is thrown away anyway.
        file, self._file = self._file, None
        if file is None:
            return
        inner = getattr(file, "_h5file", None)
        if inner is None or not hasattr(file, "_closed"):
            file.close()
            return
        file._closed = True
        inner.close()


class NetcdfFormat(Backend):
    """NetCDF-4 files through h5netcdf: a variable read by name, its dimensions named."""

    def open_source(self, spec: Spec) -> NetcdfSource:
        return NetcdfSource(spec.path, spec.member)

    def open_sink(self, spec: Spec, request: SinkRequest) -> NetcdfSink:
        check_output_path(spec.path, request.overwrite)
        if request.compression and request.compression != "gzip":
            raise UsageError(
                f"expected [[compression=gzip|none]] for NetCDF output, found {request.compression!r}"
            )
        return NetcdfSink(spec.path, spec.member, request)

    def list_arrays(self, path: str) -> list[str]:
        with _open(path) as handle:
            return _data_variables(handle)

    def array_name(self, name: str) -> str:
        return name.strip("/")
