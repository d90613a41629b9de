"""The codec threads: decoding (a read waits for it) runs before encoding queued earlier."""

from __future__ import annotations

import threading

import pytest

from pwconv.io.codecs import CodecThreads, in_parallel


def test_work_submitted_later_runs_after_work_that_waits():
    threads = CodecThreads(1)
    gate, order = threading.Event(), []
    busy = threads.submit(gate.wait)  # holds the only thread while the rest is queued
    queued = [threads.submit(order.append, f"encode {i}", later=True) for i in range(3)]
    queued += [threads.submit(order.append, f"decode {i}") for i in range(2)]
    gate.set()
    for future in [busy, *queued]:
        future.result(timeout=10)
    assert order == ["decode 0", "decode 1", "encode 0", "encode 1", "encode 2"]


def test_no_more_threads_than_asked_for_and_failures_reach_the_caller():
    threads = CodecThreads(2)
    gate = threading.Event()
    seen: set[str] = set()

    def hold(_: int) -> None:
        seen.add(threading.current_thread().name)
        gate.wait(10)

    futures = [threads.submit(hold, i) for i in range(6)]
    gate.set()
    for future in futures:
        future.result(timeout=10)
    assert len(seen) == 2

    def fail(item: int) -> int:
        if item == 3:
            raise ValueError("chunk 3 is damaged")
        return item * 2

    with pytest.raises(ValueError, match="chunk 3"):
        in_parallel(fail, range(6))
    assert in_parallel(fail, [1, 2], later=True) == [2, 4]


def test_cancelled_work_is_skipped():
    threads = CodecThreads(1)
    gate, ran = threading.Event(), []
    busy = threads.submit(gate.wait)
    dropped = threads.submit(ran.append, "dropped", later=True)
    assert dropped.cancel()
    kept = threads.submit(ran.append, "kept", later=True)
    gate.set()
    busy.result(timeout=10)
    kept.result(timeout=10)
    assert ran == ["kept"]
