"""A real Kueue manager on the local plane, for the tests that need it (`kueue` fixture, module scope).

Invariant: Kueue is built by hack/build-kueue.sh (cached outside the repository) and runs as a process of the
test session against the plane's API server: its CRDs installed, its webhooks for Kueue's own kinds served on
127.0.0.1 with a self-signed certificate and registered with the API server by URL (the release's webhook
configurations, rewritten; Kueue's certificate rotator keeps the certificate we give it in its Secret), no
integrations of its own (the operator creates the Workloads). Teardown stops
the process and removes everything it installed (webhook configurations, CRDs, its namespace), so the modules
after it run against a plane without Kueue; a leftover fails the teardown.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.operator import free_port
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
KUEUE_NAMESPACE = "kueue-system"
# Kueue's certificate management is on (with it off, Kueue insists on a metrics certificate under /etc/kueue):
# its rotator finds our certificate valid in this Secret, keeps it, and injects the CA into the webhook
# configurations it knows by these names.
WEBHOOK_PREFIX = "kueue"
WEBHOOK_SERVICE_DNS = f"kueue-webhook-service.{KUEUE_NAMESPACE}.svc"
WEBHOOK_SECRET = "kueue-webhook-server-cert"


@dataclass
class KueueProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    health_port: int

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def kueue_dir() -> Path:
    proc = subprocess.run(
        [str(REPO / "hack" / "build-kueue.sh")], capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/build-kueue.sh failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return Path(proc.stdout.strip().splitlines()[-1])


def serving_certificate(directory: Path) -> dict[str, bytes]:
    """A CA and a serving certificate signed by it, valid for 127.0.0.1 (the URL the API server calls) and for
    the Service name Kueue's certificate rotator checks, for ten years (the rotator renews what expires within
    90 days, and would then drop the IP). RSA, PKCS#1: the rotator parses the CA key that way.

    Returns the Secret data Kueue's rotator reads: ca.crt, ca.key, tls.crt, tls.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    life = dt.timedelta(days=3650)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kueue-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + life)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("kueue-ca")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sans = [x509.DNSName(WEBHOOK_SERVICE_DNS), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, WEBHOOK_SERVICE_DNS)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + life)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pkcs1 = serialization.PrivateFormat.TraditionalOpenSSL
    data = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": ca_key.private_bytes(serialization.Encoding.PEM, pkcs1, serialization.NoEncryption()),
        "tls.crt": cert.public_bytes(serialization.Encoding.PEM),
        "tls.key": key.private_bytes(serialization.Encoding.PEM, pkcs1, serialization.NoEncryption()),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        (directory / name).write_bytes(data[name])
    return data


def certificate_secret(data: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": WEBHOOK_SECRET, "namespace": KUEUE_NAMESPACE},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def webhook_configurations(manifests: Path, port: int, ca: bytes) -> list[dict[str, Any]]:
    """The release's webhook configurations for Kueue's own kinds only (the integrations' webhooks are not
    served: no integration is enabled), each pointed at https://127.0.0.1:<port><path> with our CA."""
    out = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc or doc.get("kind") not in (
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ):
            continue
        hooks = []
        for hook in doc.get("webhooks") or []:
            groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if groups != {"kueue.x-k8s.io"}:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": base64.b64encode(ca).decode(),
            }
            hook.pop("namespaceSelector", None)
            hooks.append(hook)
        if hooks:
            suffix = "mutating" if doc["kind"].startswith("Mutating") else "validating"
            out.append(
                {
                    "apiVersion": doc["apiVersion"],
                    "kind": doc["kind"],
                    "metadata": {"name": f"{WEBHOOK_PREFIX}-{suffix}-webhook-configuration"},
                    "webhooks": hooks,
                }
            )
    return out


# The kinds served in v1beta1 and v1beta2 whose conversion Kueue's webhook does (its rotator injects the CA).
CONVERTED = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")


def release_crds(built: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((built / "crd").glob("*.yaml"))]


def with_conversion_webhook(crd: dict[str, Any], port: int, ca: bytes) -> dict[str, Any]:
    """The release's CRD, with conversion by Kueue's webhook at https://127.0.0.1:<port>/convert where the
    release's kustomization adds one (its patches/webhook_in_*.yaml, by Service there)."""
    if crd["metadata"]["name"] not in {f"{k}.kueue.x-k8s.io" for k in CONVERTED}:
        return crd
    crd = copy.deepcopy(crd)
    crd["spec"]["conversion"] = {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": {
                "url": f"https://127.0.0.1:{port}/convert",
                "caBundle": base64.b64encode(ca).decode(),
            },
            "conversionReviewVersions": ["v1"],
        },
    }
    return crd


