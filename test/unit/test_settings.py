"""OperatorSettings from the reference operator's Dask config keys."""

from __future__ import annotations

import pytest

from dask_operator.controller.settings import from_dask_config


def test_settings_read_the_reference_config_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import dask.config

    with dask.config.set(
        {
            "kubernetes.controller.worker-allocation.batch-size": 3,
            "kubernetes.controller.worker-allocation.delay": 2,
            "kubernetes.controller.events.enabled": "false",
        }
    ):
        settings = from_dask_config(cluster_domain="example.org", force_scale_down_after=None)
    assert (settings.batch_size, settings.batch_delay, settings.events_enabled) == (3, 2.0, False)
    assert settings.cluster_domain == "example.org" and settings.force_scale_down_after == 300
    assert from_dask_config().batch_size is None
