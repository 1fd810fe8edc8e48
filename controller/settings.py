"""The operator's settings: command-line flags first, then the reference operator's Dask config keys.

Invariant: read once at start-up into a frozen value; reconcilers never read the environment themselves.
Dask config keys (and their env forms, e.g. DASK_KUBERNETES__CONTROLLER__WORKER_ALLOCATION__BATCH_SIZE):

  kubernetes.controller.worker-allocation.batch-size   max worker pods created per round (unset: no limit)
  kubernetes.controller.worker-allocation.delay        seconds between rounds
  kubernetes.controller.events.enabled                 record Kubernetes Events (default true)
Held by test/unit/test_settings.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dask_operator.api.v1.names import DEFAULT_CLUSTER_DOMAIN
from dask_operator.controller.kueue_access import KueueAccess
from dask_operator.controller.workergroup import DEFAULT_FORCE_SCALE_DOWN_SECONDS


@dataclass(frozen=True)
class OperatorSettings:
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    batch_size: int | None = None
    batch_delay: float = 0.0
    events_enabled: bool = True
    force_scale_down_after: float = DEFAULT_FORCE_SCALE_DOWN_SECONDS
    scheduler_timeout: float = 5.0  # one HTTP/RPC call to a scheduler
    retire_timeout: float = 120.0  # a graceful retirement (data moves first)
    kueue: KueueAccess = field(
        default_factory=KueueAccess
    )  # what of Kueue is served and readable (found at start-up)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def from_dask_config(**overrides: Any) -> OperatorSettings:
    """Settings from Dask config (which already folds in DASK_* environment variables), then `overrides`."""
    import dask.config  # imported here: only the `run` command needs Dask's configuration

    def get(key: str) -> Any:
        return dask.config.get(key, default=None)

    batch = get("kubernetes.controller.worker-allocation.batch-size")
    delay = get("kubernetes.controller.worker-allocation.delay")
    enabled = get("kubernetes.controller.events.enabled")
    values: dict[str, Any] = {
        "batch_size": int(batch) if batch not in (None, "", 0, "0") else None,
        "batch_delay": float(delay) if delay not in (None, "") else 0.0,
        "events_enabled": True if enabled is None else _truthy(enabled),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return OperatorSettings(**values)
