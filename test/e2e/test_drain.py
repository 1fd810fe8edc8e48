"""Worker pods deleted from outside the operator hand their data over first: `kubectl drain`, `kubectl delete
pod`, and a drain paced by the group's PodDisruptionBudget; and a deleted scheduler says what it cost.

Layout on the 3-node plane (`three_node_plane`): the scheduler is pinned to node 0; four workers avoid node 0
and spread two per node over nodes 1 and 2 (tolerating node 2's taint; cordoned nodes do not count in the
spread). Real Dask: 80 persisted and 20 scattered keys are held on the workers before the fault, and the
ledger (support.chaos_workload) reads the scheduler's transition log afterwards: 0 recomputed, 0 lost.
The operator is a `dask-operator run` subprocess on the host watching the test's namespace.
Run with `hack/test test/e2e/test_drain.py -m drain -s` (~4 min on 2 busy cores; marker `drain`, not in the
default suite).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from support.chaos_workload import HeldData, data_cost, hold_data, says_data_lost
from support.fixtures import KubePlane
from support.operator import (
    apply,
    cluster_manifest,
    condition,
    get,
    operator_in_new_namespace,
    wait_running,
    wait_workers,
    worker_pods,
)
from support.wait import wait_for

pytestmark = [
    pytest.mark.drain,  # ~4 min with its own plane: deselected by default (setup.cfg), run with -m drain
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="process nodes need root for network namespaces"),
]

NAME, GROUP = "drain", "drain-default"
REPLICAS = 4
WORKER_SELECTOR = f"dask.org/component=worker,dask.org/workergroup-name={GROUP}"


@pytest.fixture
def env(three_node_plane: KubePlane, tmp_path: Path) -> Iterator[tuple[KubePlane, str]]:
    with operator_in_new_namespace(three_node_plane, "drain", tmp_path / "operator.log") as (ns, _):
        yield three_node_plane, ns


def _cluster(nodes: list[str], budget: int | None = None) -> dict[str, Any]:
    obj = cluster_manifest(NAME, REPLICAS)
    obj["spec"]["scheduler"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": nodes[0]}
    worker = obj["spec"]["worker"]
    if budget is not None:
        worker["disruptionBudget"] = {"maxUnavailable": budget}
    avoid_0 = {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [nodes[0]]}
    worker["spec"]["tolerations"] = [
        {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}
    ]
    worker["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [avoid_0]}]}}}  # fmt: skip
    worker["spec"]["topologySpreadConstraints"] = [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "nodeTaintsPolicy": "Honor", "labelSelector": {"matchLabels": {"dask.org/workergroup-name": GROUP}},
    }]  # fmt: skip
    return obj


def _ready_workers(kp: KubePlane, ns: str) -> dict[str, str]:
    """Ready worker pods not being deleted: pod -> node."""
    return {
        p["metadata"]["name"]: p["spec"]["nodeName"]
        for p in worker_pods(kp, ns, GROUP)
        if condition(p, "Ready").get("status") == "True"
    }


def _spread(kp: KubePlane, ns: str, avoid: str = "") -> dict[str, str] | None:
    placed = _ready_workers(kp, ns)
    return placed if len(placed) == REPLICAS and avoid not in placed.values() else None


class PodWatch:
    """Worker pods as a watch sees them: after every event, how many are available (Ready, not deleting)."""

    def __init__(self, kp: KubePlane, ns: str) -> None:
        from kubernetes import client, watch

        self.api, self.watch, self.ns = client.CoreV1Api(kp.api_client()), watch.Watch(), ns
        self.state: dict[str, bool] = {}
        self.available: list[tuple[float, int]] = []
        self.log: list[str] = []
        self.deleted_at: dict[
            str, int
        ] = {}  # pod -> index in `available` of the first event with its deletion
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped = True
        self.watch.stop()
        self.thread.join(10)

    def _run(self) -> None:
        version = None
        while not self.stopped:
            try:
                for event in self.watch.stream(
                    self.api.list_namespaced_pod, self.ns, label_selector=WORKER_SELECTOR,
                    resource_version=version, timeout_seconds=60,
                ):  # fmt: skip
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
                    up = event["type"] != "DELETED" and ready and pod.metadata.deletion_timestamp is None
                    if pod.metadata.deletion_timestamp is not None:
                        self.deleted_at.setdefault(pod.metadata.name, len(self.available))
                    self.state[pod.metadata.name] = up
                    self.available.append((time.monotonic(), sum(self.state.values())))
                    self.log.append(f"{time.monotonic():.1f} {event['type']} {pod.metadata.name} up={up}")
            except Exception as e:  # noqa: BLE001  (a dropped watch is resumed from the last version)
                self.log.append(f"watch error, resuming: {e}")

    def fewest_available_since(self, t0: float) -> int:
        return min(n for t, n in self.available if t >= t0)

    def all_available_between_deletions(self, pods: list[str], everyone: int) -> bool:
        """Whether, between any two of these pods' deletions, every worker was available again."""
        marks = sorted(self.deleted_at[p] for p in pods)
        return all(any(n == everyone for _, n in self.available[a:b]) for a, b in itertools.pairwise(marks))


