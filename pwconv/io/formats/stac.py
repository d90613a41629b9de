"""A STAC item (``item.json``) naming the files of a stack: ``item.json:red,green,nir08``.

Each name picks an asset, by its key or by the ``eo:bands`` common name (or band name) it
carries (STAC 1.0 ``eo:bands``, STAC 1.1 ``bands`` with ``eo:common_name``); the assets'
files are stacked in that order (see :mod:`pwconv.io.formats.stack`), each channel named by
its common name, so that named banks and indices bind to them. Read with pystac (extra
``pwconv[geo]``). Asset files must be local and lie in the item's folder unless
``--allow-external``; remote assets come with the object-store support.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from pwconv.errors import FormatError, UsageError, require_extra
from pwconv.io.checks import check_readable, first_line, lies_outside, refuse_external
from pwconv.io.interface import Backend, Source

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

_MAX_ITEM_BYTES = 16 << 20


def _item(path: str) -> Any:
    check_readable(path)
    pystac = require_extra("pystac", "geo", "STAC items")
    if os.path.getsize(path) > _MAX_ITEM_BYTES:
        raise FormatError(f"expected a STAC item of at most 16 MiB at {path!r}, found a larger file")
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        if not isinstance(document, dict) or document.get("type") != "Feature":
            raise ValueError("not a STAC item (a GeoJSON Feature)")
        return pystac.Item.from_dict(document, href=os.path.abspath(path), migrate=True)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeDecodeError) as exc:
        raise FormatError(
            f"expected a STAC item at {path!r}, found one pystac cannot read ({first_line(exc)}); check the JSON"
        ) from None


def _band_names(asset: Any) -> list[str]:
    """The names an asset's bands go by: common names first, then band names."""
    fields = asset.extra_fields
    bands = fields.get("eo:bands") or fields.get("bands") or []
    names: list[str] = []
    for band in bands if isinstance(bands, list) else []:
        if isinstance(band, dict):
            for key in ("common_name", "eo:common_name", "name"):
                value = band.get(key)
                if isinstance(value, str) and value not in names:
                    names.append(value)
    return names


def _pick(item: Any, wanted: str, path: str) -> tuple[str, Any, str]:
    """(asset key, asset, the channel's name) for one requested name."""
    assets = item.assets
    if wanted in assets:
        names = _band_names(assets[wanted])
        return wanted, assets[wanted], names[0] if names else wanted
    found = [
        (key, asset) for key, asset in assets.items() if wanted.lower() in map(str.lower, _band_names(asset))
    ]
    if len(found) == 1:
        return found[0][0], found[0][1], wanted
    have = ", ".join(f"{k} ({'/'.join(_band_names(a))})" if _band_names(a) else k for k, a in assets.items())
    what = "several assets" if found else "no asset"
    raise UsageError(
        f"expected one asset of {path!r} named {wanted!r} (a key or an eo:bands name), found {what}; "
        f"the item has {have or 'no assets'}"
    )


class StacFormat(Backend):
    """STAC items: the named assets' files as one stack."""

    def list_arrays(self, path: str) -> list[str]:
        return list(_item(path).assets)

    def open_source(self, spec: Spec) -> Source:
        from pwconv.io.formats.stack import StackSource
        from pwconv.io.registry import open_source
        from pwconv.io.spec import parse_spec

        item = _item(spec.path)
        if not spec.member:
            raise UsageError(
                f"expected the assets to read from the STAC item {spec.path!r}, found none; name them as "
                f"{spec.path}:{','.join(list(item.assets)[:3]) or 'red,nir08'} (keys or eo:bands names)"
            )
        folder = os.path.dirname(os.path.abspath(spec.path))
        texts, labels, opened = [], [], []
        try:
            for wanted in [w.strip() for w in spec.member.split(",") if w.strip()]:
                key, asset, label = _pick(item, wanted, spec.path)
                href = asset.get_absolute_href() or asset.href
                if "://" in href and not href.startswith("file://"):
                    raise UsageError(
                        f"expected a local file for asset {key!r} of {spec.path!r}, found a URL; "
                        "download the assets beside the item first"
                    )
                target = href.removeprefix("file://")
                if lies_outside(folder, target):
                    refuse_external(spec.path, f"an asset outside its folder ({key!r})")
                texts.append(target)
                labels.append(label)
                opened.append(open_source(parse_spec(target)))
            return StackSource(texts, opened, labels=labels)
        except BaseException:
            for source in opened:
                source.close()
            raise
