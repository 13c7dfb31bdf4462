"""The strongSwan captures: keys consistent with the wire, AUTH payloads verified by auth.py.

Reads only committed files (vector.json per case); charon is not needed. SK payloads are
decrypted here with `cryptography` through ikewalk.py, independently of vpn.ike.message /
vpn.ike.crypto (which the lead may switch these tests to later).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from vpn.ike import auth, certs
from vpn.ike.constants import AuthMethod, CertEncoding, HashAlgorithm, NotifyType
from vpn.ike.errors import AuthenticationFailed

from . import ikewalk as w

HERE = Path(__file__).resolve().parent
CASES = ("psk", "ecdsa", "rsa", "rsa-pss", "legacy", "rekey")
# Integrity key and ICV sizes (RFC 4868), encryption key sizes by (encr id, key bits).
INTEG_KEY = {12: 32, 13: 48, 14: 64}
PRF_SIZE = {5: 32, 6: 48, 7: 64}


def load(case: str, base: Path = HERE) -> dict[str, Any]:
    return json.loads((base / case / "vector.json").read_text())  # type: ignore[no-any-return]


def sk_e_len(sa: dict[str, Any]) -> int:
    """AES key plus, for AES-GCM, the 4-octet salt (RFC 5282 §7.1)."""
    return int(sa["encr_key_bits"]) // 8 + (4 if sa["encr_id"] == w.ENCR_AES_GCM_16 else 0)


def ike_keymat(sa: dict[str, Any], skeyseed: bytes) -> dict[str, bytes]:
    """RFC 7296 §2.14: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(...)."""
    n = PRF_SIZE[sa["prf_id"]]
    a = INTEG_KEY.get(sa["integ_id"], 0)
    e = sk_e_len(sa)
    seed = b"".join(bytes.fromhex(sa[k]) for k in ("nonce_i", "nonce_r", "spi_i", "spi_r"))
    stream = w.prf_plus(sa["prf_id"], skeyseed, seed, 3 * n + 2 * a + 2 * e)
    out, pos = {}, 0
    for name, size in (
        ("sk_d", n),
        ("sk_ai", a),
        ("sk_ar", a),
        ("sk_ei", e),
        ("sk_er", e),
        ("sk_pi", n),
        ("sk_pr", n),
    ):
        out[name] = stream[pos : pos + size]
        pos += size
    return out


@pytest.fixture(scope="module", params=CASES)
def vec(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def sa_keys(sa: dict[str, Any], from_initiator: bool) -> w.SkKeys:
    side = "i" if from_initiator else "r"
    sk_a = sa[f"sk_a{side}"]
    return w.SkKeys(
        sa["encr_id"],
        bytes.fromhex(sa[f"sk_e{side}"]),
        sa["integ_id"],
        bytes.fromhex(sk_a) if sk_a else b"",
    )


def decrypted(vec: dict[str, Any]) -> dict[int, tuple[int, bytes]]:
    """Decrypt every SK/SKF message of the capture: message index -> (first type, plain)."""
    sas = {(sa["spi_i"], sa["spi_r"]): sa for sa in vec["ike_sas"]}
    out: dict[int, tuple[int, bytes]] = {}
    frags: dict[tuple[str, int, bool], list[w.Fragment]] = {}
    for m in vec["messages"]:
        if m["exchange"] == "IKE_SA_INIT":
            continue
        raw = bytes.fromhex(m["data"])
        h = w.parse_header(raw)
        got = w.decrypt_message(raw, sa_keys(sas[(m["spi_i"], m["spi_r"])], h.from_initiator))
        if isinstance(got, w.Fragment):
            key = (m["spi_i"], h.message_id, h.is_response)
            frags.setdefault(key, []).append(got)
            if len(frags[key]) == got.total:
                out[m["index"]] = w.reassemble(frags.pop(key))
        else:
            out[m["index"]] = got
    assert not frags, "incomplete fragment sets"
    return out


# --------------------------------------------------------------------------- keys


def test_skeyseed_and_sk_keys_recompute(vec: dict[str, Any]) -> None:
    """SKEYSEED = prf(Ni | Nr, g^ir); rekeyed: prf(SK_d old, g^ir | Ni | Nr) (§2.14, §2.18)."""
    for sa in vec["ike_sas"]:
        g_ir = bytes.fromhex(sa["g_ir"])
        ni, nr = bytes.fromhex(sa["nonce_i"]), bytes.fromhex(sa["nonce_r"])
        if sa["rekey_of"] is None:
            skeyseed = w.prf(sa["prf_id"], ni + nr, g_ir)
        else:
            old = vec["ike_sas"][sa["rekey_of"]]
            skeyseed = w.prf(old["prf_id"], bytes.fromhex(old["sk_d"]), g_ir + ni + nr)
        assert skeyseed.hex() == sa["skeyseed"]
        for name, value in ike_keymat(sa, skeyseed).items():
            assert value.hex() == (sa[name] or ""), name


def test_child_keys_recompute(vec: dict[str, Any]) -> None:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), i->r keys first (RFC 7296 §2.17)."""
    for child in vec["child_sas"]:
        sa = vec["ike_sas"][child["ike_sa"]]
        seed = (
            bytes.fromhex(child["g_ir"] or "")
            + bytes.fromhex(child["nonce_i"])
            + bytes.fromhex(child["nonce_r"])
        )
        assert seed.hex() == child["seed"]  # the log's seed matches the wire's nonces
        e, a = len(bytes.fromhex(child["encr_i"])), len(bytes.fromhex(child.get("integ_i", "")))
        km = w.prf_plus(sa["prf_id"], bytes.fromhex(sa["sk_d"]), seed, 2 * (e + a))
        assert km[:e].hex() == child["encr_i"]
        assert km[e : e + a].hex() == child.get("integ_i", "")
        assert km[e + a : 2 * e + a].hex() == child["encr_r"]
        assert km[2 * e + a :].hex() == child.get("integ_r", "")


