"""IKEv2 authentication: the signed octets, PSK and signature AUTH data (RFC 7296 §2.15).

What this module computes and checks:

- `signed_octets()`: RealMessage | Nonce of the peer | prf(SK_p, RestOfIDPayload).
  The PRF is injected as `prf(key, data) -> bytes`, the negotiated IKE SA PRF.
- PSK (method 2): AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), octets).
- Signatures: method 14 (RFC 7427: AlgorithmIdentifier-tagged) with RSASSA-PSS,
  sha256/384/512WithRSAEncryption and ecdsa-with-SHA256/384/512; method 1 (RSA,
  PKCS#1 v1.5 with SHA-1, as strongSwan and others implement RFC 7296 §3.8) and methods
  9/10/11 (RFC 4754, ECDSA with raw r||s) for peers that announce no hashes.
- SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 §4) and the choice of a scheme.

Certificates and identities live in `vpn.ike.certs`. Every failure a peer can cause is
`AuthenticationFailed` with a reason that names no secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from enum import Enum

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from vpn.ike.certs import (
    MIN_RSA_BITS,
    DerError,
    PrivateKey,
    PublicKey,
    der_items,
    der_oid,
    der_oid_to_dotted,
    der_one,
    der_read,
    der_tlv,
)
from vpn.ike.constants import AuthMethod, HashAlgorithm
from vpn.ike.errors import AuthenticationFailed, LocalProtocolError, MalformedMessage

Prf = Callable[[bytes, bytes], bytes]

#: RFC 7296 §2.15: the pad mixed into the PSK before it keys the AUTH prf.
KEY_PAD = b"Key Pad for IKEv2"


# --------------------------------------------------------------------------- octets, PSK


def signed_octets(
    real_message: bytes, peer_nonce: bytes, prf: Prf, sk_p: bytes, id_payload_body: bytes
) -> bytes:
    """The octets an AUTH payload covers (RFC 7296 §2.15).

    `real_message` is this side's IKE_SA_INIT message exactly as sent (or as received,
    when verifying the peer's AUTH: then it is the peer's IKE_SA_INIT); `peer_nonce` is
    the Nonce Data of the other side; `sk_p` is SK_pi for the initiator's AUTH and SK_pr
    for the responder's; `id_payload_body` is RestOfIDPayload: the ID payload without
    its generic header (ID Type, three RESERVED octets, Identification Data).
    """
    return real_message + peer_nonce + prf(sk_p, id_payload_body)


def psk_auth_data(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    """AUTH data for method 2, Shared Key Message Integrity Code (RFC 7296 §2.15)."""
    if not psk:
        raise LocalProtocolError("empty pre-shared key")
    return prf(prf(psk, KEY_PAD), octets)


def verify_psk(prf: Prf, psk: bytes, octets: bytes, auth_data: bytes) -> None:
    """Check a peer's method-2 AUTH data in constant time; raises AuthenticationFailed."""
    if not hmac.compare_digest(psk_auth_data(prf, psk, octets), auth_data):
        raise AuthenticationFailed("AUTH payload does not match the pre-shared key")


# --------------------------------------------------------------------------- schemes


class SigKind(Enum):
    """The signature primitive under an AUTH method."""

    RSA_PKCS1 = "rsa-pkcs1v15"
    RSA_PSS = "rsa-pss"
    ECDSA = "ecdsa"


@dataclass(frozen=True)
class SignatureScheme:
    """One way to fill an AUTH payload: the method, the primitive, the hash."""

    method: AuthMethod
    kind: SigKind
    hash: HashAlgorithm


