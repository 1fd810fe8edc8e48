"""The plane's processes: how each is started, how its health is probed, how it is stopped.

Invariant: every process is spawned in its own session with its output appended to
<state>/logs/<component>.log, and is recorded (PID + start time) before anyone waits on it. `terminate`
signals only a recorded process that is still the same one, SIGTERM first, SIGKILL after the grace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kubeplane import nodes
from kubeplane.pki import FRONT_PROXY_USER, PkiPaths
from kubeplane.state import PlaneState, ProcessRecord, is_same_process, proc_start_time

ETCD = "etcd"
APISERVER = "kube-apiserver"
KCM = "kube-controller-manager"
SCHEDULER = "kube-scheduler"  # runs only on planes with several nodes (nodes stop self-binding then)
NODE = nodes.NODE
CONTROL_PLANE = (ETCD, APISERVER, KCM)  # start order; stop order is the reverse

# What a real cluster runs: kube-controller-manager's default set (garbage collector, namespaces, service
# accounts and tokens, endpoints and slices, Deployments/ReplicaSets/StatefulSets/DaemonSets/Jobs/CronJobs,
# HPAs, resource quotas, PV binding, node lifecycle and taint eviction, disruption budgets, CSR signing...).
KCM_CONTROLLERS = ("*",)

NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")

HACK_DIR = Path(__file__).resolve().parent.parent


class ComponentDied(RuntimeError):
    """A process exited while we waited for it to become healthy."""

    def __init__(self, component: str, log: Path, detail: str = "") -> None:
        self.component, self.log = component, log
        super().__init__(f"{component} exited during start-up{detail}. Last lines of {log}:\n{tail(log)}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "  (no log)"
    return "\n".join("  " + line for line in text[-lines:])


# --- argv -------------------------------------------------------------------------------------------


def etcd_argv(st: PlaneState) -> list[str]:
    c, p = st.ports["etcd"], st.ports["etcd_peer"]
    return [
        str(Path(st.bin_dir) / "etcd"),
        "--name=default",
        f"--data-dir={st.root / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{c}",
        f"--advertise-client-urls=http://127.0.0.1:{c}",
        f"--listen-peer-urls=http://127.0.0.1:{p}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{p}",
        f"--initial-cluster=default=http://127.0.0.1:{p}",
        "--unsafe-no-fsync=true",
        # History older than an hour goes; the API server also compacts every 5 min (its default).
        "--auto-compaction-retention=1",
        # etcd's largest recommended size: a fleet of 10,000 DaskClusters (~70,000 objects, ~250 MB live)
        # under 100 updates/s writes ~0.6 MB/s of revisions between compactions. A ceiling, not a reservation
        # (the data lives in /dev/shm, so only what is written takes memory).
        "--quota-backend-bytes=8589934592",
        "--log-level=warn",
    ]


def apiserver_argv(st: PlaneState) -> list[str]:
    pki = PkiPaths(st.root / "pki")
    net = st.network
    if st.api_host != "127.0.0.1":  # real nodes: pods reach the API server on the first node's bridge
        listen = [f"--bind-address={st.api_host}", f"--advertise-address={st.api_host}"]
    else:
        # No default route here: without an explicit address the apiserver refuses to start, and the
        # endpoint reconciler refuses a loopback address, so it is switched off.
        listen = [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
        ]
    return [
        str(Path(st.bin_dir) / APISERVER),
        f"--etcd-servers=http://127.0.0.1:{st.ports['etcd']}",
        *listen,
        f"--secure-port={st.ports['apiserver']}",
        f"--tls-cert-file={pki.apiserver_crt}",
        f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca_crt}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={net.service_cidr}",
        "--authorization-mode=RBAC",
        "--allow-privileged=true",
        f"--kubelet-client-certificate={pki.kubelet_client_crt}",
        f"--kubelet-client-key={pki.kubelet_client_key}",
        "--kubelet-preferred-address-types=InternalIP",
        # Request-header authentication for aggregated APIs; without it every delegating component
        # (KCM included) logs a missing CA bundle every few seconds.
        f"--requestheader-client-ca-file={pki.ca_crt}",
        f"--requestheader-allowed-names={FRONT_PROXY_USER}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_crt}",
        f"--proxy-client-key-file={pki.front_proxy_key}",
        f"--cert-dir={pki.root / 'apiserver-generated'}",
        "--profiling=false",
        "--v=1",
    ]


def kcm_argv(st: PlaneState) -> list[str]:
    pki = PkiPaths(st.root / "pki")
    kubeconfig = st.root / "admin.kubeconfig"
    return [
        str(Path(st.bin_dir) / KCM),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={st.ports['kcm']}",
        f"--cert-dir={pki.root / 'kcm-generated'}",
        "--leader-elect=false",
        "--use-service-account-credentials=false",
        f"--controllers={','.join(KCM_CONTROLLERS)}",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_crt}",
        # The csrsigning controller signs with the plane's CA (kubelet serving and client certificates).
        f"--cluster-signing-cert-file={pki.ca_crt}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={st.network.service_cidr}",
        # Tests and benchmarks create objects in bursts; the client-side default (20 qps) throttles GC.
        "--kube-api-qps=100",
        "--kube-api-burst=200",
        "--profiling=false",
        "--v=1",
    ]


def node_argv(st: PlaneState) -> list[str]:
    pki = PkiPaths(st.root / "pki")
    net = st.network
    argv = [
        sys.executable,
        "-m",
        "kubeplane.node",
        f"--state-dir={st.root}",
        f"--kubeconfig={st.root / 'admin.kubeconfig'}",
        f"--node-name={net.node_name}",
        f"--bridge={net.bridge}",
        f"--pod-cidr={net.pod_cidr}",
        f"--service-cidr={net.service_cidr}",
        f"--kubelet-port={st.ports['kubelet']}",
        f"--kubelet-cert={pki.kubelet_crt}",
        f"--kubelet-key={pki.kubelet_key}",
        f"--client-ca={pki.ca_crt}",
    ]
    if st.node.get("simulated"):
        argv.append("--simulated")
    if st.node.get("gpus"):
        argv.append(f"--gpus={int(st.node['gpus'])}")
    return argv


def scheduler_argv(st: PlaneState) -> list[str]:
    pki = PkiPaths(st.root / "pki")
    kubeconfig = st.root / "admin.kubeconfig"
    return [
        str(Path(st.bin_dir) / SCHEDULER),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={st.ports['scheduler']}",
        f"--cert-dir={pki.root / 'scheduler-generated'}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


ARGV: dict[str, Callable[[PlaneState], list[str]]] = {
    ETCD: etcd_argv,
    APISERVER: apiserver_argv,
    KCM: kcm_argv,
    NODE: node_argv,
    SCHEDULER: scheduler_argv,
}


def argv_for(st: PlaneState, component: str) -> list[str]:
    """A component's argv, with the node-lifecycle settings of a plane that has nodes.

    A component this module does not know (a real node's containerd or kubelet) runs again with the argv
    it was first spawned with."""
    if component not in ARGV and not nodes.is_node_component(component) and component in st.processes:
        return list(st.processes[component].argv)
    if nodes.is_node_component(component):
        return nodes.node_argv(st, component, node_argv(st))
    argv = ARGV[component](st)
    settings = st.node
    if component == KCM and settings:
        argv.append("--node-monitor-period=2s")  # notice a lost node and a Ready one within 2 s
        if settings.get("node_monitor_grace_period") is not None:
            argv.append(f"--node-monitor-grace-period={float(settings['node_monitor_grace_period'])}s")
    if component == APISERVER and settings.get("runtime") == "containerd":
        # Real kubelets serve certificates from the plane's CA: logs, exec and port-forward verify them.
        argv.append(f"--kubelet-certificate-authority={PkiPaths(st.root / 'pki').ca_crt}")
    if component == APISERVER:
        for key in ("default_not_ready_toleration_seconds", "default_unreachable_toleration_seconds"):
            if settings.get(key) is not None:
                argv.append(f"--{key.replace('_', '-')}={int(settings[key])}")
    return argv


# --- processes --------------------------------------------------------------------------------------

# Popen objects of children started by this Python process, so they are reaped (no zombies in a
# long-lived pytest session) when they are stopped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    st: PlaneState, component: str, argv: list[str] | None = None, env: dict[str, str] | None = None
) -> ProcessRecord:
    """Start `component` (its argv from argv_for unless given; `env` added to ours) and record it."""
    argv = argv if argv is not None else argv_for(st, component)
    log = st.root / "logs" / f"{component}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env or {})}
    if nodes.is_node_component(component):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HACK_DIR), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {component}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on `up` or pytest must not reach the plane
            cwd=st.root,
            env=env,
        )
    _CHILDREN[proc.pid] = proc
    start = proc_start_time(proc.pid)
    rec = ProcessRecord(pid=proc.pid, start_time=start if start is not None else -1, argv=argv, log=str(log))
    st.processes[component] = rec
    st.save()
    return rec


def alive(rec: ProcessRecord) -> bool:
    _reap(rec.pid)
    return is_same_process(rec)


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()


def terminate(rec: ProcessRecord, grace: float = 10.0) -> str:
    """Stop a recorded process: 'not running', 'terminated' or 'killed'. Never signals a stranger."""
    if not alive(rec):
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(rec):
            return "terminated"
        time.sleep(0.05)
    if alive(rec):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
    return "killed"


# --- health -----------------------------------------------------------------------------------------


def _admin_tls(st: PlaneState) -> ssl.SSLContext:
    pki = PkiPaths(st.root / "pki")
    ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
    ctx.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
    return ctx


def _insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # KCM serves a self-signed cert; we only read /healthz
    return ctx


def http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return 0, b""


def api_get(st: PlaneState, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    return http_get(f"{st.server}{path}", _admin_tls(st), timeout)


def api_post(st: PlaneState, path: str, body: object, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a JSON POST with the admin credentials; status 0 when nothing answers."""
    request = urllib.request.Request(
        f"{st.server}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=_admin_tls(st), timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return 0, b""


def healthy(st: PlaneState, component: str) -> bool:
    if component == ETCD:
        status, body = http_get(f"http://127.0.0.1:{st.ports['etcd']}/health")
        return status == 200 and b'"true"' in body
    if component == APISERVER:
        return api_get(st, "/readyz")[0] == 200
    if component == KCM:
        if http_get(f"https://127.0.0.1:{st.ports['kcm']}/healthz", _insecure_tls())[0] != 200:
            return False
        # The serviceaccount controller is running once the default namespace has its SA.
        return api_get(st, "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
    if component == SCHEDULER:
        return http_get(f"https://127.0.0.1:{st.ports['scheduler']}/healthz", _insecure_tls())[0] == 200
    if nodes.is_node_component(component):
        status, body = api_get(st, f"/api/v1/nodes/{nodes.spec_for(st, component).name}")
        if status != 200:
            return False
        node = json.loads(body)
        conditions = node.get("status", {}).get("conditions", [])
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            return False
        # With kube-scheduler, a node takes pods only once node-lifecycle lifts its not-ready taints.
        taints = node.get("spec", {}).get("taints") or []
        return not nodes.runs_scheduler(st) or not any(t.get("key") in NOT_READY_TAINTS for t in taints)
    from kubeplane import realnode  # imports this module: bound late

    if realnode.is_component(component):
        return realnode.healthy(st, component)
    raise ValueError(f"unknown component {component!r}")


def wait_healthy(st: PlaneState, component: str, timeout: float) -> float:
    """Seconds until healthy. Raises ComponentDied if the process exits, TimeoutError at the deadline."""
    rec = st.processes[component]
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if healthy(st, component):
            return time.monotonic() - start
        if not alive(rec):
            child = _CHILDREN.get(rec.pid)
            code = f" with code {child.returncode}" if child and child.returncode is not None else ""
            raise ComponentDied(component, Path(rec.log), code)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{component} not healthy after {timeout:.0f} s. Last lines of {rec.log}:\n{tail(Path(rec.log))}"
            )
        time.sleep(0.1)