def _hold(client: Any, placed: dict[str, str]) -> HeldData:
    wait_workers(client, set(placed), timeout=120)
    return hold_data(client, blocks=80, scattered=20)


def _assert_lossless(client: Any, held: HeldData, kp: KubePlane, ns: str) -> None:
    cost = data_cost(client, held)
    print(cost.line())
    assert not cost.recomputed and not cost.scattered_lost and not cost.erred, cost
    events = get(kp, ns, "events")["items"]
    failed_hooks = [e["message"] for e in events if e.get("reason") == "FailedPreStopHook"]
    assert not failed_hooks, failed_hooks


def _retired_by_scheduler(client: Any) -> set[str]:
    """Worker addresses the scheduler retired gracefully (its event log)."""
    return {
        addr
        for _, msg in client.get_events("all")
        if isinstance(msg, dict) and msg.get("action") == "retire-workers"
        for addr in msg.get("retired", [])
    }


def _scheduler_client(kp: KubePlane, ns: str) -> Any:
    from distributed import Client

    # The scheduler's pod IP: the host reaches pods on every node directly.
    ip = get(kp, ns, "pod", f"{NAME}-scheduler")["status"]["podIP"]
    return Client(f"tcp://{ip}:8786", timeout=30)


def _start(kp: KubePlane, ns: str, budget: int | None = None) -> tuple[list[str], dict[str, str]]:
    assert kp.plane is not None
    nodes = list(kp.plane.node_names)
    apply(kp, ns, _cluster(nodes, budget))
    wait_running(kp, ns, NAME, timeout=120)
    placed = wait_for(lambda: _spread(kp, ns), timeout=180, interval=0.5, message=f"{REPLICAS} ready workers")
    assert sorted(placed.values()) == sorted([nodes[1]] * 2 + [nodes[2]] * 2), placed
    return nodes, placed


def _drain(kp: KubePlane, node: str) -> tuple[float, str]:
    t0 = time.monotonic()
    out = kp.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=150s",
                     timeout=180)  # fmt: skip
    return time.monotonic() - t0, out.stdout + out.stderr


