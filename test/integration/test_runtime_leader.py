"""Leader election on a real Lease (checklist items 46, 48, 49, 50; 47 and 51 run as processes in
test_runtime_manager.py)."""

from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path
from typing import Any

from support.faultproxy import SeenRequest
from support.runtime_plane import client_via, direct_client, http_proxy
from support.wait import wait_for

from dask_operator.runtime.client import Client
from dask_operator.runtime.kinds import LEASE
from dask_operator.runtime.leaderelection import LeaderElectionConfig, LeaderElector, micro_time

Obj = dict[str, Any]


def lease(namespace: str, name: str, holder: str, duration: int, renew: str) -> Obj:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "renewTime": renew,
            "acquireTime": renew,
            "leaseTransitions": 0,
        },
    }


def run_in_thread(elector: LeaderElector, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=elector.run, args=(stop,), daemon=True)
    thread.start()
    return thread


def test_takeover_waits_a_full_lease_duration_on_the_local_clock(
    kube_plane: Any, namespace: str
) -> None:  # item 46
    server = direct_client(kube_plane)
    # a record whose renewTime is ancient: a naive candidate would take it at once
    server.create(lease(namespace, "stale", "other", 15, "2000-01-01T00:00:00.000000Z"))
    acquired = threading.Event()
    elector = LeaderElector(
        server,
        LeaderElectionConfig("stale", namespace=namespace, identity="me"),
        on_started_leading=acquired.set,
    )
    stop = threading.Event()
    started = time.monotonic()
    thread = run_in_thread(elector, stop)
    try:
        assert acquired.wait(25)
        waited = time.monotonic() - started
        assert 15.0 <= waited <= 15.0 + 2.0 * 2.2 + 1.0, waited
        spec = server.get(LEASE, namespace, "stale")["spec"]  # type: ignore[index]
        assert spec["holderIdentity"] == "me" and spec["leaseTransitions"] == 1
    finally:
        stop.set()
        thread.join(5)


def test_renew_at_an_exact_second_is_accepted(kube_plane: Any, namespace: str) -> None:  # item 48
    server = direct_client(kube_plane)
    exact = datetime.datetime(2026, 1, 1, 0, 0, 0, tzinfo=datetime.UTC)
    elector = LeaderElector(
        server, LeaderElectionConfig("exact", namespace=namespace, identity="me"), wall_clock=lambda: exact
    )
    assert elector.try_acquire_or_renew()  # create
    elector._leading.set()
    assert elector.try_acquire_or_renew()  # renew (fast path, a PUT)
    spec = server.get(LEASE, namespace, "exact")["spec"]  # type: ignore[index]
    assert spec["renewTime"] == micro_time(exact) == "2026-01-01T00:00:00.000000Z"


def test_a_concurrent_writer_wins_and_the_candidate_does_not_lead(
    kube_plane: Any, namespace: str, tmp_path: Path
) -> None:  # item 49
    server = direct_client(kube_plane)
    server.create(lease(namespace, "race", "", 15, micro_time(datetime.datetime.now(datetime.UTC))))
    proxy = http_proxy(kube_plane)
    racer: Client = client_via(kube_plane, proxy, tmp_path)

    def competing_write_first(request: SeenRequest) -> None:
        if request.method == "PUT":
            current = server.get(LEASE, namespace, "race")
            assert current is not None
            current["spec"]["holderIdentity"] = "someone-else"
            server.replace(current)  # lands between the candidate's read and its write

    proxy.injector = competing_write_first  # type: ignore[assignment]
    elector = LeaderElector(racer, LeaderElectionConfig("race", namespace=namespace, identity="candidate"))
    assert elector.try_acquire_or_renew() is False  # its PUT carried a stale resourceVersion: 409
    assert not elector.is_leader()
    assert server.get(LEASE, namespace, "race")["spec"]["holderIdentity"] == "someone-else"  # type: ignore[index]
    proxy.close()


def test_release_on_shutdown_hands_over_within_two_retry_periods(
    kube_plane: Any, namespace: str
) -> None:  # item 50
    server = direct_client(kube_plane)
    config = {"namespace": namespace, "lease_duration": 6.0, "renew_deadline": 4.0, "retry_period": 1.0}
    first_leads, second_leads = threading.Event(), threading.Event()
    first = LeaderElector(
        server,
        LeaderElectionConfig("handover", identity="first", **config),
        on_started_leading=first_leads.set,
    )
    stop_first = threading.Event()
    first_thread = run_in_thread(first, stop_first)
    assert first_leads.wait(10)
    second = LeaderElector(
        server,
        LeaderElectionConfig("handover", identity="second", **config),
        on_started_leading=second_leads.set,
    )
    stop_second = threading.Event()
    second_thread = run_in_thread(second, stop_second)
    time.sleep(1.5)
    assert not second_leads.is_set()
    stop_first.set()
    first_thread.join(5)
    released_at = time.monotonic()
    spec = server.get(LEASE, namespace, "handover")["spec"]  # type: ignore[index]
    assert (spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1) or spec[
        "holderIdentity"
    ] == "second"
    assert second_leads.wait(5)
    assert (
        time.monotonic() - released_at <= 1.0 * 2.2 + 1.5
    )  # RetryPeriod*2.2, plus the 1 s lease it released to
    stop_second.set()
    second_thread.join(5)
    wait_for(lambda: server.get(LEASE, namespace, "handover")["spec"]["holderIdentity"] == "", timeout=5)  # type: ignore[index]


def test_a_leader_whose_renew_hangs_stops_leading_within_the_renew_deadline(
    kube_plane: Any, namespace: str, tmp_path: Path
) -> None:
    """The API server becomes unreachable mid-lease (a blackholed connection: requests hang, nothing is
    refused): the leader stops acting by its own clock within renew_deadline, before the lease could pass
    to another candidate (lease_duration), not when the hanging request finally times out."""
    proxy = http_proxy(kube_plane)
    client: Client = client_via(kube_plane, proxy, tmp_path)
    config = LeaderElectionConfig(
        "hang", namespace=namespace, identity="me", lease_duration=8.0, renew_deadline=4.0, retry_period=1.0
    )
    lost = threading.Event()
    elector = LeaderElector(client, config, on_stopped_leading=lost.set)
    stop = threading.Event()
    thread = run_in_thread(elector, stop)
    try:
        wait_for(elector.is_leader, timeout=20, interval=0.1, message="leading")
        proxy.blackhole()
        cut = time.monotonic()
        wait_for(lambda: not elector.is_leader(), timeout=10, interval=0.05, message="not leading")
        stopped_after = time.monotonic() - cut
        assert stopped_after < config.lease_duration, stopped_after
        assert lost.wait(30), "on_stopped_leading runs once the hanging attempt ends"
    finally:
        stop.set()
        proxy.close()
        thread.join(10)
