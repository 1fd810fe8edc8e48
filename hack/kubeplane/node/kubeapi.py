"""A small JSON REST client for the Kubernetes API: requests with timeouts, and watch streams.

Invariant: every request carries a connect and a read timeout, so a dead connection surfaces as an
error instead of hanging a thread; a non-2xx answer is always raised as `ApiError` with its status.
"""

from __future__ import annotations

import atexit
import base64
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
import yaml

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


def _material(section: dict[str, Any], key: str, workdir: list[Path]) -> str | None:
    """A kubeconfig file reference, or its inline `-data` written to a private file."""
    if section.get(f"{key}-data"):
        if not workdir:
            workdir.append(Path(tempfile.mkdtemp(prefix="kubeplane-node-")))
            atexit.register(shutil.rmtree, workdir[0], True)
        path = workdir[0] / key
        path.write_bytes(base64.b64decode(section[f"{key}-data"]))
        path.chmod(0o600)
        return str(path)
    return str(section[key]) if section.get(key) else None


def load_connection(kubeconfig: str) -> Connection:
    """Reads the current context of a kubeconfig (certificates, or a bearer token).

    Parsed here rather than with the `kubernetes` package: importing that costs the node ~40 MiB.
    """
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    ctx_name = cfg.get("current-context") or cfg["contexts"][0]["name"]
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user: dict[str, Any] = next(
        (u["user"] for u in cfg.get("users") or [] if u["name"] == ctx.get("user")), {}
    )
    workdir: list[Path] = []  # created only if the kubeconfig holds inline data
    token = user.get("token")
    return Connection(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=_material(cluster, "certificate-authority", workdir),
        cert_file=_material(user, "client-certificate", workdir),
        key_file=_material(user, "client-key", workdir),
        token=f"Bearer {token}" if token else None,
        verify=not cluster.get("insecure-skip-tls-verify", False),
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
