"""Where the API server is and how to prove who we are: the pod's service account, or a kubeconfig.

Invariant: loading credentials imports nothing heavy. The `kubernetes` package (~55 MiB of modules once
imported, most of an idle operator's memory) is loaded only for a kubeconfig user that needs an `exec` or
`auth-provider` plugin, whose short-lived tokens it knows how to refresh. The service-account token is read
again when it may have rotated (at most every TOKEN_RECHECK_SECONDS), as the kubelet rotates projected
tokens. A kubeconfig's relative paths are relative to the file that names them; of several files in
$KUBECONFIG the first to define a name wins, as with kubectl.
Held by test/unit/test_runtime_credentials.py and every integration test (they connect through it).
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_RECHECK_SECONDS = 60.0


class ConfigError(Exception):
    """No usable credentials: not in a pod, no kubeconfig, or a kubeconfig that does not say enough."""


@dataclass(frozen=True)
class Credentials:
    """The API server's URL, its TLS trust and our identity; `authorization` gives the header's current value."""

    host: str
    ca_file: str | None = None
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    tls_server_name: str | None = None
    proxy: str | None = None
    no_proxy: str | None = None
    authorization: Callable[[], str | None] | None = None
    namespace: str | None = None  # the kubeconfig context's or the pod's namespace

    def headers(self) -> dict[str, str]:
        value = self.authorization() if self.authorization is not None else None
        return {"Authorization": value} if value else {}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https server (None for http)."""
        if not self.host.startswith("https"):
            return None
        if self.verify:
            context = ssl.create_default_context(cafile=self.ca_file)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def with_token(self, token: str) -> Credentials:
        """The same server and trust, authenticated by a bearer token alone (no client certificate)."""
        return replace(self, cert_file=None, key_file=None, authorization=lambda: f"Bearer {token}")


# -- a pod's service account --------------------------------------------------------------------------------


