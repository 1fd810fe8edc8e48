"""Pure parts of the process node (hack/kubeplane/node): env, probes, back-off, status, IPAM, DNS."""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord
from kubeplane.node import logfiles
from kubeplane.node.backoff import RestartBackoff, go_duration
from kubeplane.node.binder import unschedulable_reason
from kubeplane.node.dnsserver import answer
from kubeplane.node.envvars import ConfigError, ServiceEnv, expand, parse_quantity, resolve_env
from kubeplane.node.images import argv_for
from kubeplane.node.ipam import IPAM, AddressPoolExhausted
from kubeplane.node.podstatus import INIT, MAIN, SIDECAR, ContainerView, PodView, build_pod_status, pod_phase
from kubeplane.node.probes import LIVENESS, READINESS, ProbeSpec, ProbeState, run_probe
from kubeplane.node.serviceproxy import ServiceProxy
from kubeplane.node.servicetable import build_dns, build_routes
from kubeplane.node.simulated import simulated_status
from kubeplane.node.workpool import WorkPool

POD = {
    "metadata": {
        "name": "web-1",
        "namespace": "team",
        "uid": "1234-abcd",
        "labels": {"app": "web"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "localkube-0", "serviceAccountName": "default"},
    "status": {"podIP": "10.244.0.5", "hostIP": "10.244.0.1"},
}


# --- $(VAR) expansion and env ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("a$b", "a$b"),
        ("end$", "end$"),
        ("$(A)$(A)", "11"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, want: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == want


def test_resolve_env_orders_envfrom_then_env_with_expansion_and_field_refs() -> None:
    maps = {("team", "cfg"): {"MODE": "fast", "bad key": "x"}}
    secrets = {("team", "sec"): {"token": "s3cret"}}
    container = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "CM_"},
            {"secretRef": {"name": "nope", "optional": True}},
        ],
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-$(CM_MODE)-$(HOSTNAME)"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": True}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
        ],
        "resources": {"limits": {"cpu": "1500m"}},
    }
    env = resolve_env(
        POD,
        container,
        {"HOSTNAME": "web-1"},
        lambda ns, n: maps.get((ns, n)),
        lambda ns, n: secrets.get((ns, n)),
    )
    assert env["CM_MODE"] == "fast" and "CM_bad key" not in env
    assert env["B"] == "x-fast-web-1"
    assert (env["NAME"], env["IP"], env["APP"], env["TOKEN"]) == ("web-1", "10.244.0.5", "web", "s3cret")
    assert "OPT" not in env
    assert env["CPU"] == "1500"
    assert argv_for({"command": ["echo", "$(NAME)"], "args": ["$$(NAME)", "$(IP)"]}, env) == [
        "echo",
        "web-1",
        "$(NAME)",
        "10.244.0.5",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"configMapKeyRef": {"name": "missing", "key": "k"}}, 'configmap "missing" not found'),
        ({"secretKeyRef": {"name": "sec", "key": "other"}}, "couldn't find key other in Secret team/sec"),
    ],
)
def test_missing_required_reference_is_a_config_error(entry: dict, message: str) -> None:
    container = {"name": "c", "env": [{"name": "X", "valueFrom": entry}]}
    with pytest.raises(ConfigError, match=message):
        resolve_env(
            POD, container, {}, lambda ns, n: None, lambda ns, n: {"token": "t"} if n == "sec" else None
        )


def test_quantities_and_service_link_variables() -> None:
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000
    env = ServiceEnv("dask-sched", "10.96.0.9", (("tcp-comm", 8786, "TCP"),)).variables()
    assert env["DASK_SCHED_SERVICE_HOST"] == "10.96.0.9"
    assert env["DASK_SCHED_SERVICE_PORT_TCP_COMM"] == "8786"
    assert env["DASK_SCHED_PORT"] == "tcp://10.96.0.9:8786"


# --- back-off ------------------------------------------------------------------------------------


def test_backoff_restarts_at_once_then_doubles_to_the_cap_and_resets() -> None:
    b = RestartBackoff(initial=10, cap=40)
    assert b.restart_at(100) == 100  # first crash: restart at once
    b.record_restart(100)
    waits = []
    t = 101.0
    for _ in range(5):
        at = b.restart_at(t)
        waits.append(at - t)
        b.record_restart(at)
        t = at + 1
    assert waits == [10, 20, 40, 40, 40]
    assert b.restart_at(t + 1000) == t + 1000  # ran long enough: back-off forgotten
    assert go_duration(10) == "10s" and go_duration(80) == "1m20s" and go_duration(300) == "5m0s"


