"""Command line of the process node; `hack/localkube up` starts it, SIGTERM stops it cleanly.

Invariant: the process exits 0 after SIGTERM or SIGINT only once every pod process, netns, veth,
ClusterIP address and the bridge it created are gone; it logs to stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from .context import NodeConfig
from .node import ProcessNode


def parse_args(argv: list[str]) -> NodeConfig:
    p = argparse.ArgumentParser(prog="python -m kubeplane.node", description=__doc__)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node-name", required=True)
    p.add_argument("--bridge", required=True)
    p.add_argument("--pod-cidr", required=True)
    p.add_argument("--service-cidr", required=True)
    p.add_argument("--kubelet-port", required=True, type=int)
    p.add_argument("--kubelet-cert", required=True)
    p.add_argument("--kubelet-key", required=True)
    p.add_argument("--client-ca", required=True)
    p.add_argument("--simulated", action="store_true", help="run no process: every pod is simulated")
    p.add_argument("--gpus", type=int, default=0, help="advertise this many nvidia.com/gpu")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--shared-bridge", action="store_true", help="other nodes of the plane use the bridge too")
    p.add_argument("--cluster-cidr", default="", help="every node's pods (on-link from each pod)")
    p.add_argument("--proxy-handover-dir", type=Path, default=None,
                   help="the plane's nodes pass each other their pods' Service connections here")  # fmt: skip
    p.add_argument("--no-bind", action="store_true", help="kube-scheduler places pods; never self-bind")
    p.add_argument("--heartbeat-seconds", type=float, default=10.0, help="Lease renewal period")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a Node label")
    p.add_argument("--taint", action="append", default=[], metavar="KEY[=VALUE]:EFFECT", help="a Node taint")
    p.add_argument("--capacity", action="append", default=[], metavar="RESOURCE=QUANTITY")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    return NodeConfig(
        state_dir=a.state_dir,
        kubeconfig=a.kubeconfig,
        node_name=a.node_name,
        bridge=a.bridge,
        pod_cidr=a.pod_cidr,
        service_cidr=a.service_cidr,
        kubelet_port=a.kubelet_port,
        kubelet_cert=a.kubelet_cert,
        kubelet_key=a.kubelet_key,
        client_ca=a.client_ca,
        simulated=a.simulated,
        gpus=a.gpus,
        cluster_domain=a.cluster_domain,
        shared_bridge=a.shared_bridge,
        cluster_cidr=a.cluster_cidr,
        handover_dir=a.proxy_handover_dir,
        self_bind=not a.no_bind,
        heartbeat_seconds=a.heartbeat_seconds,
        labels=tuple(_pair(x) for x in a.label),
        taints=tuple(_taint(x) for x in a.taint),
        capacity=tuple(_pair(x) for x in a.capacity),
    )


def _pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def _taint(text: str) -> tuple[str, str, str]:
    kv, _, effect = text.rpartition(":")
    key, _, value = kv.partition("=")
    return key, value, effect


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node = ProcessNode(cfg)
    log = logging.getLogger("kubeplane.node")
    try:
        node.start()
        while not stop.wait(1.0):
            pass
        log.info("stopping: terminating pods and removing the network")
    except Exception:
        log.exception("node failed")
        node.stop()
        return 1
    node.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
