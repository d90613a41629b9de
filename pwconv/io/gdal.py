"""GDAL through rasterio (extra ``pwconv[geo]``): the one place rasterio is imported, with
pwconv's settings for GDAL."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from pwconv.errors import require_extra


def rasterio_module(
    feature: str = "georeferenced rasters (a GeoTIFF's georeferencing would be lost)",
) -> Any:
    """rasterio, with pwconv's defaults for GDAL; a missing ``geo`` extra is an error naming
    ``feature``."""
    # GDAL's block cache defaults to 5% of RAM and would hold every block written: keep it
    # small (MB), so that memory follows the block size (GDAL_CACHEMAX set by the user wins).
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    # A VRT may carry Python code for its pixels: never run it (a user's own setting wins).
    os.environ.setdefault("GDAL_VRT_ENABLE_PYTHON", "NO")
    # The blocks of a window GDAL reads (the codecs pwconv does not decode itself) are decoded
    # on every core: an LZW GeoTIFF of 1 GiB read in 5.2-5.5 s against 7.3-8.3 s on one.
    os.environ.setdefault("GDAL_NUM_THREADS", "ALL_CPUS")
    if "rasterio" in sys.modules or "boto3" in sys.modules:
        return require_extra("rasterio", "geo", feature)
    # rasterio imports boto3 where it is installed, for AWS sessions of its own that pwconv
    # does not need: GDAL reads the same variables and files itself (and those pwconv hands
    # on, see ``stores``). That import took 0.19 s, a third of a small GeoTIFF's run.
    sys.modules["boto3"] = None  # type: ignore[assignment]  # import boto3 -> ImportError
    try:
        return require_extra("rasterio", "geo", feature)
    finally:
        del sys.modules["boto3"]


def gdal_flag(value: Any) -> bool:
    """A creation option's value read as the GeoTIFF driver reads a boolean: true for YES,
    TRUE, ON and 1 (and Python's True), false for anything else (``TILED=maybe`` is not tiled)."""
    return str(value).strip().lower() in ("yes", "true", "on", "1")


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@contextlib.contextmanager
def option_warnings() -> Iterator[list[str]]:
    """The warnings GDAL gives about creation options while the block runs (through
    rasterio's logging): an option it does not know, or a value it does not take."""
    found: list[str] = []
    handler = _Collect(found)
    logger = logging.getLogger("rasterio._env")
    logger.addHandler(handler)
    warnings: list[str] = []
    try:
        yield warnings
    finally:
        logger.removeHandler(handler)
        warnings.extend(w for w in found if "creation option" in w.lower())
