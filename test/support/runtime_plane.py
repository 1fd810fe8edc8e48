"""Helpers for runtime integration tests: clients through fault proxies, request logs, small kubectl wrappers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask_operator.runtime.client import ApiError, Client, RequestRecord
from dask_operator.runtime.credentials import Credentials
from dask_operator.runtime.kinds import Kind
from support.faultproxy import FaultProxy, client_tls_context


class RequestLog:
    """Every request a Client issued (method, path, params, code), in order; thread-safe."""

    def __init__(self, client: Client) -> None:
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self.remove = client.add_observer(self._add)

    def _add(self, record: RequestRecord) -> None:
        with self._lock:
            self.records.append(record)

    def matching(self, predicate: Callable[[RequestRecord], bool]) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.records if predicate(r)]

    def watches(self, path_part: str = "") -> list[RequestRecord]:
        return self.matching(lambda r: r.params.get("watch") == "true" and path_part in r.path)

    def lists(self, path_part: str = "") -> list[RequestRecord]:
        return self.matching(lambda r: r.method == "GET" and "watch" not in r.params and path_part in r.path)

    def writes(self) -> list[RequestRecord]:
        return self.matching(lambda r: r.method in ("POST", "PUT", "PATCH", "DELETE"))

    def clear(self) -> None:
        with self._lock:
            self.records.clear()


def tcp_proxy(kube_plane: Any) -> FaultProxy:
    """A byte-level proxy: TLS passes end to end."""
    return FaultProxy(kube_plane.server)


def http_proxy(kube_plane: Any) -> FaultProxy:
    """A request-level proxy: plain HTTP from the client, TLS with the admin certificate to the API server."""
    tls = client_tls_context(str(kube_plane.ca_file), str(kube_plane.client_cert), str(kube_plane.client_key))
    return FaultProxy(kube_plane.server, upstream_tls=tls)


def client_via(kube_plane: Any, proxy: FaultProxy, tmp_path: Path, **options: Any) -> Client:
    """A Client whose requests all cross proxy."""
    if proxy.upstream_tls is not None:
        return Client(Credentials(host=proxy.url), **options)
    path = kube_plane.write_kubeconfig(proxy.url, tmp_path / f"via-{proxy.port}.kubeconfig")
    return Client.from_kubeconfig(str(path), **options)


def direct_client(kube_plane: Any, **options: Any) -> Client:
    return Client.from_kubeconfig(str(kube_plane.kubeconfig), **options)


def watch_cache_answers_410(client: Client, kind: Kind, namespace: str) -> bool:
    """Whether the API server answers a watch from resourceVersion 1 with 410 Gone. Only once its watch cache
    for `kind` is ready: until then it serves such a watch from etcd, which replays everything since then
    (the first consistent LIST does not wait for the cache as a resourceVersion=0 one does)."""
    try:
        stream = client.watch(kind, namespace, "1", 1, allow_bookmarks=False)
    except ApiError as error:
        return error.expired
    try:
        for event in stream:
            return event.get("type") == "ERROR" and (event.get("object") or {}).get("code") == 410
        return False
    finally:
        stream.close()
