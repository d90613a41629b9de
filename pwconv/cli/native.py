"""The process below Python: what C libraries print themselves, and how C memory is returned.

libtiff, HDF5 and GDAL write to file descriptor 2, not to Python's ``sys.stderr``:
:func:`capture` points descriptor 2 at a pipe read by a thread that keeps the last lines, so
that every failure is one pwconv line; ``sys.stderr`` stays on the real stream, and pwconv's
own report and errors are unchanged. :func:`return_large_blocks` keeps block-sized buffers
out of the C allocator's heap, so that resident memory follows ``--max-memory``.
"""

from __future__ import annotations

import collections
import ctypes
import io
import os
import sys
import threading
from typing import Any

_KEPT = 20
_lines: collections.deque[str] = collections.deque(maxlen=_KEPT)


def capture() -> None:
    """Send what C code writes to descriptor 2 into a pipe of kept lines (once per process)."""
    if getattr(capture, "done", False):
        return
    try:
        real = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # descriptor 2 closed, or none left: nothing to keep apart
        return
    sys.stderr.flush()
    sys.stderr = io.TextIOWrapper(
        io.FileIO(real, "w", closefd=True), encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace",
        line_buffering=True,
    )  # fmt: skip
    os.dup2(write_end, 2)
    os.close(write_end)
    os.set_inheritable(2, True)
    threading.Thread(target=_keep, args=(read_end,), name="pwconv-native-stderr", daemon=True).start()
    import faulthandler

    if faulthandler.is_enabled():  # a crash report still reaches the terminal
        faulthandler.enable(file=sys.stderr)
    capture.done = True  # type: ignore[attr-defined]


def _keep(fd: int) -> None:
    with open(fd, "rb", closefd=True) as stream:
        for raw in stream:
            text = raw.decode("utf-8", "replace").strip()
            if text:
                _lines.append(text)


def messages() -> list[str]:
    """The last lines the C libraries printed (at most 20)."""
    return list(_lines)


def quiet_destructor_errors() -> None:
    """Errors a library can only report from a destructor (h5py's, after a full disk: Cython
    prints them through ``sys.excepthook`` and ``sys.unraisablehook``) are not printed: the
    failure they follow is reported in pwconv's own line. Called once the command runs, since
    typer replaces ``sys.excepthook`` when it starts."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        frames, step = [], tb
        while step is not None:
            frames.append(step.tb_frame.f_code.co_name)
            step = step.tb_next
        if not any("dealloc" in name for name in frames):
            previous(kind, value, tb)

    sys.excepthook = hook
    sys.unraisablehook = lambda unraisable: None


# glibc's mallopt parameters: the size from which allocations are mapped on their own, and
# how much free memory at the top of a heap it keeps.
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1


def return_large_blocks(max_bytes: int | None = None) -> None:
    """Allocations of a sixteenth of ``max_bytes`` (1 to 32 MiB; 1 MiB without it) and more
    are mapped on their own and unmapped when freed; glibc's heaps keep up to twice that free.

    Left to itself glibc raises its threshold (up to 32 MiB) each time such a block is
    freed, and then serves later blocks from its per-thread heaps, which it keeps: with codec
    threads (zarr, tifffile) resident memory grew with the input, past ``--max-memory``. A
    block is at least half of ``--max-memory``, so a sixteenth keeps every block mapped. A
    fixed 1 MiB, though, also mapped every tile, encoded chunk and codec context anew, and a
    fresh mapping's pages are zeroed by the kernel at first touch (and on this project's
    virtual machines fault in the host too): a 1 GiB zstd GeoTIFF to a zstd GeoTIFF took
    1.80-1.86 s with it, 1.50-1.60 s without (its peak RSS 395 -> 470 MiB, under the
    default 512 MiB). Setting the threshold fixes the heaps' trim threshold at 128 KiB,
    which returned their memory as often: it is set too. A no-op where the C library has
    no ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    threshold = mapped_from(max_bytes)
    mallopt(_M_MMAP_THRESHOLD, threshold)
    mallopt(_M_TRIM_THRESHOLD, 2 * threshold)


def mapped_from(max_bytes: int | None) -> int:
    """The size from which :func:`return_large_blocks` has allocations mapped on their own.

    >>> mapped_from(512 << 20) >> 20, mapped_from(128 << 20) >> 20, mapped_from(1 << 20) >> 20
    (32, 8, 1)
    """
    return 1 << 20 if max_bytes is None else max(1 << 20, min(32 << 20, max_bytes // 16))
