"""`kubectl dask`: a kubectl plugin (the `kubectl-dask` console script) for DaskClusters.

    kubectl dask list [-A]             clusters, their phase, readiness and workers
    kubectl dask scale NAME N          set the default worker group to N workers (turns adaptive scaling off)
    kubectl dask logs NAME [--worker W] the scheduler's log, or worker pod W's
    kubectl dask dashboard NAME        forward the dashboard to this machine and print its link
    kubectl dask describe NAME         status, conditions, worker groups, and workers as the scheduler sees them
    kubectl dask create cluster NAME [--workers N] [--image I] [--resources R] [--wait]
    kubectl dask job submit [--cluster NAME | --workers N] [--working-dir DIR] -- python script.py [args]
    kubectl dask job logs NAME [-f] | job list | job delete NAME...   (api/kubectl_dask_job.py)

Invariant: a command that did what was asked exits 0; one that could not (no such cluster, RBAC refused,
scheduler unreachable) prints `error: <what to do>` on stderr and exits 1; bad usage exits 2. The table and
description are built by pure functions (test/unit/test_kubectl_dask.py); the commands are run for real
through kubectl in test/e2e/test_kubectl_dask.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import signal
import sys
import webbrowser
from collections.abc import Mapping, Sequence
from typing import Any

from dask.utils import format_bytes

from dask_operator.api.kubecluster.cluster import current_namespace, forbidden_message, pod_log
from dask_operator.api.kubecluster.kinds import (
    DASK_AUTOSCALER_KIND,
    DASK_CLUSTER_KIND,
    DASK_WORKER_GROUP_KIND,
    POD,
    SERVICE,
)
from dask_operator.api.kubecluster.options import scheduler_pod_selector, service_port
from dask_operator.api.kubecluster.portforward import (
    PortForward,
    SchedulerPodTarget,
    pick_scheduler_pod,
    pod_port,
)
from dask_operator.api.kubectl_calls import CommandError, checked, get_cluster
from dask_operator.api.kubectl_dask_create import add_parser as add_create_parser
from dask_operator.api.kubectl_dask_job import add_parser as add_job_parser
from dask_operator.api.kubectl_table import age, table
from dask_operator.api.scheduler_http import SchedulerHTTPError, json_count, json_object, request_json
from dask_operator.api.v1 import (
    COMPONENT_WORKER,
    LABEL_CLUSTER_NAME,
    LABEL_COMPONENT,
    PORT_NAME_DASHBOARD,
    scheduler_service_name,
    worker_group_name,
)
from dask_operator.runtime.client import ApiError
from dask_operator.runtime.client import Client as RestClient
from dask_operator.runtime.objects import Obj

# -- pure: what is printed ----------------------------------------------------------------------------------


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return {}


def cluster_rows(clusters: Sequence[Mapping[str, Any]], now: datetime.datetime, all_namespaces: bool) -> str:
    header = ["NAME", "PHASE", "READY", "WORKERS", "AGE"]
    rows = [(["NAMESPACE"] if all_namespaces else []) + header]
    for cluster in sorted(
        clusters, key=lambda c: (c["metadata"].get("namespace", ""), c["metadata"]["name"])
    ):
        meta, spec, status = cluster["metadata"], cluster.get("spec") or {}, cluster.get("status") or {}
        desired = ((spec.get("worker") or {}).get("replicas")) or 0
        row = [
            str(meta["name"]),
            str(status.get("phase") or "<none>"),
            str(condition(cluster, "Ready").get("status") or "Unknown"),
            f"{status.get('readyReplicas') or 0}/{desired}",
            age(meta.get("creationTimestamp"), now),
        ]
        rows.append(([str(meta.get("namespace", ""))] if all_namespaces else []) + row)
    return table(rows)


def worker_rows(identity: Mapping[str, Any]) -> str:
    """One line per worker the scheduler knows: threads, memory against its limit, tasks held and running."""
    rows = [["WORKER", "THREADS", "MEMORY", "LIMIT", "TASKS IN MEMORY", "EXECUTING", "READY"]]
    listed = identity.get("workers")
    workers = [w for w in listed.values() if isinstance(w, dict)] if isinstance(listed, dict) else []
    for worker in sorted(workers, key=lambda w: str(w.get("name"))[:253]):
        if "metrics" not in worker:  # from the API's worker list: a name and an address, nothing else known
            rows.append([str(worker.get("name"))[:253], *["-"] * 6])
            continue
        metrics = json_object(worker.get("metrics"))
        limit = json_count(worker.get("memory_limit"))
        rows.append(
            [
                str(worker.get("name"))[:253],
                str(json_count(worker.get("nthreads"))),
                format_bytes(json_count(metrics.get("memory"))),
                format_bytes(limit) if limit else "none",
                str(json_count(metrics.get("in_memory"))),
                str(json_count(metrics.get("executing"))),
                str(json_count(metrics.get("ready"))),
            ]
        )
    return table(rows) if workers else "(no workers connected)"


def identity_of_listing(listing: Any) -> Obj:
    """The API's worker list (names and addresses) in the identity's shape, without the metrics it lacks."""
    entries = listing.get("workers") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        raise SchedulerHTTPError("the scheduler's worker list has no workers array")
    workers = {
        str(entry["address"]): {"name": entry.get("name", entry["address"])}
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("address"), str)
    }
    return {"workers": workers}


def description(
    cluster: Mapping[str, Any],
    groups: Sequence[Mapping[str, Any]],
    identity: Mapping[str, Any] | None,
    why: str,
) -> str:
    meta, status = cluster["metadata"], cluster.get("status") or {}
    lines = [
        f"Name:        {meta['name']}",
        f"Namespace:   {meta.get('namespace', '')}",
        f"Phase:       {status.get('phase') or '<none>'}",
        f"Scheduler:   {status.get('schedulerAddress') or '<none>'}",
        "Conditions:",
    ]
    for item in (status.get("conditions") or []) or [{"type": "(none reported)"}]:
        reason = f" ({item['reason']})" if item.get("reason") else ""
        message = f": {item['message']}" if item.get("message") else ""
        lines.append(f"  {item.get('type')}={item.get('status', '')}{reason}{message}")
    lines.append("Worker groups:")
    for group in sorted(groups, key=lambda g: str(g["metadata"]["name"])):
        spec, gstatus = group.get("spec") or {}, group.get("status") or {}
        replicas = (spec.get("worker") or {}).get("replicas", 0)
        lines.append(f"  {group['metadata']['name']}: {gstatus.get('readyReplicas') or 0}/{replicas} ready")
    lines.append("Workers (from the scheduler):")
    if identity is None:
        lines.append(f"  (scheduler not reachable: {why})")
    else:
        lines.extend("  " + line for line in worker_rows(identity).splitlines())
    return "\n".join(lines)


# -- the commands -------------------------------------------------------------------------------------------


def cmd_list(api: RestClient, args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else args.namespace
    clusters, _ = checked(
        "list",
        "daskclusters.kubernetes.dask.org",
        namespace or "(all)",
        api.list,
        DASK_CLUSTER_KIND,
        namespace,
    )
    if not clusters:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"No DaskClusters found in {where}.", file=sys.stderr)
        return 0
    print(cluster_rows(clusters, datetime.datetime.now(datetime.UTC), namespace is None))
    return 0


def cmd_scale(api: RestClient, args: argparse.Namespace) -> int:
    ns, name = args.namespace, args.name
    get_cluster(api, ns, name)
    checked("delete", "daskautoscalers.kubernetes.dask.org", ns, api.delete, DASK_AUTOSCALER_KIND, ns, name)
    patch = {"spec": {"worker": {"replicas": args.replicas}}}
    group = worker_group_name(name, "default")
    try:
        api.patch_merge(DASK_WORKER_GROUP_KIND, ns, group, patch)
    except ApiError as error:
        if error.status == 403:
            raise CommandError(
                forbidden_message("patch", "daskworkergroups.kubernetes.dask.org", ns, error.message)
            ) from error
        if not error.not_found:
            raise CommandError(str(error)) from error
        checked(
            "patch",
            "daskclusters.kubernetes.dask.org",
            ns,
            api.patch_merge,
            DASK_CLUSTER_KIND,
            ns,
            name,
            patch,
        )
    print(f"daskcluster.kubernetes.dask.org/{name} scaled to {args.replicas} workers")
    return 0


def cmd_logs(api: RestClient, args: argparse.Namespace) -> int:
    ns, name = args.namespace, args.name
    get_cluster(api, ns, name)
    if args.worker:
        selector = f"{LABEL_CLUSTER_NAME}={name},{LABEL_COMPONENT}={COMPONENT_WORKER}"
        pods, _ = checked("list", "pods", ns, api.list, POD, ns, label_selector=selector)
        names = sorted(str(p["metadata"]["name"]) for p in pods)
        matches = [p for p in pods if p["metadata"]["name"] == args.worker]
        if not matches:
            raise CommandError(
                f"DaskCluster {name} has no worker {args.worker!r}; its workers: {', '.join(names) or 'none'}"
            )
        pod = matches[0]
    else:
        pods, _ = checked("list", "pods", ns, api.list, POD, ns, label_selector=scheduler_pod_selector(name))
        if not pods:
            raise CommandError(f"DaskCluster {name} has no scheduler pod yet (kubectl dask describe {name})")
        pod = pods[0]
    sys.stdout.write(pod_log(api, ns, pod, tail_lines=args.tail))
    return 0


async def scheduler_forward(
    api: RestClient, namespace: str, name: str, port_name: str, local_port: int = 0
) -> PortForward:
    """A running forward from a local port to the scheduler pod's `port_name` port."""
    service = checked("get", "services", namespace, api.get, SERVICE, namespace, scheduler_service_name(name))
    if service is None:
        raise CommandError(f"DaskCluster {name} has no scheduler Service yet (kubectl dask describe {name})")
    pods, _ = checked(
        "list", "pods", namespace, api.list, POD, namespace, label_selector=scheduler_pod_selector(name)
    )
    running = pick_scheduler_pod(pods)
    if running is None:
        raise CommandError(f"the scheduler of DaskCluster {name} is not running (kubectl dask logs {name})")
    pod = next(p for p in pods if p["metadata"]["name"] == running)
    port = service_port(service, port_name)
    target = SchedulerPodTarget(api, namespace, scheduler_pod_selector(name))
    forward = PortForward(target, pod_port(pod, port.get("targetPort") or port["port"]), local_port)
    try:
        await forward.start()
    except OSError as error:
        raise CommandError(f"cannot listen on local port {local_port}: {error.strerror}") from error
    return forward


