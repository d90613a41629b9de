"""Counts in messages, in the singular or plural as the number needs."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1.

    >>> counted(1, "filter"), counted(3, "channel"), counted(1, "pixel"), counted(2, "axis", "axes")
    ('1 filter', '3 channels', '1 pixel', '2 axes')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def one_of(values: list[int] | tuple[int, ...] | set[int]) -> str:
    """Alternatives as a reader says them.

    >>> one_of({24, 1, 16}), one_of([3]), one_of([2, 4])
    ('1, 16 or 24', '3', '2 or 4')
    """
    items = [str(v) for v in sorted(values)]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"
