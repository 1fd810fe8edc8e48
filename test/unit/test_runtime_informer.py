"""Informer notification semantics (checklist items 1, 7-11, 17, 19, 37), fed in-process through its Sink.

The reflector side (what is fetched from the API server and when) is covered by the integration tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from support.runtime_offline import offline_client
from support.wait import wait_for

from dask_operator.runtime.informer import Informer
from dask_operator.runtime.kinds import CONFIGMAP

Obj = dict[str, Any]


def cm(name: str, rv: int, uid: str = "u", data: str = "") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": str(rv), "uid": uid},
        "data": {"v": data},
    }


class Recorder:
    def __init__(self, informer: Informer | None = None, delay: float = 0.0) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.informer = informer
        self.delay = delay
        self.seen_in_store: list[bool] = []

    def on_add(self, obj: Obj, is_in_initial_list: bool) -> None:
        self._check(obj)
        self.events.append(
            ("add", obj["metadata"]["name"], obj["metadata"]["resourceVersion"], is_in_initial_list)
        )

    def on_update(self, old: Obj, new: Obj) -> None:
        self._check(new)
        self.events.append(
            (
                "update",
                new["metadata"]["name"],
                old["metadata"]["resourceVersion"],
                new["metadata"]["resourceVersion"],
            )
        )

    def on_delete(self, obj: Obj, state_unknown: bool) -> None:
        self.events.append(
            ("delete", obj["metadata"]["name"], obj["metadata"]["resourceVersion"], state_unknown)
        )

    def _check(self, obj: Obj) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.informer is not None:
            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            stored = self.informer.store.get(key)
            self.seen_in_store.append(
                stored is not None
                and int(stored["metadata"]["resourceVersion"]) >= int(obj["metadata"]["resourceVersion"])
            )


def test_synced_only_after_every_initial_object_reached_every_handler() -> None:  # items 1, 9
    informer = Informer(offline_client(), CONFIGMAP)
    fast = Recorder(informer)
    slow = Recorder(informer, delay=0.01)
    informer.add_handler(fast)
    informer.add_handler(slow)
    assert not informer.has_synced()
    informer.replace([cm(f"c{i}", i) for i in range(30)], "100")
    assert informer.store.get("ns/c0") is not None
    assert not informer.has_synced()  # the slow handler is still consuming its batch
    assert informer.wait_for_sync(5)
    assert len(fast.events) == len(slow.events) == 30
    assert all(event[3] is True for event in slow.events)  # is_in_initial_list
    assert all(fast.seen_in_store) and all(slow.seen_in_store)  # item 9: store first


def test_relist_tombstones_vanished_updates_changed_and_is_silent_for_unchanged() -> None:  # items 7, 8, 37
    informer = Informer(offline_client(), CONFIGMAP)
    plain = Recorder()
    resyncing = Recorder()
    informer.add_handler(plain)
    informer.add_handler(resyncing, resync_period=3600)
    informer.replace([cm("same", 1), cm("changed", 2), cm("gone", 3)], "10")
    assert informer.wait_for_sync(2)
    plain.events.clear()
    resyncing.events.clear()
    informer.replace([cm("same", 1), cm("changed", 20), cm("new", 21)], "30")
    wait_for(lambda: len(resyncing.events) == 4, timeout=2)
    time.sleep(0.05)
    assert sorted(plain.events) == sorted(
        [("delete", "gone", "3", True), ("update", "changed", "2", "20"), ("add", "new", "21", False)]
    )
    assert ("update", "same", "1", "1") in resyncing.events  # only handlers asking for resync see no-ops
    assert informer.store.get("ns/gone") is None


def test_watch_delete_is_not_a_tombstone() -> None:
    informer = Informer(offline_client(), CONFIGMAP)
    rec = Recorder()
    informer.add_handler(rec)
    informer.replace([cm("a", 1)], "1")
    informer.deleted(cm("a", 2))
    wait_for(lambda: len(rec.events) == 2, timeout=2)
    assert rec.events[-1] == ("delete", "a", "2", False)


def test_order_per_object_and_handlers_do_not_block_each_other() -> None:  # item 10
    informer = Informer(offline_client(), CONFIGMAP)
    blocker = threading.Event()

    class Blocked(Recorder):
        def on_update(self, old: Obj, new: Obj) -> None:
            blocker.wait(5)
            super().on_update(old, new)

    blocked = Blocked()
    free = Recorder()
    informer.add_handler(blocked)
    informer.add_handler(free)
    informer.replace([cm("a", 1)], "1")
    for rv in range(2, 52):
        informer.modified(cm("a", rv))
    wait_for(lambda: len(free.events) == 51, timeout=2)  # not held up by the blocked handler
    assert [int(e[3]) for e in free.events[1:]] == list(range(2, 52))
    blocker.set()
    wait_for(lambda: len(blocked.events) == 51, timeout=2)
    assert [int(e[3]) for e in blocked.events[1:]] == list(range(2, 52))


def test_late_handler_gets_one_synthetic_add_per_object_without_gaps_or_duplicates() -> None:  # item 11
    informer = Informer(offline_client(), CONFIGMAP)
    informer.replace([cm(f"c{i}", i) for i in range(200)], "1")
    stop = threading.Event()
    counter = [1000]

    def churn() -> None:
        while not stop.is_set():
            counter[0] += 1
            informer.modified(cm(f"c{counter[0] % 200}", counter[0]))

    thread = threading.Thread(target=churn)
    thread.start()
    time.sleep(0.01)
    late = Recorder()
    registration = informer.add_handler(late)
    time.sleep(0.05)
    stop.set()
    thread.join()
    wait_for(registration.has_synced, timeout=2)
    wait_for(lambda: len(late.events) >= 200, timeout=2)
    time.sleep(0.1)
    adds = [e for e in late.events if e[0] == "add"]
    assert len(adds) == 200 and len({e[1] for e in adds}) == 200
    assert all(e[3] is True for e in adds)
    # no gap: the last version each object was notified with is the stored one
    last: dict[str, str] = {}
    for event in late.events:
        last[event[1]] = event[3] if event[0] == "update" else event[2]
    for name, rv in last.items():
        assert informer.store.get(f"ns/{name}")["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    # no duplicate: updates come after the synthetic add, in increasing RV order per object
    for name in last:
        rvs = [int(e[3] if e[0] == "update" else e[2]) for e in late.events if e[1] == name]
        assert rvs == sorted(set(rvs))


def test_resync_replays_the_cache_with_jittered_period_and_current_objects() -> None:  # item 17
    informer = Informer(offline_client(), CONFIGMAP)
    rec = Recorder()
    registration = informer.add_handler(rec, resync_period=1.0)
    period = registration.listener.jittered_period()
    assert 0.9 <= period < 1.1
    informer.replace([cm("a", 1)], "1")
    informer.modified(cm("a", 2))
    wait_for(lambda: any(e[0] == "update" and e[2] == e[3] for e in rec.events), timeout=3)
    resyncs = [e for e in rec.events if e[0] == "update" and e[2] == e[3]]
    assert resyncs[0][3] == "2"  # never a stale, superseded version


def test_uid_change_under_the_same_name_is_visible() -> None:  # item 19
    informer = Informer(offline_client(), CONFIGMAP)
    seen: list[tuple[str, str]] = []

    class UidRecorder(Recorder):
        def on_update(self, old: Obj, new: Obj) -> None:
            seen.append((old["metadata"]["uid"], new["metadata"]["uid"]))

    informer.add_handler(UidRecorder())
    informer.replace([cm("a", 1, uid="old")], "1")
    informer.replace([cm("a", 5, uid="new")], "5")  # deleted and recreated during a gap
    wait_for(lambda: seen == [("old", "new")], timeout=2)


def test_closing_a_watch_the_server_already_ended_is_quiet() -> None:
    """The reflector closes its watch on every way out; urllib3 refuses (ValueError) to shut down a response
    whose stream the server already ended, and that refusal must not escape close()."""
    import io

    import urllib3

    from dask_operator.runtime.client import WatchStream

    ended = urllib3.HTTPResponse(body=io.BytesIO(b'{"type": "ADDED", "object": {}}\n'), preload_content=False)
    stream = WatchStream(ended, "/api/v1/pods?watch=true")
    assert list(stream) == [{"type": "ADDED", "object": {}}]
    stream.close()
