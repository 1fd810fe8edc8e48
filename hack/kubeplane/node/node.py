"""The process node: wires registration, binding, pod runtimes, services (DNS + proxy) and logs.

Invariant: everything is driven by three watches (pods, services, endpointslices); informer callbacks
only dispatch (never block on the API). Unbound pods are bound here only while no kube-scheduler runs
(`self_bind`). Real pods get one runtime thread each; simulated pods share a
fixed work pool. `stop()` leaves nothing on the host: pod processes, netns, veths, ClusterIP
addresses and the bridge are removed before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import netns as net
from .binder import Binder
from .context import NodeConfig, NodeContext, is_simulated
from .dnsserver import DnsServer
from .envvars import ServiceEnv
from .events import EventRecorder
from .handover import HandOver
from .informer import Informer
from .kubeapi import ApiError, KubeClient, load_connection
from .kubeletserver import KubeletServer, RunningContainer
from .logfiles import LogPump
from .podexec import ContainerProcess
from .podworker import PodRuntime
from .registration import Registration, capacity, node_labels
from .resources import ResourceRecord
from .serviceproxy import ServiceProxy
from .servicetable import build_dns, build_routes
from .simulated import SimulatedPods
from .workpool import WorkPool

log = logging.getLogger(__name__)

JSON = dict[str, Any]


class NetLoop:
    """One asyncio loop thread for the DNS server and the ClusterIP proxy."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="netloop", daemon=True)
        self._thread.start()

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class ServiceSync:
    """Recomputes DNS and proxy routes from the service and slice stores, at most every 50 ms."""

    def __init__(self, node: ProcessNode) -> None:
        self.node = node
        self.dirty = threading.Event()
        self.stopped = False
        self.cluster_ips: set[str] = set()
        self.env_by_ns: dict[str, dict[str, str]] = {}
        self._thread = threading.Thread(target=self._loop, name="services", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self, _kind: str = "", _obj: JSON | None = None) -> None:
        self.dirty.set()

    def _loop(self) -> None:
        while not self.stopped:
            self.dirty.wait(5.0)
            if self.stopped:
                return
            if not self.dirty.is_set():
                continue
            time.sleep(0.05)  # let a burst of events collapse into one recompute
            self.dirty.clear()
            try:
                self.sync()
            except Exception:
                log.exception("service sync failed")
                self.dirty.set()

    def sync(self) -> None:
        node = self.node
        services = list(node.services.store.values())
        slices = list(node.slices.store.values())
        routes = build_routes(services, slices, node.cfg.service_cidr, static=node.static_backends)
        # Backends outside the pod CIDRs (simulated pods) are never dialled: nothing must leave the box.
        pod_net = ipaddress.ip_network(node.cfg.routable_pod_cidr)
        backends = {
            front: tuple(
                b for b in bs if ipaddress.ip_address(b[0]) in pod_net or b in node.static_backends.values()
            )
            for front, bs in routes.backends.items()
        }
        for ip in sorted(routes.cluster_ips - self.cluster_ips):
            net.add_address(node.cfg.bridge, ip)
        node.netloop.call(node.proxy.update(backends))
        for ip in sorted(self.cluster_ips - routes.cluster_ips):
            net.delete_address(node.cfg.bridge, ip)
        self.cluster_ips = set(routes.cluster_ips)
        node.dns.table = build_dns(services, slices, node.cfg.cluster_domain)
        env: dict[str, dict[str, str]] = {}
        for svc in services:
            meta, spec = svc["metadata"], svc.get("spec") or {}
            cip = spec.get("clusterIP")
            if not cip or cip == "None":
                continue
            ports = tuple(
                (p.get("name") or "", int(p["port"]), p.get("protocol", "TCP"))
                for p in spec.get("ports") or []
            )
            env.setdefault(meta["namespace"], {}).update(ServiceEnv(meta["name"], cip, ports).variables())
        self.env_by_ns = env

    def service_env(self, ns: str) -> Mapping[str, str]:
        if ns == "":  # the master service variables every pod gets
            k = self.env_by_ns.get("default", {})
            return {key: v for key, v in k.items() if key.startswith("KUBERNETES_")}
        return self.env_by_ns.get(ns, {})