_HASHES: dict[HashAlgorithm, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
_DIGEST_BYTES = {
    HashAlgorithm.SHA1: 20,
    HashAlgorithm.SHA2_256: 32,
    HashAlgorithm.SHA2_384: 48,
    HashAlgorithm.SHA2_512: 64,
}

# RFC 7427 Appendix A and RFC 4055 / RFC 5758 OIDs.
_OID_HASH = {
    "1.3.14.3.2.26": HashAlgorithm.SHA1,
    "2.16.840.1.101.3.4.2.1": HashAlgorithm.SHA2_256,
    "2.16.840.1.101.3.4.2.2": HashAlgorithm.SHA2_384,
    "2.16.840.1.101.3.4.2.3": HashAlgorithm.SHA2_512,
}
_HASH_OID = {h: oid for oid, h in _OID_HASH.items()}
_OID_RSA_PKCS1 = {
    "1.2.840.113549.1.1.5": HashAlgorithm.SHA1,
    "1.2.840.113549.1.1.11": HashAlgorithm.SHA2_256,
    "1.2.840.113549.1.1.12": HashAlgorithm.SHA2_384,
    "1.2.840.113549.1.1.13": HashAlgorithm.SHA2_512,
}
_OID_ECDSA = {
    "1.2.840.10045.4.1": HashAlgorithm.SHA1,
    "1.2.840.10045.4.3.2": HashAlgorithm.SHA2_256,
    "1.2.840.10045.4.3.3": HashAlgorithm.SHA2_384,
    "1.2.840.10045.4.3.4": HashAlgorithm.SHA2_512,
}
_ECDSA_OID = {h: oid for oid, h in _OID_ECDSA.items()}
_RSA_PKCS1_OID = {h: oid for oid, h in _OID_RSA_PKCS1.items()}
_OID_RSA_PSS = "1.2.840.113549.1.1.10"
_OID_MGF1 = "1.2.840.113549.1.1.8"
_DER_NULL = b"\x05\x00"

# RFC 4754 §3 / §8: method, curve and hash are bound together.
_ECDSA_METHODS: dict[AuthMethod, tuple[str, HashAlgorithm, int]] = {
    AuthMethod.ECDSA_SHA256_P256: ("secp256r1", HashAlgorithm.SHA2_256, 32),
    AuthMethod.ECDSA_SHA384_P384: ("secp384r1", HashAlgorithm.SHA2_384, 48),
    AuthMethod.ECDSA_SHA512_P521: ("secp521r1", HashAlgorithm.SHA2_512, 66),
}
_CURVE_METHOD = {curve: method for method, (curve, _, _) in _ECDSA_METHODS.items()}

#: Hashes this side announces in SIGNATURE_HASH_ALGORITHMS (RFC 8247 §3.2: no SHA-1).
SUPPORTED_HASHES: tuple[HashAlgorithm, ...] = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
)


def _hash(alg: HashAlgorithm) -> hashes.HashAlgorithm:
    return _HASHES[alg]()


def algorithm_identifier(scheme: SignatureScheme) -> bytes:
    """The DER AlgorithmIdentifier that tags a method-14 signature (RFC 7427 Appendix A).

    PKCS#1 v1.5 OIDs carry NULL parameters (RFC 4055 §5); ECDSA OIDs carry none
    (RFC 5758 §3.2); RSASSA-PSS carries RSASSA-PSS-params with the hash, MGF1 over the
    same hash and a salt as long as the digest (RFC 4055 §3.1, RFC 7427 A.4.3).
    """
    if scheme.kind is SigKind.ECDSA:
        return der_tlv(0x30, der_oid(_ECDSA_OID[scheme.hash]))
    if scheme.kind is SigKind.RSA_PKCS1:
        return der_tlv(0x30, der_oid(_RSA_PKCS1_OID[scheme.hash]) + _DER_NULL)
    hash_alg = der_tlv(0x30, der_oid(_HASH_OID[scheme.hash]) + _DER_NULL)
    mgf = der_tlv(0x30, der_oid(_OID_MGF1) + hash_alg)
    salt = der_tlv(0x02, bytes((_DIGEST_BYTES[scheme.hash],)))
    params = der_tlv(0x30, der_tlv(0xA0, hash_alg) + der_tlv(0xA1, mgf) + der_tlv(0xA2, salt))
    return der_tlv(0x30, der_oid(_OID_RSA_PSS) + params)


@dataclass(frozen=True)
class _Parsed:
    scheme: SignatureScheme
    mgf_hash: HashAlgorithm
    salt_length: int


