"""How `kubectl dask` prints: kubectl's short ages and its space-padded columns.

Invariant: pure (values in, text out); a table's columns line up as `kubectl get` prints them. Held by
test/unit/test_kubectl_dask.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence


def age(created: str | None, now: datetime.datetime) -> str:
    """kubectl's short age: 45s, 12m, 3h, 2d."""
    if not created:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(created)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded as kubectl prints them (three spaces between columns)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
