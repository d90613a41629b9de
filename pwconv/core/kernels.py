"""The optional C kernels for few filters, channels-last and channels-first, and when to use them.

BLAS is the fast path for everything else. The kernels are an accelerator only: when their
module was not built (no compiler at install time), the CPU lacks AVX2/FMA, or
``PWCONV_KERNEL=blas`` is set, every call goes to numpy/BLAS and gives the same result
within float rounding. The module picks its AVX-512 or AVX2+FMA code by the CPU it runs on;
``PWCONV_KERNEL=avx2`` keeps an AVX-512 machine on the AVX2 code (for measuring).
"""

from __future__ import annotations

import _thread
import os
from collections.abc import Callable
from typing import Any

import numpy as np

_module: Any = None
_loaded = False

_SETTING = os.environ.get("PWCONV_KERNEL", "auto").lower()
# Set to False (or PWCONV_KERNEL=blas in the environment) to run everything through BLAS.
enabled = _SETTING != "blas"

# Threads the kernel splits rows over; engines that run several blocks at once set 1.
threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))

# Set while an engine keeps BLAS to one thread (its own threads spin between products and
# took the cores the codec threads decode on): channels-last products are then split over
# the kernel's threads instead, one BLAS call each.
blas_in_one_thread = False

# Each thread gets at least this many input bytes: a smaller share costs more to hand out
# than it saves (see benchmarks/threads.py).
_SPLIT_BYTES = 2 << 20
# The channels-last kernel's split job is cut into this many pieces per thread (of at least
# _PIECE_BYTES), taken by the threads as each finishes one: in a file-to-file run, equal
# halves left one thread waiting for the other, whose core the writer shared.
_PIECES = 4
_PIECE_BYTES = 1 << 20


def _load() -> Any:
    global _module, _loaded
    if not _loaded:
        _loaded = True
        try:
            from pwconv._ext import _fewfilters  # type: ignore[attr-defined]

            _module = _fewfilters if _fewfilters.instruction_set() != "generic" else None
        except ImportError:
            _module = None
        if _module is not None and _SETTING == "avx2":
            _module.use_instruction_set("avx2+fma")
    return _module


def instruction_set() -> str:
    """What the few-filter kernels run with: ``avx512f``, ``avx2+fma``, or ``unavailable``."""
    module = _load()
    return module.instruction_set() if module is not None else "unavailable"


def instruction_sets() -> list[str]:
    """The kernels' code paths this CPU runs, best last (``[]`` when the module is unavailable)."""
    module = _load()
    if module is None:
        return []
    paths = ["avx2+fma", "avx512f"]
    return paths[: paths.index(module.cpu_instruction_set()) + 1]


def use_instruction_set(name: str) -> None:
    """Run the kernels' ``avx2+fma`` (or ``avx512f``) code, if this CPU has it (tests, benchmarks)."""
    module = _load()
    if module is not None:
        module.use_instruction_set(name)


def accepts(x2: np.ndarray, filters: np.ndarray, out2: np.ndarray) -> bool:
    """Whether a kernel beats BLAS here (measured with benchmarks/kernels.py).

    float32: 2-4 filters over 64+ channels (32+ on the AVX-512 code: 0.5-0.6x BLAS at 32,
    2.4x at 16), 5-8 filters, and up to 32 filters over up to 2048 channels; on the AVX2 code
    only where the last vector of 8 is at least 5/8 full (16, 24, 32, 13-15, ...): a last
    vector mostly of padding (9-12 filters) measured at BLAS speed or slower there, while the
    AVX-512 code's 12 filters in 16 lanes measured 0.5-0.9x BLAS.
    float64: 2-4 filters over 32+ channels, 5-16 filters.
    For 2-4 float32 filters under 128 channels the CPU or its calibration decides
    (:mod:`pwconv.core.calibration`).
    """
    k, c = filters.shape
    if not enabled or x2.dtype.kind != "f" or x2.dtype.itemsize not in (4, 8):
        return False
    wide = x2.dtype.itemsize == 8
    module = _load()
    if module is None:
        return False
    avx512 = module.instruction_set() == "avx512f"
    if k < 2 or k > (16 if wide else 32) or c > 2048 or (k <= 4 and c < (32 if wide or avx512 else 64)):
        return False
    if not wide and k > 8 and 0 < k % 8 < 5 and not avx512:
        return False
    return _plain_operands(x2, filters, out2) and _kept("rows", x2.dtype, k, c)


