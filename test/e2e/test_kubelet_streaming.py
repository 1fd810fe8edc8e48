"""exec, attach, cp and port-forward through the real API server to the process node's kubelet endpoints.

One namespace and one set of pods for the module (the pods take a few seconds to start on a loaded
machine); every check runs the venv's real kubectl (or the `kubernetes` Python client) and waits on
conditions with deadlines. Holds kubeletserver.py, remotecommand.py, podexec.py, portforward.py and
wsstream.py end to end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import namespace_name
from support.wait import wait_for

KUBECTL = str(Path(sys.executable).parent / "kubectl")

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: box, labels: {app: box}}
spec:
  containers:
  - name: main
    image: python:3.11-slim
    # Bound to 127.0.0.1: only a forward made inside the pod's network namespace reaches it.
    command: ["python", "-m", "http.server", "8080", "--bind", "127.0.0.1"]
    env: [{name: MARKER, value: streaming-test}]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: box}
spec:
  selector: {app: box}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: python:3.11-slim
    stdin: true
    stdinOnce: true
    command: ["python", "-u", "-c", "import sys\\nfor line in sys.stdin: print('got', line.strip())"]
---
apiVersion: v1
kind: Pod
metadata: {name: short}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: busybox, command: ["sleep", "600"]}
"""


@pytest.fixture(scope="module")
def kp(kube_plane: Any) -> Any:
    if not kube_plane.has_node:
        pytest.skip("needs the process node (local plane)")
    return kube_plane


@pytest.fixture(scope="module")
def ns(kp: Any) -> Iterator[str]:
    name = namespace_name("kubelet-streaming")
    kp.kubectl("create", "namespace", name)
    wait_for(
        lambda: kp.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        message="default ServiceAccount",
    )
    kp.kubectl("apply", "-n", name, "-f", "-", input=PODS)
    kp.kubectl(
        "wait",
        "-n",
        name,
        "--for=condition=Ready",
        "pod/box",
        "pod/echo",
        "pod/short",
        "--timeout=90s",
        timeout=100,
    )
    try:
        yield name
    finally:
        kp.kubectl("delete", "namespace", name, "--wait=false", check=False)


def kubectl_cmd(kp: Any, *args: str) -> list[str]:
    return [KUBECTL, f"--kubeconfig={kp.kubeconfig}", *args]


# kubectl speaks WebSockets to the API server, which translates them into SPDY for the kubelet; with
# these switched off kubectl speaks SPDY itself and the API server only relays the kubelet's bytes.
SPDY_ONLY = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}


