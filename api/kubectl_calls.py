"""The API calls every `kubectl dask` command makes, with refusals turned into messages a user acts on.

Invariant: a refused call raises `CommandError` whose message says what to do (RBAC missing: which verb on
which resource; CRDs missing: how to install them; no such cluster: how to list them), never a traceback;
the commands print it after `error: ` and exit 1. Held by test/e2e/test_kubectl_dask.py (a missing cluster)
and test/e2e/test_kubectl_dask_job.py.
"""

from __future__ import annotations

from typing import Any

from dask_operator.api.kubecluster.cluster import forbidden_message
from dask_operator.api.kubecluster.kinds import DASK_CLUSTER_KIND
from dask_operator.runtime.client import ApiError
from dask_operator.runtime.client import Client as RestClient
from dask_operator.runtime.objects import Obj


class CommandError(Exception):
    """A failure the user can act on; its message is printed after `error: `."""


def checked(verb: str, resource: str, namespace: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except ApiError as error:
        if error.status == 403:
            raise CommandError(forbidden_message(verb, resource, namespace, error.message)) from error
        if error.status == 404 and resource.endswith("kubernetes.dask.org"):
            raise CommandError(
                "the Dask Custom Resource Definitions are not installed in this cluster "
                "(kubectl apply -k manifests/crd)"
            ) from error
        raise CommandError(str(error)) from error


def get_cluster(api: RestClient, namespace: str, name: str) -> Obj:
    cluster = checked(
        "get", "daskclusters.kubernetes.dask.org", namespace, api.get, DASK_CLUSTER_KIND, namespace, name
    )
    if cluster is None:
        raise CommandError(f'daskcluster "{name}" not found in namespace {namespace} (kubectl dask list)')
    return dict(cluster)
