"""Chaos: the operator's leader pod is lost (deleted; SIGKILLed) during a scale-down, with two in-cluster replicas.

Story: the operator runs in the plane as the README installs it (`kubectl apply --server-side -k manifests/`,
two leader-elected pods). A 3-worker Dask cluster holds persisted and scattered data; the user scales it to 1
and the leader is lost at once. Another operator process takes the Lease (the other replica, the replacement
pod, or, after a SIGKILL, the container its node restarts in the same pod: a new holderIdentity either way)
and finishes the scale-down: exactly 1 worker pod, no persisted key recomputed, no scattered key lost.

A plane of its own: the in-cluster operator watches every namespace and must not meet the session plane's
per-test operators (`plane_for_an_operator_of_every_namespace`; with real nodes, the session's plane).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from support.chaos_workload import Stopwatch, data_cost, figure, hold_data
from support.fixtures import KubePlane, plane_for_an_operator_of_every_namespace
from support.hostpid import container_pid
from support.operator import (
    REPO,
    apply,
    cluster_manifest,
    dask_client,
    get,
    pod_names,
    wait_running,
    wait_workers,
    worker_pods,
)
from support.wait import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]

OPERATOR_NS = "dask-operator"


@pytest.fixture(scope="module")
def incluster_plane(request: pytest.FixtureRequest) -> Iterator[KubePlane]:
    with plane_for_an_operator_of_every_namespace(request, "leader") as kp:
        kp.kubectl("apply", "--server-side", "-k", str(REPO / "manifests"), timeout=120)
        wait_for(lambda: _two_ready(kp), timeout=180, interval=0.5, message="2 ready operator pods")
        yield kp


def _operator_pods(kp: KubePlane) -> list[dict[str, Any]]:
    listed = get(kp, OPERATOR_NS, "pods", "-l", "app.kubernetes.io/name=dask-operator") or {}
    return [p for p in listed.get("items", []) if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def _two_ready(kp: KubePlane) -> bool:
    pods = _operator_pods(kp)
    return len(pods) == 2 and all(_ready(p) for p in pods)


def _holder(kp: KubePlane) -> str | None:
    """The Lease's holderIdentity, `<pod name>_<uuid>`: one operator process (a restart is a new one)."""
    lease = get(kp, OPERATOR_NS, "lease", "dask-operator") or {}
    return (lease.get("spec") or {}).get("holderIdentity") or None


def _pod_of(identity: str) -> str:
    return identity.split("_", 1)[0]


def _lose_leader(kp: KubePlane, how: str) -> str:
    """Deletes the leader's pod, or SIGKILLs its process (the node restarts the container in the same pod:
    the new process may win the Lease back, with a new identity); returns the lost leader's identity."""
    leader = wait_for(lambda: _holder(kp), timeout=60, interval=0.5, message="a leader holds the Lease")
    pod_name = _pod_of(leader)
    if how == "deleted":
        kp.kubectl("delete", "pod", "-n", OPERATOR_NS, pod_name, "--wait=false")
    else:
        pod = get(kp, OPERATOR_NS, "pod", pod_name)
        os.kill(container_pid(pod), signal.SIGKILL)
    return leader


@pytest.mark.parametrize("how", ["deleted", "sigkilled"])
def test_leader_lost_during_a_scale_down_the_other_replica_finishes_it_without_losing_data(
    incluster_plane: KubePlane, how: str
) -> None:
    kp, ns, name = incluster_plane, f"leader-{how}", "held"
    group = f"{name}-default"
    kp.kubectl("create", "namespace", ns)
    try:
        apply(kp, ns, cluster_manifest(name, 3))
        wait_running(kp, ns, name, timeout=180)
        with dask_client(kp, ns, name) as client:
            wait_workers(client, pod_names(worker_pods(kp, ns, group)), timeout=120)
            held = hold_data(client)
            kp.kubectl("scale", "-n", ns, f"daskcluster/{name}", "--replicas=1")
            clock = Stopwatch()
            lost = _lose_leader(kp, how)
            holder = wait_for(lambda: (h := _holder(kp)) != lost and h, timeout=150, interval=0.5,
                              message=f"a leader after {lost}")  # fmt: skip
            handed_over = clock.seconds()
            wait_for(lambda: _at_one(kp, ns, group), timeout=180, interval=0.5,
                     message="1 worker pod and group status 1")  # fmt: skip
            wait_workers(client, 1, timeout=60)
            cost = data_cost(client, held)
            figure(f"leader-{how}-scale-down", handed_over_s=handed_over, converged_s=clock.seconds(),
                   new_leader=holder, same_pod=_pod_of(holder) == _pod_of(lost),
                   recomputed=len(cost.recomputed), scattered_lost=len(cost.scattered_lost))  # fmt: skip
            print(cost.line())
            assert cost.recomputed == {} and cost.scattered_lost == [] and cost.erred == 0, cost
    except BaseException:
        print(_diagnostics(kp))
        raise
    finally:
        kp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _at_one(kp: KubePlane, ns: str, group: str) -> bool:
    obj = get(kp, ns, "daskworkergroup", group) or {}
    return len(worker_pods(kp, ns, group)) == 1 and obj.get("status", {}).get("replicas") == 1


def _diagnostics(kp: KubePlane) -> str:
    out = [kp.kubectl("get", "lease,pods", "-n", OPERATOR_NS, "-o", "wide", check=False).stdout]
    for p in (get(kp, OPERATOR_NS, "pods") or {}).get("items", []):
        logs = kp.kubectl("logs", "-n", OPERATOR_NS, p["metadata"]["name"], "--tail=25", check=False)
        out.append(f"--- {p['metadata']['name']}\n{logs.stdout}{logs.stderr}")
    return "\n".join(out)
