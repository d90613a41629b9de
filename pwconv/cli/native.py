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


# glibc's mallopt parameter for the size from which allocations are mapped on their own.
_M_MMAP_THRESHOLD = -3


def return_large_blocks() -> None:
    """Allocations of 1 MiB and more are mapped on their own and unmapped when freed.

    glibc raises that threshold (up to 32 MiB) each time such a block is freed, and then
    serves later blocks from its per-thread heaps, which it keeps: with codec threads (zarr,
    tifffile) resident memory grew with the input, past ``--max-memory``. Measured: no
    slower. A no-op where the C library has no ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, 1 << 20)