def run_kubectl(
    kp: Any, *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kubectl_cmd(kp, *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("client_env", [{}, SPDY_ONLY], ids=["websocket", "spdy"])
def test_exec_streams_and_exit_code(kp: Any, ns: str, client_env: dict[str, str]) -> None:
    proc = run_kubectl(
        kp,
        "exec",
        "-n",
        ns,
        "box",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; hostname; echo $MARKER; exit 3",
        env=client_env,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split() == ["out", "box", "streaming-test"]
    assert "err" in proc.stderr
    assert "command terminated with exit code 3" in proc.stderr
    # stdin goes through and its end reaches the command.
    piped = run_kubectl(
        kp, "exec", "-i", "-n", ns, "box", "--", "sh", "-c", "wc -c", env=client_env, stdin="x" * 100_000
    )
    assert piped.stdout.strip() == "100000", piped.stderr
    missing = run_kubectl(kp, "exec", "-n", ns, "box", "--", "no-such-program", env=client_env)
    assert missing.returncode != 0 and "executable file not found" in missing.stderr


@pytest.mark.parametrize("client_env", [{}, SPDY_ONLY], ids=["websocket", "spdy"])
def test_exec_tty_through_a_pty(kp: Any, ns: str, client_env: dict[str, str]) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))  # kubectl sends this size
    proc = subprocess.Popen(
        kubectl_cmd(kp, "exec", "-it", "-n", ns, "box", "--", "sh"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**os.environ, **client_env},
    )
    os.close(slave)
    seen = b""

    def read_until(pattern: bytes, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while pattern not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {seen!r}"
            ready, _, _ = select.select([master], [], [], left)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break

    try:
        os.write(master, b"tty -s && echo is-a-$((6*7))-tty\n")
        read_until(b"is-a-42-tty")
        os.write(master, b"echo size-$(stty size | tr ' ' x)\n")
        read_until(b"size-33x77")
        os.write(master, b"exit 5\n")
        assert proc.wait(30) == 5, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_cp_both_ways(kp: Any, ns: str, tmp_path: Path) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(200_000))
    remote = f"/tmp/kubelet-streaming-{ns}.bin"
    kp.kubectl("cp", str(src), f"{ns}/box:{remote}", timeout=60)
    size = kp.kubectl("exec", "-n", ns, "box", "--", "sh", "-c", f"wc -c < {remote}").stdout
    assert size.strip() == "200000"
    back = tmp_path / "down.bin"
    kp.kubectl("cp", f"{ns}/box:{remote}", str(back), timeout=60)
    kp.kubectl("exec", "-n", ns, "box", "--", "rm", "-f", remote)
    assert back.read_bytes() == src.read_bytes()


def test_attach_feeds_stdin_and_streams_output(kp: Any, ns: str) -> None:
    proc = kp.kubectl("attach", "-i", "-n", ns, "echo", input="alpha\nbeta\n", check=False, timeout=60)
    assert "got alpha" in proc.stdout and "got beta" in proc.stdout, proc.stdout + proc.stderr
    # stdinOnce: the container saw the end of its input when the attach ended, and finished.
    wait_for(
        lambda: (
            json.loads(kp.kubectl("get", "pod", "echo", "-n", ns, "-o", "json").stdout)["status"]["phase"]
            == "Succeeded"
        ),
        timeout=30,
        message="echo pod finished",
    )


def test_run_interactively_attaches_and_cleans_up(kp: Any, ns: str) -> None:
    proc = kp.kubectl(
        "run", "-i", "--rm", "--restart=Never", "-n", ns, "runner", "--image=busybox", "--",
        "sh", "-c", "read x; echo got-$x; exit 7",
        input="hello\n", check=False, timeout=90,
    )  # fmt: skip
    assert "got-hello" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 7, proc.stderr  # the container's exit code, as on a real cluster
    assert kp.kubectl("get", "pod", "runner", "-n", ns, check=False).returncode != 0  # --rm deleted it


@contextlib.contextmanager
def port_forward(
    kp: Any, ns: str, target: str, remote: int, env: dict[str, str] | None = None
) -> Iterator[int]:
    proc = subprocess.Popen(
        kubectl_cmd(kp, "port-forward", "-n", ns, target, f":{remote}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> REMOTE"
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        yield int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(10)


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize("client_env", [{}, SPDY_ONLY], ids=["websocket", "spdy"])
def test_port_forward_to_pod_and_service(kp: Any, ns: str, client_env: dict[str, str]) -> None:
    with port_forward(kp, ns, "pod/box", 8080, client_env) as port:
        first, second = http_get(port), http_get(port)  # two connections over one forward
        assert "Directory listing" in first and first == second
    with port_forward(kp, ns, "svc/box", 80, client_env) as port:
        assert "Directory listing" in http_get(port)


def test_python_client_exec_and_port_forward(kp: Any, ns: str) -> None:
    from kubernetes import client
    from kubernetes.stream import portforward, stream

    core = client.CoreV1Api(kp.api_client())
    out = stream(
        core.connect_get_namespaced_pod_exec,
        "box",
        ns,
        command=["sh", "-c", "echo from-python-$MARKER"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    assert out.strip() == "from-python-streaming-test"
    # A client offering only v4 WebSockets is passed through by the API server to the kubelet as is.
    ws = stream(
        core.connect_get_namespaced_pod_exec,
        "box",
        ns,
        command=["sh", "-c", "echo v4-$MARKER; exit 4"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
        _preload_content=False,
        _headers={"sec-websocket-protocol": "v4.channel.k8s.io"},
    )
    ws.run_forever(timeout=30)
    assert ws.subprotocol == "v4.channel.k8s.io"
    assert ws.returncode == 4  # read before read_all(), which empties every channel
    assert ws.read_all().strip() == "v4-streaming-test"
    pf = portforward(core.connect_get_namespaced_pod_portforward, "box", ns, ports="8080")
    sock = pf.socket(8080)
    sock.setblocking(True)
    sock.sendall(b"GET / HTTP/1.0\r\nHost: box\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.0 200") and b"Directory listing" in data


def test_dask_client_computes_through_port_forward_to_scheduler_service(kp: Any, ns: str) -> None:
    manifest = """
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: scheduler}
    spec:
      selector: {matchLabels: {role: scheduler}}
      template:
        metadata: {labels: {role: scheduler}}
        spec:
          containers:
          - name: scheduler
            image: ghcr.io/dask/dask:latest
            args: ["dask", "scheduler", "--no-dashboard"]
            ports: [{name: tcp-comm, containerPort: 8786}]
            readinessProbe: {tcpSocket: {port: tcp-comm}, periodSeconds: 1}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: sched}
    spec:
      selector: {role: scheduler}
      ports: [{name: tcp-comm, port: 8786, targetPort: tcp-comm}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: worker}
    spec:
      containers:
      - name: worker
        image: ghcr.io/dask/dask:latest
        args: ["dask", "worker", "tcp://sched:8786", "--nthreads", "1", "--no-dashboard"]
    """
    kp.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(manifest))
    kp.kubectl("rollout", "status", "-n", ns, "deploy/scheduler", "--timeout=90s", timeout=100)
    from distributed import Client

    with (
        port_forward(kp, ns, "svc/sched", 8786) as port,
        Client(f"tcp://127.0.0.1:{port}", timeout=60) as dask,
    ):
        dask.wait_for_workers(1, timeout=90)
        assert dask.submit(sum, [1, 2, 3, 36]).result(timeout=60) == 42
    # kubectl resolves a Deployment to one of its pods just as it does a Service.
    with (
        port_forward(kp, ns, "deploy/scheduler", 8786) as port,
        Client(f"tcp://127.0.0.1:{port}", timeout=60) as dask,
    ):
        assert dask.submit(len, "forty-two").result(timeout=60) == 9


def test_spdy_port_forward_reports_a_closed_port(kp: Any, ns: str) -> None:
    with (
        port_forward(kp, ns, "pod/box", 9) as port,
        socket.create_connection(("127.0.0.1", port), timeout=20) as conn,
    ):
        conn.settimeout(20)
        assert conn.recv(100) == b""  # the pod side refused: the forwarded connection ends


def processes_with_argv(argv: list[str]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]:
                    found.append(int(entry.name))
    return found


def test_exec_ends_with_its_client_or_its_pod(kp: Any, ns: str) -> None:
    argv = ["sleep", f"{os.getpid() % 1000 + 1000}.25"]  # an argv no other test runs
    proc = subprocess.Popen(kubectl_cmd(kp, "exec", "-n", ns, "short", "--", *argv), stderr=subprocess.PIPE)
    wait_for(lambda: processes_with_argv(argv), timeout=30, message="the exec'd process")
    proc.kill()  # the client goes away (as with Ctrl-C): so does the command
    proc.wait(10)
    wait_for(
        lambda: not processes_with_argv(argv), timeout=20, message="the exec'd process to end with its client"
    )
    proc = subprocess.Popen(kubectl_cmd(kp, "exec", "-n", ns, "short", "--", *argv), stderr=subprocess.PIPE)
    try:
        wait_for(lambda: processes_with_argv(argv), timeout=30, message="the exec'd process")
        kp.kubectl("delete", "pod", "short", "-n", ns, "--wait=false")
        assert proc.wait(30) != 0
        wait_for(lambda: not processes_with_argv(argv), timeout=10, message="the exec'd process to end")
    finally:
        if proc.poll() is None:
            proc.kill()
