"""The kubernetes.dask.org/v1 kinds as runtime Kinds, so the cache and client can address them.

Invariant: one Kind per CRD (ours, and the Kueue kinds read), built from the api package's names; constructing it registers it for lookup.
Held by test/e2e/test_kubecluster.py, test/integration/test_crds.py.
"""

from __future__ import annotations

from dask_operator.api.v1.group import GROUP, VERSION
from dask_operator.api.v1.names import DASK_AUTOSCALER, DASK_CLUSTER, DASK_JOB, DASK_WORKER_GROUP, KindNames
from dask_operator.controller.contract.names import KUEUE_GROUP, KUEUE_VERSION
from dask_operator.runtime.kinds import Kind


def _kind(names: KindNames) -> Kind:
    return Kind(GROUP, VERSION, names.kind, names.plural)


DASK_CLUSTER_KIND = _kind(DASK_CLUSTER)
DASK_WORKER_GROUP_KIND = _kind(DASK_WORKER_GROUP)
DASK_JOB_KIND = _kind(DASK_JOB)
DASK_AUTOSCALER_KIND = _kind(DASK_AUTOSCALER)

# Kueue's kinds the operator reads (Workloads it owns; flavors and priority classes it looks up).
WORKLOAD = Kind(KUEUE_GROUP, KUEUE_VERSION, "Workload", "workloads")
RESOURCE_FLAVOR = Kind(KUEUE_GROUP, KUEUE_VERSION, "ResourceFlavor", "resourceflavors", namespaced=False)
WORKLOAD_PRIORITY_CLASS = Kind(
    KUEUE_GROUP, KUEUE_VERSION, "WorkloadPriorityClass", "workloadpriorityclasses", namespaced=False
)
