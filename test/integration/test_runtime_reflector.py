"""Reflector and informer against the real API server, with network faults from a proxy the test controls.

Checklist items 3-7, 12-16 (and 19 end to end). Watches use short server timeouts here so that normal closes
happen within a test; item 12 checks the production defaults.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.faultproxy import FaultProxy, SeenRequest
from support.runtime_plane import (
    RequestLog,
    client_via,
    direct_client,
    http_proxy,
    tcp_proxy,
    watch_cache_answers_410,
)
from support.wait import wait_for

from dask_operator.runtime.client import Client
from dask_operator.runtime.informer import Informer
from dask_operator.runtime.kinds import CONFIGMAP

Obj = dict[str, Any]


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, bool]] = []
        self.lock = threading.Lock()

    def on_add(self, obj: Obj, is_in_initial_list: bool) -> None:
        self._add("add", obj, is_in_initial_list)

    def on_update(self, old: Obj, new: Obj) -> None:
        self._add("update", new, False)

    def on_delete(self, obj: Obj, state_unknown: bool) -> None:
        self._add("delete", obj, state_unknown)

    def _add(self, verb: str, obj: Obj, flag: bool) -> None:
        with self.lock:
            self.items.append((verb, obj["metadata"]["name"], obj["metadata"]["resourceVersion"], flag))

    def of(self, verb: str, name: str | None = None) -> list[tuple[str, str, str, bool]]:
        with self.lock:
            return [e for e in self.items if e[0] == verb and (name is None or e[1] == name)]


class RecordingInformer(Informer):
    """Remembers the resourceVersion of every snapshot it was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replaced_at: list[str] = []

    def replace(self, items: list[Obj], resource_version: str) -> None:
        self.replaced_at.append(resource_version)
        super().replace(items, resource_version)


@pytest.fixture
def server(kube_plane: Any) -> Client:
    return direct_client(kube_plane)


def configmap(namespace: str, name: str, value: str = "v") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"k": value},
    }


def server_state(server: Client, namespace: str) -> dict[str, str]:
    items, _ = server.list(CONFIGMAP, namespace)
    return {
        o["metadata"]["name"]: o["metadata"]["resourceVersion"]
        for o in items
        if o["metadata"]["name"] != "kube-root-ca.crt"
    }


def store_state(informer: Informer) -> dict[str, str]:
    return {
        o["metadata"]["name"]: o["metadata"]["resourceVersion"]
        for o in informer.store.list()
        if o["metadata"]["name"] != "kube-root-ca.crt"
    }


