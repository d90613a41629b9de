"""SIGINT and SIGTERM as exceptions a run cannot lose.

Python runs a signal handler between bytecodes of the main thread, wherever it is: in a
destructor that the garbage collector calls (h5py's and GDAL's objects), the exception the
handler raises is swallowed, and a run waiting on its reader would wait for ever. The
handlers installed here also keep the signal, and every wait of the engine checks it
(:func:`check`), so that the run stops all the same.
"""

from __future__ import annotations

import signal
from typing import Any, NoReturn

_came: list[int] = []


def _raise(signum: int) -> NoReturn:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)  # 143 for SIGTERM: what a shell reports


def _on_signal(signum: int, frame: Any) -> None:
    _came.append(signum)
    _raise(signum)


def install() -> None:
    """SIGTERM ends the run as an exit of 128 + 15; SIGINT as Ctrl-C does (unless the
    process was started with SIGINT ignored, as a background job is)."""
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)


def check() -> None:
    """Raise again a signal whose exception a destructor swallowed."""
    if _came:
        _raise(_came[-1])