def cmd_dashboard(api: RestClient, args: argparse.Namespace) -> int:
    get_cluster(api, args.namespace, args.name)

    async def serve() -> None:
        forward = await scheduler_forward(api, args.namespace, args.name, PORT_NAME_DASHBOARD, args.port)
        link = f"http://localhost:{forward.local_port}/status"
        print(f"Dashboard of {args.namespace}/{args.name}: {link}  (Ctrl-C to stop)", flush=True)
        if args.open:
            webbrowser.open(link)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await forward.close()

    asyncio.run(serve())
    return 0


def cmd_describe(api: RestClient, args: argparse.Namespace) -> int:
    ns, name = args.namespace, args.name
    cluster = get_cluster(api, ns, name)
    groups, _ = checked(
        "list",
        "daskworkergroups.kubernetes.dask.org",
        ns,
        api.list,
        DASK_WORKER_GROUP_KIND,
        ns,
        label_selector=f"{LABEL_CLUSTER_NAME}={name}",
    )

    async def ask_scheduler() -> Obj:
        # The scheduler's JSON route, never its comm RPC: the answer is the tenant's data and is parsed, not
        # unpickled, on the admin's laptop too.
        forward = await scheduler_forward(api, ns, name, PORT_NAME_DASHBOARD)
        base = f"http://127.0.0.1:{forward.local_port}"
        try:
            try:
                answer = await asyncio.to_thread(
                    request_json, "GET", f"{base}/json/identity.json", timeout=args.timeout
                )
            except SchedulerHTTPError as error:
                # Dask's identity route answers 500 while workers report metrics keyed by tuples (a busy
                # cluster); the API's list (when the scheduler serves it) still names the workers.
                if error.status != 500:
                    raise
                listing = await asyncio.to_thread(
                    request_json, "GET", f"{base}/api/v1/get_workers", timeout=args.timeout
                )
                answer = identity_of_listing(listing)
        finally:
            await forward.close()
        if not isinstance(answer, dict):
            raise SchedulerHTTPError("the scheduler's identity is not a JSON object")
        return answer

    identity: Obj | None = None
    why = ""
    try:
        identity = asyncio.run(ask_scheduler())
    except (CommandError, OSError, TimeoutError, SchedulerHTTPError) as error:
        why = str(error) or type(error).__name__
    print(description(cluster, groups, identity, why))
    return 0


