"""manifests/prometheus/prometheusrule.yaml is hack/gen-prometheus-rules' rendering of dask-operator.rules.yaml
(the one source of the alerts), and every alert carries what a receiver needs. promtool checks and unit-tests
the rules themselves in .ci/run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "manifests" / "prometheus"


def test_prometheusrule_is_generated_from_the_rule_file() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-prometheus-rules"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rule = yaml.safe_load((PROMETHEUS / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((PROMETHEUS / "dask-operator.rules.yaml").read_text())


def test_every_alert_has_severity_summary_description_and_a_unit_test() -> None:
    groups = yaml.safe_load((PROMETHEUS / "dask-operator.rules.yaml").read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"]]
    tests = yaml.safe_load((PROMETHEUS / "dask-operator.rules.test.yaml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]
        assert 'job="dask-operator"' in alert["expr"], f"{alert['alert']}: select the operator's job"
        assert alert["alert"] in tested, f"{alert['alert']} has no promtool test that makes it fire"