@pytest.fixture
def running(kube_plane: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """Factory: an informer on ConfigMaps of the test namespace through a proxy, started and synced."""
    started: list[tuple[Informer, FaultProxy]] = []

    def make(
        proxy_kind: str = "tcp", watch_timeout: int = 300, margin: float = 30.0, page_size: int = 500
    ) -> tuple[RecordingInformer, FaultProxy, RequestLog]:
        proxy = tcp_proxy(kube_plane) if proxy_kind == "tcp" else http_proxy(kube_plane)
        client = client_via(kube_plane, proxy, tmp_path, timeout=5, connect_timeout=2)
        log = RequestLog(client)
        informer = RecordingInformer(
            client,
            CONFIGMAP,
            namespace=namespace,
            min_watch_timeout=watch_timeout,
            read_timeout_margin=margin,
            list_page_size=page_size,
        )
        started.append((informer, proxy))
        return informer, proxy, log

    yield make
    for informer, proxy in started:
        informer.stop(0.5)
        proxy.close()


def sync(informer: Informer, events: Events | None = None) -> Events:
    events = events or Events()
    informer.add_handler(events)
    informer.start()
    assert informer.wait_for_sync(20)
    return events


def test_first_list_is_paginated_and_first_watch_starts_at_its_rv(
    running: Any, server: Client, namespace: str
) -> None:  # item 3
    for i in range(7):
        server.create(configmap(namespace, f"a{i}"))
    informer, _, log = running(page_size=3)
    sync(informer)
    wait_for(lambda: log.watches(), timeout=5)
    lists = log.lists("/configmaps")
    # a consistent read in pages (the watch cache would answer resourceVersion=0 with everything at once)
    assert "resourceVersion" not in lists[0].params and lists[0].params.get("limit") == "3"
    assert len(lists) == 3 and all(page.params.get("continue") for page in lists[1:])  # 8 with kube-root-ca
    assert log.watches()[0].params["resourceVersion"] == informer.replaced_at[0]
    assert store_state(informer) == server_state(server, namespace)


def test_normal_close_rewatches_from_last_rv_without_listing(
    running: Any, server: Client, namespace: str
) -> None:  # item 4
    informer, _, log = running(watch_timeout=1)
    events = sync(informer)
    for i in range(3):
        server.create(configmap(namespace, f"c{i}"))
        wait_for(lambda i=i: events.of("add", f"c{i}"), timeout=5)
        rv_seen = events.of("add", f"c{i}")[0][2]
        count = len(log.watches())
        wait_for(lambda count=count: len(log.watches()) > count, timeout=6)  # the server closed it (1-2 s)
        assert int(log.watches()[-1].params["resourceVersion"]) >= int(rv_seen)
    assert len(log.lists()) == 1
    assert all(w.params["allowWatchBookmarks"] == "true" for w in log.watches())
    assert store_state(informer) == server_state(server, namespace)


def test_drop_mid_burst_loses_nothing(running: Any, server: Client, namespace: str) -> None:  # item 5
    informer, proxy, log = running()
    sync(informer)
    names = [f"burst-{i}" for i in range(40)]

    def burst() -> None:
        for name in names:
            server.create(configmap(namespace, name))
        for name in names[::2]:
            server.delete(CONFIGMAP, namespace, name)
        for name in names[1::2]:
            server.patch_merge(CONFIGMAP, namespace, name, {"data": {"k": "changed"}})

    writer = threading.Thread(target=burst)
    writer.start()
    time.sleep(0.1)
    proxy.blackhole()
    time.sleep(0.3)
    proxy.drop()  # the watch connection dies mid-burst
    proxy.pass_through()
    writer.join()
    wait_for(lambda: store_state(informer) == server_state(server, namespace), timeout=15)
    assert len(log.lists()) == 1  # recovered by re-watching from the last RV, not by relisting


def watch_of(request: SeenRequest) -> bool:
    return "watch=true" in request.target


def test_410_relists_from_last_rv_then_quorum_and_rewatches(
    running: Any, server: Client, namespace: str
) -> None:  # item 6
    informer, proxy, log = running(proxy_kind="http")
    sync(informer)
    server.create(configmap(namespace, "before"))
    wait_for(lambda: informer.store.get(f"{namespace}/before") is not None, timeout=5)
    last_rv = informer.reflector.last_sync_resource_version
    gone = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "Expired",
            "code": 410,
            "message": "too old",
        }
    ).encode()
    stream_error = json.dumps({"type": "ERROR", "object": json.loads(gone)}).encode() + b"\n"
    phase = itertools.count()
    served: list[str] = []

    def inject(request: SeenRequest) -> tuple[int, dict[str, str], bytes] | None:
        if watch_of(request) and not served:
            served.append("in-stream 410")
            return 200, {}, stream_error  # the next watch ends with an in-stream Expired
        if (
            not watch_of(request)
            and "/configmaps" in request.target
            and "resourceVersion=" + last_rv in request.target
        ):
            next(phase)
            served.append("list 410")
            return 410, {}, gone  # the relist from the last RV is Expired too
        return None

    proxy.injector = inject
    proxy.drop()  # make the informer open a new watch now
    wait_for(lambda: len(log.lists()) >= 3, timeout=15)
    proxy.injector = None
    lists = log.lists()
    assert lists[1].params.get("resourceVersion") == last_rv
    assert "resourceVersion" not in lists[2].params and lists[2].params.get("limit") == "500"  # quorum read
    assert served[:2] == ["in-stream 410", "list 410"]
    wait_for(
        lambda: (
            log.watches() and log.watches()[-1].code == "200" and log.watches()[-1].started > lists[2].started
        ),
        timeout=10,
    )
    assert log.watches()[-1].params["resourceVersion"] == informer.replaced_at[-1]
    server.create(configmap(namespace, "after"))
    wait_for(lambda: store_state(informer) == server_state(server, namespace), timeout=10)


def test_delete_missed_during_a_gap_is_one_tombstone_after_a_real_410(
    running: Any, server: Client, namespace: str
) -> None:  # items 7, 19
    for name in ("keep", "vanish", "recreate"):
        server.create(configmap(namespace, name))
    informer, proxy, log = running()
    events = sync(informer)
    wait_for(
        lambda: watch_cache_answers_410(server, CONFIGMAP, namespace), timeout=30, message="watch cache ready"
    )
    old_uid = informer.store.get(f"{namespace}/recreate")["metadata"]["uid"]  # type: ignore[index]
    proxy.refuse()  # disconnected
    server.delete(CONFIGMAP, namespace, "vanish")
    server.delete(CONFIGMAP, namespace, "recreate")
    server.create(configmap(namespace, "recreate", "new"))
    # pretend the gap outlived the watch cache window: the API server itself answers 410 to this RV
    informer.reflector._last_rv = "1"
    proxy.pass_through()
    wait_for(lambda: store_state(informer) == server_state(server, namespace), timeout=20)
    time.sleep(0.2)
    assert len(log.lists()) == 2  # the API server's 410 (HTTP or in-stream) led to exactly one relist
    deletes = events.of("delete", "vanish")
    assert len(deletes) == 1 and deletes[0][3] is True  # tombstone, last known state
    assert informer.store.get(f"{namespace}/recreate")["metadata"]["uid"] != old_uid  # type: ignore[index]
    assert events.of("update", "recreate")  # identity is namespace/name: a UID change surfaces as an update


