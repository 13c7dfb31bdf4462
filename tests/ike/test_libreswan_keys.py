"""Recompute a real Libreswan 4.10 session's keys and decrypt its SK payloads.

Source: ../shared/vectors/libreswan-tcp/ (README.md there says how it was made): for
tcp-dh19, udp-dh19 and tcp-dh31, keys.json holds g^ir, nonces, SPIs, SKEYSEED, every
SK_* and the Child SA KEYMATs (also the PFS rekey), and *.bin hold the raw TCP streams.
Nothing from that folder is copied into the project; the tests skip when it is absent
(set VPN_LIBRESWAN_VECTORS to point elsewhere).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from vpn.ike.constants import (
    EncrId,
    ExchangeType,
    HeaderFlag,
    PayloadType,
    PrfId,
)
from vpn.ike.crypto import (
    EspSuite,
    IkeSaKeys,
    IkeSuite,
    compute_skeyseed,
    dh_group,
    get_prf,
)
from vpn.ike.errors import IntegrityError, InvalidKePayload

VECTOR_DIR = Path(os.environ.get("VPN_LIBRESWAN_VECTORS", "/work/shared/vectors/libreswan-tcp"))
KEYS_JSON = VECTOR_DIR / "keys.json"

pytestmark = pytest.mark.skipif(
    not KEYS_JSON.is_file(),
    reason=f"Libreswan vectors not found at {VECTOR_DIR} (not shipped with the project; "
    "set VPN_LIBRESWAN_VECTORS to the libreswan-tcp folder to run these)",
)

ALL_SESSIONS = ["tcp-dh19", "udp-dh19", "tcp-dh31"]
TCP_SESSIONS = ["tcp-dh19", "tcp-dh31"]

# All three sessions negotiated ENCR_AES_GCM_16/256, PRF_HMAC_SHA2_256, no INTEG for
# IKE and ENCR_AES_GCM_16/256 with ESN for ESP (README "Sessions at a glance").
IKE_SUITE = IkeSuite.from_ids(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_256)
ESP_SUITE = EspSuite.from_ids(EncrId.AES_GCM_16, 256)

P = PayloadType
# The decrypted payload chain of each protected message, by (exchange, response, MID),
# as listed in layout.txt.
EXPECTED_CHAINS: dict[tuple[int, bool, int], list[PayloadType]] = {
    (ExchangeType.IKE_AUTH, False, 1): [P.IDI, P.IDR, P.AUTH, P.CP, P.SA, P.TSI, P.TSR],
    (ExchangeType.IKE_AUTH, True, 1): [P.IDR, P.AUTH, P.CP, P.SA, P.TSI, P.TSR],
    (ExchangeType.CREATE_CHILD_SA, False, 2): [P.NOTIFY, P.SA, P.NONCE, P.KE, P.TSI, P.TSR],
    (ExchangeType.CREATE_CHILD_SA, True, 2): [P.SA, P.NONCE, P.KE, P.TSI, P.TSR],
    (ExchangeType.INFORMATIONAL, False, 3): [P.DELETE],
    (ExchangeType.INFORMATIONAL, True, 3): [P.DELETE],
    (ExchangeType.INFORMATIONAL, False, 4): [P.DELETE],
    (ExchangeType.INFORMATIONAL, True, 4): [],
}


def _session(name: str) -> dict[str, Any]:
    data = json.loads(KEYS_JSON.read_text())
    for session in data["sessions"]:
        if session["name"] == name:
            return dict(session)
    raise AssertionError(f"session {name} missing from {KEYS_JSON}")


def _h(value: str | None) -> bytes:
    return bytes.fromhex(value) if value else b""


def _ike_keys(ike: dict[str, Any]) -> IkeSaKeys:
    return IkeSaKeys.derive(
        IKE_SUITE, _h(ike["g_ir"]), _h(ike["ni"]), _h(ike["nr"]), _h(ike["spi_i"]), _h(ike["spi_r"])
    )


def _ike_messages(stream: bytes, prefixed: bool) -> list[bytes]:
    """RFC 9329 §3: optional 'IKETCP' prefix, then 16-bit length frames (the length counts
    itself); IKE frames start with the 4-byte non-ESP marker, ESP frames with an SPI."""
    pos = 0
    if prefixed:
        assert stream[:6] == b"IKETCP"
        pos = 6
    messages = []
    while pos < len(stream):
        length = int.from_bytes(stream[pos : pos + 2])
        assert length >= 6 and pos + length <= len(stream), "torn frame"
        frame = stream[pos + 2 : pos + length]
        if frame[:4] == b"\x00\x00\x00\x00":
            messages.append(frame[4:])
        pos += length
    assert pos == len(stream)
    return messages


def _payload_chain(first: int, data: bytes) -> list[tuple[int, bytes]]:
    """Walk generic payload headers (RFC 7296 §3.2); the chain must cover `data` exactly."""
    chain = []
    next_type, pos = first, 0
    while next_type != PayloadType.NONE:
        assert pos + 4 <= len(data), "truncated payload header"
        length = int.from_bytes(data[pos + 2 : pos + 4])
        assert length >= 4 and pos + length <= len(data), "bad payload length"
        chain.append((next_type, data[pos + 4 : pos + length]))
        next_type, pos = data[pos], pos + length
    assert pos == len(data), "bytes after the last payload"
    return chain


@pytest.mark.parametrize("name", ALL_SESSIONS)
def test_skeyseed_and_every_sk_key(name: str) -> None:
    ike = _session(name)["ike_sa"]
    assert "ENCR_AES_GCM_16 (20), Key Length 256" in ike["transforms"]["ENCR"]
    assert "(5)" in ike["transforms"]["PRF"]
    skeyseed = compute_skeyseed(
        get_prf(PrfId.HMAC_SHA2_256), _h(ike["ni"]), _h(ike["nr"]), _h(ike["g_ir"])
    )
    assert skeyseed == _h(ike["skeyseed"])

    keys = _ike_keys(ike)
    assert keys.sk_d == _h(ike["sk_d"])
    assert keys.sk_ai == _h(ike["sk_ai"]) == b""
    assert keys.sk_ar == _h(ike["sk_ar"]) == b""
    assert keys.sk_ei == _h(ike["sk_ei"]) + _h(ike["sk_ei_salt"])  # RFC 5282 §7.1
    assert keys.sk_er == _h(ike["sk_er"]) + _h(ike["sk_er_salt"])
    assert keys.sk_pi == _h(ike["sk_pi"])
    assert keys.sk_pr == _h(ike["sk_pr"])
    concatenated = keys.sk_d + keys.sk_ei + keys.sk_er + keys.sk_pi + keys.sk_pr
    assert concatenated == _h(ike["keymat"])
    assert len(concatenated) == 168


@pytest.mark.parametrize("name", ALL_SESSIONS)
def test_child_sa_keymat_including_pfs_rekey(name: str) -> None:
    session = _session(name)
    keys = _ike_keys(session["ike_sa"])
    children = session["child_sas"]
    assert children[0]["created_by"] == "IKE_AUTH"
    for child in children:
        g_ir = _h(child["g_ir_new"]) or None
        assert (g_ir is None) == (child["pfs_dh_group"] is None)
        derived = keys.child_sa_keys(ESP_SUITE, _h(child["ni"]), _h(child["nr"]), g_ir)
        assert derived.i2r.encr_key == _h(child["i2r"]["key"])
        assert derived.i2r.salt == _h(child["i2r"]["salt"])
        assert derived.r2i.encr_key == _h(child["r2i"]["key"])
        assert derived.r2i.salt == _h(child["r2i"]["salt"])
        keymat = derived.i2r.encr_key + derived.i2r.salt + derived.r2i.encr_key + derived.r2i.salt
        assert keymat == _h(child["keymat"])


@pytest.mark.parametrize("name", ALL_SESSIONS)
def test_real_ke_values_pass_our_checks(name: str) -> None:
    """Libreswan's KE data (IKE_SA_INIT and the PFS rekey) is accepted, with the RFC
    lengths; a flipped bit in it is refused (no private keys, so no g^ir to compare)."""
    session = _session(name)
    ike = session["ike_sa"]
    group = dh_group(ike["dh_group"])
    assert len(_h(ike["g_ir"])) == group.shared_bytes
    mine = group.generate(lambda n: bytes(range(1, n + 1)))
    values = [_h(ike["ke_i"]), _h(ike["ke_r"])]
    for child in session["child_sas"]:
        if child["pfs_dh_group"] is not None:
            assert child["pfs_dh_group"] == ike["dh_group"]
            values += [_h(child["ke_i"]), _h(child["ke_r"])]
            assert len(_h(child["g_ir_new"])) == group.shared_bytes
    for value in values:
        assert len(value) == group.public_bytes
        assert len(mine.shared_secret(value)) == group.shared_bytes
    if ike["dh_group"] == 19:  # a flipped y bit leaves the curve (X25519 has no such check)
        bad = bytearray(values[0])
        bad[-1] ^= 1
        with pytest.raises(InvalidKePayload):
            mine.shared_secret(bytes(bad))


@pytest.mark.parametrize("name", TCP_SESSIONS)
def test_decrypt_every_sk_payload_of_the_tcp_streams(name: str) -> None:
    session = _session(name)
    ike = session["ike_sa"]
    keys = _ike_keys(ike)
    rekey = session["child_sas"][1]
    streams = {
        "i2r": (VECTOR_DIR / session["streams"]["i2r"]).read_bytes(),
        "r2i": (VECTOR_DIR / session["streams"]["r2i"]).read_bytes(),
    }
    seen = set()
    for direction, stream in streams.items():
        for msg in _ike_messages(stream, prefixed=direction == "i2r"):
            assert msg[0:8] == _h(ike["spi_i"])
            next_payload, version, exchange, flags = msg[16:20]
            message_id = int.from_bytes(msg[20:24])
            assert version == 0x20 and int.from_bytes(msg[24:28]) == len(msg)
            from_initiator = bool(flags & HeaderFlag.INITIATOR)
            assert from_initiator == (direction == "i2r")
            if exchange == ExchangeType.IKE_SA_INIT:
                continue
            assert next_payload == PayloadType.SK
            assert int.from_bytes(msg[30:32]) == len(msg) - 28  # SK is the last payload
            response = bool(flags & HeaderFlag.RESPONSE)

            cipher = keys.sk_cipher(from_initiator=from_initiator)
            aad, body = msg[:32], msg[32:]
            plain = cipher.open(aad, body)
            # sealing it again with Libreswan's IV gives Libreswan's bytes (pad length 0)
            assert cipher.seal(aad, plain, body[: cipher.iv_bytes]) == body
            assert cipher.body_length(len(plain)) == len(body)
            with pytest.raises(IntegrityError):
                keys.sk_cipher(from_initiator=not from_initiator).open(aad, body)

            chain = _payload_chain(msg[28], plain)
            key = (exchange, response, message_id)
            assert [t for t, _ in chain] == EXPECTED_CHAINS[key], key
            seen.add(key)
            if exchange == ExchangeType.CREATE_CHILD_SA:
                bodies = dict(chain)
                nonce, ke_value = ("nr", "ke_r") if response else ("ni", "ke_i")
                assert bodies[PayloadType.NONCE] == _h(rekey[nonce])
                ke = bodies[PayloadType.KE]
                assert int.from_bytes(ke[:2]) == rekey["pfs_dh_group"]
                assert ke[4:] == _h(rekey[ke_value])
    assert seen == set(EXPECTED_CHAINS)


@pytest.mark.parametrize("name", TCP_SESSIONS)
def test_tampered_capture_fails(name: str) -> None:
    session = _session(name)
    keys = _ike_keys(session["ike_sa"])
    stream = (VECTOR_DIR / session["streams"]["i2r"]).read_bytes()
    auth_request = _ike_messages(stream, prefixed=True)[1]
    assert auth_request[18] == ExchangeType.IKE_AUTH
    cipher = keys.sk_cipher(from_initiator=True)
    aad, body = auth_request[:32], auth_request[32:]
    cipher.open(aad, body)
    for pos in (0, 8, len(body) // 2, len(body) - 1):  # IV, ciphertext, ICV
        bad = bytearray(body)
        bad[pos] ^= 0x80
        with pytest.raises(IntegrityError):
            cipher.open(aad, bytes(bad))
    bad_aad = bytearray(aad)
    bad_aad[20 + 3] ^= 1  # message ID
    with pytest.raises(IntegrityError):
        cipher.open(bytes(bad_aad), body)