class ProcessNode:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.client = KubeClient(load_connection(cfg.kubeconfig), maxsize=24)
        self.stopping = threading.Event()
        self.runtimes: dict[str, PodRuntime] = {}
        self._lock = threading.Lock()
        server = urlsplit(self.client.conn.server)
        self.static_backends = {
            ("default", "kubernetes"): (server.hostname or "127.0.0.1", server.port or 443)
        }

    # --- start ------------------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        cfg.pods_dir.mkdir(parents=True, exist_ok=True)
        self.record = ResourceRecord(cfg.state_dir)
        self.pump = LogPump()
        self.ctx = NodeContext(cfg, self.client, self.record, self.pump)
        self.pool = WorkPool(8, "api")
        self.ctx.event = EventRecorder(self.client, self.pool, cfg.node_name)
        self.ctx.default_route = _ip_forward() == 0
        if not self.ctx.default_route:
            log.warning(
                "net.ipv4.ip_forward=1: pods get no default route (nothing can leave the machine), only a "
                "route to the Service range through the node"
            )
        if cfg.shared_bridge:  # `localkube down` removes it once every node of the plane is gone
            net.join_bridge(cfg.bridge, cfg.node_ip, cfg.node_prefixlen)
        else:
            self.record.set_bridge(cfg.bridge)
            net.ensure_bridge(cfg.bridge, cfg.node_ip, cfg.node_prefixlen)
        # Simulated pod IPs route into the bridge (where nothing answers) instead of out of the machine.
        net._ip(["route", "replace", cfg.simulated_cidr, "dev", cfg.bridge])
        self.netloop = NetLoop()
        self.dns = DnsServer(cfg.node_ip, 53, cfg.cluster_domain)
        self.netloop.call(self.dns.start())
        handover = None
        if cfg.handover_dir is not None and cfg.cluster_cidr:
            handover = HandOver(cfg.handover_dir, cfg.pod_cidr, cfg.cluster_cidr)
        self.proxy = ServiceProxy(handover)
        self.logs = KubeletServer(
            cfg.node_ip,
            cfg.kubelet_port,
            cfg.kubelet_cert,
            cfg.kubelet_key,
            cfg.client_ca,
            NodePods(self),
            self.pump.is_open,
        )
        self.logs.start()
        self.registration = Registration(cfg, self.client)
        self.registration.register()
        self.registration.start()
        cap = capacity(cfg)
        self.ctx.allocatable = dict(cap)
        self.binder = Binder(self.ctx, self.pool, node_labels(cfg), cap)
        self.simulated = SimulatedPods(self.ctx, self.pool)
        self.sync = ServiceSync(self)
        self.ctx.service_env = self.sync.service_env
        self.services = Informer(self.client, "/api/v1/services", self.sync.poke, name="services")
        self.slices = Informer(
            self.client, "/apis/discovery.k8s.io/v1/endpointslices", self.sync.poke, name="endpointslices"
        )
        self.services.start()
        self.slices.start()
        self.services.wait_synced(30)
        self.slices.wait_synced(30)
        self.sync.sync()
        self.netloop.call(self.proxy.start())  # with its routes: a connection handed over can be served
        self.sync.start()
        self.pods = Informer(self.client, "/api/v1/pods", self._on_pod, name="pods")
        self.pods.start()
        log.info(
            "node %s ready: bridge %s %s, kubelet port %s",
            cfg.node_name,
            cfg.bridge,
            cfg.node_ip,
            cfg.kubelet_port,
        )

    def _runtime(self, ns: str, name: str) -> PodRuntime | None:
        with self._lock:
            for rt in self.runtimes.values():
                if rt.ns == ns and rt.name == name:
                    return rt
        return None

    def _pod_dir(self, ns: str, name: str) -> Path | None:
        with self._lock:
            for rt in self.runtimes.values():
                if rt.ns == ns and rt.name == name:
                    return rt.pod_dir
        candidates = sorted(self.cfg.pods_dir.glob(f"{ns}_{name}_*"), key=lambda p: p.stat().st_mtime)
        return candidates[-1] if candidates else None

    # --- pods -------------------------------------------------------------------------------------------

    def _on_pod(self, kind: str, pod: JSON) -> None:
        if self.stopping.is_set():
            return
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = meta["uid"]
        node = spec.get("nodeName")
        if kind == "DELETED":
            with self._lock:
                rt = self.runtimes.pop(uid, None)
            if rt is not None:
                rt.mark_gone()
            if node == self.cfg.node_name and is_simulated(self.cfg, pod):
                self.simulated.forget(pod)
            return
        if not node:
            if self.cfg.self_bind:
                self.binder.offer(pod)
            return
        if node != self.cfg.node_name:
            return
        if is_simulated(self.cfg, pod):
            self.simulated.offer(pod)
            return
        with self._lock:
            rt = self.runtimes.get(uid)
            if rt is None:
                phase = (pod.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    if meta.get("deletionTimestamp"):
                        self._final_delete(pod)  # finished before this node (re)started
                    return
                rt = PodRuntime(self.ctx, pod)
                self.runtimes[uid] = rt
                rt.start()
                return
        rt.update(pod)

    def _final_delete(self, pod: JSON) -> None:
        meta = pod["metadata"]

        def delete() -> None:
            with contextlib.suppress(ApiError):
                self.client.request(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                )

        self.pool.submit(("delete", meta["uid"]), delete)

    # --- stop ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops pods (TERM, then KILL), removes netns, addresses and the bridge."""
        self.stopping.set()
        for informer in (
            getattr(self, "pods", None),
            getattr(self, "services", None),
            getattr(self, "slices", None),
        ):
            if informer is not None:
                informer.stop()
        if hasattr(self, "sync"):
            self.sync.stopped = True
            self.sync.dirty.set()
        if hasattr(self, "registration"):
            self.registration.stop()
        with self._lock:
            runtimes = list(self.runtimes.values())
        for rt in runtimes:
            rt.stop_for_shutdown()
        for rt in runtimes:
            rt.done.wait(15)
        if hasattr(self, "logs"):
            with contextlib.suppress(Exception):
                self.logs.stop()
        if hasattr(self, "netloop"):
            with contextlib.suppress(Exception):
                self.netloop.call(self.proxy.close(), timeout=5)
            self.dns.close()
            self.netloop.stop()
        if hasattr(self, "pool"):
            self.pool.stop()
        if hasattr(self, "pump"):
            self.pump.stop()
        # Whatever a runtime could not remove (it timed out): the crash cleanup knows the rest.
        from .cleanup import cleanup

        cleanup(self.cfg.state_dir)
        if not self.cfg.shared_bridge:
            net.delete_bridge(self.cfg.bridge)


class NodePods:
    """What the kubelet server may know of this node's pods (implements kubeletserver.PodLookup)."""

    def __init__(self, node: ProcessNode) -> None:
        self.node = node

    def pod_dir(self, namespace: str, pod: str) -> Path | None:
        return self.node._pod_dir(namespace, pod)

    def pod_uid(self, namespace: str, pod: str) -> str | None:
        rt = self.node._runtime(namespace, pod)
        return rt.uid if rt else None

    def netns_path(self, namespace: str, pod: str) -> str | None:
        rt = self.node._runtime(namespace, pod)
        if rt is None or not rt.sandbox:
            return None
        return f"/run/netns/{rt.netns}"

    def container(self, namespace: str, pod: str, container: str) -> RunningContainer | None:
        rt = self.node._runtime(namespace, pod)
        if rt is None:
            return None
        for c in rt.containers:
            proc = c.proc
            if c.name != container or proc is None:
                continue
            cwd = c.spec.get("workingDir") or str(rt.pod_dir / "workdir")
            return RunningContainer(
                process=ContainerProcess(pid=proc.pid, cwd=cwd, env=dict(c.env)),
                log_path=c.log_dir / f"{c.runs - 1}.log",
                stdin=proc.stdin,
                stdin_once=bool(c.spec.get("stdinOnce")),
            )
        return None


def _ip_forward() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_forward").read_text().strip())
    except (OSError, ValueError):
        return 0
