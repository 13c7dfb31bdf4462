"""vpn.ike.auth and vpn.ike.certs with locally generated keys and certificates."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.ike import auth, certs
from vpn.ike.constants import AuthMethod, CertEncoding, HashAlgorithm, IdType
from vpn.ike.errors import AuthenticationFailed, LocalProtocolError, MalformedMessage

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
OCTETS = b"IKE_SA_INIT bytes" * 20 + b"nonce" + b"\x42" * 32


def prf(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# --------------------------------------------------------------------------- keys, certs


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def p521_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpn test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_cert(
    subject: str,
    key: certs.PrivateKey,
    issuer: tuple[x509.Certificate, certs.PrivateKey] | None = None,
    *,
    ca: bool = False,
    path_length: int | None = None,
    sans: Sequence[x509.GeneralName] = (),
    not_before: dt.datetime = dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    not_after: dt.datetime = dt.datetime(2035, 1, 1, tzinfo=dt.UTC),
    key_usage: x509.KeyUsage | None = None,
    basic_constraints: bool = True,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca, path_length), critical=True)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def ku(*, sign: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


SANS = [
    x509.DNSName("gw.example.org"),
    x509.RFC822Name("alice@example.org"),
    x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
    x509.IPAddress(ipaddress.ip_address("2001:db8::7")),
]


@pytest.fixture(scope="module")
def pki(
    p384_key: ec.EllipticCurvePrivateKey,
    p256_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
) -> dict[str, object]:
    ca = make_cert("Test Root CA", p384_key, ca=True, key_usage=ku(cert_sign=True))
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = make_cert(
        "Test Intermediate", inter_key, (ca, p384_key), ca=True, key_usage=ku(cert_sign=True)
    )
    ee_ec = make_cert("gw-ec", p256_key, (ca, p384_key), sans=SANS, key_usage=ku(sign=True))
    ee_rsa = make_cert("gw-rsa", rsa_key, (inter, inter_key), sans=SANS)
    return {"ca": ca, "inter": inter, "inter_key": inter_key, "ee_ec": ee_ec, "ee_rsa": ee_rsa}


def payloads(*chain: x509.Certificate) -> list[tuple[int, bytes]]:
    return [(CertEncoding.X509_CERT_SIGNATURE, certs.certificate_der(c)) for c in chain]


# --------------------------------------------------------------------------- octets, PSK


def test_signed_octets_layout() -> None:
    body = bytes([IdType.ID_FQDN, 0, 0, 0]) + b"gw.example.org"
    got = auth.signed_octets(b"MSG", b"NONCE", prf, b"skp", body)
    assert got == b"MSG" + b"NONCE" + hmac.new(b"skp", body, hashlib.sha256).digest()


def test_psk_known_answer_and_round_trip() -> None:
    psk = b"correct horse battery staple"
    data = auth.psk_auth_data(prf, psk, OCTETS)
    inner = hmac.new(psk, b"Key Pad for IKEv2", hashlib.sha256).digest()
    assert data == hmac.new(inner, OCTETS, hashlib.sha256).digest()
    auth.verify_psk(prf, psk, OCTETS, data)


def test_psk_wrong_secret_or_tampered_octets_fail() -> None:
    psk = b"s3cret-psk-value"
    data = auth.psk_auth_data(prf, psk, OCTETS)
    with pytest.raises(AuthenticationFailed) as info:
        auth.verify_psk(prf, b"other", OCTETS, data)
    assert "s3cret" not in str(info.value)
    with pytest.raises(AuthenticationFailed):
        auth.verify_psk(prf, psk, OCTETS + b"x", data)
    with pytest.raises(AuthenticationFailed):
        auth.verify_psk(prf, psk, OCTETS, data[:-1])


def test_empty_psk_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        auth.psk_auth_data(prf, b"", OCTETS)


# --------------------------------------------------------------------------- signatures

DS = AuthMethod.DIGITAL_SIGNATURE
RSA_SCHEMES = [
    auth.SignatureScheme(DS, kind, h)
    for kind in (auth.SigKind.RSA_PKCS1, auth.SigKind.RSA_PSS)
    for h in auth.SUPPORTED_HASHES
]
EC_SCHEMES = [auth.SignatureScheme(DS, auth.SigKind.ECDSA, h) for h in auth.SUPPORTED_HASHES]


@pytest.mark.parametrize("scheme", RSA_SCHEMES, ids=lambda s: f"{s.kind.value}-{s.hash.name}")
def test_rsa_method14_round_trip(rsa_key: rsa.RSAPrivateKey, scheme: auth.SignatureScheme) -> None:
    data = auth.sign(rsa_key, scheme, OCTETS)
    algid = auth.algorithm_identifier(scheme)
    assert data[0] == len(algid) and data[1 : 1 + len(algid)] == algid
    assert len(data) == 1 + len(algid) + 256
    assert auth.verify_signature(rsa_key.public_key(), DS, data, OCTETS) == scheme


@pytest.mark.parametrize("curve", ["p256_key", "p384_key"])
@pytest.mark.parametrize("scheme", EC_SCHEMES, ids=lambda s: s.hash.name)
def test_ecdsa_method14_round_trip(
    request: pytest.FixtureRequest, curve: str, scheme: auth.SignatureScheme
) -> None:
    key = request.getfixturevalue(curve)
    data = auth.sign(key, scheme, OCTETS)
    assert auth.verify_signature(key.public_key(), DS, data, OCTETS) == scheme


def test_method1_is_pkcs1_sha1(rsa_key: rsa.RSAPrivateKey) -> None:
    scheme = auth.choose_scheme(rsa_key, None)
    assert scheme == auth.SignatureScheme(
        AuthMethod.RSA_SIG, auth.SigKind.RSA_PKCS1, HashAlgorithm.SHA1
    )
    data = auth.sign(rsa_key, scheme, OCTETS)
    # Bare signature, no AlgorithmIdentifier; checkable with plain PKCS#1 v1.5 SHA-1.
    rsa_key.public_key().verify(data, OCTETS, padding.PKCS1v15(), hashes.SHA1())
    assert auth.verify_signature(rsa_key.public_key(), AuthMethod.RSA_SIG, data, OCTETS) == scheme


@pytest.mark.parametrize(
    ("fixture", "method", "size"),
    [
        ("p256_key", AuthMethod.ECDSA_SHA256_P256, 32),
        ("p384_key", AuthMethod.ECDSA_SHA384_P384, 48),
        ("p521_key", AuthMethod.ECDSA_SHA512_P521, 66),
    ],
)
def test_rfc4754_methods(
    request: pytest.FixtureRequest, fixture: str, method: AuthMethod, size: int
) -> None:
    key = request.getfixturevalue(fixture)
    scheme = auth.choose_scheme(key, ())
    assert scheme.method == method
    data = auth.sign(key, scheme, OCTETS)
    assert len(data) == 2 * size  # raw r || s, RFC 4754 §7
    assert auth.verify_signature(key.public_key(), method, data, OCTETS) == scheme
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(key.public_key(), method, data[:-1], OCTETS)
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(key.public_key(), method, data, OCTETS[1:])


def test_rfc4754_method_must_match_curve(
    p256_key: ec.EllipticCurvePrivateKey, p384_key: ec.EllipticCurvePrivateKey
) -> None:
    data = auth.sign(p256_key, auth.choose_scheme(p256_key, None), OCTETS)
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(p384_key.public_key(), AuthMethod.ECDSA_SHA384_P384, data, OCTETS)
    with pytest.raises(LocalProtocolError):
        auth.sign(
            p384_key,
            auth.SignatureScheme(
                AuthMethod.ECDSA_SHA256_P256, auth.SigKind.ECDSA, HashAlgorithm.SHA2_256
            ),
            OCTETS,
        )


@pytest.mark.parametrize("which", ["octets", "signature", "algid"])
def test_tampering_fails(
    rsa_key: rsa.RSAPrivateKey, p256_key: ec.EllipticCurvePrivateKey, which: str
) -> None:
    for key, scheme in (
        (rsa_key, RSA_SCHEMES[0]),
        (rsa_key, RSA_SCHEMES[3]),
        (p256_key, EC_SCHEMES[0]),
    ):
        data = bytearray(auth.sign(key, scheme, OCTETS))
        octets = OCTETS
        if which == "octets":
            octets = OCTETS[:-1] + b"\x43"
        elif which == "signature":
            data[-5] ^= 0x01
        else:
            # sha256 -> sha384 inside the AlgorithmIdentifier: same structure, other hash.
            algid = auth.algorithm_identifier(scheme)
            other = auth.algorithm_identifier(
                auth.SignatureScheme(DS, scheme.kind, HashAlgorithm.SHA2_384)
            )
            data = bytearray(bytes(data).replace(algid, other, 1))
        with pytest.raises(AuthenticationFailed):
            auth.verify_signature(key.public_key(), DS, bytes(data), octets)


def test_wrong_key_type_or_key_fails(
    rsa_key: rsa.RSAPrivateKey, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    rsa_data = auth.sign(rsa_key, RSA_SCHEMES[0], OCTETS)
    ec_data = auth.sign(p256_key, EC_SCHEMES[0], OCTETS)
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(p256_key.public_key(), DS, rsa_data, OCTETS)
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(rsa_key.public_key(), DS, ec_data, OCTETS)
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(p256_key.public_key(), AuthMethod.RSA_SIG, rsa_data, OCTETS)
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(other.public_key(), DS, ec_data, OCTETS)
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(rsa_key.public_key(), AuthMethod.SHARED_KEY_MIC, rsa_data, OCTETS)


def _method14(algid: bytes, signature: bytes) -> bytes:
    return bytes((len(algid),)) + algid + signature


def test_sha1_refused_under_method14(
    rsa_key: rsa.RSAPrivateKey, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    sha1_rsa = bytes.fromhex("300d06092a864886f70d0101050500")  # sha1WithRSAEncryption
    sig = rsa_key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(AuthenticationFailed, match="SHA-1"):
        auth.verify_signature(rsa_key.public_key(), DS, _method14(sha1_rsa, sig), OCTETS)
    sha1_ecdsa = bytes.fromhex("300906072a8648ce3d0401")  # ecdsa-with-SHA1
    sig = p256_key.sign(OCTETS, ec.ECDSA(hashes.SHA1()))
    with pytest.raises(AuthenticationFailed, match="SHA-1"):
        auth.verify_signature(p256_key.public_key(), DS, _method14(sha1_ecdsa, sig), OCTETS)
    # RSASSA-PSS with empty parameters means SHA-1 and MGF1-SHA-1 (RFC 4055 defaults).
    pss_default = bytes.fromhex("300d06092a864886f70d01010a3000")
    sig = rsa_key.sign(OCTETS, padding.PSS(padding.MGF1(hashes.SHA1()), 20), hashes.SHA1())
    with pytest.raises(AuthenticationFailed, match="SHA-1"):
        auth.verify_signature(rsa_key.public_key(), DS, _method14(pss_default, sig), OCTETS)


# RFC 7427 A.4.3 structure (RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32, trailer default).
PSS_SHA256_ALGID = bytes.fromhex(
    "304106092a864886f70d01010a3034"
    "a00f300d06096086480165030402010500"
    "a11c301a06092a864886f70d010108300d06096086480165030402010500"
    "a203020120"
)


def test_pss_parameters_encoding() -> None:
    scheme = auth.SignatureScheme(DS, auth.SigKind.RSA_PSS, HashAlgorithm.SHA2_256)
    assert auth.algorithm_identifier(scheme) == PSS_SHA256_ALGID
    pkcs1 = auth.SignatureScheme(DS, auth.SigKind.RSA_PKCS1, HashAlgorithm.SHA2_256)
    assert auth.algorithm_identifier(pkcs1).hex() == "300d06092a864886f70d01010b0500"
    ecdsa = auth.SignatureScheme(DS, auth.SigKind.ECDSA, HashAlgorithm.SHA2_384)
    assert auth.algorithm_identifier(ecdsa).hex() == "300a06082a8648ce3d040303"


def _pss_algid(
    hash_oid: str, mgf_oid: str, salt: int, *, null: bool = True, trailer: int = 0
) -> bytes:
    d = certs.der_tlv
    nul = b"\x05\x00" if null else b""
    h = d(0x30, certs.der_oid(hash_oid) + nul)
    m = d(0x30, certs.der_oid("1.2.840.113549.1.1.8") + d(0x30, certs.der_oid(mgf_oid) + nul))
    params = d(0xA0, h) + d(0xA1, m) + d(0xA2, d(0x02, bytes((salt,))))
    if trailer:
        params += d(0xA3, d(0x02, bytes((trailer,))))
    return d(0x30, certs.der_oid("1.2.840.113549.1.1.10") + d(0x30, params))


SHA256_OID, SHA384_OID = "2.16.840.1.101.3.4.2.1", "2.16.840.1.101.3.4.2.2"


def test_pss_parameters_are_honoured(rsa_key: rsa.RSAPrivateKey) -> None:
    pub = rsa_key.public_key()
    # Salt 20 announced and used, hash params absent (RFC 4055 allows both forms).
    sig = rsa_key.sign(OCTETS, padding.PSS(padding.MGF1(hashes.SHA256()), 20), hashes.SHA256())
    algid = _pss_algid(SHA256_OID, SHA256_OID, 20, null=False)
    assert (
        auth.verify_signature(pub, DS, _method14(algid, sig), OCTETS).kind is auth.SigKind.RSA_PSS
    )
    # The same signature under params claiming salt 32 does not verify.
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(
            pub, DS, _method14(_pss_algid(SHA256_OID, SHA256_OID, 32), sig), OCTETS
        )
    # MGF1 over a different hash, as announced.
    sig = rsa_key.sign(OCTETS, padding.PSS(padding.MGF1(hashes.SHA384()), 32), hashes.SHA256())
    algid = _pss_algid(SHA256_OID, SHA384_OID, 32)
    auth.verify_signature(pub, DS, _method14(algid, sig), OCTETS)
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(
            pub, DS, _method14(_pss_algid(SHA256_OID, SHA256_OID, 32), sig), OCTETS
        )
    # trailerField 1 is fine, anything else refused; PSS without params refused.
    auth.verify_signature(
        pub, DS, _method14(_pss_algid(SHA256_OID, SHA384_OID, 32, trailer=1), sig), OCTETS
    )
    with pytest.raises(AuthenticationFailed, match="trailerField"):
        auth.verify_signature(
            pub, DS, _method14(_pss_algid(SHA256_OID, SHA384_OID, 32, trailer=2), sig), OCTETS
        )
    bare = certs.der_tlv(0x30, certs.der_oid("1.2.840.113549.1.1.10"))
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(pub, DS, _method14(bare, sig), OCTETS)


def test_short_rsa_key_refused() -> None:
    small = rsa.generate_private_key(65537, 1024)
    data = auth.sign(small, RSA_SCHEMES[0], OCTETS)
    with pytest.raises(AuthenticationFailed, match="too short"):
        auth.verify_signature(small.public_key(), DS, data, OCTETS)


def test_malformed_auth_data_is_auth_failure(rsa_key: rsa.RSAPrivateKey) -> None:
    pub = rsa_key.public_key()
    for data in (
        b"",
        b"\x05",
        b"\x0f" + bytes(15),
        b"\x02\x30\x00" + b"sig",
        b"\x03\x30\x81\x01xx",
    ):
        with pytest.raises(AuthenticationFailed):
            auth.verify_signature(pub, DS, data, OCTETS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([1, 9, 10, 11, 14, 2, 0, 255]))
def test_verify_signature_any_bytes(data: bytes, method: int) -> None:
    key = ec.derive_private_key(7, ec.SECP256R1())  # fixed key: hypothesis needs no fixture
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(key.public_key(), method, data, OCTETS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_algid_parser_any_bytes(algid: bytes) -> None:
    key = ec.derive_private_key(7, ec.SECP256R1())
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(key.public_key(), DS, _method14(algid[:255], b"\x30\x00"), OCTETS)


# --------------------------------------------------------------------------- choosing


def test_choose_scheme(
    rsa_key: rsa.RSAPrivateKey,
    p256_key: ec.EllipticCurvePrivateKey,
    p384_key: ec.EllipticCurvePrivateKey,
) -> None:
    all_hashes = [1, 2, 3, 4]
    assert auth.choose_scheme(rsa_key, all_hashes) == RSA_SCHEMES[0]
    assert auth.choose_scheme(rsa_key, all_hashes, rsa_pss=True) == RSA_SCHEMES[3]
    assert auth.choose_scheme(rsa_key, [4, 3]).hash == HashAlgorithm.SHA2_384  # SHA-256 first
    assert auth.choose_scheme(p256_key, all_hashes) == EC_SCHEMES[0]
    assert auth.choose_scheme(p384_key, all_hashes) == EC_SCHEMES[1]  # hash matches curve
    assert auth.choose_scheme(p384_key, [2]) == EC_SCHEMES[0]
    # Only SHA-1 (or only unknown IDs) announced: never method 14 with SHA-1.
    assert auth.choose_scheme(rsa_key, [1]).method == AuthMethod.RSA_SIG
    assert auth.choose_scheme(p384_key, [1, 99]).method == AuthMethod.ECDSA_SHA384_P384
    assert auth.choose_scheme(p256_key, None).method == AuthMethod.ECDSA_SHA256_P256


def test_signature_hash_algorithms_notify() -> None:
    data = auth.encode_signature_hash_algorithms()
    assert data == bytes.fromhex("000200030004")
    assert auth.decode_signature_hash_algorithms(data + b"\x00\x05\xff\xff") == (2, 3, 4, 5, 65535)
    assert auth.decode_signature_hash_algorithms(b"") == ()
    with pytest.raises(MalformedMessage):
        auth.decode_signature_hash_algorithms(b"\x00\x02\x00")


# --------------------------------------------------------------------------- X.509


def test_chain_to_ca(pki: dict[str, x509.Certificate]) -> None:
    store = certs.TrustStore((pki["ca"],))
    assert store.validate(payloads(pki["ee_ec"]), NOW) == pki["ee_ec"]
    # Intermediate from the peer's CERT payloads; POSIX seconds work as `now` too.
    got = store.validate(payloads(pki["ee_rsa"], pki["inter"]), NOW.timestamp())
    assert got == pki["ee_rsa"]
    # Payloads of other encodings are ignored.
    mixed = [(CertEncoding.CRL, b"junk"), *payloads(pki["ee_rsa"], pki["inter"])]
    assert store.validate(mixed, NOW) == pki["ee_rsa"]


def test_chain_failures(
    pki: dict[str, x509.Certificate], p384_key: ec.EllipticCurvePrivateKey
) -> None:
    store = certs.TrustStore((pki["ca"],))
    with pytest.raises(AuthenticationFailed, match="chain"):
        store.validate(payloads(pki["ee_rsa"]), NOW)  # intermediate missing
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = make_cert("Test Root CA", other_key, ca=True)  # same name, other key
    with pytest.raises(AuthenticationFailed, match="chain"):
        certs.TrustStore((other_ca,)).validate(payloads(pki["ee_ec"]), NOW)
    with pytest.raises(AuthenticationFailed, match="no X.509"):
        store.validate([], NOW)
    with pytest.raises(AuthenticationFailed, match="unparsable"):
        store.validate([(CertEncoding.X509_CERT_SIGNATURE, b"\x30\x03abc")], NOW)
    with pytest.raises(AuthenticationFailed, match="no trusted CA"):
        certs.TrustStore(()).validate(payloads(pki["ee_ec"]), NOW)


def test_validity_period(
    pki: dict[str, x509.Certificate], p384_key: ec.EllipticCurvePrivateKey
) -> None:
    store = certs.TrustStore((pki["ca"],))
    with pytest.raises(AuthenticationFailed, match="expired"):
        store.validate(payloads(pki["ee_ec"]), dt.datetime(2036, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(AuthenticationFailed, match="not yet valid"):
        store.validate(payloads(pki["ee_ec"]), dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    key = ec.generate_private_key(ec.SECP256R1())
    expired_inter = make_cert(
        "Old Intermediate",
        key,
        (pki["ca"], p384_key),
        ca=True,
        not_after=dt.datetime(2029, 1, 1, tzinfo=dt.UTC),
    )
    ee = make_cert("gw", ec.generate_private_key(ec.SECP256R1()), (expired_inter, key))
    with pytest.raises(AuthenticationFailed, match="intermediate certificate has expired"):
        store.validate(payloads(ee, expired_inter), NOW)
    with pytest.raises(TypeError):
        store.validate(payloads(pki["ee_ec"]), dt.datetime(2030, 1, 1))


def test_ca_constraints(
    pki: dict[str, x509.Certificate], p384_key: ec.EllipticCurvePrivateKey
) -> None:
    store = certs.TrustStore((pki["ca"],))
    ee_key = ec.generate_private_key(ec.SECP256R1())
    # An end entity (cA false) cannot issue.
    fake_inter_key = ec.generate_private_key(ec.SECP256R1())
    not_ca = make_cert("Not A CA", fake_inter_key, (pki["ca"], p384_key), ca=False)
    ee = make_cert("gw", ee_key, (not_ca, fake_inter_key))
    with pytest.raises(AuthenticationFailed, match="not a CA"):
        store.validate(payloads(ee, not_ca), NOW)
    # keyUsage without keyCertSign on the issuer.
    ku_inter = make_cert(
        "KU Inter", fake_inter_key, (pki["ca"], p384_key), ca=True, key_usage=ku(sign=True)
    )
    ee = make_cert("gw", ee_key, (ku_inter, fake_inter_key))
    with pytest.raises(AuthenticationFailed, match="keyCertSign"):
        store.validate(payloads(ee, ku_inter), NOW)
    # pathLenConstraint 0 on the root forbids an intermediate below it.
    root_key = ec.generate_private_key(ec.SECP256R1())
    root0 = make_cert("Root0", root_key, ca=True, path_length=0)
    inter = make_cert("Inter", fake_inter_key, (root0, root_key), ca=True)
    ee = make_cert("gw", ee_key, (inter, fake_inter_key))
    with pytest.raises(AuthenticationFailed, match="path length"):
        certs.TrustStore((root0,)).validate(payloads(ee, inter), NOW)
    ee_direct = make_cert("gw", ee_key, (root0, root_key))
    certs.TrustStore((root0,)).validate(payloads(ee_direct), NOW)


def test_end_entity_key_usage_and_critical_extensions(
    pki: dict[str, x509.Certificate], p384_key: ec.EllipticCurvePrivateKey
) -> None:
    store = certs.TrustStore((pki["ca"],))
    key = ec.generate_private_key(ec.SECP256R1())
    ee = make_cert("gw", key, (pki["ca"], p384_key), key_usage=ku(cert_sign=True))
    with pytest.raises(AuthenticationFailed, match="keyUsage"):
        store.validate(payloads(ee), NOW)
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    ee = make_cert("gw", key, (pki["ca"], p384_key), extra=[(odd, True)])
    with pytest.raises(AuthenticationFailed, match="unknown critical"):
        store.validate(payloads(ee), NOW)
    ee = make_cert("gw", key, (pki["ca"], p384_key), extra=[(odd, False)])
    store.validate(payloads(ee), NOW)


def test_short_rsa_end_entity_refused(
    pki: dict[str, x509.Certificate], p384_key: ec.EllipticCurvePrivateKey
) -> None:
    ee = make_cert("gw", rsa.generate_private_key(65537, 1024), (pki["ca"], p384_key))
    with pytest.raises(AuthenticationFailed, match="too short"):
        certs.TrustStore((pki["ca"],)).validate(payloads(ee), NOW)


@pytest.mark.parametrize(
    ("id_type", "data"),
    [
        (IdType.ID_FQDN, b"gw.example.org"),
        (IdType.ID_FQDN, b"GW.Example.ORG"),
        (IdType.ID_RFC822_ADDR, b"alice@example.org"),
        (IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 7])),
        (IdType.ID_IPV6_ADDR, ipaddress.ip_address("2001:db8::7").packed),
    ],
)
def test_identity_matches_san(
    pki: dict[str, x509.Certificate], id_type: IdType, data: bytes
) -> None:
    certs.match_identity(pki["ee_ec"], id_type, data)


@pytest.mark.parametrize(
    ("id_type", "data"),
    [
        (IdType.ID_FQDN, b"other.example.org"),
        (IdType.ID_FQDN, b"gw-ec"),  # the CN is not a SAN
        (IdType.ID_RFC822_ADDR, b"bob@example.org"),
        (IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 8])),
        (IdType.ID_IPV4_ADDR, bytes([192, 0, 2])),
        (IdType.ID_IPV6_ADDR, ipaddress.ip_address("2001:db8::8").packed),
        (IdType.ID_FQDN, b"\xff\xfe"),
        (IdType.ID_DER_ASN1_DN, b"\x30\x03\x31\x01"),
        (IdType.ID_NULL, b""),
        (IdType.ID_KEY_ID, b"\x01" * 20),
    ],
)
def test_identity_mismatch(pki: dict[str, x509.Certificate], id_type: IdType, data: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        certs.match_identity(pki["ee_ec"], id_type, data)


def test_identity_dn(pki: dict[str, x509.Certificate]) -> None:
    ee = pki["ee_ec"]
    id_type, data = certs.identity_of(ee)
    assert id_type == IdType.ID_DER_ASN1_DN
    certs.match_identity(ee, id_type, data)
    # Same DN with other string types and letter case still matches (strongSwan may
    # encode its configured ID differently from the CA).
    printable = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "VPN  Test", x509.name._ASN1Type.PrintableString
            ),
            x509.NameAttribute(NameOID.COMMON_NAME, "GW-EC", x509.name._ASN1Type.UTF8String),
        ]
    ).public_bytes()
    assert printable != data
    certs.match_identity(ee, IdType.ID_DER_ASN1_DN, printable)
    other = _name("gw-rsa").public_bytes()
    with pytest.raises(AuthenticationFailed, match="does not match"):
        certs.match_identity(ee, IdType.ID_DER_ASN1_DN, other)


def test_identity_key_id(pki: dict[str, x509.Certificate]) -> None:
    ee = pki["ee_ec"]
    key_id = x509.SubjectKeyIdentifier.from_public_key(ee.public_key()).digest
    certs.match_identity(ee, IdType.ID_KEY_ID, key_id)


def test_certreq(pki: dict[str, x509.Certificate]) -> None:
    store = certs.TrustStore((pki["ca"], pki["inter"]))
    data = store.certreq_data()
    spki = (
        pki["ca"]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert data[:20] == hashlib.sha1(spki).digest()
    assert len(data) == 40
    assert store.requested_by(data[20:]) == [pki["inter"]]
    assert store.requested_by(b"\x00" * 20) == []
    with pytest.raises(MalformedMessage):
        certs.parse_certreq(data[:-1])


def test_loading(pki: dict[str, x509.Certificate], rsa_key: rsa.RSAPrivateKey) -> None:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (pki["ca"], pki["inter"]))
    assert certs.TrustStore.from_pem(pem).cas == (pki["ca"], pki["inter"])
    assert certs.load_certificate(certs.certificate_der(pki["ca"])) == pki["ca"]
    with pytest.raises(ValueError):
        certs.load_certificate(pem)
    with pytest.raises(ValueError):
        certs.load_certificates(b"garbage")
    for fmt, enc in (
        (serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM),
        (serialization.PrivateFormat.TraditionalOpenSSL, serialization.Encoding.DER),
    ):
        blob = rsa_key.private_bytes(enc, fmt, serialization.NoEncryption())
        assert certs.load_private_key(blob).private_numbers() == rsa_key.private_numbers()
    locked = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    certs.load_private_key(locked, b"pw")
    with pytest.raises(ValueError, match="wrong password"):
        certs.load_private_key(locked, b"nope")


def test_full_signature_auth_through_certificates(
    pki: dict[str, x509.Certificate], rsa_key: rsa.RSAPrivateKey
) -> None:
    """The responder's view: validate CERTs, bind the ID, verify the AUTH signature."""
    id_body = bytes([IdType.ID_FQDN, 0, 0, 0]) + b"gw.example.org"
    octets = auth.signed_octets(b"init msg", b"Ni" * 16, prf, b"SK_pi", id_body)
    scheme = auth.choose_scheme(rsa_key, auth.decode_signature_hash_algorithms(b"\x00\x02"))
    data = auth.sign(rsa_key, scheme, octets)
    store = certs.TrustStore((pki["ca"],))
    ee = store.validate(payloads(pki["ee_rsa"], pki["inter"]), NOW)
    certs.match_identity(ee, id_body[0], id_body[4:])
    got = auth.verify_signature(certs.certificate_public_key(ee), scheme.method, data, octets)
    assert got == scheme


