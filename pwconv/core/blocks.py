"""Block planning for streaming: pure arithmetic on shapes, no I/O."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator


def plan_blocks(
    shape: tuple[int, ...],
    channel_axis: int,
    pixel_bytes: int,
    max_bytes: int,
    *,
    contiguous: bool = False,
    align: dict[int, int] | None = None,
    align_limit: int = 0,
    least_tiles: int = 1,
    columns: bool = True,
) -> list[tuple[slice, ...]]:
    """Split ``shape`` into blocks along non-channel axes, each costing at most ``max_bytes``.

    ``pixel_bytes`` is what one position (all channels) costs in memory. Axes are cut from
    the outside in: outer axes one index at a time, then one axis in runs of as many indices as
    fit. With ``contiguous`` only axes before the channel axis are cut, so each block is one
    contiguous run of a C-ordered array (what a pipe needs). ``align`` maps an axis to a
    multiple that block starts should keep (HDF5 chunk extents); a block smaller than one
    chunk is stretched to whole chunks (reading or writing part of a compressed chunk or tile
    means decoding or encoding all of it): where the next axis is chunked too, to one chunk
    across and ``least_tiles`` whole chunks or more along the axis cut (one for each codec
    thread, so that a block decodes on every core; with ``columns`` False, one chunk along
    the axis cut and as many across), else to a whole chunk along the axis cut, when that
    costs at most ``align_limit``.

    >>> plan_blocks((4, 3, 2), 2, 8, 48)
    [(slice(0, 2, None), slice(0, 3, None), slice(0, 2, None)), (slice(2, 4, None), slice(0, 3, None), slice(0, 2, None))]
    """
    full = tuple(slice(0, n) for n in shape)
    pixels = math.prod(n for i, n in enumerate(shape) if i != channel_axis)
    if pixels == 0 or pixels * pixel_bytes <= max_bytes:
        return [full]
    candidates = [i for i in range(len(shape)) if i != channel_axis]
    if contiguous:
        candidates = [i for i in candidates if i < channel_axis]
    if not candidates:
        return [full]

    def cost(axis: int) -> int:
        inner = math.prod(shape[i] for i in range(axis + 1, len(shape)) if i != channel_axis)
        return inner * pixel_bytes

    cut = next((i for i in candidates if cost(i) <= max_bytes), candidates[-1])
    step = max(1, max_bytes // cost(cut))
    if align and align.get(cut, 1) > 1 and step >= align[cut]:
        step -= step % align[cut]
    elif align and align.get(cut, 1) > step:
        # A block is smaller than one chunk along the axis cut: tiles of whole chunks where the
        # next axis is chunked too, else whole chunks along the cut axis.
        tiles = (
            None
            if contiguous
            else _tile_blocks(
                shape, cut, candidates, align, cost, max_bytes, least_tiles, align_limit, columns
            )
        )
        if tiles:
            return tiles
        if align[cut] * cost(cut) <= align_limit:
            step = align[cut]
    outer = [i for i in candidates if i < cut]
    check_block_count(math.prod(shape[i] for i in outer) * -(-shape[cut] // step), shape, max_bytes)
    blocks = []
    for outer_index in _product([shape[i] for i in outer]):
        for start in range(0, shape[cut], step):
            index = list(full)
            for axis, value in zip(outer, outer_index):
                index[axis] = slice(value, value + 1)
            index[cut] = slice(start, min(start + step, shape[cut]))
            blocks.append(tuple(index))
    return blocks


#: The most blocks one run is planned in: the list costs memory of its own (about 200 bytes a
#: block), so a header declaring an absurd shape is refused before any of it is built.
MAX_BLOCKS = 1 << 20


def check_block_count(count: int, shape: tuple[int, ...], max_bytes: int) -> None:
    """Refuse a plan of more than :data:`MAX_BLOCKS` blocks (a header's absurd shape)."""
    from pwconv.errors import UsageError

    if count > MAX_BLOCKS:
        raise UsageError(
            f"expected a job of at most {MAX_BLOCKS} blocks, found {count} for a "
            f"{'x'.join(map(str, shape))} output in blocks of {max_bytes} bytes; "
            "raise [[max_memory]], or check the input's declared shape (pwconv info)"
        )


def _tile_blocks(
    shape: tuple[int, ...],
    cut: int,
    candidates: list[int],
    align: dict[int, int],
    cost: Callable[[int], int],
    max_bytes: int,
    least: int = 1,
    limit: int = 0,
    columns: bool = True,
) -> list[tuple[slice, ...]] | None:
    """Blocks one chunk wide along the axis after ``cut`` and as many whole chunks along
    ``cut`` as fit (columns of tiles of a tiled raster), at least ``least`` of them while
    they cost at most ``limit``; with ``columns`` False, one chunk along ``cut`` and as many
    along the next axis (rows of tiles); None when the next axis is not chunked.

    A block one chunk wide holds each of its chunks as one run of its memory (where the
    chunks hold every later axis whole), so a reader decodes a chunk straight into the block
    and a writer encodes one straight from it. A row of tiles is what lies together in a
    file, so that a block at a URL is fetched in fewer requests.

    >>> def starts(columns): return [(b[0].start, b[1].start) for b in _tile_blocks(
    ...     (8, 8), 0, [0, 1], {0: 2, 1: 4}, lambda a: 8 if a else 64, 64, 2, 200, columns)]
    >>> starts(True), starts(False)
    ([(0, 0), (0, 4), (4, 0), (4, 4)], [(0, 0), (2, 0), (4, 0), (6, 0)])
    """
    inner = next((i for i in candidates if i > cut), None)
    if inner is None or align.get(inner, 1) <= 1:
        return None
    per_chunk = max(align[cut] * align[inner] * cost(inner), 1)
    stacked = max(1, max_bytes // per_chunk, min(least, limit // per_chunk))  # chunks a block
    rows, cols = (align[cut] * stacked, align[inner]) if columns else (align[cut], align[inner] * stacked)
    outer = [i for i in candidates if i < cut]
    count = math.prod(shape[i] for i in outer) * -(-shape[cut] // rows) * -(-shape[inner] // cols)
    check_block_count(count, shape, max_bytes)
    full = tuple(slice(0, n) for n in shape)
    blocks = []
    for outer_index in _product([shape[i] for i in outer]):
        for start in range(0, shape[cut], rows):
            for left in range(0, shape[inner], cols):
                index = list(full)
                for axis, value in zip(outer, outer_index):
                    index[axis] = slice(value, value + 1)
                index[cut] = slice(start, min(start + rows, shape[cut]))
                index[inner] = slice(left, min(left + cols, shape[inner]))
                blocks.append(tuple(index))
    return blocks


def chunk_shape(
    shape: tuple[int, ...], itemsize: int, channel_axis: int, target_bytes: int
) -> tuple[int, ...]:
    """Storage chunks that hold whole channel vectors and about ``target_bytes``.

    Outer axes are cut first, so a later block read along them touches few chunks.

    >>> chunk_shape((100, 64, 8), 4, 2, 4096)
    (2, 64, 8)
    """
    chunk = [max(1, n) for n in shape]
    for axis in range(len(shape)):
        if math.prod(chunk) * itemsize <= target_bytes:
            break
        if axis == channel_axis:
            continue
        rest = math.prod(chunk) // chunk[axis]
        chunk[axis] = max(1, target_bytes // max(rest * itemsize, 1))
    return tuple(chunk)


def _product(sizes: list[int]) -> Iterator[tuple[int, ...]]:
    if not sizes:
        yield ()
        return
    for head in range(sizes[0]):
        for tail in _product(sizes[1:]):
            yield (head, *tail)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def size_text(n: float) -> str:
    """A byte count for people.

    >>> size_text(3 << 29)
    '1.5 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_size(text: str | int) -> int:
    """Parse a memory size: ``512MiB``, ``2GB``, ``1.5GiB`` or a number of bytes.

    >>> parse_size("256MiB")
    268435456
    """
    from pwconv.errors import UsageError

    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        stripped = text.strip().lower().replace(" ", "")
        number = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = stripped[len(number) :]
        try:
            value = float(number)
        except ValueError:
            value, unit = -1.0, unit or "?"
    if unit not in _UNITS or not 0 < value < 1e18:
        raise UsageError(f"expected a memory size such as 512MiB or 2GB, found {text!r}")
    return max(1, int(value * _UNITS[unit]))
