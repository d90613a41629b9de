"""Finding an array in a container by name: one rule and one wording for every format."""

from __future__ import annotations

import re

from pwconv.errors import FormatError, InputFileError, UsageError

#: A layer's name selects its weights: ``head`` finds ``head.weight`` or ``head/kernel``.
_WEIGHT_SUFFIXES = (".weight", "/kernel")


# What a named table looks like: a family, or family:member (``tasseled-cap:landsat8``).
_TABLE_LIKE = re.compile(r"^[a-z][a-z0-9-]*(:[a-z0-9][a-z0-9-]*)?$")


def could_name_a_table(text: str) -> bool:
    """Whether ``text`` is spelled like a named table: any other text (a path, a literal) is
    known to name none without reading the tables.

    >>> could_name_a_table("colour:rgb-to-ycbcr"), could_name_a_table("bank.npy")
    (True, False)
    """
    return bool(_TABLE_LIKE.match(text))


def printable(name: str) -> str:
    """A name read from a file, safe in a one-line message: control characters escaped.

    >>> printable("a\\nb")
    'a\\\\nb'
    """
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def pick_name(path: str, name: str | None, names: list[str], what: str = "tensor") -> str:
    """``name`` if ``path`` holds it; with no name, the only one there is. Else a one-line error
    that lists the closest names (or the first few).

    >>> pick_name("m.pt", "head", ["head.weight", "head.bias"], "tensor")
    'head.weight'
    """
    if name is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise InputFileError(f"expected a {what} in {path!r}, found none; the file holds no arrays")
        shown = ", ".join(map(printable, names[:8])) + (
            f" and {len(names) - 8} more" if len(names) > 8 else ""
        )
        raise UsageError(
            f"expected one {what} in {path!r} or a name, found {len(names)}: {shown}; "
            f"name one as {path}:{printable(names[0])}"
        )
    if name in names:
        return name
    for suffix in _WEIGHT_SUFFIXES:
        if name + suffix in names:
            return name + suffix
    import difflib

    close = difflib.get_close_matches(name, names, n=5, cutoff=0.3) or names[:5]
    raise InputFileError(
        f"expected a {what} {name!r} in {path!r}, found none; closest: {', '.join(map(printable, close)) or 'none'}"
        " (the info command lists them all)"
    )


def sibling_bias(tensor: str, names: list[str]) -> str | None:
    """The bias named like ``tensor``: ``x.weight`` -> ``x.bias``, ``x/kernel`` -> ``x/bias``.

    >>> sibling_bias("head.proj.weight", ["head.proj.weight", "head.proj.bias"])
    'head.proj.bias'
    """
    for suffix in ("weights", "weight", "kernel"):
        stem = tensor[: -len(suffix)]
        if tensor.endswith(suffix) and (not stem or stem[-1] in "./_:"):
            candidate = stem + "bias"
            if candidate in names:
                return candidate
    return None


def json_labels(text: str | None, where: str) -> tuple[str, ...] | None:
    """Labels kept as a JSON list of strings in a file's text metadata (ONNX, safetensors);
    None where there are none.

    >>> json_labels('["red", "nir"]', "bank.onnx:names")
    ('red', 'nir')
    """
    if text is None:
        return None
    import json

    try:
        values = json.loads(text)
    except (ValueError, RecursionError):
        values = None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FormatError(
            f"expected {where} as a JSON list of strings, found {printable(text[:60])!r}; write the names again"
        )
    return tuple(values)
