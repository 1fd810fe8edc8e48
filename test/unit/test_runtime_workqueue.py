"""Work queue and rate limiter semantics (checklist items 20-28, 53), in-process."""

from __future__ import annotations

import threading
import time

import pytest

from dask_operator.runtime import metrics
from dask_operator.runtime.ratelimiter import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    bucketed_controller_rate_limiter,
)
from dask_operator.runtime.workqueue import LOW_PRIORITY, WorkQueue


def test_a_key_is_never_handed_to_two_workers_at_once() -> None:  # item 20
    queue: WorkQueue[str] = WorkQueue()
    in_flight: set[str] = set()
    overlaps = []
    lock = threading.Lock()
    runs = {key: 0 for key in "abcde"}

    def worker() -> None:
        while True:
            key, shutdown = queue.get()
            if shutdown:
                return
            assert key is not None
            with lock:
                if key in in_flight:
                    overlaps.append(key)
                in_flight.add(key)
                runs[key] += 1
            time.sleep(0.001)
            with lock:
                in_flight.discard(key)
            queue.done(key)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for _ in range(200):
        for key in "abcde":
            queue.add(key)
    time.sleep(0.1)
    assert queue.shutdown_with_drain(5)
    for thread in workers:
        thread.join(5)
    assert overlaps == []
    assert all(count >= 1 for count in runs.values())


def test_many_adds_while_processing_collapse_into_one_more_run() -> None:  # item 21
    queue: WorkQueue[str] = WorkQueue()
    queue.add("k")
    key, _ = queue.get()
    assert key == "k"
    for _ in range(100):
        queue.add("k")
    assert len(queue) == 0  # not handed out (nor counted ready) while processing
    assert queue.get(timeout=0.05) == (None, False)
    queue.done("k")
    assert queue.get(timeout=1) == ("k", False)
    queue.done("k")
    assert queue.get(timeout=0.05) == (None, False)


def test_no_add_while_processing_means_no_rerun() -> None:  # item 21, the "at least once if" half
    queue: WorkQueue[str] = WorkQueue()
    queue.add("k")
    queue.get()
    queue.done("k")
    assert queue.get(timeout=0.05) == (None, False)


def test_adding_a_queued_key_changes_neither_length_nor_adds_total() -> None:  # item 22
    queue: WorkQueue[str] = WorkQueue("wq-dedup")
    queue.add("k")
    adds = metrics.sample_value("workqueue_adds_total", {"name": "wq-dedup", "controller": "wq-dedup"})
    queue.add("k")
    queue.add("k")
    assert len(queue) == 1
    assert (
        metrics.sample_value("workqueue_adds_total", {"name": "wq-dedup", "controller": "wq-dedup"})
        == adds
        == 1
    )


def test_add_after_non_positive_is_immediate_and_later_calls_only_move_earlier() -> None:  # item 23
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("now", 0)
    queue.add_after("neg", -1)
    assert len(queue) == 2
    queue.add_after("k", 0.3)
    queue.add_after("k", 5.0)  # later: ignored
    assert queue.waiting() == 1
    started = time.monotonic()
    got = {queue.get(timeout=2)[0] for _ in range(3)}
    assert got == {"now", "neg", "k"}
    assert 0.25 <= time.monotonic() - started < 2
    queue.add_after("j", 5.0)
    queue.add_after("j", 0.05)  # earlier: wins
    assert queue.get(timeout=1) == ("j", False)


def test_immediate_add_makes_a_waiting_key_ready_at_once() -> None:  # item 26 (last clause)
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("k", 10)
    queue.add("k")
    assert queue.get(timeout=0.5) == ("k", False)
    queue.done("k")
    assert queue.waiting() == 0  # the delay was cancelled, not kept for a second run


def test_exponential_backoff_sequence_forget_and_num_requeues() -> None:  # item 24
    limiter = ItemExponentialFailureRateLimiter(0.005, 1000.0)
    delays = [limiter.when("k") for _ in range(22)]
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert delays[17] == pytest.approx(655.36)
    assert delays[18:] == [1000.0] * 4
    assert limiter.num_requeues("k") == 22
    limiter.forget("k")
    assert limiter.num_requeues("k") == 0
    assert limiter.when("k") == 0.005
    assert limiter.when("other") == 0.005  # per key


def test_add_rate_limited_uses_the_limiter_per_key() -> None:  # item 24 through the queue
    queue: WorkQueue[str] = WorkQueue(rate_limiter=ItemExponentialFailureRateLimiter(0.05, 10))
    started = time.monotonic()
    queue.add_rate_limited("k")
    queue.add_rate_limited("k")  # 0.1 s, later than the waiting 0.05 s: ignored
    assert queue.num_requeues("k") == 2
    assert queue.get(timeout=1) == ("k", False)
    assert 0.045 <= time.monotonic() - started < 0.5
    queue.forget("k")
    assert queue.num_requeues("k") == 0


def test_token_bucket_sustains_ten_per_second_after_a_burst_of_hundred() -> None:  # item 25
    now = [0.0]
    bucket = BucketRateLimiter(10, 100, clock=lambda: now[0])
    assert all(bucket.when(i) == 0 for i in range(100))
    delays = [bucket.when(i) for i in range(100, 150)]
    assert delays[0] == pytest.approx(0.1)
    assert delays[-1] == pytest.approx(5.0)  # 50 more items need 5 s at 10/s
    limiter = MaxOfRateLimiter(ItemExponentialFailureRateLimiter(0.005, 1000), BucketRateLimiter(10, 100))
    assert limiter.when("x") == 0.005
    assert isinstance(bucketed_controller_rate_limiter(), MaxOfRateLimiter)


