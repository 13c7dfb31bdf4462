"""X.509 for IKEv2: loading, path validation to a configured CA, ID binding, CERTREQ.

Built on `cryptography`; no clock reads (validity is checked against a `now` passed in)
and no network (no CRL/OCSP fetching; revocation is out of scope here).

Path validation is deliberately small and strict, in the spirit of RFC 5280 §6.1 for
the profile that IKE peers use (strongSwan's `pki`, OpenSSL CAs): the end-entity
certificate from the peer's first CERT payload (RFC 7296 §3.6, encoding 4), optional
intermediates from the other CERT payloads, ending at a certificate directly issued by
(or equal to) one of the configured CAs. Each step checks the issuer's signature, the
validity period, basicConstraints cA, pathLenConstraint, keyUsage keyCertSign (when
keyUsage is present), and refuses unknown critical extensions.

A tiny strict DER reader lives here too: IKE needs to parse AlgorithmIdentifiers
(RFC 7427) and Distinguished Names carried in ID payloads, which `cryptography` does
not expose. Every read is bounds-checked; bad input raises `DerError`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from vpn.ike.constants import CertEncoding, IdType
from vpn.ike.errors import AuthenticationFailed, MalformedMessage

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: RFC 7296 §3.7: each CERTREQ entry is a SHA-1 hash of a CA's SubjectPublicKeyInfo.
CERTREQ_HASH_BYTES = 20
#: Bound on the number of certificates walked in one path (EE + intermediates + anchor).
MAX_CHAIN_DEPTH = 8
#: RFC 8247 §3.2 and common practice: RSA moduli below this are refused.
MIN_RSA_BITS = 2048

# Extensions this validator understands; any other critical one is refused (RFC 5280 §4.2).
_KNOWN_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.INHIBIT_ANY_POLICY,
    }
)


# --------------------------------------------------------------------------- DER


class DerError(MalformedMessage):
    """Bytes that should be DER are not (bad tag, length or nesting)."""


def der_read(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """Read one DER TLV at `pos`: returns (tag, content, position after it).

    Only single-octet tags and definite minimal lengths (X.690 §10.1), as DER requires.
    """
    if pos + 2 > len(data):
        raise DerError("DER: truncated header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("DER: multi-octet tags are not supported")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4:
            raise DerError("DER: indefinite or oversized length")
        if pos + n > len(data):
            raise DerError("DER: truncated length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if data[pos] == 0 or length < 0x80:
            raise DerError("DER: non-minimal length")
        pos += n
    end = pos + length
    if end > len(data):
        raise DerError("DER: content runs past the end")
    return tag, data[pos:end], end


def der_items(content: bytes) -> list[tuple[int, bytes]]:
    """Split the content of a constructed value into its (tag, content) children."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(content):
        tag, value, pos = der_read(content, pos)
        items.append((tag, value))
    return items


def der_one(data: bytes, tag: int) -> bytes:
    """Parse `data` as exactly one TLV with `tag` and return its content."""
    got, content, end = der_read(data)
    if got != tag or end != len(data):
        raise DerError("DER: unexpected tag or trailing bytes")
    return content


