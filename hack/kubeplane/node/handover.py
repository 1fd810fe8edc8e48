"""Hand-over of a ClusterIP connection to the node that runs its client pod, as kube-proxy does: a pod's
Service traffic is proxied by the pod's own node, so stopping one node cuts only its own pods' connections.

Invariant: a connection accepted from a pod of another node of the plane (its peer address lies in that
node's pod range and is not the node's own IP) is passed with SCM_RIGHTS over a unix datagram socket,
`<dir>/<range's network address>.sock`, to that node, and the accepting node then holds no reference to it.
A connection from this node's pods, from the host (a node IP or any address outside the cluster range), or
whose owner's socket is missing or refuses, stays with the node that accepted it. Every node's pod range
has this node's prefix length. Held by test/unit/test_process_node_handover.py.
"""

from __future__ import annotations

import array
import contextlib
import ipaddress
import logging
import os
import socket
from pathlib import Path

from .servicetable import Frontend

log = logging.getLogger(__name__)

MAX_MESSAGE = 128  # one frontend, "ip:port"


class HandOver:
    """The hand-over sockets of one plane's nodes, seen from the node that owns `own_cidr`."""

    def __init__(self, directory: Path, own_cidr: str, cluster_cidr: str) -> None:
        self.directory = directory
        self.own = ipaddress.ip_network(own_cidr, strict=False)
        self.cluster = ipaddress.ip_network(cluster_cidr, strict=False)
        self.inbox: socket.socket | None = None

    def socket_path(self, pod_range: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Path:
        return self.directory / f"{pod_range.network_address}.sock"

    def owner(self, peer: str) -> Path | None:
        """The hand-over socket of the node whose pod `peer` is; None when it stays here."""
        ip = ipaddress.ip_address(peer)
        if ip not in self.cluster or ip in self.own:
            return None
        pod_range = ipaddress.ip_network(f"{peer}/{self.own.prefixlen}", strict=False)
        if ip == pod_range.network_address + 1:  # the node's IP: the host, not a pod
            return None
        return self.socket_path(pod_range)

    def pass_on(self, front: Frontend, conn: socket.socket) -> bool:
        """Sends `conn` to its pod's node and closes this node's reference; False if it stays here."""
        try:
            path = self.owner(conn.getpeername()[0])
        except OSError:  # the client is already gone
            return False
        if path is None:
            return False
        message = f"{front[0]}:{front[1]}".encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.setblocking(False)
            try:
                # sendmsg, not socket.send_fds: that one ignores its address argument (Python 3.11)
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))]
                out.sendmsg([message], rights, 0, str(path))
            except OSError as e:  # no such node, a stopped node's stale socket, a full queue
                log.debug("proxy: hand-over of %s:%s to %s failed: %s", *front, path, e)
                return False
        conn.close()
        return True

    def open_inbox(self) -> socket.socket:
        """Binds this node's socket (replacing a stale one left by a killed node); non-blocking."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.socket_path(self.own)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.bind(str(path))
        inbox.setblocking(False)
        self.inbox = inbox
        return inbox

    def receive(self) -> list[tuple[Frontend, socket.socket]]:
        """The connections handed to this node and waiting in its inbox, each with its frontend."""
        got: list[tuple[Frontend, socket.socket]] = []
        while self.inbox is not None:
            try:
                message, fds, _, _ = socket.recv_fds(self.inbox, MAX_MESSAGE, 1)
            except (BlockingIOError, InterruptedError):
                break
            if not fds:
                continue
            for extra in fds[1:]:
                os.close(extra)
            conn = socket.socket(fileno=fds[0])
            host, _, port = message.decode(errors="replace").rpartition(":")
            if not host or not port.isdigit():
                conn.close()
                continue
            conn.setblocking(False)
            got.append(((host, int(port)), conn))
        return got

    def close_inbox(self) -> None:
        if self.inbox is None:
            return
        self.inbox.close()
        self.inbox = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path(self.own).unlink()
