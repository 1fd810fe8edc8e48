"""A tenant's hostile "scheduler" beside a normal cluster, against a real operator: nothing it sends runs in the
operator or in `kubectl dask describe`, its Service cannot send the operator elsewhere, and the normal
cluster scales down as before.

The hostile scheduler is a script run as the scheduler container: its HTTP port answers every route but
`/health` with something a careful client must refuse (a pickle, a pickle labelled JSON, 64 MiB, NaN, a
redirect, an answer that drips one byte at a time), in turn; its comm port answers every RPC with a pickle
that writes a file when unpickled. Its worker never joins, so a scale-down makes the operator ask it who did.
"""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Any

import pytest
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    pod_names,
    pods_running,
    wait_running,
    wait_workers,
    worker_pods,
)
from support.user_shell import kubectl
from support.wait import wait_for

pytestmark = pytest.mark.timeout(420)

HOSTILE_SCHEDULER = r"""
import asyncio, http.server, itertools, pathlib, pickle, sys, threading, time

MARKER = sys.argv[1]

class Payload:
    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(MARKER), "the operator unpickled a tenant's bytes"))

PICKLE = pickle.dumps({"workers": Payload()})
turns = itertools.cycle(["pickle", "pickle-as-json", "huge", "nan", "redirect", "drip"])

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self.send(200, "text/plain", b"ok")
        turn = next(turns)
        print("served", turn, self.path, flush=True)
        try:
            if turn == "pickle":
                self.send(200, "application/octet-stream", PICKLE)
            elif turn == "pickle-as-json":
                self.send(200, "application/json", PICKLE)
            elif turn == "huge":
                self.send(200, "application/json", b" " * (64 << 20))
            elif turn == "nan":
                self.send(200, "application/json", b'{"workers": NaN}')
            elif turn == "redirect":
                self.send_response(302)
                self.send_header("Location", "http://kubernetes.default.svc/api")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(100000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
        except OSError:
            pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

def serve_http():
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 8787), Handler)
    server.daemon_threads = True
    server.serve_forever()

async def comm():
    from distributed.core import Server
    from distributed.protocol.serialize import ToPickle

    async def answer(*args, **kwargs):
        return {"workers": ToPickle(Payload())}

    names = ("identity", "retire_workers", "check_idle", "adaptive_target", "register-worker")
    server = Server({name: answer for name in names})
    await server.listen("tcp://0.0.0.0:8786")
    await asyncio.Event().wait()

threading.Thread(target=serve_http, daemon=True).start()
asyncio.run(comm())
"""


def hostile_manifest(name: str, marker: Path) -> dict[str, Any]:
    # The operator keeps asking (not forcing the scale-down after the operator's 60 s) for the whole test: each
    # ask is served one kind of hostile answer, and a slow start of the hostile scheduler eats the first ones.
    manifest = cluster_manifest(name, 1, annotations={"kubernetes.dask.org/scale-down-force-timeout": "900"})
    scheduler = manifest["spec"]["scheduler"]["spec"]["containers"][0]
    scheduler["args"] = ["python", "-c", HOSTILE_SCHEDULER, str(marker)]
    return manifest


