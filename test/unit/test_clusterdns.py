"""hack/kubeplane/clusterdns.py: the table served is rebuilt whole from the informers' stores."""

from __future__ import annotations

from kubeplane.clusterdns import ClusterDns
from kubeplane.node.kubeapi import Connection, KubeClient


def service(ns: str, name: str, ip: str) -> dict[str, object]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}


def test_a_change_rebuilds_the_whole_table_and_a_deleted_service_is_gone() -> None:
    client = KubeClient(Connection("https://127.0.0.1:1", None, None, None, None, True))
    dns = ClusterDns(client)  # informers never started: their stores are filled by hand
    dns.services.store["a/web"] = service("a", "web", "10.96.0.20")
    dns._poke("ADDED", {})
    assert dns.changed.is_set()
    table = dns.rebuild()
    assert not dns.changed.is_set()
    assert table.a["web.a.svc.cluster.local"] == ("10.96.0.20",)
    del dns.services.store["a/web"]
    dns.services.store["b/db"] = service("b", "db", "10.96.0.21")
    table = dns.rebuild()
    assert "web.a.svc.cluster.local" not in table.a
    assert table.a["db.b.svc.cluster.local"] == ("10.96.0.21",)
