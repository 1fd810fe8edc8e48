"""Cluster DNS for pods: answers Service names from a record table, on the bridge IP, UDP port 53.

Invariant: only names under the cluster domain are answered; a known name with no record of the asked
type gets an empty NOERROR answer (so resolvers do not fall through the search path), anything else
NXDOMAIN; there is no upstream. `answer` is pure; the server swaps in whole new tables atomically.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RCODE, RR, SRV, A, DNSRecord

log = logging.getLogger(__name__)

TTL = 5


@dataclass(frozen=True)
class DnsTable:
    """Names are lower-case, without the trailing dot, fully qualified under the cluster domain."""

    a: dict[str, tuple[str, ...]] = field(default_factory=dict)
    srv: dict[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)  # name -> (port, target)
    known: frozenset[str] = frozenset()  # names that exist (services, namespaces, domain parts)


def answer(request: DNSRecord, table: DnsTable, domain: str = "cluster.local") -> DNSRecord:
    reply = request.reply()
    reply.header.ra = 0
    q = request.q
    name = str(q.qname).rstrip(".").lower()
    qtype = QTYPE[q.qtype]
    exists = name in table.a or name in table.srv or name in table.known
    if not exists:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply
    if qtype in ("A", "ANY"):
        for ip in table.a.get(name, ()):
            reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(ip), ttl=TTL))
    if qtype in ("SRV", "ANY"):
        for port, target in table.srv.get(name, ()):
            reply.add_answer(RR(q.qname, QTYPE.SRV, rdata=SRV(0, 100, port, target + "."), ttl=TTL))
            for ip in table.a.get(target, ()):
                reply.add_ar(RR(target + ".", QTYPE.A, rdata=A(ip), ttl=TTL))
    # AAAA and other types: an empty NOERROR answer (IPv4-only cluster), never a made-up address.
    return reply


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = DNSRecord.parse(data)
            reply = answer(request, self.server.table, self.server.domain)
            packed = reply.pack()
        except Exception as e:  # noqa: BLE001 - dnslib raises many types; a bad packet must not stop us
            log.debug("dns: bad request from %s: %s", addr, e)
            return
        if self.transport is not None:
            self.transport.sendto(packed, addr)


class DnsServer:
    def __init__(self, host: str, port: int = 53, domain: str = "cluster.local") -> None:
        self.host = host
        self.port = port
        self.domain = domain
        self.table = DnsTable()
        self._transport: Any = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
