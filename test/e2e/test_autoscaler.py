"""DaskAutoscaler end to end: a real scheduler's demand drives the default worker group's size.

Real scheduler and worker processes on the process node; the operator is a `dask-operator run` subprocess
per test (support/operator.py). Waits have deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from support.objects import DaskAutoscalerBuilder
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    wait_running,
)
from support.wait import wait_for

pytestmark = pytest.mark.timeout(240)


def autoscaler_manifest(name: str, cluster: str, minimum: int, maximum: int) -> dict[str, Any]:
    return DaskAutoscalerBuilder("", name, cluster).with_bounds(minimum, maximum).manifest()


def default_replicas(plane: Any, namespace: str, cluster: str) -> int | None:
    group = get(plane, namespace, "daskworkergroup", f"{cluster}-default")
    return None if group is None else int(group["spec"]["worker"]["replicas"])


def scalings(plane: Any, namespace: str, reason: str) -> list[tuple[int, int]]:
    """(from, to) of the autoscaler's scaling Events of this reason, oldest first."""
    events = get(plane, namespace, "events", "--field-selector", "involvedObject.name=elastic")
    found = [
        (e.get("firstTimestamp") or "", e["message"])
        for e in (events or {}).get("items", [])
        if e["reason"] == reason and e["involvedObject"]["kind"] == "DaskAutoscaler"
    ]
    steps = [re.search(r"from (\d+) to (\d+) workers", message) for _, message in sorted(found)]
    return [(int(m[1]), int(m[2])) for m in steps if m]


def test_autoscaler_follows_the_scheduler_within_its_bounds_and_goes_with_its_cluster(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("elastic", 1))
    apply(plane, namespace, autoscaler_manifest("elastic", "elastic", 1, 3))
    wait_running(plane, namespace, "elastic")

    def answering() -> dict[str, Any] | None:
        obj = get(plane, namespace, "daskautoscaler", "elastic")
        return obj if condition(obj, "Ready").get("status") == "True" else None

    autoscaler = wait_for(answering, timeout=60, interval=0.5, message="autoscaler Ready (scheduler answers)")
    (owner,) = autoscaler["metadata"]["ownerReferences"]  # adopted: deleted with the cluster (7D-42)
    assert (owner["kind"], owner["name"], owner["controller"]) == ("DaskCluster", "elastic", True)
    assert default_replicas(plane, namespace, "elastic") == 1  # idle: the minimum

    with dask_client(plane, namespace, "elastic") as client:
        # Far more work than one single-threaded worker does in the scheduler's target duration (5 s).
        futures = client.map(time.sleep, [1.0] * 60, pure=False)
        wait_for(
            lambda: default_replicas(plane, namespace, "elastic") == 3,
            timeout=90,
            interval=0.5,
            message="scaled up to the maximum",
        )
        autoscaler = get(plane, namespace, "daskautoscaler", "elastic")
        assert autoscaler["status"]["desiredWorkers"] == 3
        assert autoscaler["status"]["lastScaleTime"]
        cooldown = float(autoscaler["metadata"]["annotations"]["kubernetes.dask.org/cooldown-until"])
        assert cooldown > time.time() - 60
        assert wait_for(lambda: scalings(plane, namespace, "ScaledUp"), timeout=30, message="ScaledUp event")
        client.gather(futures, errors="skip")
        del futures

        # Idle again: once the demand has stayed below the size for the delay (30 s by default), straight
        # back to the minimum (the operator's scheduler reports its demand: no damped steps).
        def scaled_down() -> list[tuple[int, int]]:
            replicas = default_replicas(plane, namespace, "elastic")
            assert replicas is None or replicas <= 3, replicas  # clamped: never above the maximum
            return scalings(plane, namespace, "ScaledDown")

        steps = wait_for(scaled_down, timeout=90, interval=0.5, message="scaled down")
        assert steps == [(3, 1)], steps
        demand = condition(get(plane, namespace, "daskautoscaler", "elastic"), "DemandPerGroup")
        assert demand.get("status") == "True", demand
        assert scalings(plane, namespace, "ScaledUp")[-1][1] == 3

    plane.kubectl("delete", "-n", namespace, "daskcluster", "elastic", "--wait=false")
    wait_for(
        lambda: get(plane, namespace, "daskautoscaler", "elastic") is None,
        timeout=60,
        message="the autoscaler deleted with its cluster",
    )


def _replicas_owners(plane: Any, namespace: str, group: str) -> set[str]:
    """The field managers that own the group's spec.worker.replicas (from its managedFields)."""
    obj = get(plane, namespace, "daskworkergroup", group, "--show-managed-fields")
    return {
        entry["manager"]
        for entry in obj["metadata"].get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:worker", {})
    }


def test_deleting_an_autoscaler_releases_the_replicas_so_a_server_side_apply_does_not_conflict(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """While a DaskAutoscaler scales the default group it owns spec.worker.replicas (a user's server-side
    apply of another value conflicts); once it is deleted its ownership goes, the value stays, and the same
    apply succeeds without --force-conflicts."""
    apply(plane, namespace, cluster_manifest("owned", 1))
    apply(plane, namespace, autoscaler_manifest("owner", "owned", 2, 2))
    wait_for(lambda: default_replicas(plane, namespace, "owned") == 2, timeout=90, interval=0.5,
             message="the autoscaler scaled the group to 2")  # fmt: skip
    assert "dask-operator-autoscaler" in _replicas_owners(plane, namespace, "owned-default")

    live = get(plane, namespace, "daskworkergroup", "owned-default")
    mine = {"apiVersion": live["apiVersion"], "kind": live["kind"], "metadata": {"name": "owned-default"},
            "spec": {**live["spec"], "worker": {**live["spec"]["worker"], "replicas": 1}}}  # fmt: skip
    body = json.dumps(mine)
    conflict = plane.kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", "-",
                             input=body, check=False)  # fmt: skip
    assert conflict.returncode != 0 and "conflict" in conflict.stderr.lower(), conflict.stderr

    plane.kubectl("delete", "-n", namespace, "daskautoscaler", "owner")
    wait_for(lambda: "dask-operator-autoscaler" not in _replicas_owners(plane, namespace, "owned-default"),
             timeout=60, interval=0.5, message="the autoscaler's ownership released")  # fmt: skip
    group = get(plane, namespace, "daskworkergroup", "owned-default")
    assert group["spec"]["worker"]["replicas"] == 2  # the value stays
    assert "kubernetes.dask.org/autoscaled-by" not in (group["metadata"].get("annotations") or {})
    plane.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=body)
    assert _replicas_owners(plane, namespace, "owned-default") == {"kubectl"}
    wait_for(lambda: default_replicas(plane, namespace, "owned") == 1, timeout=30, message="the user's 1")