def _hash_alg_id(content: bytes) -> HashAlgorithm:
    """A hash AlgorithmIdentifier whose parameters are absent or NULL (RFC 4055 §2.1)."""
    items = der_items(content)
    if not items or items[0][0] != 0x06 or len(items) > 2:
        raise DerError("bad hash AlgorithmIdentifier")
    if len(items) == 2 and items[1] != (0x05, b""):
        raise DerError("hash AlgorithmIdentifier has parameters")
    alg = _OID_HASH.get(der_oid_to_dotted(items[0][1]))
    if alg is None:
        raise AuthenticationFailed("unsupported hash in RSASSA-PSS parameters")
    return alg


def _pss_params(content: bytes) -> tuple[HashAlgorithm, HashAlgorithm, int]:
    """RSASSA-PSS-params (RFC 4055 §3.1); absent fields take the RFC's SHA-1 defaults."""
    hash_alg, mgf_hash, salt = HashAlgorithm.SHA1, HashAlgorithm.SHA1, 20
    last = -1
    for tag, value in der_items(content):
        if tag not in (0xA0, 0xA1, 0xA2, 0xA3) or tag <= last:
            raise DerError("bad RSASSA-PSS-params field")
        last = tag
        if tag == 0xA0:
            hash_alg = _hash_alg_id(der_one(value, 0x30))
        elif tag == 0xA1:
            mgf = der_items(der_one(value, 0x30))
            if len(mgf) != 2 or mgf[0][0] != 0x06 or mgf[1][0] != 0x30:
                raise DerError("bad maskGenAlgorithm")
            if der_oid_to_dotted(mgf[0][1]) != _OID_MGF1:
                raise AuthenticationFailed("RSASSA-PSS mask generation is not MGF1")
            mgf_hash = _hash_alg_id(mgf[1][1])
        elif tag == 0xA2:
            raw = der_one(value, 0x02)
            if not raw or raw[0] & 0x80 or len(raw) > 2:
                raise DerError("bad saltLength")
            salt = int.from_bytes(raw, "big")
        elif der_one(value, 0x02) != b"\x01":
            raise AuthenticationFailed("RSASSA-PSS trailerField is not 1")
    return hash_alg, mgf_hash, salt


def _parse_algorithm_identifier(der: bytes) -> _Parsed:
    items = der_items(der_one(der, 0x30))
    if not items or items[0][0] != 0x06 or len(items) > 2:
        raise DerError("bad AlgorithmIdentifier")
    oid = der_oid_to_dotted(items[0][1])
    params = items[1] if len(items) == 2 else None
    method = AuthMethod.DIGITAL_SIGNATURE
    if oid in _OID_RSA_PKCS1:
        if params not in (None, (0x05, b"")):
            raise DerError("PKCS#1 v1.5 AlgorithmIdentifier has parameters")
        h = _OID_RSA_PKCS1[oid]
        return _Parsed(SignatureScheme(method, SigKind.RSA_PKCS1, h), h, 0)
    if oid in _OID_ECDSA:
        if params not in (None, (0x05, b"")):
            raise DerError("ECDSA AlgorithmIdentifier has parameters")
        h = _OID_ECDSA[oid]
        return _Parsed(SignatureScheme(method, SigKind.ECDSA, h), h, 0)
    if oid == _OID_RSA_PSS:
        if params is None or params[0] != 0x30:
            raise AuthenticationFailed("RSASSA-PSS without parameters is not accepted")
        h, mgf_h, salt = _pss_params(params[1])
        return _Parsed(SignatureScheme(method, SigKind.RSA_PSS, h), mgf_h, salt)
    raise AuthenticationFailed("unsupported signature algorithm in AUTH payload")


# --------------------------------------------------------------------------- notify


def encode_signature_hash_algorithms(algs: Iterable[int] = SUPPORTED_HASHES) -> bytes:
    """Notify data of SIGNATURE_HASH_ALGORITHMS: 2-octet hash IDs (RFC 7427 §4)."""
    return b"".join(int(a).to_bytes(2, "big") for a in algs)


