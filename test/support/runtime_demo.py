"""The demonstration controller: one ConfigMap `<secret>-mirror` per Secret, holding a digest of each key.

Runs in-process (tests build it on their own Manager) or as a real operator process:
    python test/support/runtime_demo.py --kubeconfig K --namespace NS --actions FILE [--leader-elect ID]
Every action it takes is appended as one JSON line to the actions file (pid, identity, verb, name, time),
so tests can check that two processes never acted at the same time and nothing was created twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dask_operator.runtime import logs
from dask_operator.runtime.builder import ControllerBuilder
from dask_operator.runtime.client import Client
from dask_operator.runtime.kinds import CONFIGMAP, SECRET
from dask_operator.runtime.leaderelection import LeaderElectionConfig
from dask_operator.runtime.manager import Manager
from dask_operator.runtime.reconcile import Request, Result

FIELD_MANAGER = "demo-mirror"
MIRROR_SUFFIX = "-mirror"
SLOW_ANNOTATION = "demo/slow-seconds"  # a Secret carrying it makes its reconcile pause between two writes


def mirror_name(secret_name: str) -> str:
    return secret_name + MIRROR_SUFFIX


def desired_mirror(secret: dict[str, Any]) -> dict[str, Any]:
    """Pure: the mirror ConfigMap of a Secret."""
    meta = secret["metadata"]
    data = {
        key: hashlib.sha256(value.encode()).hexdigest()[:16]
        for key, value in sorted((secret.get("data") or {}).items())
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": mirror_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {"demo/mirror-of": meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": data,
    }


class ActionLog:
    def __init__(self, path: Path | None, identity: str) -> None:
        self.path = path
        self.identity = identity
        self.lock = threading.Lock()
        self.entries: list[dict[str, Any]] = []

    def write(self, verb: str, name: str) -> None:
        entry = {"pid": os.getpid(), "identity": self.identity, "verb": verb, "name": name, "t": time.time()}
        with self.lock:
            self.entries.append(entry)
            if self.path is not None:
                with self.path.open("a") as handle:
                    handle.write(json.dumps(entry) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())


class MirrorReconciler:
    def __init__(self, manager: Manager, actions: ActionLog) -> None:
        self.manager = manager
        self.actions = actions
        self.reconciles = 0

    def reconcile(self, request: Request) -> Result:
        self.reconciles += 1
        cache = self.manager.cache
        secret = cache.get(SECRET, request.namespace, request.name)
        if secret is None or secret["metadata"].get("name", "").endswith(MIRROR_SUFFIX):
            return Result()
        desired = desired_mirror(secret)
        existing = cache.get(CONFIGMAP, request.namespace, desired["metadata"]["name"])
        slow = float((secret["metadata"].get("annotations") or {}).get(SLOW_ANNOTATION, 0))
        if slow and existing is None:
            # creation takes two writes with a pause in between: a kill in the pause leaves a half-done
            # mirror, which the next reconcile (level-triggered) completes
            half = dict(desired, data={"state": "half"})
            if self.manager.applier.apply(half, FIELD_MANAGER) is not None:
                self.actions.write("half", request.name)
            time.sleep(slow)
        applied = self.manager.applier.apply(desired, FIELD_MANAGER)
        if applied is not None:
            self.actions.write("create" if existing is None else "update", request.name)
        return Result()


def build(manager: Manager, actions: ActionLog, workers: int = 2) -> MirrorReconciler:
    reconciler = MirrorReconciler(manager, actions)
    ControllerBuilder(manager).named("mirror").for_(SECRET).owns(CONFIGMAP).with_options(
        max_concurrent_reconciles=workers
    ).complete(reconciler)
    return reconciler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--actions", type=Path, required=True)
    parser.add_argument("--leader-elect", default=None, help="lease name")
    parser.add_argument("--identity", default=None)
    parser.add_argument("--lease", default="4,3,0.5", help="lease,renew,retry seconds")
    parser.add_argument("--health-port", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--watch-timeout", type=int, default=300)
    args = parser.parse_args(argv)
    logs.configure("info")
    client = Client.from_kubeconfig(args.kubeconfig)
    election = None
    identity = args.identity or f"pid-{os.getpid()}"
    if args.leader_elect:
        lease, renew, retry = (float(x) for x in args.lease.split(","))
        election = LeaderElectionConfig(
            args.leader_elect, namespace=args.namespace, identity=identity,
            lease_duration=lease, renew_deadline=renew, retry_period=retry,
        )  # fmt: skip
    manager = Manager(
        client,
        namespace=args.namespace,
        leader_election=election,
        metrics_address=("127.0.0.1", args.metrics_port),
        health_address=("127.0.0.1", args.health_port),
        min_watch_timeout=args.watch_timeout,
        graceful_shutdown_timeout=10,
    )
    build(manager, ActionLog(args.actions, identity))
    threading.Thread(target=_announce_ports, args=(manager,), daemon=True).start()
    return manager.run()


def _announce_ports(manager: Manager) -> None:
    while manager.health_port is None:
        time.sleep(0.01)
    print(json.dumps({"health": manager.health_port, "metrics": manager.metrics_port}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
