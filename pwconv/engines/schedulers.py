"""The dask schedulers pwconv names, without importing the dask engine (checked at start-up)."""

from __future__ import annotations

from pwconv.errors import UsageError

#: Schedulers that run in this process or its children; anything else is a cluster address.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
#: Schedulers whose tasks all run in this process (a sink without a parallel writer works there).
IN_PROCESS_SCHEDULERS = ("threads", "synchronous")


def check_scheduler(name: str) -> None:
    """Refuse a scheduler that is neither local nor a cluster address."""
    if name not in LOCAL_SCHEDULERS and not name.startswith(("tcp://", "tls://", "ucx://")):
        raise UsageError(
            f"expected [[scheduler=threads|processes|synchronous|tcp://HOST:PORT]], found {name!r}"
        )
