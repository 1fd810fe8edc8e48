"""Certificates and kubeconfigs for one plane, made with `cryptography`.

Invariant: one CA per plane signs every serving and client certificate; the service-account key pair
is separate. Files are written once, at `up`, under <state>/pki with private keys mode 0600, and the
admin kubeconfig embeds its credentials so it can be copied anywhere (or pointed at another server).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)
ADMIN_USER = "kubernetes-admin"
FRONT_PROXY_USER = "front-proxy-client"  # the only name trusted to assert request headers


@dataclass(frozen=True)
class PkiPaths:
    root: Path

    @property
    def ca_crt(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def admin_crt(self) -> Path:
        return self.root / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.root / "admin.key"

    @property
    def kubelet_client_crt(self) -> Path:
        return self.root / "apiserver-kubelet-client.crt"

    @property
    def kubelet_client_key(self) -> Path:
        return self.root / "apiserver-kubelet-client.key"

    @property
    def front_proxy_crt(self) -> Path:
        return self.root / "front-proxy-client.crt"

    @property
    def front_proxy_key(self) -> Path:
        return self.root / "front-proxy-client.key"

    @property
    def kubelet_crt(self) -> Path:
        return self.root / "kubelet.crt"

    @property
    def kubelet_key(self) -> Path:
        return self.root / "kubelet.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool = False,
    server: bool = False,
    client: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        b = b.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def generate(pki: PkiPaths, *, first_service_ip: str, node_ip: str, node_name: str) -> None:
    """Write the CA, the serving and client certificates and the service-account key pair."""
    pki.root.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("localkube-ca")
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_crt, _sign(ca_name, ca_key, ca_name, ca_key, is_ca=True))

    def leaf(
        crt: Path,
        key_path: Path,
        subject: x509.Name,
        *,
        server: bool = False,
        client: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> None:
        key = _key()
        _write_key(key_path, key)
        cert = _sign(subject, key, ca_name, ca_key, server=server, client=client, dns=dns, ips=ips)
        _write_cert(crt, cert)

    leaf(
        pki.apiserver_crt,
        pki.apiserver_key,
        _name("kube-apiserver"),
        server=True,
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=("127.0.0.1", first_service_ip, node_ip),
    )
    leaf(pki.admin_crt, pki.admin_key, _name(ADMIN_USER, ("system:masters",)), client=True)
    leaf(
        pki.kubelet_client_crt,
        pki.kubelet_client_key,
        _name("kube-apiserver-kubelet-client", ("system:masters",)),
        client=True,
    )
    leaf(pki.front_proxy_crt, pki.front_proxy_key, _name(FRONT_PROXY_USER), client=True)
    leaf(
        pki.kubelet_crt,
        pki.kubelet_key,
        _name(f"system:node:{node_name}", ("system:nodes",)),
        server=True,
        dns=(node_name,),
        ips=(node_ip,),
    )
    sa_key = _key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def issue_kubelet_serving(pki: PkiPaths, crt: Path, key_path: Path, *, node_name: str, node_ip: str) -> None:
    """A serving certificate for a real kubelet, signed by the plane's CA (the API server checks it)."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca_key} holds no EC key")
    ca_name = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes()).subject
    key = _key()
    _write_key(key_path, key)
    subject = _name(f"system:node:{node_name}", ("system:nodes",))
    _write_cert(crt, _sign(subject, key, ca_name, ca_key, server=True, dns=(node_name,), ips=(node_ip,)))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: PkiPaths, *, cluster: str = "localkube") -> Path:
    """An admin kubeconfig for `server` with the CA and client credentials embedded."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_crt)}}
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {
                    "client-certificate-data": _b64(pki.admin_crt),
                    "client-key-data": _b64(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": ADMIN_USER}}],
        "current-context": cluster,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path
