"""What a picture carries besides its pixels: a colour profile, its resolution, EXIF.

Readers of pictures (Pillow's formats, TIFF) put it under ``Description.metadata["picture"]``;
writers of pictures take what still holds for their output from :func:`kept_for`: the
resolution (scaled by the stride) and EXIF always, the colour profile only while the output
has as many channels as the input (a profile describes a colour space of that many).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEY = "picture"


def picture_metadata(
    *, icc_profile: bytes | None, dpi: tuple[float, float] | None, exif: bytes | None, channels: int
) -> dict[str, Any]:
    """The metadata a picture reader records (None: the file has none of that)."""
    found = {"icc_profile": icc_profile or None, "dpi": dpi or None, "exif": exif or None}
    return {KEY: {**found, "channels": channels}} if any(found.values()) else {}


def kept_for(metadata: Mapping[str, Any], channels: int, stride: int) -> dict[str, Any]:
    """What an output of ``channels`` channels keeps of an input picture's metadata.

    >>> kept_for({"picture": {"icc_profile": b"p", "dpi": (300.0, 300.0), "exif": None, "channels": 3}}, 1, 2)
    {'dpi': (150.0, 150.0)}
    """
    picture = metadata.get(KEY)
    if not picture:
        return {}
    kept: dict[str, Any] = {}
    if picture["dpi"]:
        kept["dpi"] = (picture["dpi"][0] / stride, picture["dpi"][1] / stride)
    if picture["exif"]:
        kept["exif"] = picture["exif"]
    if picture["icc_profile"] and picture["channels"] == channels:
        kept["icc_profile"] = picture["icc_profile"]
    return kept


def dropped(metadata: Mapping[str, Any], channels: int, holds: bool) -> list[str]:
    """What of a picture's metadata an output loses, for the report."""
    picture = metadata.get(KEY)
    if not picture:
        return []
    names = [
        n
        for n, key in (("colour profile", "icc_profile"), ("resolution", "dpi"), ("EXIF", "exif"))
        if picture[key]
    ]
    if not holds:
        return [", ".join(names) + " dropped: the output format has no place for them"]
    if picture["icc_profile"] and picture["channels"] != channels:
        return [
            f"colour profile dropped: it describes {picture['channels']} channels, the output has {channels}"
        ]
    return []
