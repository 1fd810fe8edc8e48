"""The process node's Service proxy hands a pod's connection to the pod's own node (hack/kubeplane/node/
handover.py): two proxies in one process stand for two nodes, 127.0.0.0/24 and 127.0.1.0/24 for their pod
ranges inside 127.0.0.0/16, and each proxy's backend says which node served the connection."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from kubeplane.node.handover import HandOver
from kubeplane.node.serviceproxy import ServiceProxy

CLUSTER = "127.0.0.0/16"
OWNER_RANGE, ACCEPTOR_RANGE = "127.0.0.0/24", "127.0.1.0/24"
POD_OF_OWNER, POD_OF_ACCEPTOR, OWNER_NODE_IP = "127.0.0.5", "127.0.1.5", "127.0.0.1"


async def _backend(name: bytes) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        writer.write(name)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _served_by(acceptor: ServiceProxy, front: tuple[str, int], peer: str) -> bytes:
    """Connects from `peer` to a listener standing for the acceptor's, and gives it what was accepted."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        client = socket.socket()
        client.bind((peer, 0))
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        conn, _ = await loop.sock_accept(listener)
    served = loop.create_task(acceptor.accepted(front, conn))
    reader, writer = await asyncio.open_connection(sock=client)
    writer.write(b"?")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await asyncio.wait_for(served, 10)
    return answer


def _scenario(
    tmp_path: Path, owner_up: bool, peers: list[str]
) -> tuple[list[bytes], ServiceProxy, ServiceProxy]:
    async def run() -> tuple[list[bytes], ServiceProxy, ServiceProxy]:
        (server_a, port_a), (server_b, port_b) = await _backend(b"acceptor"), await _backend(b"owner")
        front = ("127.0.0.1", _free_port())
        acceptor = ServiceProxy(HandOver(tmp_path, ACCEPTOR_RANGE, CLUSTER))
        owner = ServiceProxy(HandOver(tmp_path, OWNER_RANGE, CLUSTER))
        await acceptor.start()
        await owner.start()
        await acceptor.update({front: (("127.0.0.1", port_a),)})
        await owner.update({front: (("127.0.0.1", port_b),)})
        if not owner_up:  # a stopped node: its socket file is left behind, nobody reads it
            await owner.close()
            (tmp_path / "127.0.0.0.sock").touch()
        try:
            return [await _served_by(acceptor, front, peer) for peer in peers], acceptor, owner
        finally:
            await acceptor.close()
            await owner.close()
            server_a.close()
            server_b.close()

    return asyncio.run(run())


def test_a_connection_from_another_nodes_pod_is_served_by_that_node(tmp_path: Path) -> None:
    got, acceptor, owner = _scenario(tmp_path, owner_up=True, peers=[POD_OF_OWNER, POD_OF_OWNER])
    assert got == [b"owner", b"owner"]
    assert (acceptor.handed_over, owner.received) == (2, 2)
    assert not (tmp_path / "127.0.0.0.sock").exists(), "a node that stops cleanly removes its socket"


def test_own_pods_and_the_host_stay_with_the_node_that_accepted(tmp_path: Path) -> None:
    got, acceptor, owner = _scenario(tmp_path, owner_up=True, peers=[POD_OF_ACCEPTOR, OWNER_NODE_IP])
    assert got == [b"acceptor", b"acceptor"]
    assert (acceptor.handed_over, owner.received) == (0, 0)


def test_an_unreachable_owner_leaves_the_connection_with_the_node_that_accepted(tmp_path: Path) -> None:
    got, acceptor, _ = _scenario(tmp_path, owner_up=False, peers=[POD_OF_OWNER])
    assert got == [b"acceptor"]
    assert acceptor.handed_over == 0


def test_the_owner_is_the_node_of_the_peers_pod_range(tmp_path: Path) -> None:
    handover = HandOver(tmp_path, "10.244.5.0/24", "10.244.0.0/16")
    assert handover.owner("10.244.253.7") == tmp_path / "10.244.253.0.sock"
    assert handover.owner("10.244.5.7") is None, "this node's own pod"
    assert handover.owner("10.244.253.1") is None, "a node IP: the host"
    assert handover.owner("10.96.5.1") is None, "outside the cluster range: the host"
