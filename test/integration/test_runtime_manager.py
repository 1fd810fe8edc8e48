"""The manager and the demonstration controller (Secret -> mirror ConfigMap) under failures.

Checklist items 47, 51, 55, 56, 57, and the convergence scenarios: watch dropped mid-burst, API server
restarted, relist after 410, operator SIGKILLed mid-reconcile and restarted, leader killed with a standby.
Multi-process scenarios run the operator as real subprocesses (test/support/runtime_demo.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.runtime_demo import SLOW_ANNOTATION, ActionLog, build, desired_mirror, mirror_name
from support.runtime_plane import RequestLog, client_via, direct_client, tcp_proxy, watch_cache_answers_410
from support.wait import wait_for

from dask_operator.runtime.client import Client
from dask_operator.runtime.kinds import CONFIGMAP, SECRET, Kind
from dask_operator.runtime.manager import Manager

Obj = dict[str, Any]
DEMO = Path(__file__).resolve().parents[1] / "support" / "runtime_demo.py"


def secret(namespace: str, name: str, value: str = "s3cr3t", slow: float = 0) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if slow:
        meta["annotations"] = {SLOW_ANNOTATION: str(slow)}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"key": value}}


def converged(server: Client, namespace: str) -> bool:
    secrets, _ = server.list(SECRET, namespace)
    mirrors = {cm["metadata"]["name"]: cm for cm in server.list(CONFIGMAP, namespace)[0]}
    for item in secrets:
        want = desired_mirror(item)
        have = mirrors.get(want["metadata"]["name"])
        if have is None or have.get("data") != want["data"]:
            return False
    return bool(secrets)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# -- in-process manager ------------------------------------------------------------------------------------


@pytest.fixture
def in_process(kube_plane: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """Factory: a running Manager with the demo controller (optionally through a TCP fault proxy)."""
    running: list[tuple[Manager, threading.Thread, Any]] = []

    def start(through_proxy: bool = False, **options: Any) -> tuple[Manager, Any, RequestLog]:
        proxy = tcp_proxy(kube_plane) if through_proxy else None
        client = (
            client_via(kube_plane, proxy, tmp_path, timeout=5, connect_timeout=2)
            if proxy
            else direct_client(kube_plane, timeout=5, connect_timeout=2)
        )
        log = RequestLog(client)
        options.setdefault("metrics_address", ("127.0.0.1", 0))
        options.setdefault("health_address", ("127.0.0.1", 0))
        manager = Manager(client, namespace=namespace, **options)
        build(manager, ActionLog(None, "in-process"))
        thread = threading.Thread(target=manager.run, daemon=True)
        thread.start()
        running.append((manager, thread, proxy))
        return manager, proxy, log

    yield start
    for manager, thread, proxy in running:
        manager.stop()
        thread.join(15)
        if proxy is not None:
            proxy.close()


def test_probes_metrics_and_dashboard_series(
    in_process: Any, kube_plane: Any, namespace: str
) -> None:  # items 55, 56
    server = direct_client(kube_plane)
    server.create(secret(namespace, "a"))
    manager, _, _ = in_process()
    wait_for(lambda: manager.health_port and manager.metrics_port, timeout=5)
    assert http_get(manager.health_port, "/healthz") == (200, "ok")
    wait_for(lambda: http_get(manager.health_port, "/readyz")[0] == 200, timeout=20)
    status, body = http_get(manager.health_port, "/readyz?verbose")
    assert status == 200 and "[+]informers ok" in body and body.endswith("readyz check passed\n")
    wait_for(lambda: converged(server, namespace), timeout=20)
    status, text = http_get(manager.metrics_port, "/metrics")
    assert status == 200
    # every series the two kubebuilder dashboards query, with the labels their queries group by
    for needle in (
        'controller_runtime_reconcile_total{controller="mirror",result="success"}',
        'controller_runtime_reconcile_errors_total{controller="mirror"}',
        'controller_runtime_active_workers{controller="mirror"}',
        'workqueue_depth{controller="mirror",name="mirror",priority="0"}',
        'workqueue_adds_total{controller="mirror",name="mirror"}',
        'workqueue_queue_duration_seconds_bucket{controller="mirror",le="1e-08",name="mirror"}',
        'workqueue_work_duration_seconds_bucket{controller="mirror",le="1000.0",name="mirror"}',
        'workqueue_unfinished_work_seconds{controller="mirror",name="mirror"}',
        'workqueue_retries_total{controller="mirror",name="mirror"}',
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "rest_client_requests_total{",
    ):
        assert needle in text, needle


def test_readyz_fails_until_every_informer_synced(kube_plane: Any, namespace: str) -> None:  # item 56
    client = direct_client(kube_plane, timeout=5)
    manager = Manager(
        client,
        namespace=namespace,
        metrics_address=None,
        health_address=("127.0.0.1", 0),
        cache_sync_timeout=60,
    )
    missing = Kind("never.installed.dask.org", "v1", "Nothing", "nothings")
    manager.cache.informer(missing)  # a CRD that does not exist: this informer can never sync
    thread = threading.Thread(target=manager.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: manager.health_port, timeout=5)
        time.sleep(1)
        status, body = http_get(manager.health_port, "/readyz")
        assert status == 500 and "[-]informers failed: reason withheld" in body
        assert http_get(manager.health_port, "/healthz") == (200, "ok")
    finally:
        manager.stop()
        thread.join(10)


def test_converges_after_a_watch_drop_mid_burst(in_process: Any, kube_plane: Any, namespace: str) -> None:
    server = direct_client(kube_plane)
    manager, proxy, _ = in_process(through_proxy=True)
    wait_for(lambda: manager.ready, timeout=20)

    def burst() -> None:
        for i in range(30):
            server.create(secret(namespace, f"s{i}"))
        for i in range(0, 30, 3):
            server.patch_merge(SECRET, namespace, f"s{i}", {"stringData": {"key": "rotated"}})

    writer = threading.Thread(target=burst)
    writer.start()
    time.sleep(0.2)
    proxy.drop()
    time.sleep(0.2)
    proxy.drop()
    writer.join()
    wait_for(lambda: converged(server, namespace), timeout=30)


def test_converges_after_the_api_server_restarts(in_process: Any, kube_plane: Any, namespace: str) -> None:
    server = direct_client(kube_plane)
    _manager, _, _ = in_process()
    server.create(secret(namespace, "before"))
    wait_for(lambda: converged(server, namespace), timeout=20)
    kube_plane.restart("kube-apiserver")
    server.create(secret(namespace, "after"))
    server.patch_merge(SECRET, namespace, "before", {"stringData": {"key": "changed"}})
    wait_for(lambda: converged(server, namespace), timeout=40)


def test_converges_after_a_relist_on_410(in_process: Any, kube_plane: Any, namespace: str) -> None:
    server = direct_client(kube_plane)
    manager, proxy, log = in_process(through_proxy=True)
    for name in ("x", "y"):
        server.create(secret(namespace, name))
    wait_for(lambda: converged(server, namespace), timeout=20)
    for kind in (SECRET, CONFIGMAP):
        wait_for(lambda kind=kind: watch_cache_answers_410(server, kind, namespace), timeout=30)
    proxy.refuse()
    server.patch_merge(SECRET, namespace, "x", {"stringData": {"key": "new"}})
    server.create(secret(namespace, "z"))
    server.delete(CONFIGMAP, namespace, mirror_name("y"))  # a child lost while we were away
    manager.cache.informer(SECRET).reflector._last_rv = "1"  # too old: the API server answers 410
    manager.cache.informer(CONFIGMAP).reflector._last_rv = "1"
    lists_before = len(log.lists())
    proxy.pass_through()
    wait_for(lambda: converged(server, namespace), timeout=30)
    assert len(log.lists()) > lists_before  # the API server's 410 forced a relist


def test_idle_converged_controller_writes_nothing(
    in_process: Any, kube_plane: Any, namespace: str
) -> None:  # item 41
    server = direct_client(kube_plane)
    for i in range(5):
        server.create(secret(namespace, f"idle{i}"))
    _manager, _, log = in_process()
    wait_for(lambda: converged(server, namespace), timeout=20)
    time.sleep(1.0)
    log.clear()
    time.sleep(4)
    assert log.writes() == []
    assert (
        log.matching(lambda r: r.params.get("watch") != "true") == []
    )  # no GET/LIST either: reads are cached


# -- operator processes --------------------------------------------------------------------------------------


class Operator:
    def __init__(
        self,
        kube_plane: Any,
        namespace: str,
        tmp_path: Path,
        name: str,
        *extra: str,
        kubeconfig: Path | None = None,
    ) -> None:
        self.actions = tmp_path / f"{name}.actions"
        self.actions.touch()
        self.log = (tmp_path / f"{name}.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(DEMO),
                "--kubeconfig",
                str(kubeconfig or kube_plane.kubeconfig),
                "--namespace",
                namespace,
                "--actions",
                str(self.actions),
                "--identity",
                name,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(DEMO.parents[1])},
        )
        assert self.process.stdout is not None
        ports = json.loads(self.process.stdout.readline())
        self.health, self.metrics = ports["health"], ports["metrics"]

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.actions.read_text().splitlines() if line.strip()]

    def leading(self) -> bool:
        status, text = http_get(self.metrics, "/metrics")
        return status == 200 and 'leader_election_master_status{name="demo-lease"} 1.0' in text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.log.close()


@pytest.fixture
def operators(kube_plane: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    started: list[Operator] = []

    def start(name: str, *extra: str, kubeconfig: Path | None = None) -> Operator:
        operator = Operator(kube_plane, namespace, tmp_path, name, *extra, kubeconfig=kubeconfig)
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


def test_sigterm_drains_in_flight_and_exits_zero(
    operators: Any, kube_plane: Any, namespace: str
) -> None:  # item 57
    server = direct_client(kube_plane)
    server.create(secret(namespace, "slow", slow=2))
    operator = operators("term")
    wait_for(lambda: any(e["verb"] == "half" for e in operator.entries()), timeout=20)
    operator.process.send_signal(signal.SIGTERM)
    assert operator.process.wait(15) == 0
    assert [e["verb"] for e in operator.entries()] == ["half", "create"]  # the in-flight reconcile finished
    with pytest.raises(OSError):
        http_get(operator.health, "/healthz")  # servers closed, last


def test_second_sigterm_exits_one_at_once(operators: Any, kube_plane: Any, namespace: str) -> None:  # item 57
    server = direct_client(kube_plane)
    server.create(secret(namespace, "slow", slow=5))
    operator = operators("term2")
    wait_for(lambda: any(e["verb"] == "half" for e in operator.entries()), timeout=20)
    operator.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    operator.process.send_signal(signal.SIGTERM)
    assert operator.process.wait(5) == 1
    assert time.monotonic() - started < 2


def test_sigkill_mid_reconcile_then_restart_converges(
    operators: Any, kube_plane: Any, namespace: str
) -> None:
    server = direct_client(kube_plane)
    server.create(secret(namespace, "slow", slow=3))
    first = operators("killed")
    wait_for(lambda: any(e["verb"] == "half" for e in first.entries()), timeout=20)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(5)
    assert server.get(CONFIGMAP, namespace, mirror_name("slow"))["data"] == {"state": "half"}  # type: ignore[index]
    operators("restarted")
    wait_for(lambda: converged(server, namespace), timeout=30)


def test_leader_killed_standby_takes_over_and_nothing_is_done_twice(
    operators: Any, kube_plane: Any, namespace: str
) -> None:  # item 51
    server = direct_client(kube_plane)
    for i in range(4):
        server.create(secret(namespace, f"s{i}"))
    a = operators("a", "--leader-elect", "demo-lease", "--lease", "4,3,0.5")
    wait_for(a.leading, timeout=15)
    b = operators("b", "--leader-elect", "demo-lease", "--lease", "4,3,0.5")
    wait_for(lambda: converged(server, namespace), timeout=20)
    wait_for(lambda: http_get(b.health, "/readyz")[0] == 200, timeout=20)  # a standby is ready too
    assert not b.leading() and b.entries() == []  # its controllers never started
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(5)
    killed_at = time.time()
    for i in range(4, 7):
        server.create(secret(namespace, f"s{i}"))
    wait_for(b.leading, timeout=4 + 0.5 * 2.2 + 2)  # within the lease duration (+ one jittered retry)
    wait_for(lambda: converged(server, namespace), timeout=20)

    def creates() -> list[str]:
        return sorted(e["name"] for e in a.entries() + b.entries() if e["verb"] == "create")

    # the demo logs an action after its write returns, so the log may trail the server by a moment
    wait_for(lambda: len(creates()) >= 7, timeout=10)
    assert creates() == sorted(f"s{i}" for i in range(7))  # each mirror created exactly once
    assert all(e["t"] >= killed_at for e in b.entries())  # the two never acted at the same time


def test_lost_lease_exits_without_draining(
    operators: Any, kube_plane: Any, namespace: str, tmp_path: Path
) -> None:  # item 47
    proxy = tcp_proxy(kube_plane)
    kubeconfig = kube_plane.write_kubeconfig(proxy.url, tmp_path / "proxied.kubeconfig")
    operator = operators(
        "cut-off", "--leader-elect", "demo-lease", "--lease", "4,3,0.5", kubeconfig=kubeconfig
    )
    wait_for(operator.leading, timeout=15)
    server = direct_client(kube_plane)
    renewals = set()
    for _ in range(8):  # renews about every retry period (0.5 s here, 2 s by default)
        renewals.add(
            server.get(Kind("coordination.k8s.io", "v1", "Lease", "leases"), namespace, "demo-lease")["spec"][
                "renewTime"
            ]
        )  # type: ignore[index]
        time.sleep(0.5)
    assert len(renewals) >= 4
    proxy.refuse()
    started = time.monotonic()
    assert operator.process.wait(10) == 1
    assert time.monotonic() - started <= 3 + 0.5 + 2  # renew deadline + one retry + slack
    proxy.close()
