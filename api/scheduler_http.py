"""JSON over HTTP from a Dask scheduler, which belongs to a tenant: parsed, never executed.

Invariant: a call returns a JSON value or raises `SchedulerHTTPError`; it never takes longer than its
deadline in total (a watchdog closes the socket, so a server dripping one byte at a time is cut too), never
reads more than `max_bytes` of body, never follows a redirect, accepts only `application/json` answers
and rejects non-standard JSON (NaN, Infinity) and nesting deeper than Python can parse. Nothing here
imports a deserialiser that can build objects (no pickle, no Dask comm). Used by the operator and by
`kubectl dask`. Held by test/unit/test_scheduler_http.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

# The largest answer read from a scheduler: an identity of a few thousand workers fits in a few MiB.
MAX_BYTES = 16 * 1024 * 1024
_CHUNK = 64 * 1024


class SchedulerHTTPError(Exception):
    """The scheduler's HTTP API gave no usable answer. `status`: the HTTP status when one was received.
    `sent`: the request may have reached the scheduler (it answered, or the connection broke after the
    request was written), so a non-idempotent call may still be carried out."""

    def __init__(self, message: str, status: int | None = None, sent: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.sent = sent


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no nesting beyond what the parser can hold."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise SchedulerHTTPError(f"the answer is not strict JSON: {type(error).__name__}: {error}") from None


def json_object(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one: a field of the wrong shape reads as absent."""
    return value if isinstance(value, dict) else {}


def json_count(value: Any) -> int:
    """`value` when it is a non-negative integer (a count, a size in bytes), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def request_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    timeout: float,
    max_bytes: int = MAX_BYTES,
) -> Any:
    """One HTTP request to `url` (http:// only) answered with JSON, within `timeout` seconds in total."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise SchedulerHTTPError(f"not an http://host:port URL: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    payload = json.dumps(body).encode() if body is not None else None
    deadline = time.monotonic() + timeout
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=min(timeout, 3.0))
    watchdog = threading.Timer(timeout, _cut, args=(connection,))
    watchdog.daemon = True
    sent = False
    try:
        connection.connect()
        connection.sock.settimeout(timeout)
        watchdog.start()
        headers = {"Accept": "application/json", "Connection": "close"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=headers)
        sent = True
        response = connection.getresponse()
        data = _read_bounded(response, max_bytes)
        if time.monotonic() >= deadline:  # the watchdog cut the answer short
            raise SchedulerHTTPError(f"no complete answer within {timeout:g} s", sent=True)
    except SchedulerHTTPError:
        raise
    except (OSError, http.client.HTTPException) as error:
        late = time.monotonic() >= deadline
        why = f"no complete answer within {timeout:g} s" if late else f"{type(error).__name__}: {error}"
        raise SchedulerHTTPError(why, sent=sent) from None
    finally:
        watchdog.cancel()
        connection.close()
    if response.status != 200:
        raise SchedulerHTTPError(
            f"status {response.status}: {data[:200]!r}", status=response.status, sent=response.status != 404
        )
    content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise SchedulerHTTPError(
            f"answer of type {content_type or 'none'!r}, not application/json", sent=True
        )
    try:
        return parse_json(data)
    except SchedulerHTTPError as error:
        error.sent = True
        raise


def _read_bounded(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise SchedulerHTTPError(f"answer of {length} bytes, more than the {max_bytes} allowed", sent=True)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise SchedulerHTTPError(f"answer longer than the {max_bytes} bytes allowed", sent=True)
        chunks.append(chunk)


def _cut(connection: http.client.HTTPConnection) -> None:
    """The deadline passed: end the connection so the blocked read returns at once."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
