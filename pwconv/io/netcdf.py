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

import datetime
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, UsageError, WriteError, require_extra
from pwconv.io.base import (
    SinkRequest,
    check_output_path,
    check_readable,
    first_line,
    numeric_dtype,
    pick_name,
    publish,
    remove_quietly,
    temp_path_beside,
)

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

COMPRESSIONS = ("gzip",)
PARALLEL_WRITE = False
_KEEP_VARIABLE_ATTRS = ("grid_mapping",)


def _h5netcdf() -> Any:
    return require_extra("h5netcdf", "geo", "NetCDF files")


def _open(path: str) -> Any:
    h5netcdf = _h5netcdf()
    check_readable(path)
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:3] == b"CDF":
        raise FormatError(
            f"expected a NetCDF-4 (HDF5) file at {path!r}, found classic NetCDF-3; convert it with: "
            f"nccopy -k nc4 {path} converted.nc"
        )
    try:
        return h5netcdf.File(path, "r")
    except Exception as exc:  # noqa: BLE001
        raise FormatError(
            f"expected a NetCDF-4 file at {path!r}, found one that cannot be read ({first_line(exc)})"
        ) from None


def _data_variables(handle: Any) -> list[str]:
    """Variables that are not coordinates of a dimension."""
    return [name for name in handle.variables if name not in handle.dimensions]


def list_arrays(path: str) -> list[str]:
    with _open(path) as handle:
        return _data_variables(handle)


def array_name(name: str) -> str:
    return name.strip("/")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class NetcdfSource:
    """One NetCDF variable, read by hyperslab."""

    sequential = False
    is_image = False
    name = None

    def __init__(self, path: str, variable: str | None) -> None:
        self.path = path
        self.notes: list[str] = []
        self._file = _open(path)
        try:
            names = _data_variables(self._file)
            self.variable = pick_name(path, variable, names, "variable")
            var = self._file.variables[self.variable]
            self.dimensions = tuple(var.dimensions)
            self.shape = tuple(int(n) for n in var.shape)
            self.dtype = numeric_dtype(var.dtype, f"{path}:{self.variable}")
            attrs = dict(var.attrs)
            fill = attrs.get("_FillValue", attrs.get("missing_value"))
            self.nodata = None if fill is None else float(np.asarray(fill).reshape(-1)[0])
            self._var = var
        except BaseException:
            self._file.close()
            raise

    def chunks(self) -> tuple[int, ...] | None:
        chunks = self._var.chunks
        return tuple(int(c) for c in chunks) if chunks else None

    def storage(self) -> dict[str, Any]:
        return {
            "format": "netcdf4",
            "variable": self.variable,
            "dimensions": list(self.dimensions),
            "nodata": self.nodata,
            "data_bytes": math.prod(self.shape) * self.dtype.itemsize,
        }

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._var[index])
        except Exception as exc:  # noqa: BLE001
            raise FormatError(f"cannot read {self.path}:{self.variable}: {first_line(exc)}") from None

    def output_metadata(self) -> dict[str, Any]:
        handle = self._file
        coordinates = {}
        for dim in self.dimensions:
            if dim in handle.variables:
                coord = handle.variables[dim]
                coordinates[dim] = (np.asarray(coord[...]), {k: _plain(v) for k, v in coord.attrs.items()})
        var_attrs = {k: _plain(v) for k, v in self._var.attrs.items() if k in _KEEP_VARIABLE_ATTRS}
        extra = {}
        mapping = var_attrs.get("grid_mapping")
        if isinstance(mapping, str) and mapping in handle.variables:
            extra[mapping] = {k: _plain(v) for k, v in handle.variables[mapping].attrs.items()}
        return {
            "netcdf": {
                "variable": self.variable,
                "dimensions": self.dimensions,
                "coordinates": coordinates,
                "global_attrs": {k: _plain(v) for k, v in handle.attrs.items()},
                "variable_attrs": var_attrs,
                "scalars": extra,
            }
        }

    def close(self) -> None:
        self._file.close()


def open_source(spec: Spec) -> NetcdfSource:
    return NetcdfSource(spec.path, spec.dataset)


class NetcdfSink:
    """A new NetCDF-4 file written block by block into a temp file renamed on commit."""

    sequential = False

    def __init__(self, path: str, variable: str | None, request: SinkRequest) -> None:
        h5netcdf = _h5netcdf()
        template = request.metadata.get("netcdf")
        shape, axis = request.shape, request.channel_axis
        if template and len(template["dimensions"]) == len(shape):
            dims = list(template["dimensions"])
        else:
            dims = [f"dim_{i}" for i in range(len(shape))]
            dims[axis] = "channel"
            template = None
        name = variable or (template["variable"] if template else "data")
        self.path = path
        fd, self._temp = temp_path_beside(path)
        os.close(fd)
        try:
            self._file = h5netcdf.File(self._temp, "w")
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
            self._var = self._file.create_variable(
                name, tuple(dims), dtype=np.dtype(request.dtype), fillvalue=request.nodata, **options
            )
            if template:
                self._var.attrs.update(template["variable_attrs"])
            self._var.attrs["long_name"] = f"pwconv 1x1 convolution of {request.attrs.get('input', name)}"
        except (OSError, ValueError, TypeError) as exc:
            self.abort()
            raise WriteError(
                f"cannot create {path!r}: {first_line(exc)}; check the disk and permissions"
            ) from None

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        try:
            self._var[index] = block
        except (OSError, ValueError) as exc:
            raise WriteError(
                f"cannot write {self.path!r}: {first_line(exc)}; free some space or write elsewhere"
            ) from None

    def parallel_writer(self) -> None:
        return None

    def commit(self) -> None:
        try:
            self._file.close()
            publish(self._temp, self.path)
            self._temp = ""
        except OSError as exc:
            self.abort()
            raise WriteError(f"cannot write {self.path!r}: {first_line(exc)}") from None

    def abort(self) -> None:
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - cleanup must not mask the first error
            pass
        remove_quietly(self._temp)
        self._temp = ""


def open_sink(spec: Spec, request: SinkRequest) -> NetcdfSink:
    check_output_path(spec.path, request.overwrite)
    if request.compression and request.compression != "gzip":
        raise UsageError(
            f"expected [[compression=gzip|none]] for NetCDF output, found {request.compression!r}"
        )
    return NetcdfSink(spec.path, spec.dataset, request)
