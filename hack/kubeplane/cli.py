"""`localkube up|down|status|logs|node`: the command line over kubeplane.plane.

Invariant: every failure a user can cause or meet ends with one clear message on stderr and a non-zero
exit status (1 for a situation to fix, 2 for bad usage), never a traceback or a hang.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from kubeplane.components import tail
from kubeplane.nodes import plane_nodes
from kubeplane.plane import Plane, PlaneError, UpOptions
from kubeplane.state import default_state_dir


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir).absolute() if args.state_dir else default_state_dir(args.name)


def cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    plane = Plane.up(
        UpOptions(
            name=args.name,
            state_dir=_state_dir(args),
            bin_dir=Path(args.bin_dir) if args.bin_dir else None,
            node=not args.no_node,
            simulated_node=args.simulated_node,
            gpus=args.gpus,
            force=args.force,
            apiserver_port=args.apiserver_port,
            timeout=args.timeout,
            nodes=args.nodes,
            service_cidr=args.service_cidr,
            node_names=tuple(filter(None, (args.node_names or "").split(","))),
            node_labels=tuple(args.node_labels),
            node_taints=tuple(args.node_taints),
            node_capacity=tuple(args.node_capacity),
            scheduler=args.scheduler,
            node_monitor_grace_period=args.node_monitor_grace_period,
            default_not_ready_toleration_seconds=args.default_not_ready_toleration_seconds,
            default_unreachable_toleration_seconds=args.default_unreachable_toleration_seconds,
            runtime=args.runtime,
            node_bin_dir=Path(args.node_bin_dir) if args.node_bin_dir else None,
            images_dir=Path(args.images_dir) if args.images_dir else None,
        ),
        say=_say,
    )
    _say(f"localkube: up in {time.monotonic() - t0:.1f} s")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    if not state_dir.exists():
        _say(f"localkube: no plane {args.name!r} ({state_dir} does not exist); nothing to do")
        return 0
    if not (state_dir / "state.json").is_file():
        shutil.rmtree(state_dir)  # up died before recording anything: no process can be ours
        _say(f"localkube: removed {state_dir} (it held no state.json)")
        return 0
    elapsed = Plane.load(state_dir).down(say=_say)
    _say(f"localkube: down in {elapsed:.1f} s; removed {state_dir}")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    plane = Plane.load(_state_dir(args))
    if args.action == "stop":
        outcome = plane.stop_node(args.node)
        _say(f"localkube: node {args.node} {outcome}; its pod processes and network namespaces are gone")
    else:
        elapsed = plane.start_node(args.node, args.timeout)
        _say(f"localkube: node {args.node} Ready in {elapsed:.1f} s")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    plane = Plane.load(_state_dir(args))
    st = plane.state
    report = plane.status()
    if args.json:
        status = {c: asdict(s) for c, s in report.items()}
        print(json.dumps({"state": st.to_json(), "status": status}, indent=2))
    else:
        net = st.network
        print(f"plane {st.name!r} ({st.phase}) in {st.root}")
        print(f"  server     {plane.server}")
        print(
            f"  network    index {net.index}, bridge {net.bridge} {net.bridge_ip}, services {net.service_cidr}"
        )
        for spec in plane_nodes(st):
            kind = (
                "kubelet + containerd"
                if st.node.get("runtime") == "containerd"
                else f"process {spec.component}"
            )
            print(f"  node       {spec.name} ({spec.pod_cidr}, {kind})")
        for component, s in report.items():
            state = "healthy" if s.healthy else "running" if s.running else "NOT RUNNING"
            print(f"  {component:<24} pid {s.pid:<8} {state:<12} rss {s.rss_kib // 1024} MiB")
        print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0 if all(s.healthy for s in report.values()) else 1


def cmd_logs(args: argparse.Namespace) -> int:
    logs = _state_dir(args) / "logs"
    if not logs.is_dir():
        raise PlaneError(f"no logs at {logs}")
    if args.component:
        path = logs / f"{args.component}.log"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(logs.glob("*.log")))
            raise PlaneError(f"no log for {args.component!r}; known: {known}")
        if args.lines:
            print(tail(path, args.lines))
        else:
            sys.stdout.write(path.read_text(errors="replace"))
        return 0
    for path in sorted(logs.glob("*.log")):
        print(f"==> {path} <==")
        print(tail(path, args.lines or 20))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localkube", description="A local Kubernetes control plane, no Docker.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default="default", help="plane name (default: %(default)s)")
    common.add_argument(
        "--state-dir",
        help="state directory (default: $LOCALKUBE_STATE or /dev/shm/dask-operator-kube-<name>)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="start a plane and print the KUBECONFIG export")
    up.add_argument("--bin-dir", help="binaries (default: $DASK_OPERATOR_BIN or the build script's cache)")
    up.add_argument("--no-node", action="store_true", help="do not start the process node")
    up.add_argument(
        "--simulated-node", action="store_true", help="node reports pods Running without processes"
    )
    up.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity the node advertises")
    up.add_argument(
        "--service-cidr",
        default="",
        help="Service ClusterIP range, /12 to /28 (default: a /20 of 10.96.0.0/12 per plane, 4,094 Services)",
    )
    up.add_argument("--force", action="store_true", help="take down a stale plane of the same name first")
    up.add_argument("--apiserver-port", type=int, help="fixed API server port (default: a free one)")
    up.add_argument(
        "--timeout", type=float, default=60.0, help="seconds each component may take to be healthy"
    )
    up.add_argument(
        "--runtime",
        choices=["process", "containerd"],
        default="process",
        help="process: our Python kubelet, pods as local processes (default); containerd: real nodes "
        "(upstream kubelet, containerd, runc, kube-proxy; images from hack/build-images.sh)",
    )
    up.add_argument(
        "--node-bin-dir", help="real nodes' binaries (default: $DASK_OPERATOR_NODE_BIN or hack/build-node.sh)"
    )
    up.add_argument(
        "--images-dir", help="image tarballs (default: $DASK_OPERATOR_IMAGES or hack/build-images.sh's cache)"
    )
    nodes = up.add_argument_group(
        "several nodes", "NODE in the per-node flags is a node name or ordinal (0 = first); flags repeat"
    )
    nodes.add_argument("--nodes", type=int, default=1, help="process nodes (>1 also starts kube-scheduler)")
    nodes.add_argument(
        "--node-names", help="comma-separated names (default: localkube-<i>, localkube-<i>-1, ...)"
    )
    nodes.add_argument("--node-labels", action="append", default=[], metavar="NODE=K=V[,K=V]")
    nodes.add_argument("--node-taints", action="append", default=[], metavar="NODE=KEY[=VALUE]:EFFECT[,...]")
    nodes.add_argument(
        "--node-capacity", action="append", default=[], metavar="NODE=cpu=2,memory=4Gi,pods=20"
    )
    nodes.add_argument(
        "--scheduler",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run kube-scheduler (default: only with several nodes; without it the node binds pods itself)",
    )
    nodes.add_argument(
        "--node-monitor-grace-period",
        type=float,
        metavar="SECONDS",
        help="how long a silent node stays Ready (KCM; default 50); the nodes heartbeat 4x as often",
    )
    nodes.add_argument(
        "--default-not-ready-toleration-seconds", type=int, metavar="SECONDS", help="API server; default 300"
    )
    nodes.add_argument(
        "--default-unreachable-toleration-seconds",
        type=int,
        metavar="SECONDS",
        help="API server; default 300",
    )
    up.set_defaults(func=cmd_up)

    node = sub.add_parser(
        "node", parents=[common], help="lose a node (stop: kill it and its pods' processes) or bring it back"
    )
    node.add_argument("action", choices=["stop", "start"])
    node.add_argument("node", metavar="NAME", help="node name or ordinal (0 = first)")
    node.add_argument("--timeout", type=float, default=60.0, help="seconds `start` may take to be Ready")
    node.set_defaults(func=cmd_node)

    down = sub.add_parser(
        "down", parents=[common], help="stop everything the plane recorded, remove its state"
    )
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", parents=[common], help="processes, health and memory of a plane")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", parents=[common], help="a component's log (all tails without one)")
    logs.add_argument("component", nargs="?", help="etcd, kube-apiserver, kube-controller-manager, node")
    logs.add_argument("-n", "--lines", type=int, default=0, help="last N lines only")
    logs.set_defaults(func=cmd_logs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PlaneError as e:
        _say(f"localkube: error: {e}")
        return 1
    except KeyboardInterrupt:
        _say("localkube: interrupted; processes started so far were stopped")
        return 130
