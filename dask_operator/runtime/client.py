"""A small Kubernetes REST client: kubeconfig/in-cluster credentials (runtime/credentials.py), urllib3 transport.

Invariant: every HTTP request carries a timeout (a watch's read timeout is longer than its timeoutSeconds),
is counted once in rest_client_requests_total{code,method,host}, and only transient failures of a single call
(connection errors, 429 after Retry-After, 5xx on idempotent calls) are retried, briefly, here; lasting
failures are raised to the caller so the work queue's backoff applies.
Held by test/e2e/test_kubecluster.py, test/integration/test_runtime_client.py, test/integration/test_runtime_leader.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import tenacity
import urllib3

from dask_operator.runtime import credentials, metrics
from dask_operator.runtime.consistency import note_write, status_write
from dask_operator.runtime.kinds import Kind, kind_of
from dask_operator.runtime.objects import Obj
from dask_operator.runtime.reconcile import ReconcileTimeout, remaining_time

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
JSON = "application/json"
USER_AGENT = "dask-operator/runtime"
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def status_intent(obj: Obj) -> Obj:
    """The body of a status apply: obj's identity and status, nothing else."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta},
        "status": obj.get("status") or {},
    }


class ApiError(Exception):
    """A non-2xx answer from the API server (the body's Status when it sent one)."""

    def __init__(
        self,
        status: int,
        method: str,
        path: str,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.body = body if isinstance(body, dict) else {}
        self.retry_after = retry_after
        self.reason = str(self.body.get("reason", ""))
        self.message = str(self.body.get("message", body if isinstance(body, str) else ""))
        super().__init__(f"{method} {path}: {status} {self.reason}: {self.message}".strip())

    @property
    def causes(self) -> list[dict[str, Any]]:
        return list((self.body.get("details") or {}).get("causes") or [])

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def expired(self) -> bool:
        """410 Gone / reason Expired: the resourceVersion is older than the server keeps."""
        return self.status == 410 or self.reason in ("Expired", "Gone")

    @property
    def too_large_resource_version(self) -> bool:
        return any(cause.get("reason") == "ResourceVersionTooLarge" for cause in self.causes)


class ConnectionFailure(Exception):
    """The request could not complete at the transport level (refused, reset, TLS, timeout)."""

    def __init__(self, method: str, path: str, cause: BaseException, sent: bool) -> None:
        self.method = method
        self.path = path
        self.cause = cause
        self.sent = sent  # False: the request provably never reached the server
        super().__init__(f"{method} {path}: {type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class RequestRecord:
    """What one HTTP request was; observers get one per request (tests and benchmarks count them)."""

    method: str
    path: str
    params: Mapping[str, str]
    code: str
    started: float
    duration: float


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Client:
    """Typed paths (Kind), JSON dicts in and out; thread-safe."""

    def __init__(
        self,
        creds: credentials.Credentials,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_attempts: int = 4,
        retry_budget: float = 15.0,
        user_agent: str = USER_AGENT,
        pool_size: int = 32,
    ) -> None:
        self.credentials = creds
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self.retry_budget = retry_budget
        self.user_agent = user_agent
        self._pool_size = pool_size
        split = urlsplit(creds.host)
        self.base_url = creds.host.rstrip("/")
        self.host = split.netloc
        self._requests_by_code: dict[tuple[str, str], Any] = {}
        self._observers: list[Callable[[RequestRecord], None]] = []
        self._observers_lock = threading.Lock()
        self._pool = self._make_pool()

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None, **options: Any) -> Client:
        return cls(credentials.from_kubeconfig(path, context), **options)

    @classmethod
    def in_cluster(cls, **options: Any) -> Client:
        return cls(credentials.in_cluster(), **options)

    @classmethod
    def auto(cls, **options: Any) -> Client:
        """In-cluster service account when running in a pod, else $KUBECONFIG / ~/.kube/config."""
        try:
            return cls.in_cluster(**options)
        except credentials.ConfigError:
            return cls.from_kubeconfig(**options)

    def clone(self, **options: Any) -> Client:
        """Same credentials, own connection pool and options (e.g. the leader-election client)."""
        defaults: dict[str, Any] = {
            "timeout": self.timeout,
            "connect_timeout": self.connect_timeout,
            "max_attempts": self.max_attempts,
            "retry_budget": self.retry_budget,
            "user_agent": self.user_agent,
        }
        defaults.update(options)
        return Client(self.credentials, **defaults)

    def _make_pool(self) -> urllib3.PoolManager:
        creds = self.credentials
        kwargs: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": self._pool_size,
            "block": False,
            "retries": False,
        }
        context = creds.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
            if creds.tls_server_name:
                kwargs["server_hostname"] = creds.tls_server_name
        if creds.proxy and not _bypasses_proxy(self.host, creds.no_proxy):
            return urllib3.ProxyManager(creds.proxy, **kwargs)
        return urllib3.PoolManager(**kwargs)

    def close(self) -> None:
        self._pool.clear()

    def add_observer(self, observer: Callable[[RequestRecord], None]) -> Callable[[], None]:
        """Call observer after every HTTP request; returns a function that removes it."""
        with self._observers_lock:
            self._observers.append(observer)

        def remove() -> None:
            with self._observers_lock:
                if observer in self._observers:
                    self._observers.remove(observer)

        return remove

    # -- typed operations -------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            obj = self.request("GET", kind.object_path(namespace, name))
        except ApiError as error:
            if error.not_found:
                return None
            raise
        return _with_header(obj, kind)

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        limit: int | None = None,
        timeout: float | None = None,
        retry: bool = True,
        decode: Callable[[bytes], Any] = json.loads,
    ) -> tuple[list[Obj], str]:
        """(items, the collection's resourceVersion); pages through `continue` when limit is set; each page's
        JSON parsed by `decode` (the cache's decoder compacts objects as they are parsed)."""
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        if resource_version_match:
            params["resourceVersionMatch"] = resource_version_match
        if limit:
            params["limit"] = str(limit)
        items: list[Obj] = []
        path = kind.collection_path(namespace)
        while True:
            page = self.request("GET", path, params=params, timeout=timeout, retry=retry, decode=decode)
            items.extend(page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue")
            if not token or not limit:
                rv = str((page.get("metadata") or {}).get("resourceVersion", ""))
                break
            params = {k: v for k, v in params.items() if k not in ("resourceVersion", "resourceVersionMatch")}
            params["continue"] = token
        for item in items:
            _with_header(item, kind)
        return items, rv

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        resource_version: str,
        timeout_seconds: int,
        allow_bookmarks: bool = True,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        read_timeout: float | None = None,
        decode: Callable[[bytes], Any] = json.loads,
    ) -> WatchStream:
        """Open a watch now (raising ApiError/ConnectionFailure) and return its raw events.

        The HTTP read timeout defaults to timeoutSeconds + 30 s, so a silent (black-holed) connection is
        abandoned shortly after the server would have closed it. The iterator raises ConnectionFailure if the
        stream breaks and simply ends when the server closes it.
        """
        params = {"watch": "true", "timeoutSeconds": str(int(timeout_seconds))}
        if resource_version:
            params["resourceVersion"] = resource_version
        if allow_bookmarks:
            params["allowWatchBookmarks"] = "true"
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        read = read_timeout if read_timeout is not None else timeout_seconds + 30.0
        path = kind.collection_path(namespace)
        response = self._send("GET", path, params, None, {}, read, stream=True)
        return WatchStream(response, path, decode)

    def stream(self, path: str, params: Mapping[str, str], read_timeout: float) -> Iterator[bytes]:
        """GET `path` as chunks as they arrive (a followed pod log); ends when the server closes it."""
        response = self._send("GET", path, params, None, {}, read_timeout, stream=True)
        try:
            yield from response.stream(65536, decode_content=True)
        finally:
            response.release_conn()

    def create(self, obj: Obj, *, subresource: str | None = None) -> Obj:
        kind = kind_of(obj)
        namespace = obj["metadata"].get("namespace")
        path = kind.collection_path(namespace)
        created = self.request("POST", path, body=obj)
        note_write(kind, created)
        return _with_header(created, kind)

    def apply(self, obj: Obj, field_manager: str, force: bool = True) -> Obj:
        """Server-side apply of obj (its own apiVersion/kind/name/namespace) as field_manager."""
        meta = obj.get("metadata") or {}
        if "managedFields" in meta:
            raise ValueError("an apply intent must not carry metadata.managedFields")
        if obj.get("status"):
            raise ValueError("an apply intent for the main resource must not carry status; use apply_status")
        return self._apply(obj, field_manager, force, None)

    def apply_status(self, obj: Obj, field_manager: str, force: bool = True) -> Obj:
        """Server-side apply of obj's status to the /status subresource as field_manager."""
        return self._apply(status_intent(obj), field_manager, force, "status")

    def _apply(self, obj: Obj, field_manager: str, force: bool, subresource: str | None) -> Obj:
        kind = kind_of(obj)
        meta = obj["metadata"]
        path = kind.object_path(meta.get("namespace"), meta["name"], subresource)
        params = {"fieldManager": field_manager}
        if force:
            params["force"] = "true"
        with (
            status_write(kind, meta.get("namespace"), meta["name"])
            if subresource == "status"
            else contextlib.nullcontext()
        ):
            applied = self.request("PATCH", path, body=obj, params=params, content_type=APPLY_PATCH)
            note_write(kind, applied, subresource)
        return _with_header(applied, kind)

    def patch_merge(
        self, kind: Kind, namespace: str | None, name: str, patch: Obj, subresource: str | None = None
    ) -> Obj:
        path = kind.object_path(namespace, name, subresource)
        with status_write(kind, namespace, name) if subresource == "status" else contextlib.nullcontext():
            patched = self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
            note_write(kind, patched, subresource)
        return _with_header(patched, kind)

    def patch_json(self, kind: Kind, namespace: str | None, name: str, operations: Sequence[Obj]) -> Obj:
        """An RFC 6902 JSON patch: its `test` operations make it conditional on the live object."""
        path = kind.object_path(namespace, name)
        patched = self.request("PATCH", path, body=[dict(op) for op in operations], content_type=JSON_PATCH)
        note_write(kind, patched)
        return _with_header(patched, kind)

    def replace(self, obj: Obj) -> Obj:
        """PUT: an update guarded by the metadata.resourceVersion the object carries."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        replaced = self.request("PUT", kind.object_path(meta.get("namespace"), meta["name"]), body=obj)
        note_write(kind, replaced)
        return _with_header(replaced, kind)

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        propagation: str | None = "Background",
        grace_period_seconds: int | None = None,
    ) -> bool:
        """Delete, guarded by uid/resourceVersion preconditions (409 if they fail); False when already gone."""
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        preconditions = {}
        if uid:
            preconditions["uid"] = uid
        if resource_version:
            preconditions["resourceVersion"] = resource_version
        if preconditions:
            body["preconditions"] = preconditions
        if propagation:
            body["propagationPolicy"] = propagation
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        try:
            deleted = self.request("DELETE", kind.object_path(namespace, name), body=body)
        except ApiError as error:
            if error.not_found:
                return False
            raise
        note_write(kind, deleted)
        return True

    # -- the one way out --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        content_type: str | None = None,
        timeout: float | None = None,
        retry: bool = True,
        decode: Callable[[bytes], Any] = json.loads,
    ) -> Any:
        """One API call with transient-failure retries; JSON answers are parsed (by `decode`), others returned
        as text."""
        method = method.upper()
        idempotent = method in _IDEMPOTENT or content_type in (APPLY_PATCH, MERGE_PATCH)
        payload = None
        all_headers = dict(headers or {})
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
            all_headers.setdefault("Content-Type", content_type or JSON)

        def attempt() -> Any:
            response = self._send(method, path, params or {}, payload, all_headers, timeout, stream=False)
            data = response.data
            if not data:
                return None
            if "json" in (response.headers.get("Content-Type") or ""):
                return decode(data)
            return data.decode("utf-8", "replace")

        if not retry or self.max_attempts <= 1:
            return attempt()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_after_delay(self.retry_budget),
            wait=_wait_for(self),
            retry=tenacity.retry_if_exception(lambda error: _transient(error, idempotent)),
            reraise=True,
        )
        return retrying(attempt)

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        payload: bytes | None,
        headers: dict[str, str],
        read_timeout: float | None,
        *,
        stream: bool,
    ) -> urllib3.BaseHTTPResponse:
        read = read_timeout if read_timeout is not None else self.timeout
        connect = self.connect_timeout
        remaining = remaining_time()
        if remaining is not None and not stream:
            if remaining <= 0:
                raise ReconcileTimeout(f"reconcile deadline passed before {method} {path}")
            read = min(read, remaining)
            connect = min(connect, remaining)
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": JSON, "User-Agent": self.user_agent, **headers}
        headers.update(self.credentials.headers())
        started = time.monotonic()
        try:
            response = self._pool.request(
                method,
                url,
                body=payload,
                headers=headers,
                timeout=urllib3.Timeout(connect=connect, read=read),
                preload_content=not stream,
                redirect=False,
                retries=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as error:
            self._record(method, path, params, "<error>", started)
            never_sent = isinstance(
                error, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
            )
            raise ConnectionFailure(method, path, error, sent=not never_sent) from error
        self._record(method, path, params, str(response.status), started)
        if response.status >= 300:
            data = response.data if not stream else response.read()
            if stream:
                response.release_conn()
            try:
                body: Any = json.loads(data) if data else None
            except ValueError:
                body = data.decode("utf-8", "replace")
            raise ApiError(
                response.status,
                method,
                path,
                body,
                _retry_after_seconds(response.headers.get("Retry-After")),
            )
        return response

    def _record(self, method: str, path: str, params: Mapping[str, str], code: str, started: float) -> None:
        counter = self._requests_by_code.get((code, method))
        if counter is None:
            counter = metrics.REST_CLIENT_REQUESTS.labels(code, method, self.host)
            self._requests_by_code[(code, method)] = counter
        counter.inc()
        if self._observers:
            record = RequestRecord(method, path, dict(params), code, started, time.monotonic() - started)
            with self._observers_lock:
                observers = list(self._observers)
            for observer in observers:
                observer(record)


class WatchStream:
    """The raw events of one open watch; iterate once. `close()` may be called from any thread."""

    def __init__(
        self, response: urllib3.BaseHTTPResponse, path: str, decode: Callable[[bytes], Any] = json.loads
    ) -> None:
        self._response = response
        self._path = path
        self._decode = decode
        self._closed = False

    def __iter__(self) -> Iterator[Obj]:
        response = self._response
        buffer = b""
        finished = False
        try:
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                while True:
                    line, newline, rest = buffer.partition(b"\n")
                    if not newline:
                        break
                    buffer = rest
                    if line.strip():
                        yield self._decode(line)
            if buffer.strip():
                yield self._decode(buffer)
            finished = True
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            if not self._closed:
                raise ConnectionFailure("WATCH", self._path, error, sent=True) from error
        finally:
            if not finished:
                response.close()
            response.release_conn()

    def close(self) -> None:
        """Abandon the stream now: shuts the socket down so a reader blocked on it returns."""
        self._closed = True
        shutdown = getattr(self._response, "shutdown", None)
        # RuntimeError: urllib3's answer when the stream already ended and its connection went back to the pool;
        # ValueError: its answer when the response has no socket left to shut down (the server ended the stream)
        with contextlib.suppress(OSError, urllib3.exceptions.HTTPError, RuntimeError, ValueError):
            if shutdown is not None:
                shutdown()
            self._response.close()


def _transient(error: BaseException, idempotent: bool) -> bool:
    if isinstance(error, ConnectionFailure):
        return idempotent or not error.sent
    if isinstance(error, ApiError):
        if error.status == 429:
            return True
        if error.status >= 500 and idempotent and not error.too_large_resource_version:
            return True
    return False


def _wait_for(client: Client) -> Callable[[tenacity.RetryCallState], float]:
    backoff = tenacity.wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1)

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ApiError) and error.retry_after is not None:
            return min(error.retry_after, client.retry_budget)
        return float(backoff(state))

    return wait


def _with_header(obj: Any, kind: Kind) -> Obj:
    if isinstance(obj, dict):
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        return obj
    raise ApiError(0, "?", kind.collection_path(), f"expected a JSON object, got {type(obj).__name__}")


def _bypasses_proxy(host: str, no_proxy: str | None) -> bool:
    if not no_proxy:
        return False
    hostname = host.rsplit(":", 1)[0]
    for entry in no_proxy.split(","):
        entry = entry.strip().lstrip(".")
        if entry and (entry == "*" or hostname == entry or hostname.endswith("." + entry)):
            return True
    return False