def test_priority_then_fifo_by_time_of_becoming_ready() -> None:  # item 26
    queue: WorkQueue[str] = WorkQueue()
    queue.add("low-1", LOW_PRIORITY)
    queue.add("zero-1")
    queue.add("low-2", LOW_PRIORITY)
    queue.add("zero-2")
    queue.add_after("zero-late", 0.05)
    time.sleep(0.1)
    queue.add("zero-3")
    order = [queue.get(timeout=1)[0] for _ in range(6)]
    assert order == ["zero-1", "zero-2", "zero-late", "zero-3", "low-1", "low-2"]


def test_raising_priority_of_a_queued_key() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a", LOW_PRIORITY)
    queue.add("b", LOW_PRIORITY)
    queue.add("b", 0)
    assert len(queue) == 2
    assert [queue.get()[0], queue.get()[0]] == ["b", "a"]


def test_shutdown_ignores_adds_wakes_getters_and_accepts_done() -> None:  # item 27
    queue: WorkQueue[str] = WorkQueue()
    queue.add("in-flight")
    assert queue.get() == ("in-flight", False)
    results: list[tuple[str | None, bool]] = []
    getter = threading.Thread(target=lambda: results.append(queue.get()))
    getter.start()
    time.sleep(0.05)
    queue.shutdown()
    getter.join(2)
    assert results == [(None, True)]
    queue.add("new")
    assert len(queue) == 0
    queue.done("in-flight")  # no error
    assert queue.get(timeout=0.1) == (None, True)


def test_shutdown_still_hands_out_already_queued_keys() -> None:  # item 28 (classic mode)
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.add("b")
    queue.shutdown()
    assert queue.get() == ("a", False)
    assert queue.get() == ("b", False)
    assert queue.get() == (None, True)


def test_shutdown_with_drain_waits_for_in_flight_done() -> None:  # item 28
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.get()
    finished = threading.Event()

    def drain() -> None:
        queue.shutdown_with_drain()
        finished.set()

    thread = threading.Thread(target=drain)
    thread.start()
    assert not finished.wait(0.2)
    queue.done("a")
    assert finished.wait(2)
    assert not queue.shutdown_with_drain(0.01) or queue.processing() == 0


def test_shutdown_with_drain_times_out_and_plain_shutdown_aborts_the_wait() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.get()
    assert queue.shutdown_with_drain(0.05) is False
    threading.Timer(0.05, queue.shutdown).start()
    assert queue.shutdown_with_drain() is False  # aborted by shutdown(), still in flight


def test_depth_and_unfinished_work_metrics() -> None:  # item 53
    name = "wq-metrics"
    queue: WorkQueue[str] = WorkQueue(name)
    labels = {"name": name, "controller": name}
    queue.add("a")
    queue.add("b")
    queue.add("c", LOW_PRIORITY)
    assert metrics.sample_value("workqueue_depth", {**labels, "priority": "0"}) == 2
    assert metrics.sample_value("workqueue_depth", {**labels, "priority": "-100"}) == 1
    key, _ = queue.get()
    assert metrics.sample_value("workqueue_depth", {**labels, "priority": "0"}) == 1
    first = metrics.sample_value("workqueue_unfinished_work_seconds", labels)
    time.sleep(0.2)
    second = metrics.sample_value("workqueue_unfinished_work_seconds", labels)
    assert second > first and second >= 0.2
    assert metrics.sample_value("workqueue_longest_running_processor_seconds", labels) >= 0.2
    assert key is not None
    queue.done(key)
    assert metrics.sample_value("workqueue_unfinished_work_seconds", labels) == 0
    assert metrics.sample_value("workqueue_longest_running_processor_seconds", labels) == 0
    assert metrics.sample_value("workqueue_work_duration_seconds_count", labels) == 1
    assert metrics.sample_value("workqueue_queue_duration_seconds_count", labels) == 1
    retries = metrics.sample_value("workqueue_retries_total", labels)
    queue.add_after("d", 0.01)
    assert metrics.sample_value("workqueue_retries_total", labels) == retries + 1


def test_reflector_backoff_grows_jittered_to_the_cap_and_resets_after_two_minutes() -> None:  # items 14, 15
    import random

    from dask_operator.runtime.backoff import Backoff

    now = [0.0]
    backoff = Backoff(clock=lambda: now[0], rng=random.Random(7))
    delays = []
    for _ in range(8):
        delays.append(backoff.next())
        now[0] += 1
    bases = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert all(base <= delay <= min(2 * base, 30.0) for base, delay in zip(bases, delays, strict=True))
    now[0] += 121  # healthy for more than two minutes
    assert 0.8 <= backoff.next() <= 1.6


def test_a_key_added_while_processing_keeps_its_place_from_that_add() -> None:
    """Oldest update first under load: `a`, dirtied again while in flight before `b` was added, runs
    before `b` once its first run is done (before, it went behind every key added during that run)."""
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert queue.get(timeout=1)[0] == "a"
    queue.add("a")  # an update arrives while `a` is reconciled
    queue.add("b")
    queue.add("c")
    assert queue.get(timeout=1)[0] == "b"  # `a` is in flight, so the next ready key goes meanwhile
    queue.done("a")
    assert [queue.get(timeout=1)[0], queue.get(timeout=1)[0]] == ["a", "c"]
