"""`dask-operator run`: the operator process, wiring the reconcilers of all four kinds.

Invariant: one manager (one shared cache) runs the four controllers; this module only composes (each
reconciler's module wires what it watches); everything a reconciler needs comes from `OperatorSettings`,
built here once from flags and the reference operator's Dask config keys. Held by test/e2e/.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from dask_operator.controller import indexes, kueue_access
from dask_operator.controller.reconcilers import autoscaler, cluster, job, workergroup
from dask_operator.controller.settings import OperatorSettings, from_dask_config
from dask_operator.runtime.client import Client
from dask_operator.runtime.leaderelection import LeaderElectionConfig
from dask_operator.runtime.manager import Manager


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
    run.add_argument("--concurrency", type=int, default=32, help="concurrent reconciles per controller")
    run.add_argument("--cluster-domain", default=None, help="cluster DNS domain (default cluster.local)")
    run.add_argument(
        "--scale-down-force-timeout",
        type=float,
        default=None,
        help="seconds a scale-down waits for an unreachable scheduler before deleting workers anyway "
        "(default 300; per cluster: annotation kubernetes.dask.org/scale-down-force-timeout)",
    )
    run.add_argument(
        "--retire-timeout",
        type=float,
        default=None,
        help="seconds one request to a scheduler to retire workers may take (default 120); one that times "
        "out is not asked again while the scheduler is still retiring those workers",
    )
    run.add_argument(
        "--worker-termination-grace-period",
        type=float,
        default=None,
        help="seconds a deleted or evicted worker pod may take to hand its data to other workers "
        "(default 60; a worker pod spec's own terminationGracePeriodSeconds wins; 0 disables the hook)",
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


def build(manager: Manager, settings: OperatorSettings, concurrency: int) -> None:
    """Register the four controllers with the manager (each says what it watches beside its reconciler)."""
    indexes.register(manager.cache)
    kueue_access.register(manager.cache, settings.kueue)
    for setup in (
        cluster.setup_with_manager,
        workergroup.setup_with_manager,
        job.setup_with_manager,
        autoscaler.setup_with_manager,
    ):
        setup(manager, settings, concurrency)


def run_command(args: argparse.Namespace) -> int:
    from dask_operator.runtime import logs

    logs.configure(args.log_level, json=args.log_format == "json")
    # A kept-alive connection for every reconcile that can run at once (four kinds) and every watch: past the
    # pool's size each request would pay a new TLS handshake.
    pool_size = max(32, 4 * args.concurrency + 16)
    client = (
        Client.from_kubeconfig(args.kubeconfig, args.context, pool_size=pool_size)
        if args.kubeconfig or args.context
        else Client.auto(pool_size=pool_size)
    )
    namespace = args.namespace if not args.all_namespaces else None
    settings = from_dask_config(
        cluster_domain=args.cluster_domain,
        force_scale_down_after=args.scale_down_force_timeout,
        retire_timeout=args.retire_timeout,
        worker_grace=args.worker_termination_grace_period,
        kueue=kueue_access.detect(client),
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
        label_selectors=indexes.CACHE_SELECTORS,
    )
    build(manager, settings, args.concurrency)
    return manager.run()
