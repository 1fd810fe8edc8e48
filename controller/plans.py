"""Values shared by the desired-state functions: what a plan may ask the executing layer to do.

Invariant: plain frozen data, no behaviour; a plan holds every write a reconcile will issue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

# Field managers, one per concern (ARCHITECTURE rule 4).
FIELD_MANAGER = "dask-operator"
STATUS_FIELD_MANAGER = "dask-operator-status"
REPLICAS_FIELD_MANAGER = "dask-operator-replicas"
ADOPTION_FIELD_MANAGER = "dask-operator-adoption"
AUTOSCALER_FIELD_MANAGER = "dask-operator-autoscaler"  # default groups' replicas, the cooldown annotation


@dataclass(frozen=True)
class PodDeletion:
    """Delete this pod, but only if it is still the same object (UID precondition)."""

    namespace: str
    name: str
    uid: str
    reason: str


def rfc3339(now: float) -> str:
    """Kubernetes' time format, second precision with a literal Z."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
