"""Services and EndpointSlices -> DNS records and ClusterIP proxy routes (pure functions).

Invariant: a route lists only endpoints whose `conditions.ready` is not False (terminating and unready
endpoints get no new connections); a Service port matches a slice port by name, as kube-proxy does.
Only ClusterIPs inside the node's service CIDR get routes, so two nodes never claim one address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .dnsserver import DnsTable

JSON = dict[str, Any]
Frontend = tuple[str, int]  # (cluster IP, port); TCP only
Backend = tuple[str, int]  # (pod IP, target port)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class Routes:
    backends: dict[Frontend, tuple[Backend, ...]]
    cluster_ips: frozenset[str]


def _slices_by_service(slices: Iterable[JSON]) -> dict[tuple[str, str], list[JSON]]:
    out: dict[tuple[str, str], list[JSON]] = {}
    for s in slices:
        meta = s.get("metadata", {})
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc and s.get("addressType", "IPv4") == "IPv4":
            out.setdefault((meta.get("namespace", ""), svc), []).append(s)
    return out


def _ready(endpoint: JSON, include_unready: bool = False) -> bool:
    cond = endpoint.get("conditions") or {}
    if include_unready:
        return cond.get("serving", True) is not False or cond.get("ready", True) is not False
    return cond.get("ready", True) is not False


def _cluster_ip(svc: JSON) -> str | None:
    ip = (svc.get("spec") or {}).get("clusterIP")
    return ip if ip and ip != "None" else None


def build_routes(
    services: Iterable[JSON],
    slices: Iterable[JSON],
    service_cidr: str,
    static: Mapping[tuple[str, str], Backend] | None = None,
) -> Routes:
    """`static` pins a Service (namespace, name) to one backend, e.g. default/kubernetes -> the API server."""
    net = ipaddress.ip_network(service_cidr, strict=False)
    by_svc = _slices_by_service(slices)
    backends: dict[Frontend, tuple[Backend, ...]] = {}
    ips: set[str] = set()
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        cip = _cluster_ip(svc)
        if cip is None or ipaddress.ip_address(cip) not in net:
            continue
        ips.add(cip)
        key = (meta.get("namespace", ""), meta["name"])
        for port in spec.get("ports") or []:
            if port.get("protocol", "TCP") != "TCP":
                continue
            front = (cip, int(port["port"]))
            if static and key in static:
                backends[front] = (static[key],)
                continue
            pname = port.get("name") or ""
            found: list[Backend] = []
            for s in by_svc.get(key, []):
                for sp in s.get("ports") or []:
                    if (sp.get("name") or "") != pname or sp.get("port") is None:
                        continue
                    for ep in s.get("endpoints") or []:
                        if _ready(ep):
                            found += [(addr, int(sp["port"])) for addr in ep.get("addresses", [])]
            backends[front] = tuple(sorted(set(found)))
    return Routes(backends=backends, cluster_ips=frozenset(ips))


def build_dns(services: Iterable[JSON], slices: Iterable[JSON], domain: str = "cluster.local") -> DnsTable:
    by_svc = _slices_by_service(slices)
    a: dict[str, tuple[str, ...]] = {}
    srv: dict[str, tuple[tuple[int, str], ...]] = {}
    known: set[str] = {domain, f"svc.{domain}"}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ns, name = meta.get("namespace", ""), meta["name"]
        if spec.get("type") == "ExternalName":
            continue
        fqdn = f"{name}.{ns}.svc.{domain}".lower()
        known.add(f"{ns}.svc.{domain}".lower())
        known.add(fqdn)
        cip = _cluster_ip(svc)
        include_unready = bool(spec.get("publishNotReadyAddresses"))
        endpoints = [
            ep
            for s in by_svc.get((ns, name), [])
            for ep in s.get("endpoints") or []
            if _ready(ep, include_unready)
        ]
        if cip:
            a[fqdn] = (cip,)
        else:
            a[fqdn] = tuple(sorted({addr for ep in endpoints for addr in ep.get("addresses", [])}))
        for ep in endpoints:
            if ep.get("hostname") and ep.get("addresses"):
                a[f"{ep['hostname']}.{fqdn}".lower()] = tuple(ep["addresses"])
        for port in spec.get("ports") or []:
            if not port.get("name"):
                continue
            srv_name = f"_{port['name']}._{port.get('protocol', 'TCP').lower()}.{fqdn}".lower()
            if cip:
                srv[srv_name] = ((int(port["port"]), fqdn),)
            else:
                targets = [
                    (int(port["port"]), f"{ep['hostname']}.{fqdn}".lower())
                    for ep in endpoints
                    if ep.get("hostname")
                ]
                srv[srv_name] = tuple(targets)
    return DnsTable(a=a, srv=srv, known=frozenset(known))