def test_every_sk_payload_decrypts(vec: dict[str, Any]) -> None:
    plain = decrypted(vec)
    for m in vec["messages"]:
        if m["exchange"] == "IKE_SA_INIT":
            continue
        if m["index"] in plain:
            first, data = plain[m["index"]]
            assert first == m["first_payload"] and data.hex() == m["plaintext"]
            assert [p.type for p in w.walk(first, data)] == m["payloads"]
        else:
            assert m["fragment"]["number"] < m["fragment"]["total"]


def test_tampered_sk_message_is_rejected(vec: dict[str, Any]) -> None:
    m = next(m for m in vec["messages"] if m["exchange"] == "INFORMATIONAL")
    raw = bytearray.fromhex(m["data"])
    raw[-3] ^= 0x40
    sa = vec["ike_sas"][m["ike_sa"]]
    with pytest.raises(Exception) as info:
        w.decrypt_message(bytes(raw), sa_keys(sa, m["direction"] == "i2r"))
    assert info.type.__name__ in ("InvalidTag", "WalkError")


# --------------------------------------------------------------------------- AUTH


def _peer_hashes(vec: dict[str, Any], from_initiator: bool) -> tuple[int, ...]:
    m = vec["messages"][0 if from_initiator else 1]
    raw = bytes.fromhex(m["data"])
    payloads = w.walk(raw[16], raw, w.HEADER.size)
    for _, ntype, _, data in w.notifies(payloads):
        if ntype == NotifyType.SIGNATURE_HASH_ALGORITHMS:
            return auth.decode_signature_hash_algorithms(data)
    return ()


def auth_views(vec: dict[str, Any]) -> list[dict[str, Any]]:
    """For both IKE_AUTH messages: what a verifier has in hand (RFC 7296 §2.15)."""
    plain = decrypted(vec)
    sa = vec["ike_sas"][0]
    init_req = bytes.fromhex(vec["messages"][0]["data"])
    init_resp = bytes.fromhex(vec["messages"][1]["data"])
    views = []
    for index in vec["authentication"]["auth_messages"]:
        m = vec["messages"][index]
        initiator = m["direction"] == "i2r"
        payloads = w.walk(*plain[index])
        id_payload = w.first(payloads, w.PT_IDI if initiator else w.PT_IDR)
        auth_payload = w.first(payloads, w.PT_AUTH)
        assert id_payload is not None and auth_payload is not None
        views.append(
            {
                "initiator": initiator,
                "real_message": init_req if initiator else init_resp,
                "peer_nonce": bytes.fromhex(sa["nonce_r"] if initiator else sa["nonce_i"]),
                "sk_p": bytes.fromhex(sa["sk_pi"] if initiator else sa["sk_pr"]),
                "id_body": id_payload.body,
                "method": auth_payload.body[0],
                "auth_data": auth_payload.body[4:],
                "certs": [(p.body[0], p.body[1:]) for p in payloads if p.type == w.PT_CERT],
                "prf_id": sa["prf_id"],
            }
        )
    assert [v["initiator"] for v in views] == [True, False]
    return views


