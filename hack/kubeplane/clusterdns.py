"""Cluster DNS for a plane of real nodes: one process answering on every node's bridge address, UDP 53.

The process node answers DNS itself; real kubelets are told `clusterDNS: <node IP>` and this process
serves that address. It reuses the process node's pieces: informers on Services and EndpointSlices and
the pure `build_dns` table.

Invariant: the table served is always `build_dns` of the informers' whole stores, rebuilt after every change
and swapped in at once; a name the table does not hold gets NXDOMAIN, never an upstream answer. Held by
test/unit/test_clusterdns.py.

Usage: python -m kubeplane.clusterdns --kubeconfig FILE --listen 10.244.3.1 [--listen ...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading

from kubeplane.node.dnsserver import DnsServer, DnsTable
from kubeplane.node.informer import Informer
from kubeplane.node.kubeapi import JSON, KubeClient, load_connection
from kubeplane.node.servicetable import build_dns

log = logging.getLogger("clusterdns")


class ClusterDns:
    """Informers feeding one DnsTable shared by a server per listen address."""

    def __init__(self, client: KubeClient, domain: str = "cluster.local") -> None:
        self.domain = domain
        self.table = DnsTable()
        self.changed = threading.Event()
        self.services = Informer(client, "/api/v1/services", self._poke, name="services")
        self.slices = Informer(
            client, "/apis/discovery.k8s.io/v1/endpointslices", self._poke, name="endpointslices"
        )

    def _poke(self, _kind: str, _obj: JSON) -> None:
        self.changed.set()

    def rebuild(self) -> DnsTable:
        self.changed.clear()
        self.table = build_dns(self.services.store.values(), self.slices.store.values(), self.domain)
        return self.table


async def serve(dns: ClusterDns, addresses: list[str], stop: asyncio.Event) -> None:
    servers = [DnsServer(a, 53, dns.domain) for a in addresses]
    for s in servers:
        await s.start()
    log.info("serving %s on %s", dns.domain, ", ".join(addresses))
    try:
        while not stop.is_set():
            if dns.changed.is_set():
                table = dns.rebuild()
                for s in servers:
                    s.table = table
            # The informers set `changed` from their threads; a short poll keeps this loop free of locks.
            await asyncio.sleep(0.2)
    finally:
        for s in servers:
            s.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clusterdns", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--listen", action="append", required=True, help="an address to serve; repeat")
    parser.add_argument("--domain", default="cluster.local")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dns = ClusterDns(KubeClient(load_connection(args.kubeconfig)), args.domain)
    dns.services.start()
    dns.slices.start()
    dns.changed.set()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(dns, args.listen, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
