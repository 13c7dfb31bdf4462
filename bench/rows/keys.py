"""Throwaway keys and certificates for the baseline rows, made per run into a private dir.

ECDSA P-256 certificates (one CA, a server and a client leaf), valid one day; X25519
key pairs for WireGuard. Nothing here is reused across runs or printed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """PEM files: `ca`, `server_cert`, `server_key`, `client_cert`, `client_key`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_pin: str  # "pin-sha256:<base64 of SHA-256 of the server's SubjectPublicKeyInfo>"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        key_agreement=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        encipher_only=False,
        decipher_only=False,
    )


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """A certificate for `key` named `cn`, valid from an hour ago for one day."""
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    return b.sign(signer, hashes.SHA256())


def make_pki(workdir: Path, server_ip: str) -> Pki:
    """A CA and server/client leaves (the server's for `server_ip`), written under `workdir`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(
        "vpnb bench CA",
        ca_key,
        _name("vpnb bench CA"),
        ca_key,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (_key_usage(ca=True), True)],
    )

    def leaf(
        cn: str, eku: x509.ObjectIdentifier, *extra: x509.ExtensionType
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        exts: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(ca=False), True),
            (x509.ExtendedKeyUsage([eku]), False),
            *((e, False) for e in extra),
        ]
        return _cert(cn, key, ca.subject, ca_key, exts), key

    server, server_key = leaf(
        "vpnb-server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server_ip))]),
    )
    client, client_key = leaf("vpnb-client", ExtendedKeyUsageOID.CLIENT_AUTH)
    spki = server.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pki = Pki(
        ca=workdir / "ca.pem",
        server_cert=workdir / "server.pem",
        server_key=workdir / "server.key",
        client_cert=workdir / "client.pem",
        client_key=workdir / "client.key",
        server_pin="pin-sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode(),
    )
    pem = serialization.Encoding.PEM
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.server_cert.write_bytes(server.public_bytes(pem))
    pki.client_cert.write_bytes(client.public_bytes(pem))
    _write_private(pki.server_key, _key_pem(server_key))
    _write_private(pki.client_key, _key_pem(client_key))
    return pki


def write_x25519(path: Path) -> str:
    """Write a WireGuard private key (base64) to `path` (0600); return the public key (base64)."""
    key = x25519.X25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    _write_private(path, base64.b64encode(raw) + b"\n")
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(pub).decode()
