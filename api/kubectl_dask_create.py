"""`kubectl dask create cluster NAME [--workers N] [--image I] [--resources R] [--wait]`.

The DaskCluster written is the one `KubeCluster(name=NAME, n_workers=N, image=I, resources=R)` writes
(`dask_operator.api.kubecluster.options.cluster_manifest`), so a cluster made here and one made from Python
are alike, and `KubeCluster.from_name(NAME)` connects to it.

Invariant: `--resources` is parsed before any API call; a mapping with `requests`/`limits` is taken as it is,
`cpu=1,memory=2Gi` means those requests and the same limits, anything else exits 2 with an example. Held by
test/unit/test_kubectl_dask.py (parsing, the manifest) and test/e2e/test_kubectl_dask_job.py (created for
real, then a job submitted to it).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

import yaml

from dask_operator.api.kubecluster.kinds import DASK_CLUSTER_KIND
from dask_operator.api.kubecluster.options import (
    ClusterOptions,
    cluster_manifest,
    status_summary,
    validate_name,
    validate_resources,
)
from dask_operator.api.kubectl_calls import CommandError, checked, get_cluster
from dask_operator.api.v1 import DEFAULT_IMAGE, PHASE_RUNNING, ValidationError
from dask_operator.runtime.client import Client as RestClient
from dask_operator.runtime.objects import Obj


def parse_resources(text: str) -> dict[str, Any]:
    """`--resources`: a JSON/YAML mapping of requests/limits, or `cpu=1,memory=2Gi` (requests = limits)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = yaml.safe_load(stripped)
        except yaml.YAMLError as error:
            raise argparse.ArgumentTypeError(f"--resources is not JSON or YAML: {error}") from None
        try:
            checked_value = validate_resources(value)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return checked_value or {}
    amounts: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in stripped.split(","))):
        key, equals, amount = pair.partition("=")
        if not equals or not key.strip() or not amount.strip():
            raise argparse.ArgumentTypeError(
                f"--resources {text!r}: expected NAME=AMOUNT pairs such as cpu=1,memory=2Gi, or a mapping "
                """such as '{"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}'"""
            )
        amounts[key.strip()] = amount.strip()
    if not amounts:
        raise argparse.ArgumentTypeError("--resources is empty; e.g. cpu=1,memory=2Gi")
    return {"requests": dict(amounts), "limits": dict(amounts)}


def cluster_name(text: str) -> str:
    try:
        return validate_name(text)
    except ValidationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def new_cluster(
    name: str, namespace: str, workers: int, image: str, resources: Mapping[str, Any] | None
) -> Obj:
    """The DaskCluster `create cluster` writes: KubeCluster's for the same arguments."""
    options = ClusterOptions(
        name=name, image=image, n_workers=workers, resources=dict(resources) if resources else None
    )
    return cluster_manifest(options, namespace)


def cmd_create_cluster(api: RestClient, args: argparse.Namespace) -> int:
    manifest = new_cluster(args.name, args.namespace, args.workers, args.image, args.resources)
    existing = checked(
        "get", "daskclusters.kubernetes.dask.org", args.namespace, api.get, DASK_CLUSTER_KIND,
        args.namespace, args.name,
    )  # fmt: skip
    if existing is not None:
        raise CommandError(
            f'daskcluster "{args.name}" already exists in namespace {args.namespace} '
            f"(kubectl dask scale {args.name} N resizes it; kubectl delete daskcluster {args.name} removes it)"
        )
    checked("create", "daskclusters.kubernetes.dask.org", args.namespace, api.create, manifest)
    print(f"daskcluster.kubernetes.dask.org/{args.name} created", flush=True)
    if args.wait:
        wait_running(api, args.namespace, args.name, args.timeout)
        print(f"daskcluster.kubernetes.dask.org/{args.name} running", flush=True)
    return 0


def wait_running(api: RestClient, namespace: str, name: str, timeout: float) -> Obj:
    """The cluster once its phase is Running; CommandError with its status after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        cluster = get_cluster(api, namespace, name)
        if (cluster.get("status") or {}).get("phase") == PHASE_RUNNING:
            return cluster
        if time.monotonic() >= deadline:
            raise CommandError(
                f"DaskCluster {name} is not running after {timeout:g} s ({status_summary(cluster)}); "
                f"kubectl dask describe {name}"
            )
        time.sleep(0.5)  # the API server is the clock here: one GET per half second


def add_parser(commands: Any, flags: argparse.ArgumentParser, non_negative: Any) -> None:
    create = commands.add_parser("create", help="create a DaskCluster", parents=[flags])
    what = create.add_subparsers(dest="what", required=True, metavar="KIND")
    cluster = what.add_parser(
        "cluster", help="a DaskCluster as KubeCluster makes it", parents=[flags],
        description="Create a DaskCluster (the one KubeCluster(name=NAME, ...) would create).",
    )  # fmt: skip
    cluster.add_argument("name", type=cluster_name)
    cluster.add_argument("--workers", type=non_negative, default=1, metavar="N", help="workers (default 1)")
    cluster.add_argument(
        "--image", default=DEFAULT_IMAGE, help=f"scheduler and worker image ({DEFAULT_IMAGE})"
    )
    cluster.add_argument(
        "--resources",
        type=parse_resources,
        help="""each pod's resources: cpu=1,memory=2Gi (requests and limits) or '{"limits": {...}}'""",
    )
    cluster.add_argument("--wait", action="store_true", help="return once the cluster is Running")
    cluster.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (300)")
    cluster.set_defaults(run=cmd_create_cluster)