# --------------------------------------------------------------------------- DER


def test_der_reader_strictness() -> None:
    assert certs.der_read(b"\x04\x01x") == (4, b"x", 3)
    long = certs.der_tlv(0x04, b"y" * 300)
    assert long[:4] == b"\x04\x82\x01\x2c" and certs.der_read(long)[1] == b"y" * 300
    for bad in (
        b"",
        b"\x04",
        b"\x04\x02x",
        b"\x04\x80",
        b"\x04\x81\x05xxxxx",
        b"\x1f\x01x",
        b"\x04\x85\x01\x00\x00\x00\x00",
    ):
        with pytest.raises(certs.DerError):
            certs.der_read(bad)
    with pytest.raises(certs.DerError):
        certs.der_one(b"\x04\x01xy", 0x04)
    assert (
        certs.der_oid_to_dotted(certs.der_oid("1.2.840.113549.1.1.10")[2:])
        == "1.2.840.113549.1.1.10"
    )
    assert certs.der_oid_to_dotted(certs.der_oid("2.999.3")[2:]) == "2.999.3"
    with pytest.raises(certs.DerError):
        certs.der_oid_to_dotted(b"\x2a\x80\x01")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_dn_parser_any_bytes(data: bytes) -> None:
    try:
        certs.parse_dn(data)
    except certs.DerError:
        pass
