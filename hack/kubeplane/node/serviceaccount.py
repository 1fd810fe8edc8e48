"""Projected ServiceAccount tokens: requested through TokenRequest, bound to the pod, refreshed like the kubelet.

Invariant: a token is requested for the pod's ServiceAccount with `boundObjectRef` = the pod (name and
UID), so it stops working when the pod is deleted; it is requested again once 80% of its requested
lifetime has passed (or 24 h since issue, whichever is first), so a mounted token is never expired.
Held by test/unit/test_process_node_volumes.py (schedule) and test/e2e/test_process_node_incluster.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .kubeapi import KubeClient

JSON = dict[str, Any]
MAX_TTL = 24 * 3600.0
DEFAULT_EXPIRATION = 3600


@dataclass(frozen=True)
class IssuedToken:
    token: str
    issued_at: float  # epoch seconds: expiry minus the requested lifetime
    expires_at: float

    def refresh_at(self) -> float:
        """When the kubelet would request a new token: 80% into its lifetime, at most 24 h after issue."""
        lifetime = self.expires_at - self.issued_at
        return min(self.issued_at + 0.8 * lifetime, self.issued_at + MAX_TTL)


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def request_token(
    client: KubeClient, pod: JSON, audience: str | None, expiration_seconds: int | None
) -> IssuedToken:
    """POST serviceaccounts/<sa>/token for this pod; raises ApiError as the API server answers."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    sa = spec.get("serviceAccountName") or "default"
    seconds = int(expiration_seconds or DEFAULT_EXPIRATION)
    body: JSON = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        },
    }
    if audience:
        body["spec"]["audiences"] = [audience]
    out = client.request(
        "POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body=body
    )
    status = out.get("status") or {}
    expires = parse_time(status["expirationTimestamp"])
    granted = int((out.get("spec") or {}).get("expirationSeconds") or seconds)
    return IssuedToken(token=str(status["token"]), issued_at=expires - granted, expires_at=expires)
