"""A real Prometheus for the tests that scrape the operator, its schedulers and workers: built from the Go
module proxy with Kubernetes discovery (hack/build-prometheus.sh), configured with the README's scrape config
(manifests/prometheus/scrape-config.yaml, unchanged but for the plane's credentials and a 1 s interval) and
the project's alert rules. Used by test/integration/test_prometheus.py (process node) and
test/realnode/test_realnode_operator.py (real nodes).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from support.operator import free_port
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "manifests" / "prometheus"
SCRAPE_CONFIG = PROMETHEUS_DIR / "scrape-config.yaml"
RULES = PROMETHEUS_DIR / "dask-operator.rules.yaml"


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        reply = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = reply.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def up(self, job: str) -> int:
        return len(self.query(f'up{{job="{job}"}} == 1'))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def prometheus_binary() -> str:
    """Prometheus with Kubernetes discovery, built once from the Go module proxy (Debian's has none)."""
    proc = subprocess.run(
        [str(REPO / "hack" / "build-prometheus.sh")], capture_output=True, text=True, timeout=3000
    )
    assert proc.returncode == 0, f"hack/build-prometheus.sh failed:\n{proc.stderr[-3000:]}"
    binary = Path(proc.stdout.strip().splitlines()[-1])
    assert binary.exists(), binary
    return str(binary)


def scrape_configs(kubeconfig: Path) -> list[dict[str, Any]]:
    """The README's scrape config, with this plane's credentials."""
    jobs = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert [j["job_name"] for j in jobs] == ["dask-operator", "dask-scheduler", "dask-worker"]
    for job in jobs:
        for sd in job["kubernetes_sd_configs"]:
            sd["kubeconfig_file"] = str(kubeconfig)
        job.update(scrape_interval="1s", scrape_timeout="1s")
    return list(jobs)


def start_prometheus(workdir: Path, scrape: list[dict[str, Any]]) -> Prometheus:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape,
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        assert proc.poll() is None, f"prometheus exited:\n{prom.tail()}"
        try:
            return requests.get(f"{prom.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ready, timeout=30, interval=0.2, message="prometheus /-/ready")
    return prom