def der_tlv(tag: int, content: bytes) -> bytes:
    """Encode one DER TLV with a minimal length."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def der_oid_to_dotted(content: bytes) -> str:
    """Decode OBJECT IDENTIFIER content octets to dotted form (X.690 §8.19)."""
    if not content or content[-1] & 0x80:
        raise DerError("DER: bad OID")
    arcs: list[int] = []
    value = 0
    start = True
    for octet in content:
        if start and octet == 0x80:
            raise DerError("DER: non-minimal OID arc")
        value = (value << 7) | (octet & 0x7F)
        start = not octet & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def der_oid(dotted: str) -> bytes:
    """Encode a dotted OID as a complete DER TLV."""
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return der_tlv(0x06, bytes(body))


_STRING_TAGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (T61), read as Latin-1 as most software does
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


def parse_dn(der: bytes) -> tuple[frozenset[tuple[str, str]], ...]:
    """Parse a DER Name (RFC 5280 §4.1.2.4) into RDNs of (OID, normalised value).

    Values are compared as RFC 4518 does in spirit: case-folded, runs of spaces
    collapsed, leading/trailing spaces dropped.
    """
    rdns = []
    for tag, rdn in der_items(der_one(der, 0x30)):
        if tag != 0x31:
            raise DerError("DN: RDN is not a SET")
        attrs = set()
        for atag, atv in der_items(rdn):
            parts = der_items(atv) if atag == 0x30 else []
            if len(parts) != 2 or parts[0][0] != 0x06:
                raise DerError("DN: bad AttributeTypeAndValue")
            encoding = _STRING_TAGS.get(parts[1][0])
            if encoding is None:
                value = parts[1][1].hex()
            else:
                try:
                    value = parts[1][1].decode(encoding)
                except UnicodeDecodeError as exc:
                    raise DerError("DN: bad string value") from exc
            attrs.add((der_oid_to_dotted(parts[0][1]), _normalise(value)))
        if not attrs:
            raise DerError("DN: empty RDN")
        rdns.append(frozenset(attrs))
    return tuple(rdns)


def _normalise(value: str) -> str:
    return " ".join(value.split()).casefold()


def _name_key(name: x509.Name) -> tuple[frozenset[tuple[str, str]], ...]:
    out = []
    for rdn in name.rdns:
        attrs = set()
        for attr in rdn:
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            attrs.add((attr.oid.dotted_string, _normalise(value)))
        out.append(frozenset(attrs))
    return tuple(out)


# --------------------------------------------------------------------------- loading


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Load every certificate in `data`: one DER certificate or one or more PEM blocks."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ValueError("not a PEM or DER X.509 certificate") from exc


def load_certificate(data: bytes) -> x509.Certificate:
    """Load exactly one certificate (PEM or DER)."""
    certs = load_certificates(data)
    if len(certs) != 1:
        raise ValueError(f"expected one certificate, found {len(certs)}")
    return certs[0]


def load_private_key(data: bytes, password: bytes | None = None) -> PrivateKey:
    """Load an RSA or ECDSA private key (PEM or DER; PKCS#8, PKCS#1 or SEC1)."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The message of the underlying error is not passed on: it may quote key bytes.
        raise ValueError("not a readable PEM or DER private key (or wrong password)") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("only RSA and ECDSA private keys are supported")
    return key


def certificate_public_key(cert: x509.Certificate) -> PublicKey:
    """The certificate's key, if it is one IKE can verify with (RSA >= 2048 or ECDSA)."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise AuthenticationFailed("certificate RSA key is too short")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key
    raise AuthenticationFailed("certificate key type is not supported")


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the DER SubjectPublicKeyInfo: the CERTREQ entry for a CA (RFC 7296 §3.7)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(spki).digest()  # noqa: S324 - mandated by RFC 7296 §3.7


def parse_certreq(data: bytes) -> list[bytes]:
    """Split CERTREQ data (encoding 4) into its 20-octet CA key hashes (RFC 7296 §3.7)."""
    if len(data) % CERTREQ_HASH_BYTES:
        raise MalformedMessage("CERTREQ data is not a whole number of SHA-1 hashes")
    return [data[i : i + CERTREQ_HASH_BYTES] for i in range(0, len(data), CERTREQ_HASH_BYTES)]


# --------------------------------------------------------------------------- validation


def _as_datetime(now: _dt.datetime | float) -> _dt.datetime:
    if isinstance(now, _dt.datetime):
        if now.tzinfo is None:
            raise TypeError("now must be timezone-aware")
        return now.astimezone(_dt.UTC)
    return _dt.datetime.fromtimestamp(now, _dt.UTC)


def _check_validity(cert: x509.Certificate, now: _dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise AuthenticationFailed(f"{what} certificate is not yet valid")
    if now > cert.not_valid_after_utc:
        raise AuthenticationFailed(f"{what} certificate has expired")


def _check_critical(cert: x509.Certificate, what: str) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise AuthenticationFailed(f"{what} certificate has an unknown critical extension")


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_end_entity(cert: x509.Certificate) -> None:
    """RFC 5280 §4.2.1.3: a keyUsage, if present, must allow signing (IKE AUTH)."""
    _check_critical(cert, "peer")
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not (ku.digital_signature or ku.content_commitment):
        raise AuthenticationFailed("peer certificate keyUsage does not allow signatures")


def _check_issuer(cert: x509.Certificate, below: int, what: str) -> None:
    """RFC 5280 §6.1.4: the issuer must be a CA, allowed to sign certs, path length ok."""
    _check_critical(cert, what)
    bc = _ext(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise AuthenticationFailed(f"{what} certificate is not a CA")
    if bc.path_length is not None and below > bc.path_length:
        raise AuthenticationFailed(f"{what} certificate path length constraint exceeded")
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise AuthenticationFailed(f"{what} certificate keyUsage does not allow keyCertSign")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


@dataclass(frozen=True)
class TrustStore:
    """The CAs this side trusts for peer certificates.

    `certreq_data()` is what goes into this side's CERTREQ payload (encoding 4).
    """

    cas: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem(cls, *blobs: bytes) -> TrustStore:
        """Build from PEM or DER blobs, each holding one or more CA certificates."""
        cas = tuple(cert for blob in blobs for cert in load_certificates(blob))
        return cls(cas)

    def certreq_data(self) -> bytes:
        """Concatenated SHA-1 hashes of each CA's SubjectPublicKeyInfo (RFC 7296 §3.7)."""
        return b"".join(spki_sha1(ca) for ca in self.cas)

    def requested_by(self, certreq: bytes) -> list[x509.Certificate]:
        """The CAs of this store that a peer's CERTREQ data names (order of the store)."""
        wanted = set(parse_certreq(certreq))
        return [ca for ca in self.cas if spki_sha1(ca) in wanted]

    def validate(
        self,
        cert_payloads: Sequence[tuple[int, bytes]],
        now: _dt.datetime | float,
    ) -> x509.Certificate:
        """Validate the peer's CERT payloads and return its end-entity certificate.

        `cert_payloads` are (encoding, data) in received order; the first encoding-4
        payload is the end-entity certificate (RFC 7296 §3.6), the others may be
        intermediates. Payloads of other encodings are ignored. `now` is wall-clock
        time (an aware datetime or POSIX seconds).
        """
        when = _as_datetime(now)
        certs: list[x509.Certificate] = []
        for encoding, data in cert_payloads:
            if encoding != CertEncoding.X509_CERT_SIGNATURE:
                continue
            try:
                certs.append(x509.load_der_x509_certificate(data))
            except ValueError as exc:
                raise AuthenticationFailed("peer sent an unparsable certificate") from exc
        if not certs:
            raise AuthenticationFailed("peer sent no X.509 certificate")
        if not self.cas:
            raise AuthenticationFailed("no trusted CA configured")
        end_entity, pool = certs[0], certs[1 : MAX_CHAIN_DEPTH * 2]
        certificate_public_key(end_entity)
        _check_validity(end_entity, when, "peer")
        _check_end_entity(end_entity)
        self._build_path(end_entity, pool, when)
        return end_entity

    def _build_path(
        self, end_entity: x509.Certificate, pool: Sequence[x509.Certificate], now: _dt.datetime
    ) -> None:
        """Walk issuers up from the end entity to a trusted CA (depth-bounded)."""
        current = end_entity
        used: set[bytes] = {end_entity.fingerprint(hashes.SHA256())}
        for depth in range(MAX_CHAIN_DEPTH):
            for ca in self.cas:
                if _issued_by(current, ca):
                    _check_validity(ca, now, "CA")
                    _check_issuer(ca, depth, "CA")
                    return
            for candidate in pool:
                fp = candidate.fingerprint(hashes.SHA256())
                if fp not in used and _issued_by(current, candidate):
                    _check_validity(candidate, now, "intermediate")
                    _check_issuer(candidate, depth, "intermediate")
                    used.add(fp)
                    current = candidate
                    break
            else:
                raise AuthenticationFailed("peer certificate does not chain to a trusted CA")
        raise AuthenticationFailed("peer certificate chain is too long")


# --------------------------------------------------------------------------- identities


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    ext = _ext(cert, x509.SubjectAlternativeName)
    return ext if isinstance(ext, x509.SubjectAlternativeName) else None


def _san_names(cert: x509.Certificate, id_type: int) -> list[str]:
    san = _san(cert)
    if san is None:
        return []
    if id_type == IdType.ID_FQDN:
        return san.get_values_for_type(x509.DNSName)
    return san.get_values_for_type(x509.RFC822Name)


def _san_addresses(cert: x509.Certificate) -> list[object]:
    san = _san(cert)
    return list(san.get_values_for_type(x509.IPAddress)) if san is not None else []


def match_identity(cert: x509.Certificate, id_type: int, id_data: bytes) -> None:
    """Check that the peer's ID (RFC 7296 §3.5) is bound to its certificate.

    ID_FQDN, ID_RFC822_ADDR, ID_IPV4_ADDR and ID_IPV6_ADDR must equal a subjectAltName
    entry of that kind (names compared case-insensitively); ID_DER_ASN1_DN must equal the
    subject DN; ID_KEY_ID must equal the subjectKeyIdentifier or the SHA-1 of the
    subjectPublicKey (as strongSwan matches key IDs). Raises AuthenticationFailed.
    """
    try:
        if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            name = id_data.decode("ascii").casefold()
            if any(v.casefold() == name for v in _san_names(cert, id_type)):
                return
        elif id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            size = 4 if id_type == IdType.ID_IPV4_ADDR else 16
            if len(id_data) != size:
                raise AuthenticationFailed("peer ID has a bad IP address length")
            addr = ipaddress.ip_address(id_data)
            if any(v == addr for v in _san_addresses(cert)):
                return
        elif id_type == IdType.ID_DER_ASN1_DN:
            if id_data == cert.subject.public_bytes() or parse_dn(id_data) == _name_key(
                cert.subject
            ):
                return
        elif id_type == IdType.ID_KEY_ID:
            if id_data in _key_ids(cert):
                return
        else:
            raise AuthenticationFailed(f"peer ID type {id_type} cannot be bound to a certificate")
    except (UnicodeDecodeError, DerError) as exc:
        raise AuthenticationFailed("peer ID is malformed") from exc
    raise AuthenticationFailed("peer ID does not match its certificate")


def _key_ids(cert: x509.Certificate) -> list[bytes]:
    ids = []
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    if isinstance(ski, x509.SubjectKeyIdentifier):
        ids.append(ski.digest)
    ids.append(x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest)
    return ids


def identity_of(cert: x509.Certificate) -> tuple[IdType, bytes]:
    """Our default ID when signing with `cert`: its subject DN (as strongSwan does)."""
    return IdType.ID_DER_ASN1_DN, cert.subject.public_bytes()


def certificate_der(cert: x509.Certificate) -> bytes:
    """CERT payload data for encoding 4 (RFC 7296 §3.6): the DER certificate."""
    return cert.public_bytes(serialization.Encoding.DER)