def kueue_config(webhook_port: int, health_port: int, cert_dir: Path, visibility_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True},
        "visibilityServer": {"bindAddress": "127.0.0.1", "bindPort": visibility_port},
        # Workloads are created by the operator; Kueue needs no job integration of its own. The operator's
        # kinds are named so Kueue knows who owns those Workloads.
        "integrations": {
            "frameworks": [],
            "externalFrameworks": ["DaskJob.v1.kubernetes.dask.org", "DaskCluster.v1.kubernetes.dask.org"],
        },
    }


def _crds_established(plane: Any, crd_dir: Path) -> bool:
    for path in sorted(crd_dir.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        out = plane.kubectl("get", f"crd/{name}", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conditions = json.loads(out.stdout).get("status", {}).get("conditions") or []
        if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return False
    return True


KUEUE_KINDS = ("workloads", "localqueues", "clusterqueues", "resourceflavors", "workloadpriorityclasses")


def _kueue_objects(plane: Any) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of every object of Kueue's kinds the tests may have made."""
    found = []
    for kind in KUEUE_KINDS:
        out = plane.kubectl("get", f"{kind}.kueue.x-k8s.io", "-A", "-o", "json", check=False)
        if out.returncode != 0:
            continue
        for item in json.loads(out.stdout).get("items", []):
            meta = item["metadata"]
            found.append((kind, meta.get("namespace", ""), meta["name"]))
    return found


def _leftovers(plane: Any) -> list[str]:
    left = []
    crds = plane.kubectl("get", "crd", "-o", "name", check=False).stdout.split()
    left += [c for c in crds if c.endswith(".kueue.x-k8s.io")]
    for kind in ("mutating", "validating"):
        name = f"{WEBHOOK_PREFIX}-{kind}-webhook-configuration"
        out = plane.kubectl(
            "get", f"{kind}webhookconfiguration", name, "--ignore-not-found", "-o", "name", check=False
        )
        left += out.stdout.split()
    ns = plane.kubectl("get", "namespace", KUEUE_NAMESPACE, "--ignore-not-found", "-o", "name", check=False)
    left += ns.stdout.split()
    return left


@pytest.fixture(scope="module")
def kueue(plane: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueProcess]:
    """Kueue running against the plane for one test module; gone, with everything it installed, after it."""
    if plane.backend != "local":
        pytest.skip("Kueue is run by the tests only on the local control plane")
    built = kueue_dir()
    work = tmp_path_factory.mktemp("kueue")
    webhook_port, health_port, visibility_port = free_port(), free_port(), free_port()
    certificate = serving_certificate(work / "certs")
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(kueue_config(webhook_port, health_port, work / "certs", visibility_port))
    )
    plane.kubectl("create", "namespace", KUEUE_NAMESPACE)
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(certificate_secret(certificate)))
    # Registered before Kueue starts: its certificate bootstrap waits until it has injected the CA into them.
    hooks = webhook_configurations(built / "webhook" / "manifests.yaml", webhook_port, certificate["ca.crt"])
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(hooks))
    crds = [with_conversion_webhook(crd, webhook_port, certificate["ca.crt"]) for crd in release_crds(built)]
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(crds),
                  timeout=120)  # fmt: skip
    wait_for(lambda: _crds_established(plane, built / "crd"), timeout=60, message="Kueue's CRDs Established")
    log = work / "kueue.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(built / "bin" / "kueue"), f"--config={config}", f"--kubeconfig={plane.kubeconfig}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    kueue = KueueProcess(proc, log, health_port)
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"kueue exited:\n{kueue.tail()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=120, interval=0.5, message="kueue /readyz")
        yield kueue
    finally:
        # Kueue's own objects first, while Kueue runs to release its finalizers; then whatever is left.
        for kind in KUEUE_KINDS:
            plane.kubectl("delete", f"{kind}.kueue.x-k8s.io", "--all", "-A", "--wait=false", check=False)
        with contextlib.suppress(Exception):  # what is left loses its finalizers below
            wait_for(
                lambda: not _kueue_objects(plane), timeout=60, interval=0.5, message="Kueue objects gone"
            )
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for hook in ("mutating", "validating"):
            name = f"{WEBHOOK_PREFIX}-{hook}-webhook-configuration"
            plane.kubectl("delete", f"{hook}webhookconfiguration", name, "--ignore-not-found")
        for kind, namespace, name in _kueue_objects(plane):
            where = ["-n", namespace] if namespace else []
            plane.kubectl("patch", f"{kind}.kueue.x-k8s.io", name, *where, "--type=merge",
                          "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
        plane.kubectl("delete", "-f", str(built / "crd"), "--ignore-not-found", "--wait=true", timeout=180)
        plane.kubectl(
            "delete", "namespace", KUEUE_NAMESPACE, "--ignore-not-found", "--wait=true", timeout=120
        )
        left = _leftovers(plane)
        assert not left, f"Kueue left behind: {', '.join(left)}\n{kueue.tail()}"
