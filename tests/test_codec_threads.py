"""The codec threads: decoding (a read waits for it) runs before encoding queued earlier."""

from __future__ import annotations

import threading
import time

import pytest

from pwconv.io.codecs import CodecThreads, each_done, in_parallel, thread_count


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


def test_each_done_hands_results_over_as_they_finish_and_fails_after_all_are_tried():
    """A result is handed to the caller while later items are still being worked on, and a
    failure (of the work or of the caller's handling) is raised once every item has run."""
    if thread_count() < 2:
        pytest.skip("needs two codec threads: one holds the first item")
    gate, order = threading.Event(), []

    def work(item: int) -> int:
        if item == 0:
            gate.wait(10)  # the first item finishes last
        order.append(f"work {item}")
        return item * 10

    def then(item: int, result: int) -> None:
        order.append(f"then {item}")
        if item == 2:
            gate.set()

    each_done(work, [0, 1, 2], then, later=True)
    assert order.index("then 2") < order.index("work 0")  # handed over before the last finished
    assert sorted(x for x in order if x.startswith("then")) == ["then 0", "then 1", "then 2"]

    ran: list[int] = []

    def failing_then(item: int, result: int) -> None:
        raise OSError(f"write {item} failed")

    def slow(item: int) -> int:
        time.sleep(0.01 * item)
        ran.append(item)
        return item

    with pytest.raises(OSError, match="write"):
        each_done(slow, list(range(6)), failing_then)
    assert sorted(ran) == list(range(6))  # no work still running when the failure is raised

    def bad(item: int) -> int:
        if item == 1:
            raise ValueError("damaged")
        return item

    handed: list[int] = []
    with pytest.raises(ValueError, match="damaged"):
        each_done(bad, [0, 1, 2], lambda item, result: handed.append(item))
    assert set(handed) <= {0, 2}
