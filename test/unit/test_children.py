"""children.py's relabel_patch: it restores `dask.org/cluster-name` only on an object whose first ownerReference
is still the desired child's controller, and has nothing to say for objects without the label or an owner."""

from __future__ import annotations

from dask_operator.api.v1.names import LABEL_CLUSTER_NAME
from dask_operator.controller.contract.children import owner_reference, relabel_patch

OWNER = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
         "metadata": {"name": "g", "namespace": "ns", "uid": "u-1"}}  # fmt: skip


def child(labels: dict[str, str], owners: list[dict[str, object]]) -> dict[str, object]:
    return {
        "kind": "Pod",
        "metadata": {"name": "w", "namespace": "ns", "labels": labels, "ownerReferences": owners},
    }


def test_the_patch_tests_the_controller_uid_then_adds_the_escaped_label() -> None:
    patch = relabel_patch(child({LABEL_CLUSTER_NAME: "c", "other": "x"}, [owner_reference(OWNER)]))
    assert patch == [
        {"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": "u-1"},
        {"op": "add", "path": "/metadata/labels/dask.org~1cluster-name", "value": "c"},
    ]


def test_no_patch_without_the_label_or_a_controller() -> None:
    assert relabel_patch(child({"other": "x"}, [owner_reference(OWNER)])) is None
    not_controller = {**owner_reference(OWNER), "controller": False}
    assert relabel_patch(child({LABEL_CLUSTER_NAME: "c"}, [not_controller])) is None
    assert relabel_patch(child({LABEL_CLUSTER_NAME: "c"}, [])) is None