def octets_of(view: dict[str, Any]) -> bytes:
    def prf(key: bytes, data: bytes) -> bytes:
        return w.prf(view["prf_id"], key, data)

    return auth.signed_octets(
        view["real_message"], view["peer_nonce"], prf, view["sk_p"], view["id_body"]
    )


def test_signed_octets_match_strongswan(vec: dict[str, Any]) -> None:
    logged = vec["authentication"]["log"]
    for view, entry in zip(auth_views(vec), logged, strict=True):
        assert octets_of(view).hex() == entry["octets"]


@pytest.mark.parametrize("case", ["psk", "rekey"])
def test_psk_auth_recomputes(case: str) -> None:
    check_psk(load(case))


def check_psk(vec: dict[str, Any]) -> None:
    psk = vec["authentication"]["psk"].encode()
    for view, entry in zip(auth_views(vec), vec["authentication"]["log"], strict=True):

        def prf(key: bytes, data: bytes, alg: int = view["prf_id"]) -> bytes:
            return w.prf(alg, key, data)

        assert view["method"] == AuthMethod.SHARED_KEY_MIC
        octets = octets_of(view)
        assert auth.psk_auth_data(prf, psk, octets) == view["auth_data"]
        assert view["auth_data"].hex() == entry["psk_auth"]
        auth.verify_psk(prf, psk, octets, view["auth_data"])
        with pytest.raises(AuthenticationFailed):
            auth.verify_psk(prf, psk + b"x", octets, view["auth_data"])


M14 = AuthMethod.DIGITAL_SIGNATURE
# case -> the scheme strongSwan used, (initiator's, responder's)
EXPECTED_SCHEME = {
    "ecdsa": 2 * [(M14, auth.SigKind.ECDSA, HashAlgorithm.SHA2_256)],
    "rsa": 2 * [(M14, auth.SigKind.RSA_PKCS1, HashAlgorithm.SHA2_256)],
    "rsa-pss": 2 * [(M14, auth.SigKind.RSA_PSS, HashAlgorithm.SHA2_256)],
    # No SIGNATURE_HASH_ALGORITHMS sent: RSA method 1 (SHA-1), ECDSA method 9 (RFC 4754).
    "legacy": [
        (AuthMethod.RSA_SIG, auth.SigKind.RSA_PKCS1, HashAlgorithm.SHA1),
        (AuthMethod.ECDSA_SHA256_P256, auth.SigKind.ECDSA, HashAlgorithm.SHA2_256),
    ],
}


@pytest.mark.parametrize("case", sorted(EXPECTED_SCHEME))
def test_certificate_auth_verifies(case: str) -> None:
    check_certificates(load(case))


def check_certificates(vec: dict[str, Any]) -> None:
    case = vec["case"]
    a = vec["authentication"]
    store = certs.TrustStore.from_pem(a["ca_cert_pem"].encode())
    now = dt.datetime.fromisoformat(vec["captured"].replace("Z", "+00:00"))
    for view, expected in zip(auth_views(vec), EXPECTED_SCHEME[case], strict=True):
        role = "initiator" if view["initiator"] else "responder"
        assert view["certs"] and view["certs"][0][0] == CertEncoding.X509_CERT_SIGNATURE
        end_entity = store.validate(view["certs"], now)
        assert end_entity == certs.load_certificate(a[f"{role}_cert_pem"].encode())
        certs.match_identity(end_entity, view["id_body"][0], view["id_body"][4:])
        octets = octets_of(view)
        key = certs.certificate_public_key(end_entity)
        scheme = auth.verify_signature(key, view["method"], view["auth_data"], octets)
        assert (scheme.method, scheme.kind, scheme.hash) == expected
        # Given what the peer announced, auth.py would have chosen the same scheme.
        private = certs.load_private_key(a[f"{role}_key_pem"].encode())
        peer_hashes = _peer_hashes(vec, not view["initiator"])
        assert auth.choose_scheme(private, peer_hashes, rsa_pss=case == "rsa-pss") == scheme
        if scheme.method == M14:
            # The AlgorithmIdentifier strongSwan sent is byte-identical to ours.
            algid = auth.algorithm_identifier(scheme)
            assert view["auth_data"][1 : 1 + len(algid)] == algid
        # And a re-signature by auth.py verifies like strongSwan's.
        mine = auth.sign(private, scheme, octets)
        assert auth.verify_signature(key, view["method"], mine, octets) == scheme
        # Tampering with the signature, the octets or the ID fails.
        bad = bytearray(view["auth_data"])
        bad[-1] ^= 1
        with pytest.raises(AuthenticationFailed):
            auth.verify_signature(key, view["method"], bytes(bad), octets)
        with pytest.raises(AuthenticationFailed):
            auth.verify_signature(key, view["method"], view["auth_data"], octets + b"\x00")
        with pytest.raises(AuthenticationFailed):
            certs.match_identity(end_entity, view["id_body"][0], view["id_body"][4:] + b"x")


