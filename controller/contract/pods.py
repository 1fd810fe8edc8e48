"""Pods as the reconcilers see them: `dask_operator.api.pods`, read the same way by the operator and the
client (ready, finished, failing, recovered), under the names the planners use.

Invariant: re-exports only; nothing is defined here. Held by test/unit/test_pods.py.
"""

from __future__ import annotations

from dask_operator.api.pods import (
    RECOVERY_SECONDS,
    is_pod_finished,
    is_pod_ready,
    is_terminating,
    pod_condition,
    pod_failure,
    recovery_deadline,
)

__all__ = [
    "RECOVERY_SECONDS",
    "is_pod_finished",
    "is_pod_ready",
    "is_terminating",
    "pod_condition",
    "pod_failure",
    "recovery_deadline",
]
