"""A STAC item (``item.json``) naming the files of a stack: ``item.json:red,green,nir08``.

Each name picks an asset, by its key or by the ``eo:bands`` common name (or band name) it
carries (STAC 1.0 ``eo:bands``, STAC 1.1 ``bands`` with ``eo:common_name``); the assets'
files are stacked in that order (see :mod:`pwconv.io.formats.stack`), each channel named by
its common name, so that named banks and indices bind to them. Read with pystac (extra
``pwconv[geo]``). Asset files must lie in the item's folder (for an item at a URL: under
its prefix) unless ``--allow-external``.
"""

from __future__ import annotations

import json
import os
import posixpath
import urllib.parse
from typing import TYPE_CHECKING, Any

from pwconv.errors import FormatError, UsageError, require_extra
from pwconv.io.checks import check_readable, first_line, lies_outside, refuse_external
from pwconv.io.interface import Backend, Source
from pwconv.io.stores import RemoteObject, is_url, local_path, shown, url_path

if TYPE_CHECKING:
    from pwconv.io.spec import Spec

_MAX_ITEM_BYTES = 16 << 20


def _item(path: str) -> Any:
    check_readable(path)
    pystac = require_extra("pystac", "geo", "STAC items")
    remote = RemoteObject(path) if is_url(path) else None
    size = remote.size if remote is not None else os.path.getsize(path)
    if size > _MAX_ITEM_BYTES:
        raise FormatError(f"expected a STAC item of at most 16 MiB at {shown(path)!r}, found a larger file")
    try:
        if remote is not None:
            document = json.loads(bytes(remote.read_range(0, size)).decode("utf-8"))
        else:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
        if not isinstance(document, dict) or document.get("type") != "Feature":
            raise ValueError("not a STAC item (a GeoJSON Feature)")
        return pystac.Item.from_dict(document, href=None if remote else os.path.abspath(path), migrate=True)
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


def _asset_target(item_path: str, asset: Any) -> str:
    """Where an asset's file is: its href made absolute against the item's own place."""
    href = str(asset.href)
    if is_url(href) or href.startswith("file://"):
        return local_path(href)
    if is_url(item_path):
        base = url_path(item_path).rpartition("/")[0]
        parts = urllib.parse.urlsplit(base + "/" + href)
        return urllib.parse.urlunsplit(parts._replace(path=posixpath.normpath(parts.path)))
    return asset.get_absolute_href() or href


def _outside(item_path: str, target: str) -> bool:
    """Whether an asset lies outside the item's folder (or prefix)."""
    if is_url(item_path) or is_url(target):
        prefix = url_path(item_path).rpartition("/")[0] + "/"
        return not (is_url(item_path) and url_path(target).startswith(prefix))
    return lies_outside(os.path.dirname(os.path.abspath(item_path)), target)


class StacFormat(Backend):
    """STAC items: the named assets' files as one stack."""

    def list_arrays(self, path: str) -> list[str]:
        return list(_item(path).assets)

    def open_source(self, spec: Spec) -> Source:
        from pwconv.io.formats.stack import open_stack
        from pwconv.io.spec import parse_spec

        item = _item(spec.path)
        if not spec.member:
            raise UsageError(
                f"expected the assets to read from the STAC item {spec.path!r}, found none; name them as "
                f"{spec.path}:{','.join(list(item.assets)[:3]) or 'red,nir08'} (keys or eo:bands names)"
            )
        texts, labels = [], []
        for wanted in [w.strip() for w in spec.member.split(",") if w.strip()]:
            key, asset, label = _pick(item, wanted, spec.path)
            target = _asset_target(spec.path, asset)
            if _outside(spec.path, target):
                refuse_external(spec.text, f"an asset outside its folder ({key!r})")
            texts.append(target)
            labels.append(label)
        return open_stack(texts, [parse_spec(text) for text in texts], labels)
