"""The IKE codec against a real RFC 9329 session between two Libreswan 4.10 peers.

Vectors: ../shared/vectors/libreswan-tcp/ (README.md, layout.txt), read in place through
tests/vectors/libreswan.py and skipped, with the reason, where that folder is absent.
Every IKE frame of tcp-dh19 and tcp-dh31 must decode and re-encode to identical bytes.
The SK payloads are opened here with AES-GCM from `cryptography` and the logged keys,
only to reach the inner payloads and to prove the AAD seam (received_aad, sk_aad) right;
the project's own SK crypto is crypto.py's and is tested there.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.vectors.libreswan import (
    DIRECTIONS,
    TCP_SESSIONS,
    ike_frames,
    keys,
    requires_libreswan,
    session_keys,
)
from vpn.ike.constants import (
    AuthMethod,
    CfgAttr,
    CfgType,
    DhId,
    EncrId,
    EsnId,
    ExchangeType,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from vpn.ike.message import (
    Authentication,
    ConfigAttribute,
    Configuration,
    Delete,
    Encrypted,
    IdInitiator,
    IdResponder,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    Transform,
    TsInitiator,
    TsResponder,
    decode_payloads,
    encode_payloads,
)

pytestmark = requires_libreswan

GCM_IV_BYTES = 8  # RFC 5282 §3.1
ANY_V4 = TrafficSelector.from_network("0.0.0.0/0")
ENCR_GCM_256 = Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256)


def _messages(session: str, direction: str) -> list[tuple[bytes, Message]]:
    return [(f.data, Message.decode(f.data)) for f in ike_frames(session, direction)]


def _open(msg: Message, ike_sa: dict[str, Any]) -> bytes:
    """Decrypt an SK payload (RFC 5282) and strip its padding; returns the inner chain."""
    sk = msg.encrypted
    assert isinstance(sk, Encrypted)
    side = "sk_ei" if msg.is_initiator else "sk_er"
    key, salt = bytes.fromhex(ike_sa[side]), bytes.fromhex(ike_sa[side + "_salt"])
    iv, sealed = sk.body[:GCM_IV_BYTES], sk.body[GCM_IV_BYTES:]
    plaintext = AESGCM(key).decrypt(salt + iv, sealed, msg.received_aad)
    pad_length = plaintext[-1]
    return plaintext[: len(plaintext) - 1 - pad_length]


def _inner(session: str, direction: str) -> list[tuple[Message, list[Payload]]]:
    ike_sa = session_keys(session)["ike_sa"]
    out = []
    for _, msg in _messages(session, direction):
        if msg.encrypted is None:
            out.append((msg, list(msg.payloads)))
        else:
            sk = msg.encrypted
            assert isinstance(sk, Encrypted)
            out.append((msg, decode_payloads(sk.first_payload, _open(msg, ike_sa))))
    return out


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("session", TCP_SESSIONS)
def test_every_ike_frame_decodes_and_reencodes_identically(session: str, direction: str) -> None:
    messages = _messages(session, direction)
    ike_sa = session_keys(session)["ike_sa"]
    # layout.txt: IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL x 2, MIDs 0..4
    assert [m.exchange for _, m in messages] == [
        ExchangeType.IKE_SA_INIT,
        ExchangeType.IKE_AUTH,
        ExchangeType.CREATE_CHILD_SA,
        ExchangeType.INFORMATIONAL,
        ExchangeType.INFORMATIONAL,
    ]
    assert [m.message_id for _, m in messages] == [0, 1, 2, 3, 4]
    for data, msg in messages:
        assert msg.encode() == data
        assert msg.is_initiator == (direction == "i2r")
        assert msg.is_response == (direction == "r2i")
        assert msg.spi_i == bytes.fromhex(ike_sa["spi_i"])
        expected_spi_r = "0" * 16 if msg.message_id == 0 and msg.is_request else ike_sa["spi_r"]
        assert msg.spi_r == bytes.fromhex(expected_spi_r)
        assert (msg.encrypted is None) == (msg.exchange == ExchangeType.IKE_SA_INIT)


@pytest.mark.parametrize("session", TCP_SESSIONS)
def test_ike_sa_init_payloads_match_the_layout(session: str) -> None:
    ike_sa = session_keys(session)["ike_sa"]
    group = DhId(ike_sa["dh_group"])
    proposal = Proposal(
        1,
        ProtocolId.IKE,
        b"",
        (
            ENCR_GCM_256,
            Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
            Transform(TransformType.DH, group),
        ),
    )
    for direction, ke, nonce in (("i2r", "ke_i", "ni"), ("r2i", "ke_r", "nr")):
        msg = _messages(session, direction)[0][1]
        assert msg.flags == (HeaderFlag.INITIATOR if direction == "i2r" else HeaderFlag.RESPONSE)
        assert msg.get(SecurityAssociation) == SecurityAssociation((proposal,))
        assert msg.get(KeyExchange) == KeyExchange(group, bytes.fromhex(ike_sa[ke]))
        assert msg.get(Nonce) == Nonce(bytes.fromhex(ike_sa[nonce]))
        notify_types = [p.type for p in msg.payloads if isinstance(p, Notify)]
        expected = [
            NotifyType.IKEV2_FRAGMENTATION_SUPPORTED,
            NotifyType.NAT_DETECTION_SOURCE_IP,
            NotifyType.NAT_DETECTION_DESTINATION_IP,
        ]
        if direction == "r2i":
            expected.append(NotifyType.CHILDLESS_IKEV2_SUPPORTED)
        assert notify_types == expected
        assert [type(p) for p in msg.payloads[:3]] == [SecurityAssociation, KeyExchange, Nonce]
        for ntype in (NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP):
            (nat_d,) = msg.notifies(ntype)
            assert len(nat_d.data) == 20  # SHA-1, RFC 7296 §2.23
            assert nat_d.protocol == ProtocolId.NONE and nat_d.spi == b""
        assert msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) == Notify(
            NotifyType.IKEV2_FRAGMENTATION_SUPPORTED
        )


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("session", TCP_SESSIONS)
def test_sk_seam_rebuilds_aad_and_message(session: str, direction: str) -> None:
    """The send-side seam (sk_aad, encode_with_sk) reproduces Libreswan's bytes exactly."""
    ike_sa = session_keys(session)["ike_sa"]
    side = "sk_ei" if direction == "i2r" else "sk_er"
    aead = AESGCM(bytes.fromhex(ike_sa[side]))
    salt = bytes.fromhex(ike_sa[side + "_salt"])
    for data, msg in _messages(session, direction)[1:]:
        sk = msg.encrypted
        assert isinstance(sk, Encrypted)
        assert len(msg.received_aad) == 32  # README: header + SK generic header
        shell = replace(msg, payloads=())
        aad = shell.sk_aad(sk.first_payload, len(sk.body))
        assert aad == msg.received_aad == data[:32]
        assert shell.encode_with_sk(sk.first_payload, sk.body) == data
        # Re-seal the padded plaintext with our AAD: Libreswan's exact ciphertext and ICV.
        iv = sk.body[:GCM_IV_BYTES]
        padded = aead.decrypt(salt + iv, sk.body[GCM_IV_BYTES:], aad)
        assert aead.encrypt(salt + iv, padded, aad) == sk.body[GCM_IV_BYTES:]
        # The inner chain re-encodes to the same plaintext (padding excluded).
        inner_bytes = _open(msg, ike_sa)
        first, encoded = encode_payloads(decode_payloads(sk.first_payload, inner_bytes))
        assert (first, encoded) == (sk.first_payload, inner_bytes)


