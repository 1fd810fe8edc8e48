"""manifests/security/tenant-networkpolicy.yaml selects the pods the operator labels and the ports it uses:
a scheduler's comm port only from its own namespace, its dashboard (the retire route) from its own namespace
and the operator's, workers from their own namespace. (Applied to a real API server by
test/integration/test_manifests.py; the local plane does not enforce NetworkPolicy.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from support import builders
from support.objects import DaskClusterBuilder, DaskWorkerGroupBuilder

from dask_operator.api.v1.names import SCHEDULER_COMM_PORT, SCHEDULER_DASHBOARD_PORT
from dask_operator.controller.contract.names import PROPAGATED_REPLICAS_ANNOTATION
from dask_operator.controller.planners.cluster import ClusterObservation, plan_cluster
from dask_operator.controller.planners.workergroup import GroupObservation, plan_group

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "manifests" / "security" / "tenant-networkpolicy.yaml"
NOW = 1_700_000_000.0


def _policies() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(POLICIES.read_text()) if d]
    assert all(d["kind"] == "NetworkPolicy" for d in docs)
    return {d["metadata"]["name"]: d["spec"] for d in docs}


def _operator_namespace() -> str:
    deployment = yaml.safe_load((REPO / "manifests" / "manager" / "deployment.yaml").read_text())
    return str(deployment["metadata"]["namespace"])


def _selects(spec: dict[str, Any], pod: dict[str, Any]) -> bool:
    wanted = spec["podSelector"]["matchLabels"].items()
    return wanted <= pod["metadata"]["labels"].items()


def test_the_policies_select_the_operators_scheduler_and_worker_pods_and_nothing_else() -> None:
    cluster = DaskClusterBuilder("ns", "c").build()
    scheduler = builders.created(plan_cluster(ClusterObservation(cluster), NOW), "Pod")
    assert scheduler is not None
    group = (
        DaskWorkerGroupBuilder.default_of(cluster)
        .with_replicas(1)
        .with_annotations({PROPAGATED_REPLICAS_ANNOTATION: "1"})  # the cluster wrote its replicas
        .build()
    )
    (worker,) = plan_group(GroupObservation(group, cluster, []), NOW).creates
    policies = _policies()
    assert _selects(policies["dask-scheduler"], scheduler) and not _selects(
        policies["dask-scheduler"], worker
    )
    assert _selects(policies["dask-worker"], worker) and not _selects(policies["dask-worker"], scheduler)


def test_only_the_namespace_reaches_the_comm_port_and_the_operator_only_the_dashboard() -> None:
    rules = _policies()["dask-scheduler"]["ingress"]
    reach: dict[int, set[str]] = {}
    for rule in rules:
        for peer in rule["from"]:
            who = (
                "own namespace"
                if peer.get("podSelector") == {} and "namespaceSelector" not in peer
                else peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            )
            for port in rule["ports"]:
                reach.setdefault(port["port"], set()).add(who)
    assert reach == {
        SCHEDULER_COMM_PORT: {"own namespace"},
        SCHEDULER_DASHBOARD_PORT: {"own namespace", _operator_namespace()},
    }
    workers = _policies()["dask-worker"]["ingress"]
    assert workers == [{"from": [{"podSelector": {}}]}]
