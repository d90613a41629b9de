"""Daemon threads whose end a signal cannot hide.

Up to Python 3.12, a signal whose handler raises while the main thread waits in
``Thread.join()`` leaves the thread marked as ended though it still runs (the interrupted
wait releases the lock the running thread holds): ``is_alive()`` is then False and every later
``join()`` returns at once. A run stopped by SIGTERM while it waited for its upload would take
the upload for finished and abort nothing. The threads here say they have ended only once
their function has returned, and a wait on them is an event's, which a signal interrupts
without harm.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Thread:
    """``target`` run in a daemon thread named ``name``, started at once."""

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        self._target = target
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._ended.set()

    def alive(self) -> bool:
        return not self._ended.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the function has returned (at most ``timeout`` seconds); whether it has."""
        return self._ended.wait(timeout)