@pytest.mark.parametrize("session", TCP_SESSIONS)
def test_ike_auth_inner_payloads(session: str) -> None:
    s = session_keys(session)
    child = s["child_sas"][0]
    (_, request), (_, response) = _inner(session, "i2r")[1], _inner(session, "r2i")[1]
    ids = keys()["ids"]

    assert [type(p) for p in request] == [
        IdInitiator,
        IdResponder,
        Authentication,
        Configuration,
        SecurityAssociation,
        TsInitiator,
        TsResponder,
    ]
    assert request[0] == IdInitiator(IdType.ID_FQDN, ids["initiator"]["data"].encode())
    assert request[1] == IdResponder(IdType.ID_FQDN, ids["responder"]["data"].encode())
    assert isinstance(request[2], Authentication)
    assert request[2].method == AuthMethod.SHARED_KEY_MIC
    assert request[3] == Configuration(
        CfgType.CFG_REQUEST,
        tuple(
            ConfigAttribute(a)
            for a in (
                CfgAttr.INTERNAL_IP4_ADDRESS,
                CfgAttr.INTERNAL_IP4_DNS,
                CfgAttr.INTERNAL_IP6_ADDRESS,
                CfgAttr.INTERNAL_IP6_DNS,
                CfgAttr.INTERNAL_DNS_DOMAIN,
            )
        ),
    )
    esn = (Transform(TransformType.ESN, EsnId.ESN), Transform(TransformType.ESN, EsnId.NO_ESN))
    # The initiator's SA names its inbound SPI, which is the r2i Child SA.
    assert request[4] == SecurityAssociation(
        (Proposal(1, ProtocolId.ESP, bytes.fromhex(child["r2i"]["spi"]), (ENCR_GCM_256, *esn)),)
    )
    assert request[5] == TsInitiator((TrafficSelector.from_address("10.77.0.3"),))
    assert request[6] == TsResponder((ANY_V4,))

    assert [type(p) for p in response] == [
        IdResponder,
        Authentication,
        Configuration,
        SecurityAssociation,
        TsInitiator,
        TsResponder,
    ]
    cp = response[2]
    assert isinstance(cp, Configuration) and cp.cfg_type == CfgType.CFG_REPLY
    assert cp.attributes == (ConfigAttribute.address("10.78.0.10"),)
    assert cp.attributes[0].ip_interface() == ipaddress.ip_interface("10.78.0.10/32")
    assert response[3] == SecurityAssociation(
        (Proposal(1, ProtocolId.ESP, bytes.fromhex(child["i2r"]["spi"]), (ENCR_GCM_256, esn[0])),)
    )
    assert response[4] == TsInitiator((TrafficSelector.from_address(s["virtual_ip"]),))
    assert response[5] == TsResponder((ANY_V4,))


