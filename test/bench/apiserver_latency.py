"""Benchmark piece: latency histograms read from /metrics, above all the API server's own latency for
mutating requests.

`mutating_latency(before, after)` takes two scrapes of a histogram and gives the p50/p99 (the upper bound
of the bucket that holds the quantile, as Prometheus' `histogram_quantile` would bound it) and the count of
requests observed in between. `scrape(client)` reads `apiserver_request_duration_seconds` for
POST/PUT/PATCH/APPLY/DELETE over all resources: what every client of this control plane saw while the
operator ran, not only the operator. Used by test/bench/bench_fleet.py and test/bench/bench_clusters.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# APPLY is how the API server's metrics name a server-side apply (a PATCH on the wire).
MUTATING = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE"})
_LE = re.compile(r'le="([^"]+)"')
_VERB = re.compile(r'verb="([A-Z]+)"')


def histogram(text: str, metric: str, labels: Callable[[str], bool]) -> dict[float, float]:
    """Cumulative counts per bucket bound (le; +Inf as inf) of `metric`, summed over the series whose label
    text `labels` accepts."""
    prefix = f"{metric}_bucket{{"
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        label_text, _, value = line[len(prefix) :].rpartition("} ")
        le = _LE.search(label_text)
        if le is None or not labels(label_text):
            continue
        bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
        buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def _mutating(label_text: str) -> bool:
    verb = _VERB.search(label_text)
    return verb is not None and verb.group(1) in MUTATING


def scrape(client: Any) -> dict[float, float]:
    """The API server's mutating requests (all resources) by duration bucket."""
    text = client.request("GET", "/metrics", timeout=60).get("raw", "")
    return histogram(text, "apiserver_request_duration_seconds", _mutating)


def mutating_latency(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """p50/p99 upper bounds (seconds) and count of the observations between two scrapes of a histogram."""
    delta = sorted((b, after.get(b, 0.0) - before.get(b, 0.0)) for b in after)
    total = delta[-1][1] if delta else 0.0

    def quantile(q: float) -> float | None:
        if total <= 0:
            return None
        return next((b for b, count in delta if count >= q * total), None)

    return {
        "requests": int(total),
        "p50_seconds_at_most": quantile(0.5),
        "p99_seconds_at_most": quantile(0.99),
    }