def test_drain_of_a_node_with_two_of_four_workers_loses_and_recomputes_nothing(
    env: tuple[KubePlane, str],
) -> None:
    kp, ns = env
    nodes, placed = _start(kp, ns)
    victim = nodes[1]
    with _scheduler_client(kp, ns) as client:
        held = _hold(client, placed)
        addresses = {str(w["name"]): a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        try:
            took, _ = _drain(kp, victim)
            after = wait_for(lambda: _spread(kp, ns, avoid=victim), timeout=120, interval=0.5,
                             message=f"{REPLICAS} ready workers off {victim}")  # fmt: skip
            wait_workers(client, set(after), timeout=120)
        finally:
            kp.kubectl("uncordon", victim, check=False)
        print(f"DRAIN drain_s={took:.1f} replaced_on={sorted(after.values())}")
        assert set(after.values()) == {nodes[2]}
        drained = {addresses[p] for p, n in placed.items() if n == victim}
        assert drained <= _retired_by_scheduler(client), "the drained workers were retired, not lost"
        _assert_lossless(client, held, kp, ns)


def test_kubectl_delete_of_a_worker_loses_nothing_and_of_the_scheduler_says_what_is_lost(
    env: tuple[KubePlane, str],
) -> None:
    kp, ns = env
    _, placed = _start(kp, ns)
    victim = min(placed)
    with _scheduler_client(kp, ns) as client:
        held = _hold(client, placed)
        t0 = time.monotonic()
        kp.kubectl("-n", ns, "delete", "pod", victim, timeout=120)
        took = time.monotonic() - t0
        after = wait_for(lambda: _spread(kp, ns), timeout=120, interval=0.5, message="replacement ready")
        assert victim not in after
        wait_workers(client, set(after), timeout=120)
        print(f"DELETE delete_s={took:.1f}")
        _assert_lossless(client, held, kp, ns)

    kp.kubectl("-n", ns, "delete", "pod", f"{NAME}-scheduler", "--wait=false")

    def lost_warning() -> list[dict[str, Any]]:
        events = get(kp, ns, "events", "--field-selector", f"involvedObject.name={NAME}")["items"]
        return [e for e in says_data_lost(events) if e.get("reason") == "SchedulerLost"]

    warning = wait_for(lost_warning, timeout=60, interval=0.5, message="SchedulerLost Warning Event")
    assert "in-memory state is lost" in warning[0]["message"], warning
    wait_for(lambda: condition(get(kp, ns, "daskcluster", NAME), "Ready").get("status") == "True",
             timeout=120, interval=0.5, message="cluster Ready again with a new scheduler")  # fmt: skip


def test_a_disruption_budget_of_one_drains_one_worker_at_a_time(env: tuple[KubePlane, str]) -> None:
    kp, ns = env
    nodes, placed = _start(kp, ns, budget=1)

    def counted() -> dict[str, Any] | None:
        pdb = get(kp, ns, "pdb", GROUP) or {}
        if pdb.get("status", {}).get("expectedPods") == REPLICAS:
            return pdb
        # On a plane this young, kube-controller-manager may not have discovered the new CRD's scale
        # subresource when the PDB first synced, and it then retries with a growing backoff; any change to a
        # selected pod makes it sync again at once (a long-installed CRD never needs this).
        kp.kubectl("-n", ns, "annotate", "pods", "-l", WORKER_SELECTOR, "--overwrite",
                   f"test.dask.org/nudge={time.monotonic():.0f}", check=False)  # fmt: skip
        return None

    pdb = wait_for(counted, timeout=120, interval=3, message="the disruption controller to count the workers")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["metadata"]["ownerReferences"][0]["kind"] == "DaskWorkerGroup"
    victim = nodes[1]
    with _scheduler_client(kp, ns) as client:
        held = _hold(client, placed)
        with PodWatch(kp, ns) as watch:
            wait_for(lambda: watch.available and watch.available[-1][1] == REPLICAS, timeout=30,
                     message="the watch sees every worker")  # fmt: skip
            t0 = time.monotonic()
            try:
                took, output = _drain(kp, victim)
                wait_for(lambda: _spread(kp, ns, avoid=victim), timeout=120, interval=0.5,
                         message=f"{REPLICAS} ready workers off {victim}")  # fmt: skip
            finally:
                kp.kubectl("uncordon", victim, check=False)
            fewest = watch.fewest_available_since(t0)
        drained = [p for p, n in placed.items() if n == victim]
        one_by_one = watch.all_available_between_deletions(drained, REPLICAS)
        print(f"DRAIN-PDB drain_s={took:.1f} fewest_available={fewest} one_by_one={one_by_one}")
        timeline = "\n".join(watch.log)
        assert fewest == REPLICAS - 1, (
            f"{fewest} of {REPLICAS} workers available during the drain:\n{timeline}"
        )
        # The second eviction waited until the first worker's replacement was Ready.
        assert one_by_one, f"{drained} were not evicted one at a time:\n{timeline}\n{output}"
        ready = set(_ready_workers(kp, ns))
        try:
            wait_workers(client, ready, timeout=120)
        except Exception:
            info = client.scheduler_info(n_workers=-1)["workers"]
            print(
                "SCHEDULER", sorted((str(w["name"]), w.get("status")) for w in info.values()), "PODS", ready
            )
            print(kp.kubectl("-n", ns, "get", "pods", "-o", "wide").stdout)
            raise
        _assert_lossless(client, held, kp, ns)
