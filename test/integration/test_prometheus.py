"""The operator installed by `helm install` runs in-cluster on a fresh local plane; a real Prometheus, configured
with the README's scrape config, discovers and scrapes it, a Dask scheduler and its workers, and answers every
dashboard and alert expression.

Prometheus is built from the Go module proxy with Kubernetes discovery (hack/build-prometheus.sh; Debian's
package, which .ci/run installs for promtool, leaves that discovery out). Its jobs are those of
manifests/prometheus/scrape-config.yaml, unchanged but for the credentials (`kubeconfig_file`) and a 1 s
interval; every target is a pod IP on the process node, reached from the host. The workload is the README's:
manifests/samples/daskcluster.yaml plus the sample DaskAutoscaler, which scales the idle cluster down, so
retirements and autoscaler changes happen for real. The plane is the module's own: an `--all-namespaces`
operator must not meet the per-test operators of the session plane.

Every PromQL expression in manifests/grafana/ and in dask-operator.rules.yaml must parse and return data,
except those listed in LEGITIMATELY_EMPTY with the reason. The values are printed (`-s` shows them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.fixtures import KubePlane, _bin_dir
from support.helm import CHART, Helm, helm_binary
from support.operator import pods
from support.prometheus import RULES, Prometheus, scrape_configs, start_prometheus
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "manifests" / "grafana" / "dask-operator.json"
SAMPLES = REPO / "manifests" / "samples"

OPERATOR_NAMESPACE = "dask-operator"
# The dashboard's variables, set as a user would pick them for this test's cluster.
DASHBOARD_VARIABLES = {"job": "dask-operator", "namespace": "dask-operator", "cluster": "simple"}

# Expressions allowed to return nothing here, and why.
LEGITIMATELY_EMPTY = {
    'sum(rate(dask_operator_jobs_finished_total{job=~"$job", namespace=~"$namespace"}[5m])) by (result)':
        "no DaskJob runs in this test (a job needs its own cluster and runner pod); "
        "test/e2e/test_job.py finishes jobs",
}  # fmt: skip


# -- Prometheus -------------------------------------------------------------------------------------------


# -- the workload -----------------------------------------------------------------------------------------


@dataclass
class Observed:
    plane: KubePlane
    prometheus: Prometheus
    namespace: str


@pytest.fixture(scope="module")
def fresh_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubePlane]:
    if os.environ.get("K8S_TEST_BACKEND", "local") != "local":
        pytest.skip(
            "needs a fresh local plane with a process node (in-cluster operator, pod IPs from the host)"
        )
    from kubeplane.plane import Plane, UpOptions

    plane = Plane.up(UpOptions(name=f"pytest-{os.getpid()}-prom", bin_dir=_bin_dir(), force=True))
    kp = KubePlane("local", plane.kubeconfig, tmp_path_factory.mktemp("prom-plane"), plane)
    try:
        yield kp
    finally:
        kp.close()
        plane.down()


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def operator_pods(plane: KubePlane) -> list[dict[str, Any]]:
    return pods(
        plane,
        OPERATOR_NAMESPACE,
        "app.kubernetes.io/name=dask-operator,app.kubernetes.io/instance=dask-operator",
    )


@pytest.fixture(scope="module")
def observed(fresh_plane: KubePlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    plane = fresh_plane
    workdir = tmp_path_factory.mktemp("prometheus")
    helm = Helm(helm_binary(), workdir / "helm-home")
    # What an admin types (README, Install into a cluster); the chart's defaults: 2 replicas, cluster-wide.
    helm(
        "install", "dask-operator", str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace",
        f"--kubeconfig={plane.kubeconfig}",
    )  # fmt: skip
    wait_for(
        lambda: len(p := operator_pods(plane)) == 2 and all(ready(x) for x in p),
        timeout=120, interval=0.5, message="2 ready operator pods from the chart",
    )  # fmt: skip
    prom = start_prometheus(workdir, scrape_configs(plane.kubeconfig))
    namespace = "quickstart"
    try:
        # What a user types (README quickstart and the samples' headers).
        plane.kubectl("create", "namespace", namespace)
        plane.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "daskcluster.yaml"))
        plane.kubectl(
            "wait", "-n", namespace, "--for=jsonpath={.status.phase}=Running", "daskcluster/simple",
            "--timeout=120s", timeout=130,
        )  # fmt: skip
        plane.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "daskautoscaler.yaml"))
        yield Observed(plane, prom, namespace)
    finally:
        prom.proc.terminate()
        try:
            prom.proc.wait(10)
        except subprocess.TimeoutExpired:
            prom.proc.kill()
            prom.proc.wait(5)
        shutil.rmtree(workdir / "data", ignore_errors=True)


# -- expressions ------------------------------------------------------------------------------------------


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, in dashboard order."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def with_variables(expr: str) -> str:
    return re.sub(r"\$(\w+)", lambda m: DASHBOARD_VARIABLES[m.group(1)], expr)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


METRIC_NAME = re.compile(r"\b([a-z_]+_(?:total|status|running|reachable|ready|desired))\b")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (ours all end in one of a few suffixes)."""
    return set(METRIC_NAME.findall(expr))