# --- probes ----------------------------------------------------------------------------------------


def test_probe_thresholds_and_schedule() -> None:
    spec = ProbeSpec.from_json(
        {"initialDelaySeconds": 2, "periodSeconds": 1, "failureThreshold": 2, "successThreshold": 2}
    )
    ready = ProbeState(READINESS, spec, started_at=0)
    assert not ready.result and not ready.due(1.9) and ready.due(2)
    assert not ready.record(True, 2)
    assert ready.record(True, 3) and ready.result
    assert ready.next_at == 4
    assert not ready.record(False, 4)
    assert ready.record(False, 5) and not ready.result
    live = ProbeState(LIVENESS, spec, started_at=0)
    assert live.result
    live.record(False, 2)
    assert live.record(False, 3) and not live.result


def test_probe_checks_against_a_real_socket() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        ok, _ = run_probe(ProbeSpec.from_json({"tcpSocket": {"port": "web"}}), "127.0.0.1", {"web": port})
        assert ok
    ok, msg = run_probe(ProbeSpec.from_json({"tcpSocket": {"port": port}}), "127.0.0.1", {})
    assert not ok and msg
    assert run_probe(ProbeSpec.from_json({"exec": {"command": ["true"]}}), "", {}, env=os.environ)[0]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        http_port = server.server_address[1]
        get = ProbeSpec.from_json(
            {"httpGet": {"port": "http", "path": "/ok", "httpHeaders": [{"name": "X", "value": "1"}]}}
        )
        assert run_probe(get, "127.0.0.1", {"http": http_port}) == (True, "")
        bad = ProbeSpec.from_json({"httpGet": {"port": http_port, "path": "/missing"}})
        assert run_probe(bad, "127.0.0.1", {}) == (False, "HTTP probe failed with statuscode: 404")
    finally:
        server.shutdown()
        server.server_close()
    ok, msg = run_probe(ProbeSpec.from_json({"exec": {"command": ["false"]}}), "", {}, env=os.environ)
    assert not ok and "exited with 1" in msg


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/ok" and self.headers.get("X") == "1"
        self.send_response(200 if ok else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


# --- status --------------------------------------------------------------------------------------


def _c(name: str, role: str = MAIN, **kw: object) -> ContainerView:
    v = ContainerView(name=name, image="img", role=role)
    for k, val in kw.items():
        setattr(v, k, val)
    return v


def test_pod_phase_table() -> None:
    running = _c("a", state="running")
    failed = _c("a", state="terminated", exit_code=1)
    ok = _c("a", state="terminated", exit_code=0)
    crashloop = _c("a", state="waiting", reason="CrashLoopBackOff", last_terminated={"exitCode": 1})
    pending_init = _c("i", INIT, state="running")
    assert pod_phase("Always", [_c("a")]) == "Pending"
    assert pod_phase("Always", [running]) == "Running"
    assert pod_phase("Never", [failed]) == "Failed"
    assert pod_phase("Never", [ok]) == "Succeeded"
    assert pod_phase("OnFailure", [failed]) == "Running"
    assert pod_phase("Always", [crashloop]) == "Running"
    assert pod_phase("Always", [pending_init, _c("a")]) == "Pending"
    assert pod_phase("Never", [_c("i", INIT, state="terminated", exit_code=2), _c("a")]) == "Failed"
    assert pod_phase("Never", [_c("s", SIDECAR, state="running"), ok]) == "Succeeded"


def test_status_conditions_keep_transition_times() -> None:
    view = PodView("Always", [_c("a", state="running", started_at=10.0)], "10.244.0.2", "10.244.0.1", 10.0)
    first = build_pod_status(view, now=10.0)
    ready = {c["type"]: c for c in first["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["message"] == "containers with unready status: [a]"
    view.containers[0].ready = True
    view.previous_conditions = first["conditions"]
    second = build_pod_status(view, now=20.0)
    conds = {c["type"]: c for c in second["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["lastTransitionTime"].endswith(":20Z")
    assert (
        conds["Initialized"]["lastTransitionTime"]
        == {c["type"]: c for c in first["conditions"]}["Initialized"]["lastTransitionTime"]
    )
    assert second["podIP"] == "10.244.0.2" and second["containerStatuses"][0]["state"]["running"]


def test_simulated_status_is_running_and_ready() -> None:
    pod = {
        "metadata": {"uid": "u" * 8},
        "spec": {"containers": [{"name": "w", "image": "i"}], "initContainers": [{"name": "setup"}]},
    }
    st = simulated_status(pod, "10.128.0.1", "10.244.0.1", 0.0)
    assert st["phase"] == "Running"
    assert all(c["status"] == "True" for c in st["conditions"])
    assert st["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


# --- IPAM, scheduling ------------------------------------------------------------------------------


def test_ipam_skips_gateway_reuses_lowest_and_is_bounded() -> None:
    ipam = IPAM("10.244.3.0/29")
    got = [ipam.allocate(f"p{i}") for i in range(5)]
    assert got == [f"10.244.3.{i}" for i in range(2, 7)]
    assert ipam.allocate("p0") == "10.244.3.2"  # idempotent per owner
    with pytest.raises(AddressPoolExhausted):
        ipam.allocate("p9")
    ipam.release("p1")
    assert ipam.allocate("p9") == "10.244.3.3"


def test_unschedulable_reasons() -> None:
    labels, cap = {"kubernetes.io/os": "linux"}, {"nvidia.com/gpu": "1"}
    assert (
        unschedulable_reason({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}, labels, cap) is None
    )
    assert "selector" in str(unschedulable_reason({"spec": {"nodeSelector": {"x": "y"}}}, labels, cap))
    gpu2 = {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}]}}
    assert "Insufficient nvidia.com/gpu" in str(unschedulable_reason(gpu2, labels, cap))


# --- services: DNS and routes ----------------------------------------------------------------------

SERVICES = [
    {
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    },
    {
        "metadata": {"name": "db", "namespace": "team"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
    },
    {
        "metadata": {"name": "far", "namespace": "team"},
        "spec": {"clusterIP": "10.97.0.1", "ports": [{"port": 1}]},
    },
]
SLICES = [
    {
        "metadata": {"namespace": "team", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000}],
        "endpoints": [
            {"addresses": ["10.244.0.3"], "conditions": {"ready": True}},
            {"addresses": ["10.244.0.4"], "conditions": {"ready": False}},
        ],
    },
    {
        "metadata": {"namespace": "team", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432}],
        "endpoints": [{"addresses": ["10.244.0.7"], "hostname": "db-0", "conditions": {"ready": True}}],
    },
]


def test_routes_only_ready_endpoints_inside_the_service_cidr() -> None:
    routes = build_routes(SERVICES, SLICES, "10.96.0.0/24")
    assert routes.backends == {("10.96.0.10", 80): (("10.244.0.3", 8000),)}
    assert routes.cluster_ips == {"10.96.0.10"}


def _ask(table: object, name: str, qtype: str = "A") -> DNSRecord:
    return answer(DNSRecord.question(name, qtype), table)  # type: ignore[arg-type]


def test_dns_answers_services_headless_pods_srv_and_nxdomain() -> None:
    table = build_dns(SERVICES, SLICES)
    a = _ask(table, "web.team.svc.cluster.local")
    assert [str(r.rdata) for r in a.rr] == ["10.96.0.10"]
    assert [str(r.rdata) for r in _ask(table, "DB.team.svc.cluster.local.").rr] == ["10.244.0.7"]
    assert [str(r.rdata) for r in _ask(table, "db-0.db.team.svc.cluster.local").rr] == ["10.244.0.7"]
    srv = _ask(table, "_http._tcp.web.team.svc.cluster.local", "SRV")
    assert srv.rr[0].rtype == QTYPE.SRV and srv.rr[0].rdata.port == 80
    aaaa = _ask(table, "web.team.svc.cluster.local", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr
    assert _ask(table, "web.svc.cluster.local").header.rcode == RCODE.NXDOMAIN
    assert _ask(table, "example.com").header.rcode == RCODE.NXDOMAIN


# --- runtime pieces in-process: log pump, work pool, proxy ------------------------------------------


def test_log_pump_writes_cri_lines_and_readers_select(tmp_path: Path) -> None:
    pump = logfiles.LogPump()
    r, w = os.pipe()
    path = tmp_path / "c" / "0.log"
    pump.attach(r, path)
    os.write(w, b"one\ntwo\nthr")
    os.write(w, b"ee\n" + b"x" * 20000)
    os.close(w)
    deadline = time.monotonic() + 5
    while pump.is_open(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    pump.stop()
    lines = logfiles.read_lines(path)
    assert [ln.text for ln in lines[:3]] == [b"one\n", b"two\n", b"three\n"]
    assert sum(len(ln.text) - 1 for ln in lines[3:]) == 20000  # a long line is split, nothing lost
    assert [ln.text for ln in logfiles.select_lines(lines[:3], tail=1)] == [b"three\n"]
    assert logfiles.select_lines(lines, since=lines[0].ts + 3600) == []
    assert lines[0].render(True).startswith(lines[0].stamp.encode())
    assert next(iter(logfiles.follow(path, 0, lambda: False, poll=0.01))).text == b"one\n"


def test_work_pool_collapses_a_key_and_never_runs_it_twice_at_once() -> None:
    pool = WorkPool(4, "test")
    runs: list[str] = []
    gate = threading.Event()
    active = threading.Semaphore(1)

    def task(tag: str) -> None:
        assert active.acquire(blocking=False), "same key ran concurrently"
        gate.wait(5)
        runs.append(tag)
        active.release()

    pool.submit("k", lambda: task("first"))
    deadline = time.monotonic() + 5
    while pool.pending() and not runs and time.monotonic() < deadline and len(pool._running) == 0:
        time.sleep(0.01)
    for i in range(5):
        pool.submit("k", lambda i=i: task(f"again{i}"))
    gate.set()
    while pool.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.stop()
    assert runs == ["first", "again4"]


def test_proxy_round_robins_ready_backends_and_refuses_without_backends() -> None:
    async def scenario() -> list[bytes]:
        async def backend(tag: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.write(tag)
            await writer.drain()
            writer.close()

        s1 = await asyncio.start_server(lambda r, w: backend(b"A", r, w), "127.0.0.1", 0)
        s2 = await asyncio.start_server(lambda r, w: backend(b"B", r, w), "127.0.0.1", 0)
        p1, p2 = s1.sockets[0].getsockname()[1], s2.sockets[0].getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            front_port = probe.getsockname()[1]
        proxy = ServiceProxy()
        front = ("127.0.0.1", front_port)
        await proxy.update({front: (("127.0.0.1", p1), ("127.0.0.1", p2))})
        got = []
        for _ in range(2):
            r, w = await asyncio.open_connection(*front)
            w.write(b"?")
            got.append(await r.read())
            w.close()
        await proxy.update({front: ()})
        try:
            await asyncio.open_connection(*front)
            got.append(b"connected")
        except ConnectionRefusedError:
            got.append(b"refused")
        await proxy.close()
        s1.close()
        s2.close()
        return got

    got = asyncio.run(scenario())
    assert sorted(got[:2]) == [b"A", b"B"] and got[2] == b"refused"


def test_proxied_connections_notice_a_peer_that_vanished_without_closing() -> None:
    """Both sides of a proxied connection carry keepalive and a user timeout (a scheduler pod whose network
    went before its FIN otherwise held its workers' connections, and their heartbeats, forever)."""
    from kubeplane.node.serviceproxy import KEEPALIVE_IDLE, USER_TIMEOUT_MS

    async def scenario() -> list[tuple[int, int, int]]:
        seen: list[socket.socket] = []
        release, reached = asyncio.Event(), asyncio.Event()

        async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            reached.set()
            await release.wait()
            w.close()

        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            front = ("127.0.0.1", probe.getsockname()[1])
        proxy = ServiceProxy()
        await proxy.update({front: (("127.0.0.1", server.sockets[0].getsockname()[1]),)})
        _, w = await asyncio.open_connection(*front)
        w.write(b"x")
        await w.drain()
        await asyncio.wait_for(reached.wait(), 10)  # the proxy has connected to the backend
        # The proxy's own sockets for this connection: those of this process not ours and not listening.
        import psutil

        own = {w.get_extra_info("socket").getsockname()}
        for conn in psutil.Process().net_connections(kind="tcp"):
            if conn.status == "ESTABLISHED" and conn.laddr not in own and conn.fd >= 0:
                seen.append(socket.socket(fileno=os.dup(conn.fd)))
        options = [
            (
                s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            )
            for s in seen
        ]
        for s in seen:
            s.close()
        release.set()
        w.close()
        await proxy.close()
        server.close()
        return options

    options = asyncio.run(scenario())
    # the proxy's two sides, and the backend's accepted socket (no options of its own)
    assert options.count((1, KEEPALIVE_IDLE, USER_TIMEOUT_MS)) == 2, options