def apply_rows(x2: np.ndarray, filters: np.ndarray, out2: np.ndarray) -> None:
    """``out2[:] = x2 @ filters.T`` with the C kernel (call :func:`accepts` first)."""
    module = _load()
    rows, c = x2.shape
    k = filters.shape[0]
    itemsize = x2.dtype.itemsize
    parts = _shares(x2.nbytes)
    if parts == 1:
        module.apply_rows(x2, filters, out2, rows, c, k, itemsize)
        return

    def part(start: int, stop: int) -> None:
        module.apply_rows(x2[start:stop], filters, out2[start:stop], stop - start, c, k, itemsize)

    run_shares(part, rows, min(parts * _PIECES, max(parts, x2.nbytes // _PIECE_BYTES)))


def accepts_planes(x3: np.ndarray, filters: np.ndarray, out3: np.ndarray) -> bool:
    """Whether the channels-first kernel beats BLAS on ``x3`` (images, C, pixels) -> ``out3``
    (images, K, pixels) (measured with ``benchmarks/kernels.py --layout planes``).

    Rows of 64 pixels or more, 2 to 32 filters, and up to 64 over up to 256 channels on the
    AVX-512 code (0.86-0.91x BLAS at 64 filters; 1.3x over 1024 channels). On the AVX2 code,
    over 64 or more channels, only up to 8 filters (at 12-32 filters it measured 1.1-1.6x
    BLAS there, 0.4-0.9x below). One filter is BLAS's matrix-vector product, which reads at
    the floor already; with more filters the product is compute-bound, where BLAS's packed
    GEMM wins. In two float32 regions the CPU or its calibration decides
    (:mod:`pwconv.core.calibration`).
    """
    k, c = filters.shape
    if not enabled or x3.dtype.kind != "f" or x3.dtype.itemsize not in (4, 8) or x3.ndim != 3:
        return False
    module = _load()
    if module is None:
        return False
    avx512 = module.instruction_set() == "avx512f"
    if k < 2 or k > (64 if avx512 and c <= 256 else 32) or x3.shape[2] < 64:
        return False
    if k > 8 and c >= 64 and not avx512:
        return False
    return _plain_operands(x3, filters, out3) and _kept("planes", x3.dtype, k, c)


def _kept(layout: str, dtype: np.dtype, k: int, c: int) -> bool:
    """Whether the kernel keeps a case where CPUs disagree (:mod:`pwconv.core.calibration`:
    loaded only for float32 products)."""
    if dtype != np.float32:
        return True
    from pwconv.core import calibration

    return calibration.kernel_kept(layout, k, c)


def _plain_operands(x: np.ndarray, filters: np.ndarray, out: np.ndarray) -> bool:
    """The kernels take one dtype throughout and C-contiguous buffers."""
    if not (x.dtype == filters.dtype == out.dtype):
        return False
    return x.flags.c_contiguous and filters.flags.c_contiguous and out.flags.c_contiguous


def apply_planes(x3: np.ndarray, filters: np.ndarray, out3: np.ndarray) -> None:
    """``out3[n] = filters @ x3[n]`` for every image n with the C kernel (call
    :func:`accepts_planes` first). Threads take whole images, or pixel ranges of each."""
    module = _load()
    a, c, b = x3.shape
    k = filters.shape[0]
    itemsize = x3.dtype.itemsize
    parts = _shares(x3.nbytes)
    if parts == 1:
        module.apply_planes(x3, filters, out3, a, c, b, k, 0, b, itemsize)
        return
    if a >= parts:
        step = -(-a // parts)
        jobs = [(x3[n : n + step], out3[n : n + step], min(step, a - n), 0, b) for n in range(0, a, step)]
    else:
        step = -(-b // parts // 64) * 64  # whole cache lines of pixels for each thread
        jobs = [(x3, out3, a, p, min(b, p + step)) for p in range(0, b, step)]

    def part(job: tuple[np.ndarray, np.ndarray, int, int, int]) -> None:
        xs, outs, images, start, stop = job
        module.apply_planes(xs, filters, outs, images, c, b, k, start, stop, itemsize)

    run_jobs(part, jobs)


def blas_shares(nbytes: int) -> int:
    """The kernel's threads a BLAS product of ``nbytes`` input is split over: 1 unless BLAS
    is kept to one thread (:data:`blas_in_one_thread`)."""
    return _shares(nbytes) if blas_in_one_thread else 1


def run_shares(part: Callable[[int, int], None], rows: int, parts: int) -> None:
    """``part(start, stop)`` for each of ``parts`` equal shares of ``rows``, on the kernel's
    threads (:func:`run_jobs`)."""
    step = -(-rows // parts)
    run_jobs(lambda start: part(start, min(rows, start + step)), list(range(0, rows, step)))


def _shares(nbytes: int) -> int:
    """The threads a job of ``nbytes`` input is split over: shares of at least _SPLIT_BYTES."""
    return max(1, min(threads, nbytes // _SPLIT_BYTES))


def run_jobs(part: Callable[[Any], None], jobs: list[Any]) -> None:
    """``part(job)`` for each of ``jobs`` on the kernel's threads, the calling thread among
    them: each takes the next job when it is done with one, so that a thread slowed by another
    (an engine's writer on its core, page faults) takes fewer jobs instead of holding up the
    rest. The first exception of a job is raised here, once no job runs any more."""
    if len(jobs) == 1:
        part(jobs[0])
        return
    lock = _thread.allocate_lock()
    left = iter(jobs)
    failed: list[BaseException] = []

    def take() -> None:
        while not failed:
            with lock:
                job = next(left, left)
            if job is left:
                return
            try:
                part(job)
            except BaseException as exc:
                failed.append(exc)  # the other threads take no more jobs
                raise

    helpers = _helpers()
    calls = [helpers.submit(take) for _ in range(min(threads, len(jobs)) - 1)]
    try:
        take()
    finally:  # no job still runs when this returns or raises
        for call in calls:
            call.wait()
    if failed:
        raise failed[0]


class _Call:
    """A share of a split job handed to a helper thread (its failures are the job's to keep).
    The caller, once it has taken every job itself, waits only for a call a helper has
    started: one still queued (every helper busy, with another caller's job or with one that
    split a job of its own) is dropped."""

    def __init__(self, function: Callable[[], None]) -> None:
        import threading  # only when a job is split: start-up

        self.function = function
        self.done = threading.Event()
        self._state = "queued"  # then "running" (by a helper) or "dropped" (by the caller)
        self._lock = _thread.allocate_lock()

    def _claim(self, state: str) -> bool:
        with self._lock:
            if self._state != "queued":
                return False
            self._state = state
            return True

    def run(self) -> None:
        if not self._claim("running"):
            return
        try:
            self.function()
        except BaseException:  # noqa: BLE001, S110 - the job recorded it for its caller
            pass
        finally:
            self.done.set()

    def wait(self) -> None:
        if not self._claim("dropped"):
            self.done.wait()


class _Helpers:
    """The threads that take a split job's shares beside the calling thread: daemons, so
    that the command line's quick exit is not held up by them, started on first use."""

    def __init__(self) -> None:
        import queue

        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._started = 0
        self._pid = os.getpid()

    def submit(self, function: Callable[[], None]) -> _Call:
        import threading

        call = _Call(function)
        self._calls.put(call)
        with _helpers_lock:
            if self._started < threads - 1:
                self._started += 1
                threading.Thread(
                    target=self._loop, name=f"pwconv-kernel-{self._started}", daemon=True
                ).start()
        return call

    def _loop(self) -> None:
        while True:
            self._calls.get().run()


_helpers_lock = _thread.allocate_lock()
_pool: _Helpers | None = None


def _helpers() -> _Helpers:
    """The process's helper threads (made again in a forked child, where they do not run)."""
    global _pool
    with _helpers_lock:
        if _pool is None or _pool._pid != os.getpid():
            _pool = _Helpers()
        return _pool


_scatter_module: Any = None
_scatter_loaded = False


def _load_scatter() -> Any:
    global _scatter_module, _scatter_loaded
    if not _scatter_loaded:
        _scatter_loaded = True
        try:
            from pwconv._ext import _scatter  # type: ignore[attr-defined]

            _scatter_module = _scatter if _scatter.lanes() else None
        except ImportError:
            _scatter_module = None
    return _scatter_module


def scatter_instruction_set() -> str:
    """What the scatter kernel of fit runs with: ``avx512f``, ``avx2+fma``, or ``unavailable``."""
    module = _load_scatter()
    return module.instruction_set() if module is not None else "unavailable"


def _accumulate(
    module: Any, c: int, jobs: list[Callable[[np.ndarray, np.ndarray, int], None]], products: np.ndarray,
    sums: np.ndarray,
) -> None:  # fmt: skip
    """Run each job into its own padded (cp, cp) products and (cp,) sums, on the kernel's
    threads, then add their upper triangles, mirrored, into ``products`` and ``sums``."""
    block = 2 * module.lanes()
    cp = -(-c // block) * block
    accs = [(np.zeros((cp, cp)), np.zeros(cp)) for _ in jobs]

    def run(index: int) -> None:
        jobs[index](*accs[index], cp)

    if len(jobs) > 1:
        run_jobs(run, list(range(len(jobs))))
    else:
        run(0)
    acc, total = accs[0]
    for more, more_total in accs[1:]:
        acc += more
        total += more_total
    upper = np.triu(acc[:c, :c])
    products += upper + np.triu(upper, 1).T
    sums += total[:c]


def _takes(array: np.ndarray, ndim: int) -> Any:
    module = _load_scatter()
    ok = (
        module is not None
        and enabled
        and array.ndim == ndim
        and array.dtype in (np.float32, np.float64)
        and array.flags.c_contiguous
        and array.size > 0
    )
    return module if ok else None


def add_scatter(rows: np.ndarray, shift: np.ndarray, products: np.ndarray, sums: np.ndarray) -> bool:
    """``products += (rows - shift).T @ (rows - shift)`` and ``sums += (rows - shift).sum(0)``
    in float64 with the C kernel; False (nothing done) where it does not apply, for BLAS.

    >>> x = np.arange(12, dtype=np.float32).reshape(4, 3); p, s = np.zeros((3, 3)), np.zeros(3)
    >>> done = add_scatter(x, np.ones(3), p, s)
    >>> not done or bool(np.allclose(p, (x - 1.0).T @ (x - 1.0)))
    True
    """
    module = _takes(rows, 2)
    if module is None:
        return False
    n, c = rows.shape
    shift64 = np.ascontiguousarray(shift, dtype=np.float64)
    parts = _shares(rows.nbytes)
    step = -(-n // parts)

    def job(start: int) -> Callable[[np.ndarray, np.ndarray, int], None]:
        piece = rows[start : start + step]
        return lambda acc, total, cp: module.add_rows(
            piece, piece.shape[0], c, rows.dtype.itemsize, shift64, acc, total, cp
        )

    _accumulate(module, c, [job(start) for start in range(0, n, step)], products, sums)
    return True


def add_differences(
    image: np.ndarray, step: tuple[int, int], shift: np.ndarray, products: np.ndarray, sums: np.ndarray
) -> bool:
    """The same for ``image[r, q] - image[r + dr, q + dc]`` over every pixel of a (rows,
    columns, channels) block whose neighbour ``step`` away is in it, differenced in float64
    inside the kernel; False where the kernel does not apply.

    >>> x = np.arange(24, dtype=np.float32).reshape(2, 4, 3) ** 2; p, s = np.zeros((3, 3)), np.zeros(3)
    >>> done = add_differences(x, (1, 1), np.zeros(3), p, s)
    >>> d = (x[:1, :3] - x[1:, 1:]).reshape(-1, 3).astype(float)
    >>> not done or bool(np.allclose(p, d.T @ d))
    True
    """
    module = _takes(image, 3)
    dr, dc = step
    if module is None or dr < 0:
        return False
    rows, width, c = image.shape
    pairs = rows - dr
    if pairs <= 0 or width - abs(dc) <= 0:
        return True  # no pair in the block: nothing to add
    shift64 = np.ascontiguousarray(shift, dtype=np.float64)
    parts = min(_shares(image.nbytes), pairs)
    share = -(-pairs // parts)

    def job(r0: int) -> Callable[[np.ndarray, np.ndarray, int], None]:
        r1 = min(pairs, r0 + share)
        return lambda acc, total, cp: module.add_differences(
            image, r0, r1, width, c, image.dtype.itemsize, dr, dc, shift64, acc, total, cp
        )

    _accumulate(module, c, [job(r0) for r0 in range(0, pairs, share)], products, sums)
    return True