def test_certificate_vectors_fail_against_another_ca() -> None:
    ecdsa, rsa_vec = load("ecdsa"), load("rsa")
    store = certs.TrustStore.from_pem(rsa_vec["authentication"]["ca_cert_pem"].encode())
    now = dt.datetime.fromisoformat(ecdsa["captured"].replace("Z", "+00:00"))
    view = auth_views(ecdsa)[0]
    with pytest.raises(AuthenticationFailed, match="chain"):
        store.validate(view["certs"], now)
    ca = x509.load_pem_x509_certificate(ecdsa["authentication"]["ca_cert_pem"].encode())
    later = ca.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(AuthenticationFailed, match="expired"):
        certs.TrustStore((ca,)).validate(view["certs"], later)


def test_certreq_names_the_ca() -> None:
    """strongSwan's CERTREQ (IKE_SA_INIT response / IKE_AUTH) holds SHA-1(SPKI) of our CA."""
    vec = load("ecdsa")
    store = certs.TrustStore.from_pem(vec["authentication"]["ca_cert_pem"].encode())
    raw = bytes.fromhex(vec["messages"][1]["data"])
    payloads = w.walk(raw[16], raw, w.HEADER.size)
    certreq = w.first(payloads, w.PT_CERTREQ)
    assert certreq is not None and certreq.body[0] == CertEncoding.X509_CERT_SIGNATURE
    assert certreq.body[1:] == store.certreq_data()
    assert store.requested_by(certreq.body[1:]) == list(store.cas)


def test_negotiated_algorithms_are_recorded() -> None:
    """What strongSwan 5.9.8 chose (the README lists it too)."""
    got = {
        c: (load(c)["ike_sas"][0]["proposal"], load(c)["child_sas"][0]["proposal"]) for c in CASES
    }
    assert got["psk"] == (
        "IKE:AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519",
        "ESP:AES_CBC_128/HMAC_SHA2_256_128/NO_EXT_SEQ",
    )
    assert got["ecdsa"] == (
        "IKE:AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384",
        "ESP:AES_GCM_16_256/NO_EXT_SEQ",
    )
    assert any(m.get("fragment") for m in load("rsa")["messages"])
    rekey = load("rekey")
    assert [c["rekey_of_spi"] for c in rekey["child_sas"]] == [None, rekey["child_sas"][0]["spi_i"]]
    assert rekey["ike_sas"][1]["rekey_of"] == 0


def test_vectors_are_reproducible_from_the_committed_capture_and_logs() -> None:
    """vector.json is exactly what extract.py derives from capture.pcap and the logs."""
    from . import extract

    for case in CASES:
        assert extract.build(case) == load(case), case


@pytest.mark.netns
@pytest.mark.slow
def test_make_vectors_still_works(tmp_path: Path) -> None:
    """Re-run the capture script (root, charon) into a temp dir; the fresh vectors pass too."""
    if os.geteuid() != 0 or not Path("/usr/lib/ipsec/charon").exists():
        pytest.skip("needs root and strongSwan (see README.md)")
    res = subprocess.run(
        (sys.executable, str(HERE / "make_vectors.py"), "--out", str(tmp_path)),
        check=False,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for case in CASES:
        vec = load(case, tmp_path)
        test_skeyseed_and_sk_keys_recompute(vec)
        test_child_keys_recompute(vec)
        test_every_sk_payload_decrypts(vec)
        test_signed_octets_match_strongswan(vec)
        if vec["authentication"]["method"] == "psk":
            check_psk(vec)
        else:
            check_certificates(vec)
