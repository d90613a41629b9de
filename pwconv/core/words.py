"""Counts in messages, in the singular or plural as the number needs."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1.

    >>> counted(1, "filter"), counted(3, "channel"), counted(1, "pixel"), counted(2, "axis", "axes")
    ('1 filter', '3 channels', '1 pixel', '2 axes')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
