"""manifests/grafana/dask-operator.json is a dashboard by Grafana's published schema.

Grafana itself does not run here. grafana-foundation-sdk's models are generated from Grafana's dashboard
schema: the file must load into them with every field it carries kept (a field the schema does not know,
or a misspelt one, is dropped by the round trip and fails the test), every panel type must be one of
Grafana's panel plugins and every query a Prometheus query. test/integration/test_prometheus.py evaluates
the queries themselves against a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog import encoder, plugins, runtime
from grafana_foundation_sdk.models import dashboard as grafana
from grafana_foundation_sdk.models import prometheus

DASHBOARD = Path(__file__).resolve().parents[2] / "manifests" / "grafana" / "dask-operator.json"

plugins.register_default_plugins()


def round_trip(data: dict[str, Any]) -> tuple[grafana.Dashboard, dict[str, Any]]:
    model = grafana.Dashboard.from_json(data)
    return model, json.loads(json.dumps(model.to_json(), cls=encoder.JSONEncoder))


def dropped(original: Any, kept: Any, path: str = "") -> list[str]:
    """Paths present in `original` that the schema's models did not keep (or kept differently)."""
    if isinstance(original, dict):
        if not isinstance(kept, dict):
            return [path]
        return [
            p
            for k, v in original.items()
            for p in (dropped(v, kept[k], f"{path}/{k}") if k in kept else [f"{path}/{k}"])
        ]
    if isinstance(original, list):
        if not isinstance(kept, list) or len(original) != len(kept):
            return [path]
        return [
            p
            for i, (a, b) in enumerate(zip(original, kept, strict=True))
            for p in dropped(a, b, f"{path}[{i}]")
        ]
    return [] if original == kept else [path]


def test_the_dashboard_loads_into_grafanas_schema_without_losing_a_field() -> None:
    data = json.loads(DASHBOARD.read_text())
    model, kept = round_trip(data)
    assert dropped(data, kept) == []
    assert model.uid == "dask-operator" and model.schema_version >= 39


def test_every_panel_is_a_grafana_panel_type_with_prometheus_queries() -> None:
    model, _ = round_trip(json.loads(DASHBOARD.read_text()))
    panels = [p for p in model.panels or [] if isinstance(p, grafana.Panel)]
    rows = [p for p in model.panels or [] if isinstance(p, grafana.RowPanel)]
    assert len(panels) >= 20 and len(rows) >= 4
    for panel in panels:
        assert runtime.panelcfg_config(panel.type_val) is not None, (
            f"{panel.title}: unknown type {panel.type_val}"
        )
        assert panel.targets, panel.title
        for target in panel.targets:
            assert isinstance(target, prometheus.Dataquery), (panel.title, type(target))
            assert target.expr and target.ref_id, panel.title
    ids = [p.id_val for p in model.panels or []]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_a_misspelt_field_is_caught() -> None:
    data = json.loads(DASHBOARD.read_text())
    data["panels"][1]["gridpos"] = data["panels"][1].pop("gridPos")
    _, kept = round_trip(data)
    assert dropped(data, kept) == ["/panels[1]/gridpos"]
