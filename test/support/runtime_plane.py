"""Helpers for runtime integration tests: clients through fault proxies, request logs, small kubectl wrappers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask_operator.runtime.client import Client, RequestRecord
from dask_operator.runtime.credentials import Credentials
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
