"""The optional C kernels for few filters on channels-last data, and when to use them.

BLAS is the fast path for everything else. The kernel is an accelerator only: when its
module was not built (no compiler at install time), the CPU lacks AVX2/FMA, or
``PWCONV_KERNEL=blas`` is set, every call goes to numpy/BLAS and gives the same result
within float rounding.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

_module: Any = None
_loaded = False
if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None

# Set to False (or PWCONV_KERNEL=blas in the environment) to run everything through BLAS.
enabled = os.environ.get("PWCONV_KERNEL", "auto").lower() != "blas"

# Threads the kernel splits rows over; engines that run several blocks at once set 1.
threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))

# Each thread gets at least this many input bytes: a smaller share costs more to hand out
# than it saves (see benchmarks/threads.py).
_SPLIT_BYTES = 2 << 20


def _load() -> Any:
    global _module, _loaded
    if not _loaded:
        _loaded = True
        try:
            from pwconv._ext import _fewfilters  # type: ignore[attr-defined]

            _module = _fewfilters if _fewfilters.instruction_set() != "generic" else None
        except ImportError:
            _module = None
    return _module


def instruction_set() -> str:
    """What the few-filter kernel runs with: ``avx2+fma``, or ``unavailable``."""
    module = _load()
    return module.instruction_set() if module is not None else "unavailable"


def accepts(x2: np.ndarray, filters: np.ndarray, out2: np.ndarray) -> bool:
    """Whether a kernel beats BLAS here (measured with benchmarks/kernels.py).

    float32: 2-4 filters over 64+ channels, 5-8 filters, and up to 32 filters where the last
    vector of 8 is at least 5/8 full (16, 24, 32, 13-15, ...), over up to 2048 channels;
    a last vector mostly of padding (9-12 filters) measured at BLAS speed or slower.
    float64: 2-4 filters over 32+ channels, 5-16 filters.
    """
    k, c = filters.shape
    if not enabled or x2.dtype.kind != "f" or x2.dtype.itemsize not in (4, 8):
        return False
    wide = x2.dtype.itemsize == 8
    if k < 2 or k > (16 if wide else 32) or c > 2048 or (k <= 4 and c < (32 if wide else 64)):
        return False
    if not wide and k > 8 and 0 < k % 8 < 5:
        return False
    if not (x2.dtype == filters.dtype == out2.dtype):
        return False
    if not (x2.flags.c_contiguous and filters.flags.c_contiguous and out2.flags.c_contiguous):
        return False
    return _load() is not None


def apply_rows(x2: np.ndarray, filters: np.ndarray, out2: np.ndarray) -> None:
    """``out2[:] = x2 @ filters.T`` with the C kernel (call :func:`accepts` first)."""
    global _pool
    module = _load()
    rows, c = x2.shape
    k = filters.shape[0]
    itemsize = x2.dtype.itemsize
    parts = max(1, min(threads, x2.nbytes // _SPLIT_BYTES))
    if parts == 1:
        module.apply_rows(x2, filters, out2, rows, c, k, itemsize)
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor  # only when a job is split: start-up

        _pool = ThreadPoolExecutor(threads, thread_name_prefix="pwconv-kernel")
    step = -(-rows // parts)

    def part(start: int) -> None:
        stop = min(rows, start + step)
        module.apply_rows(x2[start:stop], filters, out2[start:stop], stop - start, c, k, itemsize)

    # The calling thread takes the first share itself.
    futures = [_pool.submit(part, start) for start in range(step, rows, step)]
    part(0)
    for future in futures:
        future.result()
