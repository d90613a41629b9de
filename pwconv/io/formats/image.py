"""PNG, JPEG, WebP, BMP and GIF images through Pillow (extra ``pwconv[image]``).

An image is always (H, W, C), channels last: grayscale is (H, W, 1), palette images are
expanded to RGB or RGBA (the report says so). Pixels stay in stored order: EXIF orientation
is not applied, as ImageMagick and OpenCV do by default. These formats are decoded whole;
Pillow's decompression-bomb limit stays on (``PWCONV_MAX_IMAGE_PIXELS`` raises it).
Outputs are written whole on commit, into a temp file renamed into place.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pwconv.errors import FormatError, UsageError, require_extra
from pwconv.io.arrays import ArraySource
from pwconv.io.atomic import FileSink, check_output_path, setting_up
from pwconv.io.checks import check_readable, first_line
from pwconv.io.interface import Backend, Description, SinkRequest
from pwconv.io.pictures import kept_for, picture_metadata

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

DEFAULT_QUALITY = 95

# What each output suffix holds: Pillow's format name, {dtype: channel counts}.
_WRITERS: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {
    ".png": ("PNG", {"uint8": (1, 2, 3, 4), "uint16": (1,)}),
    ".jpg": ("JPEG", {"uint8": (1, 3)}),
    ".jpeg": ("JPEG", {"uint8": (1, 3)}),
    ".webp": ("WEBP", {"uint8": (3, 4)}),
    ".bmp": ("BMP", {"uint8": (1, 3, 4)}),
}
_LOSSY = ("JPEG", "WEBP")
# What of a picture's metadata Pillow writes in each format.
_SAVES = {
    "PNG": ("icc_profile", "dpi", "exif"),
    "JPEG": ("icc_profile", "dpi", "exif"),
    "WEBP": ("icc_profile", "exif"),
    "BMP": ("dpi",),
}


# What each picture format compresses with (Pillow names none of them in its info, except
# BMP's run-length variants, by number).
_CODECS = {"PNG": "deflate", "JPEG": "jpeg", "MPO": "jpeg", "GIF": "lzw", "WEBP": "webp"}
_BMP_CODECS = {0: "none", 1: "rle8", 2: "rle4", 3: "bitfields"}


def _codec(image: Any) -> str:
    if image.format == "BMP":
        return _BMP_CODECS.get(image.info.get("compression", 0), "other")
    return _CODECS.get(image.format, "unknown")


def _pil() -> Any:
    image = require_extra("PIL.Image", "image", "image files")
    limit = os.environ.get("PWCONV_MAX_IMAGE_PIXELS")
    if limit:
        try:
            image.MAX_IMAGE_PIXELS = int(limit)
        except ValueError:
            raise UsageError(f"expected a whole number in PWCONV_MAX_IMAGE_PIXELS, found {limit!r}") from None
    return image


def _open(path: str) -> Any:
    """The image, opened lazily; decompression bombs and damaged headers are refused."""
    pil = _pil()
    check_readable(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pil.DecompressionBombWarning)
            return pil.open(path)
    except (pil.DecompressionBombError, pil.DecompressionBombWarning):
        raise FormatError(
            f"expected an image under Pillow's limit of {pil.MAX_IMAGE_PIXELS} pixels, found {path!r} larger "
            "(a possible decompression bomb); if you trust it, set PWCONV_MAX_IMAGE_PIXELS to a larger number"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        detail = first_line(exc)
        raise FormatError(f"expected an image at {path!r}, found one Pillow cannot open ({detail})") from None


def _converted_mode(image: Any) -> tuple[str | None, str | None]:
    """(mode to convert to, note) so that numpy sees plain channels."""
    mode = image.mode
    if mode in ("P", "PA"):
        target = "RGBA" if mode == "PA" or "transparency" in image.info else "RGB"
        return target, f"palette image expanded to {target}"
    if mode == "1":
        return "L", "1-bit image read as 0/255 in 8 bits"
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "I;16L", "I;16B"):
        return None, None
    raise FormatError(
        f"expected an image mode pwconv reads (L, LA, RGB, RGBA, P, I;16, I, F, ...), found {mode}"
    )


def _decode(path: str, target: str | None) -> np.ndarray:
    image = _open(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", _pil().DecompressionBombWarning)
            image.seek(0)  # a GIF's first frame
            image.load()
            if target is not None:
                image = image.convert(target)
            data = np.asarray(image)
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        detail = first_line(exc)
        raise FormatError(
            f"expected a complete image at {path!r}, found damaged pixel data ({detail})"
        ) from None
    finally:
        image.close()
    return data.reshape(data.shape[0], data.shape[1], -1)


def _probe(
    path: str,
) -> tuple[tuple[int, ...], np.dtype, str | None, str | None, dict[str, Any], dict[str, Any]]:
    image = _open(path)
    try:
        target, note = _converted_mode(image)
        mode = target or image.mode
        sample = _pil().new(mode, (1, 1))
        pixel = np.asarray(sample)
        channels = 1 if pixel.ndim == 2 else pixel.shape[-1]
        storage = {
            "format": image.format,
            "mode": image.mode,
            "bit_depth": pixel.dtype.itemsize * 8,
            "channels": channels,
            "compression": _codec(image),
            "pages": getattr(image, "n_frames", 1),  # Pillow has it on multi-frame formats only
        }
        shape = (image.height, image.width, channels)
        dpi = image.info.get("dpi")
        extra = picture_metadata(
            icc_profile=image.info.get("icc_profile"),
            dpi=(float(dpi[0]), float(dpi[1])) if dpi else None,
            exif=image.info.get("exif"),
            channels=channels,
        )
        return shape, pixel.dtype, target, note, storage, extra
    finally:
        image.close()


def _quality(options: Mapping[str, str]) -> int:
    lowered = {key.lower(): value for key, value in options.items()}  # QUALITY=90 as well
    text = lowered.get("quality", str(DEFAULT_QUALITY))
    try:
        quality = int(text)
    except ValueError:
        quality = 0
    if not 1 <= quality <= 100:
        raise UsageError(f"expected [[quality]] from 1 to 100, found {text!r}")
    return quality


class ImageSink(FileSink):
    """An image held in memory while blocks arrive, saved by Pillow on commit."""

    def __init__(self, path: str, request: SinkRequest) -> None:
        suffix = os.path.splitext(path)[1].lower()
        if suffix == ".gif":
            raise UsageError(
                f"expected an output pwconv writes, found GIF {path!r}; write .png (lossless) instead"
            )
        self.format, holds = _WRITERS[suffix]
        shape, dtype = request.shape, np.dtype(request.dtype)
        channels = 1 if len(shape) == 2 else shape[-1] if len(shape) == 3 else 0
        if channels == 0:
            raise UsageError(
                f"expected an (H, W, C) result for {self.format} output, found shape {shape}; write .npy or .tif"
            )
        if dtype.name not in holds:
            raise UsageError(
                f"expected {' or '.join(holds)} data for {self.format} output, found {dtype}; "
                "pass [[dtype=uint8]], or write .tif or .npy, which hold any dtype"
            )
        if channels not in holds[dtype.name]:
            counts = ", ".join(map(str, holds[dtype.name]))
            raise UsageError(
                f"expected {counts} channel(s) of {dtype} for {self.format} output, found {channels}; "
                "write .tif or .npy, which hold any channel count"
            )
        _pil()
        self.quality = _quality(request.options)
        kept = kept_for(request.metadata, channels, request.stride)
        self.extra = {k: v for k, v in kept.items() if k in _SAVES.get(self.format, ())}
        super().__init__(path)
        with setting_up(self, path):
            self.data = np.zeros(shape[:2] + ((channels,) if channels > 1 else ()), dtype)

    def write(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        self.data[index[: self.data.ndim]] = block.reshape(self.data[index[: self.data.ndim]].shape)

    @property
    def notes(self) -> list[str]:
        if self.format in _LOSSY:
            return [f"{self.format} is lossy: quality {self.quality}; write .png for exact values"]
        return []

    def finish(self) -> None:
        options: dict[str, Any] = {"quality": self.quality} if self.format in _LOSSY else {}
        _pil().fromarray(self.data).save(self.temp.path, format=self.format, **options, **self.extra)

    def close_quietly(self) -> None:
        self.data = np.zeros(0)


class ImageFormat(Backend):
    """PNG, JPEG, WebP, BMP and GIF (read only) through Pillow."""

    def open_source(self, spec: Spec) -> ArraySource:
        shape, dtype, target, note, storage, extra = _probe(spec.path)
        description = Description(
            is_image=True, notes=(note,) if note else (), reader="pillow", metadata=extra
        )
        return ArraySource(shape, dtype, lambda: _decode(spec.path, target), storage, description)

    def open_sink(self, spec: Spec, request: SinkRequest) -> ImageSink:
        check_output_path(spec.path, request.overwrite)
        return ImageSink(spec.path, request)

    def encodes_whole(self, spec: Spec, compression: str | None) -> bool:
        return True  # Pillow encodes a picture from one array

    def default_dtype(self, input_dtype: np.dtype, input_is_image: bool) -> np.dtype:
        """An image output keeps an image input's dtype where it can, else 8 bits."""
        if input_is_image and input_dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
            return input_dtype
        return np.dtype(np.uint8)