def decode_signature_hash_algorithms(data: bytes) -> tuple[int, ...]:
    """Parse SIGNATURE_HASH_ALGORITHMS notify data; unknown IDs are kept as ints."""
    if len(data) % 2:
        raise MalformedMessage("SIGNATURE_HASH_ALGORITHMS data has an odd length")
    return tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))


def choose_scheme(
    key: PrivateKey, peer_hashes: Collection[int] | None, *, rsa_pss: bool = False
) -> SignatureScheme:
    """Pick how to sign our AUTH payload for this peer (RFC 7427 §4, RFC 8247 §3.2).

    If the peer sent SIGNATURE_HASH_ALGORITHMS, use method 14 with a hash it announced
    (never SHA-1): for ECDSA the hash matching the curve first, for RSA SHA-256 first
    (strongSwan's order); RSA signs PKCS#1 v1.5 unless `rsa_pss`. If it announced none,
    fall back to method 1 (RSA) or 9/10/11 (ECDSA, by curve).
    """
    if isinstance(key, ec.EllipticCurvePrivateKey):
        legacy = _CURVE_METHOD.get(key.curve.name)
        preferred = _ECDSA_METHODS[legacy][1] if legacy else HashAlgorithm.SHA2_256
        kind = SigKind.ECDSA
    elif isinstance(key, rsa.RSAPrivateKey):
        legacy, preferred = AuthMethod.RSA_SIG, HashAlgorithm.SHA2_256
        kind = SigKind.RSA_PSS if rsa_pss else SigKind.RSA_PKCS1
    else:
        raise LocalProtocolError("only RSA and ECDSA keys can sign")
    if peer_hashes:
        offered = set(peer_hashes)
        order = [preferred, *(h for h in SUPPORTED_HASHES if h != preferred)]
        for h in order:
            if h in offered:
                return SignatureScheme(AuthMethod.DIGITAL_SIGNATURE, kind, h)
    if legacy is None:
        raise LocalProtocolError("no hash in common with the peer for this ECDSA curve")
    if legacy == AuthMethod.RSA_SIG:
        return SignatureScheme(legacy, SigKind.RSA_PKCS1, HashAlgorithm.SHA1)
    return SignatureScheme(legacy, SigKind.ECDSA, _ECDSA_METHODS[legacy][1])


# --------------------------------------------------------------------------- sign / verify


def sign(key: PrivateKey, scheme: SignatureScheme, octets: bytes) -> bytes:
    """Build AUTH data for `scheme` over the signed octets (RFC 7296 §3.8, RFC 7427 §3)."""
    h = _hash(scheme.hash)
    if scheme.kind is SigKind.ECDSA:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise LocalProtocolError("ECDSA scheme needs an EC key")
        der_sig = key.sign(octets, ec.ECDSA(h))
        if scheme.method == AuthMethod.DIGITAL_SIGNATURE:
            signature = der_sig
        else:
            curve, _, size = _ECDSA_METHODS[scheme.method]
            if key.curve.name != curve:
                raise LocalProtocolError("ECDSA key curve does not match the method")
            r, s = decode_dss_signature(der_sig)
            signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise LocalProtocolError("RSA scheme needs an RSA key")
        pad: padding.AsymmetricPadding
        if scheme.kind is SigKind.RSA_PSS:
            pad = padding.PSS(padding.MGF1(h), _DIGEST_BYTES[scheme.hash])
        else:
            pad = padding.PKCS1v15()
        signature = key.sign(octets, pad, h)
    if scheme.method != AuthMethod.DIGITAL_SIGNATURE:
        return signature
    algid = algorithm_identifier(scheme)
    return bytes((len(algid),)) + algid + signature