def format_result(result: list[dict[str, Any]]) -> str:
    shown = []
    for sample in result[:4]:
        labels = {k: v for k, v in sample["metric"].items() if k not in ("job", "namespace", "__name__")}
        value = float(sample["value"][1])
        shown.append(f"{labels or ''}={value:.4g}")
    more = f" (+{len(result) - 4})" if len(result) > 4 else ""
    return ", ".join(shown) + more


# -- tests ------------------------------------------------------------------------------------------------


def test_the_charts_operator_runs_in_cluster_and_the_quickstart_converges(observed: Observed) -> None:
    plane = observed.plane
    operators = operator_pods(plane)
    assert len(operators) == 2
    for pod in operators:
        assert pod["spec"]["serviceAccountName"] == "dask-operator"
        (container,) = pod["spec"]["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    lease = json.loads(
        plane.kubectl("get", "lease", "-n", OPERATOR_NAMESPACE, "dask-operator", "-o", "json").stdout
    )
    assert lease["spec"]["holderIdentity"].split("_", 1)[0] in {p["metadata"]["name"] for p in operators}
    cluster = json.loads(
        plane.kubectl("get", "-n", observed.namespace, "daskcluster", "simple", "-o", "json").stdout
    )
    assert cluster["status"]["phase"] == "Running"
    # The release owns the CRDs (upgraded with it, kept on uninstall).
    crd = json.loads(plane.kubectl("get", "crd", "daskclusters.kubernetes.dask.org", "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "dask-operator"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_prometheus_discovers_and_scrapes_operator_scheduler_and_workers(observed: Observed) -> None:
    prom = observed.prometheus
    wait_for(
        lambda: prom.up("dask-operator") == 2 and prom.up("dask-scheduler") == 1 and prom.up("dask-worker") >= 1,
        timeout=60, interval=0.5,
        message="Prometheus scrapes both operator replicas, the scheduler and a worker (up == 1)",
    )  # fmt: skip
    targets = prom.api("targets", state="active")["activeTargets"]
    by_job: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        if target["health"] == "up":
            by_job.setdefault(target["labels"]["job"], []).append(target)

    def address(target: dict[str, Any]) -> str:
        return str(target["scrapeUrl"].split("//")[1].split(":")[0])

    # Discovered through the API server: each pod's own IP, reached from the host, labelled by the scrape
    # config's relabelling.
    operators = {p["status"]["podIP"]: p["metadata"]["name"] for p in operator_pods(observed.plane)}
    assert {address(t): t["labels"]["pod"] for t in by_job["dask-operator"]} == operators
    assert {t["labels"]["namespace"] for t in by_job["dask-operator"]} == {OPERATOR_NAMESPACE}
    assert all(t["scrapeUrl"].endswith(":8080/metrics") for t in by_job["dask-operator"])
    schedulers = pods(observed.plane, observed.namespace, "dask.org/component=scheduler")
    (scheduler,) = by_job["dask-scheduler"]
    assert address(scheduler) in {p["status"]["podIP"] for p in schedulers}
    assert scheduler["labels"]["dask_org_cluster_name"] == "simple"
    assert scheduler["labels"]["namespace"] == observed.namespace
    assert scheduler["labels"]["pod"].startswith("simple-scheduler")
    worker = by_job["dask-worker"][0]
    assert worker["labels"]["dask_org_workergroup_name"] == "simple-default"
    assert worker["scrapeUrl"].endswith(":8788/metrics")

    # Dask's own metrics, through the scheduler's dashboard port.
    # The sample autoscaler may already have retired the idle workers: look at the whole scraped history.
    # A worker's own endpoint can be up before it registered with the scheduler: wait for a scrape that
    # counted it (a first answer of 0 is not the end of it; CI once read exactly that).
    def workers_seen() -> float | None:
        found = prom.query('max(max_over_time(dask_scheduler_workers{dask_org_cluster_name="simple"}[10m]))')
        value = float(found[0]["value"][1]) if found else 0.0
        return value if value >= 1 else None

    assert wait_for(workers_seen, timeout=60, interval=0.5, message="dask_scheduler_workers >= 1") >= 1


def test_every_dashboard_expression_returns_data(observed: Observed) -> None:
    prom = observed.prometheus
    # The sample autoscaler scales the idle cluster down: wait for its first step, so retirements,
    # autoscaler and worker series exist.
    wait_for(
        lambda: prom.query('sum(dask_operator_autoscaler_scalings_total{direction="down"}) > 0'),
        timeout=90, interval=1, message="the sample DaskAutoscaler's first scale-down, as seen by Prometheus",
    )  # fmt: skip
    expressions = dashboard_expressions()
    assert len(expressions) >= 25
    for title, expr in expressions:
        if expr in LEGITIMATELY_EMPTY:
            assert prom.query(with_variables(expr)) == [], f"{title}: expected empty, see LEGITIMATELY_EMPTY"
            print(f"  [empty] {title}: {expr}  -- {LEGITIMATELY_EMPTY[expr]}")
            continue
        # rate() over a new counter needs two samples: give each expression a few seconds.
        result = wait_for(
            lambda expr=expr: prom.query(with_variables(expr)),
            timeout=20, interval=1, message=f"panel {title!r}: {expr}",
        )  # fmt: skip
        print(f"  {title}: {expr}\n      -> {format_result(result)}")
    # The dashboard's variables are Grafana's label_values(metric, label): the label's values among the
    # metric's series.
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        if variable["type"] != "query" or match is None:
            continue
        selector, label = with_variables(match.group(1)), match.group(2)
        values = prom.api(f"label/{urllib.parse.quote(label)}/values", **{"match[]": selector})
        assert DASHBOARD_VARIABLES[variable["name"]] in values, (variable, values)
        print(f"  variable ${variable['name']}: {values}")


def test_every_alert_evaluates_reads_live_series_and_stays_quiet(observed: Observed) -> None:
    prom = observed.prometheus
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {
        "DaskOperatorReconcileErrors",
        "DaskClusterNotReady",
        "DaskOperatorLeaderMissing",
        "DaskWorkerRetirementsFailing",
        "DaskSchedulerUnreachable",
    }

    def evaluated() -> dict[str, dict[str, Any]] | None:
        loaded = {r["name"]: r for group in prom.api("rules", type="alert")["groups"] for r in group["rules"]}
        return loaded if all(r.get("lastEvaluation", "").startswith("2") for r in loaded.values()) else None

    loaded = wait_for(evaluated, timeout=20, interval=0.5, message="Prometheus evaluated every alert rule")
    assert set(loaded) == {r["alert"] for r in rules}
    for rule in rules:
        state = loaded[rule["alert"]]
        # Prometheus itself evaluated the expression without error.
        assert state["health"] == "ok", state
        # A healthy cluster fires nothing (DaskClusterNotReady may be pending while the autoscaler scales).
        assert state["state"] != "firing", state
        result = prom.query(rule["expr"])
        names = metric_names(rule["expr"])
        assert names, rule["expr"]
        for name in names:
            live = prom.query(f'count({name}{{job="dask-operator"}})')
            assert live, f"{rule['alert']} reads {name}, which has no series"
            print(f"  {rule['alert']}: {state['state']}, expr -> {format_result(result) or 'empty'}; "
                  f"{name}: {float(live[0]['value'][1]):.0f} series")  # fmt: skip
