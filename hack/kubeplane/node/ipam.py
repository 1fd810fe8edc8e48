"""Pod IP allocation from one CIDR.

Invariant: an address is held by at most one owner (a pod UID) at a time; the network address, the
gateway (the first host, which is the bridge and node IP) and the broadcast address are never handed
out. Addresses are reused lowest-first after release.
"""

from __future__ import annotations

import heapq
import ipaddress
import threading


class AddressPoolExhausted(Exception):
    pass


class IPAM:
    def __init__(self, cidr: str, reserve_gateway: bool = True) -> None:
        self.network = ipaddress.ip_network(cidr, strict=False)
        hosts = list(self.network.hosts())
        self.gateway = str(hosts[0])
        self._free = [int(h) for h in (hosts[1:] if reserve_gateway else hosts)]
        heapq.heapify(self._free)  # a min-heap: the lowest free address goes first
        self._owner: dict[str, str] = {}  # owner -> ip
        self._lock = threading.Lock()

    def allocate(self, owner: str) -> str:
        with self._lock:
            if owner in self._owner:
                return self._owner[owner]
            if not self._free:
                raise AddressPoolExhausted(f"no free address in {self.network}")
            ip = str(ipaddress.ip_address(heapq.heappop(self._free)))
            self._owner[owner] = ip
            return ip

    def release(self, owner: str) -> None:
        with self._lock:
            ip = self._owner.pop(owner, None)
            if ip is not None:
                heapq.heappush(self._free, int(ipaddress.ip_address(ip)))

    def owned(self, owner: str) -> str | None:
        with self._lock:
            return self._owner.get(owner)

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._owner)
