"""`dask-operator run`: the operator process, wiring the reconcilers of all four kinds.

Invariant: one manager (one shared cache) runs the four controllers; everything a reconciler needs comes from
`OperatorSettings`, built here once from flags and the reference operator's Dask config keys.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from typing import Any

from dask_operator.controller import indexes
from dask_operator.controller.autoscaler_reconciler import DaskAutoscalerReconciler
from dask_operator.controller.cluster_reconciler import DaskClusterReconciler
from dask_operator.controller.job_reconciler import DaskJobReconciler
from dask_operator.controller.kinds import (
    DASK_AUTOSCALER_KIND,
    DASK_CLUSTER_KIND,
    DASK_JOB_KIND,
    DASK_WORKER_GROUP_KIND,
)
from dask_operator.controller.runtime.builder import ControllerBuilder
from dask_operator.controller.runtime.client import Client
from dask_operator.controller.runtime.kinds import POD, SERVICE
from dask_operator.controller.runtime.leaderelection import LeaderElectionConfig
from dask_operator.controller.runtime.manager import Manager
from dask_operator.controller.runtime.predicate import (
    AnnotationsChanged,
    GenerationChanged,
    LabelsChanged,
    Or,
)
from dask_operator.controller.runtime.reconcile import Request
from dask_operator.controller.settings import OperatorSettings, from_dask_config
from dask_operator.controller.workergroup_reconciler import DaskWorkerGroupReconciler

Obj = dict[str, Any]


def add_run_parser(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the operator",
        description="Run the operator: reconcile DaskClusters, DaskWorkerGroups, DaskJobs and DaskAutoscalers "
        "until SIGTERM.",
    )
    run.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else $KUBECONFIG)"
    )
    run.add_argument("--context", default=None, help="kubeconfig context")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", default=None, help="watch only this namespace")
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    run.add_argument("--metrics-bind-address", default=":8080", help="host:port for /metrics; '0' disables")
    run.add_argument(
        "--health-probe-bind-address",
        default=":8081",
        help="host:port for /healthz and /readyz; '0' disables",
    )
    run.add_argument("--leader-elect", action="store_true", help="hold a Lease so only one replica acts")
    run.add_argument("--leader-election-namespace", default=None)
    run.add_argument("--leader-election-id", default="dask-operator")
    run.add_argument("--concurrency", type=int, default=4, help="concurrent reconciles per controller")
    run.add_argument("--cluster-domain", default=None, help="cluster DNS domain (default cluster.local)")
    run.add_argument(
        "--scale-down-force-timeout",
        type=float,
        default=None,
        help="seconds a scale-down waits for an unreachable scheduler before deleting workers anyway "
        "(default 300; per cluster: annotation kubernetes.dask.org/scale-down-force-timeout)",
    )
    run.add_argument("--log-level", default=os.environ.get("DASK_OPERATOR_LOG_LEVEL", "info"))
    run.add_argument("--log-format", choices=("json", "console"), default="json")
    run.set_defaults(handler=run_command)


def parse_address(value: str | None) -> tuple[str, int] | None:
    """':8080' -> ('0.0.0.0', 8080); '0' or '' disables the endpoint."""
    if not value or value == "0":
        return None
    host, _, port = value.rpartition(":")
    return (host or "0.0.0.0", int(port))


def groups_of_cluster(manager: Manager) -> Any:
    """Map a DaskCluster to the DaskWorkerGroups that name it in spec.cluster (adopted or not yet)."""

    def mapper(cluster: Obj) -> Iterable[Request]:
        meta = cluster["metadata"]
        return [
            Request(meta["namespace"], g["metadata"]["name"])
            for g in indexes.groups_of_cluster(manager.cache, meta["namespace"], meta["name"])
        ]

    return mapper


def autoscalers_of_cluster(manager: Manager) -> Any:
    """Map a DaskCluster to the DaskAutoscalers that name it in spec.cluster."""

    def mapper(cluster: Obj) -> Iterable[Request]:
        meta = cluster["metadata"]
        return [
            Request(meta["namespace"], a["metadata"]["name"])
            for a in indexes.autoscalers_of_cluster(manager.cache, meta["namespace"], meta["name"])
        ]

    return mapper


def cluster_of_group(group: Obj) -> Iterable[Request]:
    cluster = group.get("spec", {}).get("cluster")
    return [Request(group["metadata"]["namespace"], cluster)] if cluster else []


def build(manager: Manager, settings: OperatorSettings, concurrency: int) -> None:
    """Register the four controllers with the manager."""
    indexes.register(manager.cache)
    reconcile_timeout = settings.retire_timeout + 60.0
    (
        ControllerBuilder(manager)
        .named("daskcluster")
        .for_(DASK_CLUSTER_KIND)
        .owns(POD)
        .owns(SERVICE)
        .watches(DASK_WORKER_GROUP_KIND, cluster_of_group)
        .with_options(max_concurrent_reconciles=concurrency, reconcile_timeout=reconcile_timeout)
        .complete(DaskClusterReconciler(manager, settings))
    )
    (
        ControllerBuilder(manager)
        .named("daskworkergroup")
        .for_(DASK_WORKER_GROUP_KIND)
        .owns(POD)
        # a cluster's creation, spec, labels or annotations (force timeout) matter to its groups; its status not
        .watches(
            DASK_CLUSTER_KIND,
            groups_of_cluster(manager),
            predicates=[Or(GenerationChanged(), LabelsChanged(), AnnotationsChanged())],
        )
        .with_options(max_concurrent_reconciles=concurrency, reconcile_timeout=reconcile_timeout)
        .complete(DaskWorkerGroupReconciler(manager, settings))
    )
    (
        ControllerBuilder(manager)
        .named("daskjob")
        .for_(DASK_JOB_KIND)
        .owns(POD)
        # the job's cluster matters when it appears, goes or starts terminating, not on each status change
        .owns(DASK_CLUSTER_KIND, predicates=[GenerationChanged()])
        .with_options(max_concurrent_reconciles=concurrency)
        .complete(DaskJobReconciler(manager, settings))
    )
    (
        ControllerBuilder(manager)
        .named("daskautoscaler")
        .for_(DASK_AUTOSCALER_KIND)
        # a cluster appearing lets a waiting autoscaler adopt it; the rest is polled every few seconds
        .watches(DASK_CLUSTER_KIND, autoscalers_of_cluster(manager), predicates=[GenerationChanged()])
        .with_options(max_concurrent_reconciles=concurrency, reconcile_timeout=60.0)
        .complete(DaskAutoscalerReconciler(manager, settings))
    )


def run_command(args: argparse.Namespace) -> int:
    from dask_operator.controller.runtime import logs

    logs.configure(args.log_level, json=args.log_format == "json")
    client = (
        Client.from_kubeconfig(args.kubeconfig, args.context)
        if args.kubeconfig or args.context
        else Client.auto()
    )
    namespace = args.namespace if not args.all_namespaces else None
    settings = from_dask_config(
        cluster_domain=args.cluster_domain, force_scale_down_after=args.scale_down_force_timeout
    )
    election = None
    if args.leader_elect:
        election = LeaderElectionConfig(
            name=args.leader_election_id, namespace=args.leader_election_namespace or namespace
        )
    manager = Manager(
        client,
        namespace=namespace,
        leader_election=election,
        metrics_address=parse_address(args.metrics_bind_address),
        health_address=parse_address(args.health_probe_bind_address),
    )
    build(manager, settings, args.concurrency)
    return manager.run()
