"""Runtime pieces that never reach an API server: for in-process unit tests of informers and controllers."""

from __future__ import annotations

from kubernetes import client as k8s_client

from dask_operator.controller.runtime.cache import Cache
from dask_operator.controller.runtime.client import Client


def offline_client() -> Client:
    """A client for a port nobody listens on; the informers built on it are fed by hand, never started."""
    configuration = k8s_client.Configuration()
    configuration.host = "http://127.0.0.1:9"
    return Client(configuration)


def offline_cache() -> Cache:
    """A cache that is never started: feed `cache.informer(kind)` through its replace/added/... methods."""
    return Cache(offline_client())
