"""Readiness, liveness and startup probes: a pure schedule-and-threshold state, and the three checks.

Invariant: a probe's result flips only after `successThreshold` consecutive successes or
`failureThreshold` consecutive failures; it is first run `initialDelaySeconds` after the container
started and then every `periodSeconds`. Readiness starts False, liveness True, startup False.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

READINESS, LIVENESS, STARTUP = "readiness", "liveness", "startup"


@dataclass(frozen=True)
class ProbeSpec:
    action: JSON  # the probe object itself: holds httpGet | tcpSocket | exec | grpc
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_json(cls, probe: JSON) -> ProbeSpec:
        return cls(
            action=probe,
            initial_delay=float(probe.get("initialDelaySeconds") or 0),
            period=float(probe.get("periodSeconds") or 10),
            timeout=float(probe.get("timeoutSeconds") or 1),
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )


@dataclass
class ProbeState:
    kind: str
    spec: ProbeSpec
    started_at: float
    result: bool = field(init=False)
    successes: int = 0
    failures: int = 0
    last_message: str = ""
    next_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.result = self.kind == LIVENESS
        self.next_at = self.started_at + self.spec.initial_delay

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, now: float, message: str = "") -> bool:
        """Counts one outcome; returns True if the probe's result changed."""
        self.next_at = now + self.spec.period
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            flip = not self.result and self.successes >= self.spec.success_threshold
        else:
            self.failures += 1
            self.successes = 0
            flip = self.result and self.failures >= self.spec.failure_threshold
        if flip:
            self.result = ok
        return flip


def _port(value: Any, named_ports: Mapping[str, int]) -> int:
    if isinstance(value, int):
        return value
    if str(value).isdigit():
        return int(value)
    if value in named_ports:
        return named_ports[value]
    raise ValueError(f"unknown named port {value!r}")


def run_probe(
    spec: ProbeSpec,
    pod_ip: str,
    named_ports: Mapping[str, int],
    exec_prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    """Runs one check. Returns (success, message for a failure). Never raises."""
    action = spec.action
    try:
        if "httpGet" in action:
            return _http_get(action["httpGet"], pod_ip, named_ports, spec.timeout)
        if "tcpSocket" in action:
            tcp = action["tcpSocket"]
            host = tcp.get("host") or pod_ip
            port = _port(tcp["port"], named_ports)
            with socket.create_connection((host, port), timeout=spec.timeout):
                return True, ""
        if "exec" in action:
            command = list(action["exec"].get("command") or [])
            done = subprocess.run(
                [*exec_prefix, *command],
                env=dict(env or {}),
                capture_output=True,
                timeout=spec.timeout,
                start_new_session=True,
            )
            if done.returncode == 0:
                return True, ""
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            return False, f"command {command!r} exited with {done.returncode}: {out[:200]}"
        return True, ""  # grpc and unknown handlers: treated as passing (no gRPC health client here)
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {spec.timeout:g}s"
    except (OSError, ValueError, http.client.HTTPException) as e:
        return False, str(e)


def _http_get(get: JSON, pod_ip: str, named_ports: Mapping[str, int], timeout: float) -> tuple[bool, str]:
    host = get.get("host") or pod_ip
    port = _port(get.get("port", 80), named_ports)
    path = get.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    headers = {"User-Agent": "kube-probe/1.37", "Accept": "*/*"}
    for h in get.get("httpHeaders") or []:
        headers[h["name"]] = h["value"]
    conn: http.client.HTTPConnection
    if str(get.get("scheme", "HTTP")).upper() == "HTTPS":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read(10240)
        if 200 <= resp.status < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {resp.status}"
    finally:
        conn.close()
