"""The dask schedulers pwconv names, without importing the dask engine (checked at start-up)."""

from __future__ import annotations

import re

from pwconv.errors import UsageError

_ADDRESS = re.compile(
    r"(?:tcp|tls|ucx)://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?/?", re.ASCII
)

#: Schedulers that run in this process or its children; anything else is a cluster address.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
#: Schedulers whose tasks all run in this process (a sink without a parallel writer works there).
IN_PROCESS_SCHEDULERS = ("threads", "synchronous")


def check_scheduler(name: str) -> None:
    """Refuse a scheduler that is neither local nor a cluster address."""
    if name in LOCAL_SCHEDULERS:
        return
    address = _ADDRESS.fullmatch(name)
    if address is None or (address.group(1) is not None and not 0 < int(address.group(1)) < 65536):
        raise UsageError(
            f"expected [[scheduler=threads|processes|synchronous|tcp://HOST:PORT]] (a port from 1 to 65535), "
            f"found {name!r}"
        )
