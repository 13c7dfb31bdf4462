"""A small test PKI (cryptography): one CA and end-entity certificates for IKE.

    pki = Pki.create("ecdsa")                    # P-384 CA; "rsa": RSA-3072 CA
    cert, key = pki.issue("server.vpn.test")         # P-256 (or RSA-2048) with SAN dNSName
    pki.write_ca(d / "ca.pem"); write_pem(d / "server", cert, key)

The certificates are what strongSwan and vpn/ike/certs.py both accept: the CA has
basicConstraints CA (critical) and keyUsage keyCertSign; an end entity carries its
FQDN as subjectAltName (IKE ID_FQDN binds to it, RFC 7296 §3.5) and in its CN, and a
keyUsage that allows signatures. Test-only keys, made fresh for every run.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _new_key(kind: str, *, ca: bool) -> PrivateKey:
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP384R1() if ca else ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072 if ca else 2048)
    raise ValueError(f"unknown key kind {kind!r}")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpn test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Pki:
    """A CA that issues end-entity certificates of the same key kind."""

    kind: str  # "ecdsa" or "rsa"
    ca_cert: x509.Certificate
    ca_key: PrivateKey

    @classmethod
    def create(cls, kind: str) -> Pki:
        key = _new_key(kind, ca=True)
        name = _name(f"vpn test {kind.upper()} CA")
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(kind, cert, key)

    def issue(self, fqdn: str) -> tuple[x509.Certificate, PrivateKey]:
        """An end-entity certificate for `fqdn` (SAN dNSName and CN) and its new key."""
        key = _new_key(self.kind, ca=False)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(fqdn))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert, key

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        return path


def write_pem(stem: Path, cert: x509.Certificate, key: PrivateKey) -> tuple[Path, Path]:
    """`stem.pem` (certificate) and `stem.key` (PKCS#8, mode 0600: our config refuses
    a readable key file)."""
    cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path
