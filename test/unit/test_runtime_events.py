"""runtime/events.py in-process: a repeat of the same event bumps its count, another message makes another
Event, and what the correlator keeps per event is small (not the message)."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any, cast

from dask_operator.runtime.events import NORMAL, EventRecorder
from dask_operator.runtime.objects import Obj


class Events:
    """The API server's Events as the recorder sees them (none kept: only what was done)."""

    def __init__(self) -> None:
        self.created = 0
        self.patched: list[dict[str, Any]] = []

    def create(self, obj: Obj) -> Obj:
        self.created += 1
        return obj

    def patch_merge(self, kind: Any, namespace: str, name: str, patch: dict[str, Any]) -> Obj:
        self.patched.append(patch)
        return {}


def pod(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
    }


def test_a_repeat_bumps_the_count_and_another_message_makes_another_event() -> None:
    events = Events()
    recorder = EventRecorder(cast(Any, events), "test", host="h")
    try:
        recorder.event(pod("a"), NORMAL, "Created", "created pod a")
        recorder.event(pod("a"), NORMAL, "Created", "created pod a")
        recorder.event(pod("a"), NORMAL, "Created", "created pod a again")
        recorder.event(pod("b"), NORMAL, "Created", "created pod a")
        assert recorder.flush()
    finally:
        recorder.stop()
    assert events.created == 3
    assert [patch["count"] for patch in events.patched] == [2]


def test_the_correlator_keeps_a_digest_of_each_event_not_its_message() -> None:
    events = Events()
    recorder = EventRecorder(cast(Any, events), "test", host="h")
    subject = pod("a")
    try:
        recorder.event(subject, NORMAL, "Warmup", "x")
        assert recorder.flush()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            recorder.event(subject, NORMAL, "Scaled", f"scaled to {i} workers: " + "m" * 200)
        assert recorder.flush()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        recorder.stop()
    assert events.created == 1001
    assert grown / 1000 < 400, f"{grown / 1000:.0f} bytes per event"  # 556 keyed by the message itself
