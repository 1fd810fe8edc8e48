"""Event handlers, predicates, probes, metric names and small pure helpers (checklist items 35-37, 45, 48, 52, 56)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from support.runtime_offline import offline_cache

from dask_operator.runtime import metrics
from dask_operator.runtime.applier import apply_intent, intent_hash
from dask_operator.runtime.consistency import OwnStatusWrites, note_write, recording
from dask_operator.runtime.controller import Controller
from dask_operator.runtime.handler import EnqueueHandler, request_for_object, requests_for_owner
from dask_operator.runtime.health import Checks
from dask_operator.runtime.kinds import CONFIGMAP, NAMESPACE, POD, Kind, kind_of, lookup
from dask_operator.runtime.leaderelection import LeaderElectionConfig, micro_time
from dask_operator.runtime.predicate import (
    And,
    DeleteEvent,
    GenerationChanged,
    Not,
    NotOwnStatusEcho,
    Or,
    ResourceVersionChanged,
    UpdateEvent,
)
from dask_operator.runtime.reconcile import Request
from dask_operator.runtime.workqueue import LOW_PRIORITY, WorkQueue

Obj = dict[str, Any]
OWNER = Kind("kubernetes.dask.org", "v1", "DaskCluster", "daskclusters")
CLUSTER_OWNER = Kind("example.org", "v1", "Tenant", "tenants", namespaced=False)


class Queue:
    def __init__(self) -> None:
        self.added: list[tuple[Request, int]] = []

    def add(self, key: Request, priority: int = 0) -> None:
        self.added.append((key, priority))


def pod(owners: list[tuple[str, str, str, bool]], rv: str = "1", generation: int = 1, **meta: Any) -> Obj:
    return {
        "metadata": {
            "namespace": "ns",
            "name": "child",
            "resourceVersion": rv,
            "generation": generation,
            "ownerReferences": [
                {"apiVersion": api, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": ctl}
                for api, kind, name, ctl in owners
            ],
            **meta,
        }
    }


def test_owner_events_enqueue_exactly_the_controller_owner() -> None:  # item 35
    queue = Queue()
    handler = EnqueueHandler(queue, requests_for_owner(OWNER))
    child = pod(
        [
            ("kubernetes.dask.org/v1", "DaskCluster", "mine", True),
            ("kubernetes.dask.org/v2", "DaskCluster", "not-controller", False),
            ("other.org/v1", "DaskCluster", "other-group", True),
        ]
    )
    handler.on_add(child, False)
    assert queue.added == [(Request("ns", "mine"), 0)]


def test_owner_version_is_ignored_and_cluster_scoped_owner_has_no_namespace() -> None:
    assert list(requests_for_owner(OWNER)(pod([("kubernetes.dask.org/v9", "DaskCluster", "x", True)]))) == [
        Request("ns", "x")
    ]
    mapper = requests_for_owner(CLUSTER_OWNER)
    assert list(mapper(pod([("example.org/v1", "Tenant", "t", True)]))) == [Request("", "t")]
    assert len(list(requests_for_owner(OWNER, only_controller=False)(pod([
        ("kubernetes.dask.org/v1", "DaskCluster", "a", True),
        ("kubernetes.dask.org/v1", "DaskCluster", "b", False),
    ])))) == 2  # fmt: skip


def test_owner_change_enqueues_old_and_new_owner() -> None:  # item 35
    queue = Queue()
    handler = EnqueueHandler(queue, requests_for_owner(OWNER))
    old = pod([("kubernetes.dask.org/v1", "DaskCluster", "old", True)], rv="1")
    new = pod([("kubernetes.dask.org/v1", "DaskCluster", "new", True)], rv="2")
    handler.on_update(old, new)
    assert sorted(r.name for r, _ in queue.added) == ["new", "old"]


def test_priorities_initial_list_and_resync_are_low() -> None:
    queue = Queue()
    handler = EnqueueHandler(queue, request_for_object)
    obj = pod([])
    handler.on_add(obj, True)
    handler.on_update(obj, obj)
    handler.on_update(obj, pod([], rv="2"))
    assert [p for _, p in queue.added] == [LOW_PRIORITY, LOW_PRIORITY, 0]


def test_generation_changed_predicate() -> None:  # item 36
    predicate = GenerationChanged()
    base = pod([], rv="1", generation=1)
    status_only = pod([], rv="2", generation=1)
    spec_change = pod([], rv="3", generation=2)
    deleting = pod([], rv="4", generation=3, deletionTimestamp="2026-01-01T00:00:00Z")
    assert not predicate.update(UpdateEvent(base, status_only))
    assert not predicate.update(UpdateEvent(base, base))  # resync
    assert predicate.update(UpdateEvent(base, spec_change))
    assert predicate.update(UpdateEvent(spec_change, deleting))
    queue = Queue()
    handler = EnqueueHandler(queue, request_for_object, [predicate])
    handler.on_update(base, status_only)
    handler.on_update(base, spec_change)
    assert len(queue.added) == 1


def owned(rv: str, status: Obj | None = None, generation: int = 1, **meta: Any) -> Obj:
    obj: Obj = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"namespace": "ns", "name": "c", "uid": "c-uid", "resourceVersion": rv,
                     "generation": generation, **meta},
        "spec": {"replicas": 1},
    }  # fmt: skip
    if status is not None:
        obj["status"] = status
    return obj


def wrote_status(written: OwnStatusWrites, obj: Obj) -> None:
    with recording(written):
        note_write(OWNER, obj, "status")


def test_the_echo_of_our_own_status_write_is_dropped() -> None:
    written = OwnStatusWrites(OWNER)
    echo = NotOwnStatusEcho(written)
    before, ours = owned("5", {"phase": "Pending"}), owned("6", {"phase": "Running"})
    wrote_status(written, ours)
    assert not echo.update(UpdateEvent(before, ours)), "exactly what our write produced, status alone moved"
    # delivered once: the same event again (a resync) is not an echo any more
    assert echo.update(UpdateEvent(before, ours))


def test_every_other_change_passes_the_echo_filter() -> None:
    written = OwnStatusWrites(OWNER)
    echo = NotOwnStatusEcho(written)
    before = owned("5", {"phase": "Pending"})
    # someone else wrote the status (a version we did not produce), before and after our own write
    wrote_status(written, owned("7", {"phase": "Running"}))
    assert echo.update(UpdateEvent(before, owned("6", {"phase": "Tampered"})))
    assert echo.update(UpdateEvent(before, owned("8", {"phase": "Tampered"})))
    # a relist's update landing on our version, but with a spec change, a label or deletion in between
    for after in (
        owned("9", {"phase": "Running"}, generation=2),
        owned("9", {"phase": "Running"}, labels={"a": "b"}),
        owned("9", {"phase": "Running"}, deletionTimestamp="2026-01-01T00:00:00Z"),
        {**owned("9", {"phase": "Running"}), "spec": {"replicas": 2}},
    ):
        wrote_status(written, after)
        assert echo.update(UpdateEvent(before, after)), after
    # an update with no write of ours at all, and a delete (which forgets a write in flight)
    assert echo.update(UpdateEvent(before, owned("10", {"phase": "Running"})))
    wrote_status(written, owned("11", {"phase": "Running"}))
    assert echo.delete(DeleteEvent(owned("11"))) and len(written) == 0
    # a change besides the status drops the write it passes, without waiting
    wrote_status(written, owned("12", {"phase": "Running"}))
    assert echo.update(UpdateEvent(before, owned("13", {"phase": "Running"}, generation=3))) and not len(
        written
    )


def test_a_handler_never_waits_for_a_status_writes_reply_and_later_events_pass_meanwhile() -> None:
    """The echo of our status write can overtake the write's reply. The handler used to wait for the reply
    (up to 1 s), holding up every later event of its watch: at 75 updates/s the queue grew by seconds. Now it
    holds that event, goes on, and judges it when the write ends."""
    written = OwnStatusWrites(OWNER)
    queue = Queue()
    handler = EnqueueHandler(queue, request_for_object, [NotOwnStatusEcho(written)])
    before, ours = owned("5", {"phase": "Pending"}), owned("6", {"phase": "Running"})
    written.begin(OWNER, "ns", "c")  # our write is sent; its reply has not come
    handler.on_update(before, ours)  # its echo: returns at once, nothing enqueued yet
    assert queue.added == [] and written.held() == 1

    def named_d(obj: Obj) -> Obj:
        return {**obj, "metadata": {**obj["metadata"], "name": "d"}}

    handler.on_update(
        named_d(owned("4")), named_d(owned("7", {"phase": "Running"}))
    )  # another object's status, by someone else: passes meanwhile
    assert queue.added == [(Request("ns", "d"), 0)]
    wrote_status(written, ours)  # the reply
    written.end(OWNER, "ns", "c")
    assert queue.added == [(Request("ns", "d"), 0)] and written.held() == 0, "it was our echo: dropped"
    # someone else's status write seen while ours is in flight: enqueued once ours has ended
    written.begin(OWNER, "ns", "c")
    handler.on_update(ours, owned("8", {"phase": "Tampered"}))
    assert len(queue.added) == 1
    wrote_status(written, owned("9", {"phase": "Running"}))
    written.end(OWNER, "ns", "c")
    assert queue.added[-1] == (Request("ns", "c"), 0)


def test_predicate_composition() -> None:
    base, changed = pod([], rv="1"), pod([], rv="2")
    event = UpdateEvent(base, changed)
    assert ResourceVersionChanged().update(event)
    assert not Not(ResourceVersionChanged()).update(event)
    assert Or(GenerationChanged(), ResourceVersionChanged()).update(event)
    assert not And(GenerationChanged(), ResourceVersionChanged()).update(event)


def test_tombstone_reaches_predicates_and_handler_with_last_state() -> None:  # item 37
    seen: list[DeleteEvent] = []

    class Spy(ResourceVersionChanged):
        def delete(self, event: DeleteEvent) -> bool:
            seen.append(event)
            return True

    queue = Queue()
    handler = EnqueueHandler(queue, request_for_object, [Spy()])
    last = pod([], rv="7")
    handler.on_delete(last, True)
    assert seen[0].delete_state_unknown is True and seen[0].obj is last
    assert queue.added == [(Request("ns", "child"), 0)]


def test_kinds_paths_and_registry() -> None:
    assert POD.object_path("ns", "p", "log") == "/api/v1/namespaces/ns/pods/p/log"
    assert POD.collection_path() == "/api/v1/pods"
    assert NAMESPACE.object_path(None, "ns") == "/api/v1/namespaces/ns"
    assert OWNER.collection_path("ns") == "/apis/kubernetes.dask.org/v1/namespaces/ns/daskclusters"
    assert (
        lookup("kubernetes.dask.org/v1", "DaskCluster") is OWNER
        or lookup("kubernetes.dask.org/v1", "DaskCluster") == OWNER
    )
    assert kind_of({"apiVersion": "v1", "kind": "ConfigMap"}) == CONFIGMAP
    with pytest.raises(KeyError):
        lookup("nope/v1", "Nope")
    with pytest.raises(ValueError):
        POD.object_path(None, "p")


def test_apply_intent_never_carries_server_fields() -> None:  # item 45
    live_like = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "a",
            "namespace": "ns",
            "uid": "pinned",
            "resourceVersion": "5",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{}],
            "generation": 3,
            "labels": {"a": "b"},
        },
        "data": {"k": "v"},
        "status": {"x": 1},
    }
    intent = apply_intent(live_like)
    assert "status" not in intent
    assert set(intent["metadata"]) == {"name", "namespace", "uid", "labels"}
    assert intent_hash(intent) == intent_hash(apply_intent(dict(live_like)))
    assert intent_hash(intent) != intent_hash({**intent, "data": {"k": "w"}})


def test_micro_time_always_has_six_fractional_digits() -> None:  # item 48
    exact = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
    assert micro_time(exact) == "2026-05-01T12:00:00.000000Z"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", micro_time(datetime.datetime.now(datetime.UTC))
    )


def test_leader_election_timing_validation() -> None:
    config = LeaderElectionConfig("x", namespace="ns")
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (15.0, 10.0, 2.0)
    with pytest.raises(ValueError):
        LeaderElectionConfig("x", namespace="ns", lease_duration=10, renew_deadline=10)


def test_probe_answers_like_c_r_healthz() -> None:  # item 56 (format)
    checks = Checks()
    state = {"ok": False}
    checks.add("informers", lambda: None if state["ok"] else "not synced")
    checks.add("ping", lambda: None)
    route = checks.route("/readyz")
    status, _, body = route("/readyz", {})
    assert status == 500
    assert (
        body.decode()
        == "[+]informers failed: reason withheld\n".replace("[+]", "[-]")
        + "[+]ping ok\nreadyz check failed\n"
    )
    assert route("/readyz", {"exclude": ["informers"]})[0] == 200
    assert route("/readyz/informers", {})[0] == 500
    assert route("/readyz/nope", {})[0] == 404
    state["ok"] = True
    assert route("/readyz", {}) == (200, "text/plain; charset=utf-8", b"ok")
    status, _, body = route("/readyz", {"verbose": [""]})
    assert status == 200 and body.decode() == "[+]informers ok\n[+]ping ok\nreadyz check passed\n"
    assert (
        Checks().route("/healthz")("/healthz", {"verbose": [""]})[2] == b"[+]ping ok\nhealthz check passed\n"
    )


EXPECTED_METRICS = {
    # name: (type, label names)
    "controller_runtime_reconcile_total": ("counter", {"controller", "result"}),
    "controller_runtime_reconcile_errors_total": ("counter", {"controller"}),
    "controller_runtime_terminal_reconcile_errors_total": ("counter", {"controller"}),
    "controller_runtime_reconcile_panics_total": ("counter", {"controller"}),
    "controller_runtime_reconcile_timeouts_total": ("counter", {"controller"}),
    "controller_runtime_reconcile_time_seconds": ("histogram", {"controller"}),
    "controller_runtime_max_concurrent_reconciles": ("gauge", {"controller"}),
    "controller_runtime_active_workers": ("gauge", {"controller"}),
    "workqueue_depth": ("gauge", {"name", "controller", "priority"}),
    "workqueue_adds_total": ("counter", {"name", "controller"}),
    "workqueue_queue_duration_seconds": ("histogram", {"name", "controller"}),
    "workqueue_work_duration_seconds": ("histogram", {"name", "controller"}),
    "workqueue_unfinished_work_seconds": ("gauge", {"name", "controller"}),
    "workqueue_longest_running_processor_seconds": ("gauge", {"name", "controller"}),
    "workqueue_retries_total": ("counter", {"name", "controller"}),
    "rest_client_requests_total": ("counter", {"code", "method", "host"}),
    "leader_election_master_status": ("gauge", {"name"}),
    "process_cpu_seconds_total": ("counter", set()),
    "process_resident_memory_bytes": ("gauge", set()),
}


def test_metric_names_types_and_label_names() -> None:  # item 52
    WorkQueue("names-check").add("x")
    metrics.REST_CLIENT_REQUESTS.labels("200", "GET", "h:1").inc(0)
    metrics.LEADER_ELECTION_MASTER_STATUS.labels("names-check").set(0)
    Controller("names-check", object(), offline_cache(), [])  # type: ignore[arg-type]
    families = {family.name: family for family in metrics.REGISTRY.collect()}
    for name, (kind, labels) in EXPECTED_METRICS.items():
        family = families[name.removesuffix("_total") if kind == "counter" else name]
        assert family.type == kind, name
        assert family.samples, name
        assert set(family.samples[0].labels) - {"le"} == labels, name
    text = metrics.exposition().decode()
    assert "_created" not in text
    for name, expected in (
        ("workqueue_queue_duration_seconds", [10.0**e for e in range(-8, 4)]),
        ("workqueue_work_duration_seconds", [10.0**e for e in range(-8, 4)]),
        ("controller_runtime_reconcile_time_seconds", list(metrics.RECONCILE_TIME_BUCKETS)),
    ):
        family = families[name]
        bounds = [
            float(sample.labels["le"])
            for sample in family.samples
            if sample.name.endswith("_bucket") and "names-check" in sample.labels.values()
        ]
        assert bounds[:-1] == pytest.approx(expected) and bounds[-1] == float("inf"), name