# -- entry point --------------------------------------------------------------------------------------------


def connection_flags() -> argparse.ArgumentParser:
    """kubectl's flags, accepted before or after the command (`kubectl dask scale demo 3 -n ns`)."""
    flags = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    flags.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    flags.add_argument(
        "--kubeconfig", help="path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    flags.add_argument("--context", help="kubeconfig context to use")
    return flags


def parser() -> argparse.ArgumentParser:
    flags = connection_flags()
    top = argparse.ArgumentParser(
        prog="kubectl dask", description="Dask clusters run by the Dask operator.", parents=[flags]
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list DaskClusters", parents=[flags])
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
    listing.set_defaults(run=cmd_list)

    scale = commands.add_parser(
        "scale", help="set the default worker group's size (turns adapt off)", parents=[flags]
    )
    scale.add_argument("name")
    scale.add_argument("replicas", type=non_negative, metavar="N")
    scale.set_defaults(run=cmd_scale)

    logs = commands.add_parser(
        "logs", help="the scheduler's log, or a worker's with --worker", parents=[flags]
    )
    logs.add_argument("name")
    logs.add_argument(
        "--worker", metavar="POD", help="a worker pod's name (kubectl dask describe lists them)"
    )
    logs.add_argument("--tail", type=non_negative, metavar="LINES", help="only the last LINES lines")
    logs.set_defaults(run=cmd_logs)

    dashboard = commands.add_parser(
        "dashboard", help="forward the dashboard here and print its link", parents=[flags]
    )
    dashboard.add_argument("name")
    dashboard.add_argument(
        "--port", type=non_negative, default=8787, help="local port (default 8787; 0: any free)"
    )
    dashboard.add_argument("--open", action="store_true", help="also open it in the browser")
    dashboard.set_defaults(run=cmd_dashboard)

    describe = commands.add_parser(
        "describe", help="status, conditions, worker groups and workers", parents=[flags]
    )
    describe.add_argument("name")
    describe.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the scheduler")
    describe.set_defaults(run=cmd_describe)

    add_create_parser(commands, flags, non_negative)
    add_job_parser(commands, flags, non_negative)
    return top


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for flag in ("namespace", "kubeconfig", "context"):
        setattr(args, flag, getattr(args, flag, None))
    try:
        api = RestClient.from_kubeconfig(args.kubeconfig, args.context)
    except Exception as error:  # noqa: BLE001 - any unreadable kubeconfig: say so, exit 1
        print(f"error: cannot load the kubeconfig: {error}", file=sys.stderr)
        return 1
    if not args.namespace:
        args.namespace = current_namespace(args.kubeconfig)
    try:
        return int(args.run(api, args))
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(Exception):
            api.close()


if __name__ == "__main__":
    sys.exit(main())