class _TokenFile:
    """A bearer token read from a file, read again when it may have been rotated."""

    def __init__(self, path: Path, recheck: float = TOKEN_RECHECK_SECONDS) -> None:
        self.path, self.recheck = path, recheck
        self._lock = threading.Lock()
        self._value: str | None = None
        self._read_at = float("-inf")

    def __call__(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._read_at >= self.recheck:
                self._value = self.path.read_text().strip()
                self._read_at = time.monotonic()
            return f"Bearer {self._value}" if self._value else None


def in_cluster(
    environ: Mapping[str, str] = os.environ, account_dir: Path = SERVICE_ACCOUNT_DIR
) -> Credentials:
    """The service account of the pod we run in; ConfigError outside a pod."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("not in a pod: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set")
    token, ca = account_dir / "token", account_dir / "ca.crt"
    if not token.is_file() or not ca.is_file():
        raise ConfigError(f"no service account token and CA in {account_dir}")
    namespace_file = account_dir / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    server = f"[{host}]" if ":" in host else host
    return Credentials(
        host=f"https://{server}:{port}",
        ca_file=str(ca),
        authorization=_TokenFile(token),
        no_proxy=_no_proxy(environ),
        namespace=namespace or None,
    )


# -- a kubeconfig --------------------------------------------------------------------------------------------


def kubeconfig_files(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ
) -> list[Path]:
    """The files to read: `path`, else each of $KUBECONFIG, else ~/.kube/config."""
    if path:
        return [Path(path).expanduser()]
    listed = [Path(p).expanduser() for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return listed or [Path("~/.kube/config").expanduser()]


@dataclass(frozen=True)
class _Entry:
    value: dict[str, Any]
    base: Path  # the directory of the file that defined it


class _Kubeconfig:
    """Several kubeconfig files merged: names and current-context from the first file that has them."""

    def __init__(self, files: list[Path]) -> None:
        self.current: str | None = None
        self.entries: dict[str, dict[str, _Entry]] = {"clusters": {}, "users": {}, "contexts": {}}
        read = 0
        for file in files:
            if not file.is_file():
                continue
            doc = yaml.safe_load(file.read_text()) or {}
            if not isinstance(doc, dict):
                raise ConfigError(f"{file}: not a kubeconfig (a YAML mapping)")
            read += 1
            self.current = self.current or doc.get("current-context") or None
            for section, entries in self.entries.items():
                singular = section[:-1]
                for item in doc.get(section) or []:
                    if isinstance(item, dict) and item.get("name") and item["name"] not in entries:
                        entries[item["name"]] = _Entry(dict(item.get(singular) or {}), file.parent)
        if not read:
            raise ConfigError(f"no kubeconfig found (looked for {', '.join(map(str, files))})")

    def context(self, name: str | None) -> dict[str, Any]:
        name = name or self.current
        if not name:
            raise ConfigError("the kubeconfig has no current-context; name a context")
        if name not in self.entries["contexts"]:
            raise ConfigError(f"the kubeconfig has no context {name!r}")
        return self.entries["contexts"][name].value

    def entry(self, section: str, name: str | None) -> _Entry:
        if name is None:
            return _Entry({}, Path.cwd())
        if name not in self.entries[section]:
            raise ConfigError(f"the kubeconfig has no {section[:-1]} {name!r}")
        return self.entries[section][name]


def from_kubeconfig(
    path: str | os.PathLike[str] | None = None,
    context: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Credentials:
    """Credentials of a kubeconfig context (the current one unless named)."""
    files = kubeconfig_files(path, environ)
    config = _Kubeconfig(files)
    ctx = config.context(context)
    cluster, user = config.entry("clusters", ctx.get("cluster")), config.entry("users", ctx.get("user"))
    if "exec" in user.value or "auth-provider" in user.value:
        return _through_kubernetes_package(files, context, ctx.get("namespace"))
    server = cluster.value.get("server")
    if not server:
        raise ConfigError(f"the kubeconfig's cluster {ctx.get('cluster')!r} has no server")
    return Credentials(
        host=str(server).rstrip("/"),
        ca_file=_file(cluster, "certificate-authority"),
        verify=not cluster.value.get("insecure-skip-tls-verify", False),
        cert_file=_file(user, "client-certificate"),
        key_file=_file(user, "client-key"),
        tls_server_name=cluster.value.get("tls-server-name") or None,
        proxy=cluster.value.get("proxy-url") or None,
        no_proxy=_no_proxy(environ),
        authorization=_user_authorization(user),
        namespace=ctx.get("namespace") or None,
    )


def context_namespace(path: str | os.PathLike[str] | None = None, context: str | None = None) -> str | None:
    """The namespace a kubeconfig context names, if any (ConfigError without a kubeconfig)."""
    namespace = _Kubeconfig(kubeconfig_files(path)).context(context).get("namespace")
    return str(namespace) if namespace else None


def _user_authorization(user: _Entry) -> Callable[[], str | None] | None:
    value = user.value
    if value.get("token"):
        token = str(value["token"])
        return lambda: f"Bearer {token}"
    if value.get("tokenFile"):
        return _TokenFile(user.base / str(value["tokenFile"]))
    if value.get("username") and value.get("password"):
        pair = base64.b64encode(f"{value['username']}:{value['password']}".encode()).decode()
        return lambda: f"Basic {pair}"
    return None


_DATA_DIR: list[Path] = []


def _file(entry: _Entry, field: str) -> str | None:
    """`field`'s file (relative to its kubeconfig), or `field-data` written to a private temporary file."""
    data = entry.value.get(f"{field}-data")
    if data:
        if not _DATA_DIR:
            _DATA_DIR.append(Path(tempfile.mkdtemp(prefix="dask-operator-kubeconfig-")))
            atexit.register(shutil.rmtree, _DATA_DIR[0], True)
        fd, name = tempfile.mkstemp(dir=_DATA_DIR[0], suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data))
        return name
    path = entry.value.get(field)
    return str(entry.base / Path(str(path)).expanduser()) if path else None


def _no_proxy(environ: Mapping[str, str]) -> str | None:
    return environ.get("NO_PROXY") or environ.get("no_proxy") or None


def _through_kubernetes_package(files: list[Path], context: str | None, namespace: str | None) -> Credentials:
    """Plugin users (`exec`, `auth-provider`): the kubernetes package runs the plugin and refreshes its token."""
    from kubernetes import client as k8s_client  # heavy: loaded only for plugin users
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(
            config_file=os.pathsep.join(map(str, files)),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except k8s_config.ConfigException as error:
        raise ConfigError(str(error)) from error

    def authorization() -> str | None:
        for setting in configuration.auth_settings().values():  # runs the plugin's refresh hook
            if setting.get("in") == "header" and str(setting.get("key")).lower() == "authorization":
                return str(setting["value"]) if setting.get("value") else None
        return None

    return Credentials(
        host=str(configuration.host).rstrip("/"),
        ca_file=configuration.ssl_ca_cert,
        verify=bool(configuration.verify_ssl),
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
        tls_server_name=configuration.tls_server_name,
        proxy=configuration.proxy,
        no_proxy=configuration.no_proxy,
        authorization=authorization,
        namespace=namespace or None,
    )