def verify_signature(
    key: PublicKey, method: int, auth_data: bytes, octets: bytes
) -> SignatureScheme:
    """Verify a peer's signature AUTH data; returns the scheme it used.

    Accepts method 14 (any supported AlgorithmIdentifier except SHA-1, RFC 8247 §3.2),
    method 1 (RSA PKCS#1 v1.5 SHA-1) and methods 9/10/11 (RFC 4754, the key's curve
    must match). Raises AuthenticationFailed on any mismatch.
    """
    try:
        if method == AuthMethod.DIGITAL_SIGNATURE:
            return _verify_digital_signature(key, auth_data, octets)
        if method == AuthMethod.RSA_SIG:
            if not isinstance(key, rsa.RSAPublicKey):
                raise AuthenticationFailed("RSA signature method with a non-RSA key")
            _check_rsa_size(key)
            key.verify(auth_data, octets, padding.PKCS1v15(), hashes.SHA1())
            return SignatureScheme(AuthMethod.RSA_SIG, SigKind.RSA_PKCS1, HashAlgorithm.SHA1)
        if method in _ECDSA_METHODS:
            legacy = AuthMethod(method)
            curve, alg, size = _ECDSA_METHODS[legacy]
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve:
                raise AuthenticationFailed("ECDSA method does not match the key's curve")
            if len(auth_data) != 2 * size:
                raise AuthenticationFailed("ECDSA signature has the wrong length")
            r = int.from_bytes(auth_data[:size], "big")
            s = int.from_bytes(auth_data[size:], "big")
            key.verify(encode_dss_signature(r, s), octets, ec.ECDSA(_hash(alg)))
            return SignatureScheme(legacy, SigKind.ECDSA, alg)
    except InvalidSignature as exc:
        raise AuthenticationFailed("AUTH signature does not verify") from exc
    except (DerError, ValueError, UnsupportedAlgorithm) as exc:
        # Malformed AUTH data is an authentication failure, not a syntax error.
        raise AuthenticationFailed("AUTH signature data is malformed") from exc
    raise AuthenticationFailed(f"unsupported authentication method {method}")


def _check_rsa_size(key: rsa.RSAPublicKey) -> None:
    if key.key_size < MIN_RSA_BITS:
        raise AuthenticationFailed("peer RSA key is too short")


def _verify_digital_signature(key: PublicKey, auth_data: bytes, octets: bytes) -> SignatureScheme:
    """RFC 7427 §3: 1-octet length, AlgorithmIdentifier, signature value."""
    if not auth_data:
        raise AuthenticationFailed("empty AUTH data")
    n = auth_data[0]
    algid = auth_data[1 : 1 + n]
    signature = auth_data[1 + n :]
    if len(algid) != n or not signature:
        raise AuthenticationFailed("AUTH data is truncated")
    try:
        parsed = _parse_algorithm_identifier(algid)
    except DerError as exc:
        raise AuthenticationFailed("AUTH AlgorithmIdentifier is malformed") from exc
    scheme = parsed.scheme
    if HashAlgorithm.SHA1 in (scheme.hash, parsed.mgf_hash):
        raise AuthenticationFailed("SHA-1 signatures are refused (RFC 8247 §3.2)")
    h = _hash(scheme.hash)
    if scheme.kind is SigKind.ECDSA:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise AuthenticationFailed("ECDSA signature with a non-EC key")
        # Reject BER/trailing garbage: the value must be exactly one DER SEQUENCE.
        tag, _, end = der_read(signature)
        if tag != 0x30 or end != len(signature):
            raise AuthenticationFailed("ECDSA signature is not one DER SEQUENCE")
        key.verify(signature, octets, ec.ECDSA(h))
        return scheme
    if not isinstance(key, rsa.RSAPublicKey):
        raise AuthenticationFailed("RSA signature with a non-RSA key")
    _check_rsa_size(key)
    pad: padding.AsymmetricPadding
    if scheme.kind is SigKind.RSA_PSS:
        max_salt = (key.key_size + 7) // 8 - _DIGEST_BYTES[scheme.hash] - 2
        if parsed.salt_length > max_salt:
            raise AuthenticationFailed("RSASSA-PSS salt length too large for the key")
        pad = padding.PSS(padding.MGF1(_hash(parsed.mgf_hash)), parsed.salt_length)
    else:
        pad = padding.PKCS1v15()
    key.verify(signature, octets, pad, h)
    return scheme
