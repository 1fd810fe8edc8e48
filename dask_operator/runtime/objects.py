"""A Kubernetes object as the runtime, the operator and the client hold it (its JSON as a dict), and
Kubernetes' time format.

Invariant: `Obj` is declared here and nowhere else in the package; `parse_rfc3339(rfc3339(t))` is `t`
truncated to the second, and anything unparsable reads as None. Held by test/unit/test_layers.py and
test/unit/test_plans.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


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