def test_watch_requests_carry_bookmarks_and_default_timeouts(
    kube_plane: Any, namespace: str
) -> None:  # item 12
    client = direct_client(kube_plane)
    log = RequestLog(client)
    informer = Informer(client, CONFIGMAP, namespace=namespace)
    informer.start()
    try:
        wait_for(lambda: log.watches(), timeout=10)
    finally:
        informer.stop(0.5)
    watch = log.watches()[0]
    assert watch.params["allowWatchBookmarks"] == "true"
    assert 300 <= int(watch.params["timeoutSeconds"]) <= 600
    assert informer.reflector.read_timeout_margin > 0  # HTTP read timeout = timeoutSeconds + margin


def test_blackholed_watch_is_abandoned_and_reestablished(
    running: Any, server: Client, namespace: str
) -> None:  # item 13
    informer, proxy, log = running(watch_timeout=2, margin=1.0)
    sync(informer)
    proxy.blackhole()
    started = time.monotonic()
    server.create(configmap(namespace, "during-blackhole"))
    # the silent stream is given up within timeoutSeconds (<= 4 s) + 1 s margin
    wait_for(lambda: any(r.code == "<error>" or r.started > started for r in log.watches()), timeout=8)
    proxy.pass_through()
    wait_for(lambda: informer.store.get(f"{namespace}/during-blackhole") is not None, timeout=12)
    assert time.monotonic() - started < 4 + 1 + 2 * 5 + 3


def test_refused_connections_back_off_and_rewatch_from_the_same_rv(
    running: Any, server: Client, namespace: str
) -> None:  # item 14
    informer, proxy, log = running()
    sync(informer)
    wait_for(lambda: log.watches(), timeout=5)
    rv = informer.reflector.last_sync_resource_version
    time.sleep(1.2)  # a watch that dies within 1 s with no events counts as very short (item 16)
    proxy.refuse()
    time.sleep(3.6)
    failures = [r for r in log.watches() if r.code == "<error>"]
    assert 2 <= len(failures) <= 4  # 0.8-1.6 then 1.6-3.2 s apart: not a hot loop
    gaps = [b.started - a.started for a, b in itertools.pairwise(failures)]
    assert gaps[0] >= 0.8
    assert len(gaps) < 2 or gaps[1] >= 1.6
    proxy.pass_through()
    wait_for(lambda: log.watches()[-1].code == "200", timeout=15)
    assert log.watches()[-1].params["resourceVersion"] == rv
    assert len(log.lists()) == 1  # no relist


def test_429_on_watch_backs_off_without_relisting(running: Any, namespace: str) -> None:  # item 14 (429)
    informer, proxy, log = running(proxy_kind="http")
    sync(informer)
    proxy.injector = lambda r: (
        (429, {"Retry-After": "1"}, b'{"kind":"Status","code":429,"reason":"TooManyRequests"}')
        if watch_of(r)
        else None
    )
    time.sleep(1.2)  # older than a very short watch (item 16), so the drop is an ordinary close
    proxy.drop()
    wait_for(lambda: len([r for r in log.watches() if r.code == "429"]) >= 2, timeout=10)
    proxy.injector = None
    throttled = [r for r in log.watches() if r.code == "429"]
    assert all(b.started - a.started >= 0.8 for a, b in itertools.pairwise(throttled))
    wait_for(lambda: log.watches()[-1].code == "200", timeout=10)
    assert len(log.lists()) == 1


def test_list_failures_are_paced_by_the_backoff(running: Any, namespace: str) -> None:  # item 15
    informer, proxy, log = running(proxy_kind="http")
    proxy.injector = lambda r: (500, {}, b'{"kind":"Status","code":500}') if not watch_of(r) else None
    informer.start()
    time.sleep(4)
    proxy.injector = None
    failed = [r for r in log.lists() if r.code == "500"]
    assert 2 <= len(failed) <= 4
    assert all(b.started - a.started >= 0.8 for a, b in itertools.pairwise(failed))
    assert informer.wait_for_sync(15)


def test_very_short_empty_watch_is_an_error_and_relists(running: Any, namespace: str) -> None:  # item 16
    informer, proxy, log = running(proxy_kind="http")
    sync(informer)
    proxy.injector = lambda r: (200, {}, b"") if watch_of(r) else None
    proxy.drop()
    wait_for(lambda: len(log.lists()) >= 2, timeout=10)
    proxy.injector = None
    relist = log.lists()[1]
    empty = [r for r in log.watches() if r.code == "200" and r.started < relist.started][-1]
    assert relist.started - empty.started >= 0.8  # after a backoff
    assert relist.params.get("resourceVersion") == informer.replaced_at[0] or relist.params.get(
        "resourceVersion"
    )
