"""The control plane behaves like Kubernetes where the operator depends on it (real API server, no mocks)."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from support.fixtures import KubePlane
from support.wait import wait_for

SSA = "application/apply-patch+yaml"


def _gone(read: object) -> bool:
    try:
        read()  # type: ignore[operator]
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def test_crd_applies_and_becomes_established(kube_plane: KubePlane) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                    "subresources": {"status": {}},
                }
            ],
        },
    }
    kube_plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(crd))
    try:
        kube_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=30s", f"crd/widgets.{group}", timeout=40
        )
        ext = client.ApiextensionsV1Api(kube_plane.api_client())
        conditions = ext.read_custom_resource_definition(f"widgets.{group}").status.conditions
        assert any(c.type == "Established" and c.status == "True" for c in conditions)
    finally:
        kube_plane.kubectl("delete", f"crd/widgets.{group}", "--wait=false", check=False)


def test_server_side_apply_conflicts_without_force_and_resolves_with_it(
    kube_plane: KubePlane, namespace: str
) -> None:
    core = client.CoreV1Api(kube_plane.api_client())

    def apply(manager: str, value: str, force: bool) -> client.V1ConfigMap:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "shared"},
            "data": {"key": value},
        }
        return core.patch_namespaced_config_map(
            "shared", namespace, body, field_manager=manager, force=force, _content_type=SSA
        )

    apply("first", "one", force=False)
    with pytest.raises(ApiException) as conflict:
        apply("second", "two", force=False)
    assert conflict.value.status == 409
    assert "first" in conflict.value.body  # the conflict names the current owner of data.key

    cm = apply("second", "two", force=True)
    assert cm.data == {"key": "two"}
    owners = {m.manager for m in cm.metadata.managed_fields if m.operation == "Apply"}
    assert "second" in owners


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(
    kube_plane: KubePlane, namespace: str
) -> None:
    core = client.CoreV1Api(kube_plane.api_client())
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    wait_for(
        lambda: _gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
        timeout=30,
        message="the garbage collector to delete the dependent ConfigMap",
    )


def test_namespace_deletion_completes(kube_plane: KubePlane) -> None:
    core = client.CoreV1Api(kube_plane.api_client())
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(name, {"metadata": {"name": "content"}})

    core.delete_namespace(name)

    wait_for(
        lambda: _gone(lambda: core.read_namespace(name)),
        timeout=60,
        message=f"namespace {name} to be deleted by the namespace controller",
    )


def test_a_pods_quota_of_zero_is_enforced(kube_plane: KubePlane, namespace: str) -> None:
    """`kubectl create quota nopods --hard=pods=0` as on a real cluster: the resourcequota controller fills
    the quota's status and admission refuses the pod."""
    kube_plane.kubectl("create", "quota", "nopods", "--hard=pods=0", "-n", namespace)
    core = client.CoreV1Api(kube_plane.api_client())
    wait_for(
        lambda: (
            (core.read_namespaced_resource_quota("nopods", namespace).status.hard or {}).get("pods") == "0"
        ),
        timeout=60,
        message="the resourcequota controller to fill the quota's status",
    )
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "ghcr.io/dask/dask:latest"}]},
    }
    try:
        core.create_namespaced_pod(namespace, pod)
    except ApiException as e:
        assert e.status == 403 and "exceeded quota" in str(e.body), e.body
    else:
        raise AssertionError("a pod was admitted past a pods=0 quota")


def test_service_account_token_can_be_requested(kube_plane: KubePlane, namespace: str) -> None:
    core = client.CoreV1Api(kube_plane.api_client())
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "robot"}})
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600},
    }

    token = core.create_namespaced_service_account_token("robot", namespace, request).status.token

    # The token authenticates as the service account (a real round trip through the authenticator).
    review = client.AuthenticationV1Api(kube_plane.api_client()).create_token_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    )
    assert review.status.authenticated, review.status.error
    assert review.status.user.username == f"system:serviceaccount:{namespace}:robot"
