"""Runtime pieces that never reach an API server: for in-process unit tests of informers and controllers."""

from __future__ import annotations

from dask_operator.runtime.cache import Cache
from dask_operator.runtime.client import Client
from dask_operator.runtime.credentials import Credentials


def offline_client() -> Client:
    """A client for a port nobody listens on; the informers built on it are fed by hand, never started."""
    return Client(Credentials(host="http://127.0.0.1:9"))


def offline_cache() -> Cache:
    """A cache that is never started: feed `cache.informer(kind)` through its replace/added/... methods."""
    return Cache(offline_client())
