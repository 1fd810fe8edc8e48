"""The operator's settings: command-line flags first, then the reference operator's Dask config keys.

Invariant: read once at start-up into a frozen value; reconcilers never read the environment themselves.
Dask config keys (and their env forms, e.g. DASK_KUBERNETES__CONTROLLER__WORKER_ALLOCATION__BATCH_SIZE):

  kubernetes.controller.worker-allocation.batch-size   max worker pods created per round (unset: no limit)
  kubernetes.controller.worker-allocation.delay        seconds between rounds
  kubernetes.controller.events.enabled                 record Kubernetes Events (default true)
  kubernetes.controller.worker-termination-grace-period  seconds a worker pod may take to hand its data over
                                                       when deleted (default 60; a pod spec's own
                                                       terminationGracePeriodSeconds wins; 0: no drain hook)
Held by test/unit/test_settings.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dask_operator.api.v1.names import DEFAULT_CLUSTER_DOMAIN
from dask_operator.controller.contract.drain import DEFAULT_WORKER_GRACE_SECONDS
from dask_operator.controller.contract.kueue import KueueAccess
from dask_operator.controller.contract.names import DEFAULT_FORCE_SCALE_DOWN_SECONDS


@dataclass(frozen=True)
class OperatorSettings:
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    batch_size: int | None = None
    batch_delay: float = 0.0
    events_enabled: bool = True
    force_scale_down_after: float = DEFAULT_FORCE_SCALE_DOWN_SECONDS
    scheduler_timeout: float = 5.0  # one HTTP/RPC call to a scheduler
    retire_timeout: float = 120.0  # a graceful retirement (data moves first)
    worker_grace: float = DEFAULT_WORKER_GRACE_SECONDS  # worker pods' default terminationGracePeriodSeconds
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
    grace = get("kubernetes.controller.worker-termination-grace-period")
    values: dict[str, Any] = {
        "batch_size": int(batch) if batch not in (None, "", 0, "0") else None,
        "batch_delay": float(delay) if delay not in (None, "") else 0.0,
        "events_enabled": True if enabled is None else _truthy(enabled),
        "worker_grace": float(grace) if grace not in (None, "") else DEFAULT_WORKER_GRACE_SECONDS,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return OperatorSettings(**values)