def test_a_hostile_scheduler_runs_nothing_in_the_operator_and_slows_no_one(
    plane: Any, namespace: str, dask_operator: OperatorProcess, tmp_path: Path, user_env: dict[str, str]
) -> None:
    marker = tmp_path / "unpickled"  # the operator's filesystem: where its process would write it

    # The normal cluster's scale-down on its own first: the figure to compare with.
    apply(plane, namespace, cluster_manifest("normal", 3))
    wait_running(plane, namespace, "normal")
    with dask_client(plane, namespace, "normal") as client:
        wait_workers(client, 3, timeout=180)
        held = client.map(operator.mul, range(60), range(60), pure=False)
        client.gather(held)
        started = time.monotonic()
        get(plane, namespace, "daskcluster", "normal")  # the object exists before the patch
        plane.kubectl("-n", namespace, "scale", "daskcluster", "normal", "--replicas=2")
        wait_workers(client, 2)
        alone = time.monotonic() - started

        # The hostile cluster starts, and its scale-down makes the operator ask its scheduler, again and again.
        apply(plane, namespace, hostile_manifest("evil", marker))
        wait_for(  # started: a pod that never started is deleted without asking the scheduler
            lambda: pods_running(worker_pods(plane, namespace, "evil-default")),
            timeout=120,
            message="the hostile cluster's worker pod running",
        )
        plane.kubectl("-n", namespace, "scale", "daskcluster", "evil", "--replicas=0")

        def refused() -> dict[str, Any] | None:
            group = get(plane, namespace, "daskworkergroup", "evil-default")
            degraded = condition(group, "Degraded")
            return degraded if degraded.get("reason") == "SchedulerUnreachable" else None

        degraded = wait_for(refused, timeout=120, interval=1, message="the hostile scheduler refused")
        assert "HTTP /json/identity.json" in degraded["message"], degraded

        # Meanwhile the normal cluster scales down as fast as it did alone, losing nothing.
        started = time.monotonic()
        plane.kubectl("-n", namespace, "scale", "daskcluster", "normal", "--replicas=1")
        wait_workers(client, 1)
        beside = time.monotonic() - started
        assert sum(client.gather(held)) == sum(i * i for i in range(60))
        print(f"HOSTILE normal scale-down alone {alone:.1f} s, beside the hostile scheduler {beside:.1f} s")
        assert beside < alone + 30, (alone, beside)

    # Every kind of hostile answer was served to the operator, and none of them ran.
    served: set[str] = set()

    def four_kinds() -> bool:
        served.update(_served(plane, namespace))
        return len(served) >= 4

    try:
        wait_for(
            four_kinds, timeout=180, interval=2, message="the hostile scheduler served four kinds of answer"
        )
    finally:
        print(f"HOSTILE served {sorted(served)}")
    assert not marker.exists(), marker.read_text()
    assert pod_names(worker_pods(plane, namespace, "evil-default")), "the unjoined pod was kept, not forced"

    # The admin looks at the cluster from their laptop (this machine): every answer is refused there too.
    before = _served_count(plane, namespace)
    for _ in range(6):
        described = kubectl(user_env, "dask", "describe", "evil", "-n", namespace, "--timeout", "8")
        assert described.returncode == 0 and "Traceback" not in described.stderr, described.stderr
        assert "(scheduler not reachable: " in described.stdout, described.stdout
    assert _served_count(plane, namespace) >= before + 6, "each describe was served a hostile answer"
    assert not marker.exists(), marker.read_text()


def _served_lines(plane: Any, namespace: str) -> list[str]:
    logs = plane.kubectl("-n", namespace, "logs", "evil-scheduler").stdout
    return [line for line in logs.splitlines() if line.startswith("served ")]


def _served(plane: Any, namespace: str) -> set[str]:
    return {line.split()[1] for line in _served_lines(plane, namespace)}


def _served_count(plane: Any, namespace: str) -> int:
    return len(_served_lines(plane, namespace))


def test_a_service_that_points_elsewhere_is_not_used(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """spec.scheduler.service as an ExternalName (a DNS name of the tenant's choosing): the operator refuses
    to send its requests there and says so."""
    manifest = cluster_manifest("away", 1)
    manifest["spec"]["scheduler"]["service"] = {
        "type": "ExternalName",
        "externalName": "kubernetes.default.svc.cluster.local",
        "ports": [{"name": "http-dashboard", "port": 443}],
    }
    apply(plane, namespace, manifest)
    wait_for(  # started: a pod that never started is deleted without asking the scheduler
        lambda: pods_running(worker_pods(plane, namespace, "away-default")),
        timeout=120,
        message="the worker pod running",
    )
    plane.kubectl("-n", namespace, "scale", "daskcluster", "away", "--replicas=0")

    def refused() -> dict[str, Any] | None:
        degraded = condition(get(plane, namespace, "daskworkergroup", "away-default"), "Degraded")
        return degraded if "of type ExternalName" in str(degraded.get("message")) else None

    wait_for(refused, timeout=120, interval=1, message="the ExternalName Service refused")
