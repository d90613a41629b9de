"""The engine's worker threads: each runs submitted calls in order, in one daemon thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pwconv.engines import interrupts
from pwconv.io import threads

T = TypeVar("T")


class Pending(Generic[T]):
    """The result of a call handed to a :class:`Worker` (``concurrent.futures.Future`` in
    a few lines: that module's import costs a start-up of its own)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._cancelled = False
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self, function: Callable[..., T], args: tuple[Any, ...]) -> None:
        if not self._cancelled:
            try:
                self._value = function(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
                self._error = exc
        self._done.set()

    def result(self) -> T:
        # Waited for in slices, checking for a signal between them: its handler's exception
        # may have been swallowed by a destructor it ran in (see engines.interrupts).
        while not self._done.wait(0.25):
            interrupts.check()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Skip the call if it has not started (one that has runs to its end)."""
        self._cancelled = True


# Workers whose calls may block in a read that never returns (a pipe), while they live.
_blocking: set[Worker] = set()
_blocking_lock = threading.Lock()


def reader_may_block() -> bool:
    """Whether a worker that reads may still be blocked inside a read (of stdin, say).

    Such a thread may hold the stream's lock; the interpreter's shutdown would then abort
    waiting for it, so the command line leaves without that shutdown.
    """
    with _blocking_lock:
        return bool(_blocking)


class Worker:
    """One daemon thread that runs submitted calls in order.

    A daemon, because a read from a pipe may block for ever after the run has failed: it
    must not hold up the exit of the process (``concurrent.futures`` joins its threads).
    ``may_block``: its calls read input that may block (counted by :func:`reader_may_block`).
    """

    def __init__(self, *, may_block: bool = False) -> None:
        self._calls: queue.SimpleQueue[tuple[Pending[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        if may_block:
            with _blocking_lock:
                _blocking.add(self)
        self._may_block = may_block
        self._thread = threads.Thread(self._loop, "pwconv-worker")

    def _loop(self) -> None:
        while (call := self._calls.get()) is not None:
            pending, function, args = call
            pending.run(function, args)
            del call, pending, function, args  # the sink and the block go with the call
        if self._may_block:
            with _blocking_lock:
                _blocking.discard(self)

    def submit(self, function: Callable[..., T], *args: Any) -> Pending[T]:
        pending: Pending[T] = Pending()
        self._calls.put((pending, function, args))
        return pending

    def close(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Stop the thread after the calls submitted; ``wait``: until it has ended (after a
        run that succeeded, so that no thread still holds a library's objects or locks when
        the interpreter shuts down: h5py's objects freed then can crash or hang it), or for
        at most ``timeout`` seconds."""
        self._calls.put(None)
        if wait:
            self._thread.join(timeout)
