"""A small JSON REST client for the Kubernetes API: requests with timeouts, and watch streams.

Invariant: every request carries a connect and a read timeout, so a dead connection surfaces as an
error instead of hanging a thread; a non-2xx answer is always raised as `ApiError` with its status.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server (`status` is the HTTP status, 0 for a transport error)."""

    def __init__(self, status: int, reason: str, body: Any = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


@dataclass(frozen=True)
class Connection:
    server: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    token: str | None
    verify: bool


def load_connection(kubeconfig: str) -> Connection:
    """Reads a kubeconfig with the official loader (it materialises inline certificate data as files)."""
    cfg = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    token = cfg.api_key.get("authorization") if cfg.api_key else None
    return Connection(
        server=cfg.host.rstrip("/"),
        ca_file=cfg.ssl_ca_cert,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        token=token,
        verify=bool(cfg.verify_ssl),
    )


class KubeClient:
    """Thread-safe: urllib3 pools keep-alive connections, one per concurrent caller up to `maxsize`."""

    def __init__(self, conn: Connection, maxsize: int = 16) -> None:
        self.conn = conn
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=maxsize,
            block=False,
            cert_reqs="CERT_REQUIRED" if conn.verify else "CERT_NONE",
            ca_certs=conn.ca_file,
            cert_file=conn.cert_file,
            key_file=conn.key_file,
        )
        self._headers = {"Accept": "application/json", "User-Agent": "kubeplane-node"}
        if conn.token:
            self._headers["Authorization"] = conn.token
        self.requests = 0  # for the benchmark: API calls made
        self._count_lock = threading.Lock()

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        return self.conn.server + path + (("?" + urlencode(q)) if q else "")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        with self._count_lock:
            self.requests += 1
        try:
            resp = self._pool.request(
                method,
                self._url(path, query),
                body=data,
                headers=headers,
                timeout=urllib3.Timeout(connect=5.0, read=timeout),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as e:
            raise ApiError(0, f"transport error: {e}") from e
        payload: Any
        try:
            payload = json.loads(resp.data) if resp.data else {}
        except ValueError:
            payload = resp.data.decode(errors="replace")
        if resp.status >= 300:
            reason = payload.get("message", resp.reason) if isinstance(payload, dict) else str(payload)
            raise ApiError(resp.status, str(reason), payload)
        return payload if isinstance(payload, dict) else {"raw": payload}

    def get(self, path: str, **query: Any) -> JSON:
        return self.request("GET", path, query=query)

    def watch(self, path: str, query: dict[str, Any], server_timeout: int) -> Iterator[JSON]:
        """Yields watch events until the server closes the stream (after `server_timeout` seconds).

        The read timeout exceeds the server's timeout by a margin, so a silent dead connection ends
        the stream with an ApiError instead of blocking forever.
        """
        q = dict(query, watch="true", timeoutSeconds=server_timeout, allowWatchBookmarks="true")
        try:
            resp = self._pool.request(
                "GET",
                self._url(path, q),
                headers=self._headers,
                timeout=urllib3.Timeout(connect=5.0, read=server_timeout + 30),
                preload_content=False,
                retries=False,
            )
        except urllib3.exceptions.HTTPError as e:
            raise ApiError(0, f"transport error: {e}") from e
        try:
            if resp.status >= 300:
                body = resp.read()
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"message": body.decode(errors="replace")}
                raise ApiError(resp.status, str(payload.get("message", resp.reason)), payload)
            buf = b""
            try:
                for chunk in resp.stream(65536, decode_content=True):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield json.loads(line)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise ApiError(0, f"watch stream broken: {e}") from e
        finally:
            resp.release_conn()
