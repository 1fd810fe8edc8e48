"""The runtime's credentials: kubeconfig contexts, files and data, tokens, the pod's service account."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dask_operator.runtime.credentials import (
    ConfigError,
    Credentials,
    _TokenFile,
    context_namespace,
    from_kubeconfig,
    in_cluster,
)


def kubeconfig(path: Path, current: str | None, contexts: dict[str, dict], clusters: dict[str, dict],
               users: dict[str, dict]) -> Path:  # fmt: skip
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "contexts": [{"name": n, "context": c} for n, c in contexts.items()],
        "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
        "users": [{"name": n, "user": u} for n, u in users.items()],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_context_with_relative_files_and_a_token(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    path = kubeconfig(
        tmp_path / "config",
        "dev",
        {"dev": {"cluster": "c", "user": "u", "namespace": "team-a"}},
        {"c": {"server": "https://k8s.example:6443/", "certificate-authority": "certs/ca.pem",
               "tls-server-name": "kubernetes", "proxy-url": "http://proxy:3128"}},
        {"u": {"token": "s3cret", "client-certificate": "/abs/client.pem", "client-key": "certs/key.pem"}},
    )  # fmt: skip
    creds = from_kubeconfig(path, environ={"NO_PROXY": "k8s.example"})
    assert creds.host == "https://k8s.example:6443"
    assert creds.ca_file == str(tmp_path / "certs" / "ca.pem")
    assert creds.cert_file == "/abs/client.pem"
    assert creds.key_file == str(tmp_path / "certs" / "key.pem")
    assert (creds.tls_server_name, creds.proxy, creds.no_proxy) == (
        "kubernetes",
        "http://proxy:3128",
        "k8s.example",
    )
    assert creds.headers() == {"Authorization": "Bearer s3cret"}
    assert creds.namespace == "team-a" and creds.verify
    assert context_namespace(path) == "team-a"


def test_data_fields_are_written_to_private_files_and_basic_auth(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    path = kubeconfig(
        tmp_path / "config",
        "x",
        {"x": {"cluster": "c", "user": "u"}},
        {"c": {"server": "https://h:1", "certificate-authority-data": base64.b64encode(pem).decode(),
               "insecure-skip-tls-verify": True}},
        {"u": {"username": "ada", "password": "pw"}},
    )  # fmt: skip
    creds = from_kubeconfig(path)
    assert creds.ca_file is not None and Path(creds.ca_file).read_bytes() == pem
    assert Path(creds.ca_file).stat().st_mode & 0o077 == 0
    assert not creds.verify
    assert creds.headers() == {"Authorization": "Basic " + base64.b64encode(b"ada:pw").decode()}
    context = creds.ssl_context()
    assert context is not None and not context.check_hostname


def test_a_named_context_and_several_files_where_the_first_wins(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "a", "one", {"one": {"cluster": "c", "user": "u"}},
                       {"c": {"server": "http://first:1"}}, {"u": {}})  # fmt: skip
    second = kubeconfig(tmp_path / "b", "two", {"two": {"cluster": "c", "user": "u"}, "one": {"cluster": "x"}},
                        {"c": {"server": "http://second:1"}}, {"u": {"token": "t"}})  # fmt: skip
    env = {"KUBECONFIG": f"{first}:{tmp_path / 'missing'}:{second}"}
    assert (
        from_kubeconfig(environ=env).host == "http://first:1"
    )  # current-context and names of the first file
    two = from_kubeconfig(context="two", environ=env)
    assert (
        two.host == "http://first:1" and two.headers() == {}
    )  # cluster "c" and user "u" from the first file
    assert two.ssl_context() is None


def test_what_cannot_be_used_says_why(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no kubeconfig found"):
        from_kubeconfig(tmp_path / "nothing")
    path = kubeconfig(tmp_path / "config", None, {"a": {"cluster": "gone", "user": "u"}}, {}, {"u": {}})
    with pytest.raises(ConfigError, match="no current-context"):
        from_kubeconfig(path)
    with pytest.raises(ConfigError, match="no context 'b'"):
        from_kubeconfig(path, context="b")
    with pytest.raises(ConfigError, match="no cluster 'gone'"):
        from_kubeconfig(path, context="a")


def test_an_exec_plugin_user_goes_through_the_kubernetes_package(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": "from-plugin"}}  # fmt: skip
    plugin.write_text(f"print({json.dumps(json.dumps(credential))})\n")
    path = kubeconfig(
        tmp_path / "config",
        "p",
        {"p": {"cluster": "c", "user": "u", "namespace": "ns"}},
        {"c": {"server": "http://h:1"}},
        {"u": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                        "args": [str(plugin)], "interactiveMode": "Never"}}},
    )  # fmt: skip
    creds = from_kubeconfig(path)
    assert creds.headers() == {"Authorization": "Bearer from-plugin"}
    assert creds.host == "http://h:1" and creds.namespace == "ns"


def test_the_pods_service_account_and_its_rotating_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not in a pod"):
        in_cluster(environ={}, account_dir=tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="no service account"):
        in_cluster(environ=env, account_dir=tmp_path)
    (tmp_path / "token").write_text("one\n")
    (tmp_path / "ca.crt").write_text("ca")
    (tmp_path / "namespace").write_text("dask\n")
    creds = in_cluster(environ=env, account_dir=tmp_path)
    assert creds.host == "https://[fd00::1]:443" and creds.ca_file == str(tmp_path / "ca.crt")
    assert creds.namespace == "dask" and creds.headers() == {"Authorization": "Bearer one"}
    token = _TokenFile(tmp_path / "token", recheck=0)
    assert token() == "Bearer one"
    (tmp_path / "token").write_text("two")
    assert token() == "Bearer two"
    assert Credentials(host="https://h", cert_file="c").with_token("t").headers() == {
        "Authorization": "Bearer t"
    }


def test_loading_credentials_does_not_import_the_kubernetes_package() -> None:
    code = (
        "import sys; from dask_operator.controller import run; "
        "from dask_operator.runtime.client import Client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