def _prf(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


@pytest.mark.parametrize("session", TCP_SESSIONS)
def test_id_payload_bodies_are_what_psk_auth_signs(session: str) -> None:
    """RFC 7296 §2.15: AUTH = prf(prf(PSK, "Key Pad for IKEv2"), octets | prf(SK_p, ID'))."""
    ike_sa = session_keys(session)["ike_sa"]
    psk = bytes.fromhex(keys()["psk"]["hex"])
    init_req, init_resp = _messages(session, "i2r")[0][0], _messages(session, "r2i")[0][0]
    (_, req), (_, resp) = _inner(session, "i2r")[1], _inner(session, "r2i")[1]
    key = _prf(psk, b"Key Pad for IKEv2")
    cases = (
        (req, IdInitiator, init_req + bytes.fromhex(ike_sa["nr"]), ike_sa["sk_pi"]),
        (resp, IdResponder, init_resp + bytes.fromhex(ike_sa["ni"]), ike_sa["sk_pr"]),
    )
    for inner, id_cls, octets, sk_p in cases:
        ident = next(p for p in inner if isinstance(p, id_cls))
        auth = next(p for p in inner if isinstance(p, Authentication))
        mac = _prf(bytes.fromhex(sk_p), ident.encode_body())
        assert auth.data == _prf(key, octets + mac)


@pytest.mark.parametrize("session", TCP_SESSIONS)
def test_create_child_sa_and_informational_inner_payloads(session: str) -> None:
    s = session_keys(session)
    old, new = s["child_sas"]
    group = DhId(new["pfs_dh_group"])
    requests, responses = _inner(session, "i2r"), _inner(session, "r2i")

    _, rekey = requests[2]
    assert rekey[0] == Notify(
        NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=bytes.fromhex(old["r2i"]["spi"])
    )
    dh = Transform(TransformType.DH, group)
    esn = Transform(TransformType.ESN, EsnId.ESN)
    assert rekey[1] == SecurityAssociation(
        (Proposal(1, ProtocolId.ESP, bytes.fromhex(new["r2i"]["spi"]), (ENCR_GCM_256, dh, esn)),)
    )
    assert rekey[2] == Nonce(bytes.fromhex(new["ni"]))
    assert rekey[3] == KeyExchange(group, bytes.fromhex(new["ke_i"]))
    lease = TsInitiator((TrafficSelector.from_address(s["virtual_ip"]),))
    assert rekey[4:] == [lease, TsResponder((ANY_V4,))]

    _, answer = responses[2]
    assert answer == [
        SecurityAssociation(
            (
                Proposal(
                    1, ProtocolId.ESP, bytes.fromhex(new["i2r"]["spi"]), (ENCR_GCM_256, dh, esn)
                ),
            )
        ),
        Nonce(bytes.fromhex(new["nr"])),
        KeyExchange(group, bytes.fromhex(new["ke_r"])),
        lease,
        TsResponder((ANY_V4,)),
    ]

    # Each side deletes the old Child SA by the SPI it received on, then Delete(IKE).
    assert requests[3][1] == [Delete(ProtocolId.ESP, (bytes.fromhex(old["r2i"]["spi"]),))]
    assert responses[3][1] == [Delete(ProtocolId.ESP, (bytes.fromhex(old["i2r"]["spi"]),))]
    assert requests[4][1] == [Delete(ProtocolId.IKE)]
    assert responses[4][1] == []
    sk = responses[4][0].encrypted
    assert isinstance(sk, Encrypted) and sk.first_payload == PayloadType.NONE
