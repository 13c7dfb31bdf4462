"""IKE message and payload codecs: hand-built wire examples, round trips, strict bounds.

The wire examples are written byte by byte from the figures of RFC 7296 §3 (and RFC 7383
§2.5 for SKF), with the field names in the comments, so each one checks our layout against
the RFC rather than against our own encoder.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from vpn.ike.constants import (
    AuthMethod,
    CertEncoding,
    CfgAttr,
    CfgType,
    DhId,
    EapCode,
    EncrId,
    EsnId,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from vpn.ike.errors import LocalProtocolError, MalformedMessage, UnsupportedCriticalPayload
from vpn.ike.message import (
    MAX_DELETE_SPIS,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOADS,
    MAX_PROPOSALS,
    Authentication,
    Certificate,
    CertificateRequest,
    ConfigAttribute,
    Configuration,
    Delete,
    Eap,
    Encrypted,
    EncryptedFragment,
    IdInitiator,
    IdResponder,
    InvalidMajorVersion,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsInitiator,
    TsResponder,
    UnknownPayload,
    VendorId,
    decode_payloads,
    encode_payloads,
    error_notifies,
    peek_header,
)

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")
ZERO_SPI = bytes(8)


def h(text: str) -> bytes:
    """Hex with spaces and line breaks allowed; `#` starts a comment up to the line end."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()).replace(" ", ""))


def generic(next_type: int, body: bytes, critical: bool = False) -> bytes:
    """RFC 7296 §3.2: Next Payload | C | RESERVED | Payload Length, then the body."""
    return bytes([next_type, 0x80 if critical else 0]) + (4 + len(body)).to_bytes(2, "big") + body


def ike(
    next_type: int,
    chain: bytes,
    exchange: int = 34,
    flags: int = 0x08,
    spi_r: bytes = ZERO_SPI,
    version: int = 0x20,
) -> bytes:
    """RFC 7296 §3.1 header (message ID 0) followed by `chain`."""
    return (
        SPI_I
        + spi_r
        + bytes([next_type, version, exchange, flags])
        + (0).to_bytes(4, "big")
        + (28 + len(chain)).to_bytes(4, "big")
        + chain
    )


# --------------------------------------------------------------------------- RFC layouts

# RFC 7296 §3.3.1, §3.3.2, §3.3.5: one IKE proposal, AES-CBC-128 / SHA2-256 / ecp256.
SA_BODY = h(
    """
    00 00 00 2c   01 01 00 04                 # proposal (last), length 44, #1, IKE, no SPI, 4 T
    03 00 00 0c   01 00 00 0c   80 0e 00 80   # ENCR (more), AES_CBC, KEY_LENGTH (TV) = 128
    03 00 00 08   03 00 00 0c                 # INTEG (more), HMAC_SHA2_256_128
    03 00 00 08   02 00 00 05                 # PRF (more), HMAC_SHA2_256
    00 00 00 08   04 00 00 13                 # DH (last), 19
    """
)
SA_PAYLOAD = SecurityAssociation(
    (
        Proposal(
            1,
            ProtocolId.IKE,
            b"",
            (
                Transform(TransformType.ENCR, EncrId.AES_CBC, key_length=128),
                Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
                Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                Transform(TransformType.DH, DhId.ECP256),
            ),
        ),
    )
)


def test_ike_sa_init_with_sa_payload_from_rfc_layout() -> None:
    wire = ike(PayloadType.SA, generic(0, SA_BODY))
    assert wire[:28] == h(
        """
        01 02 03 04 05 06 07 08  00 00 00 00 00 00 00 00   # SPIi, SPIr
        21 20 22 08  00 00 00 00  00 00 00 4c              # SA, 2.0, IKE_SA_INIT, I; MID 0; 76
        """
    )
    msg = Message.decode(wire)
    assert msg == Message(
        SPI_I, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, (SA_PAYLOAD,)
    )
    assert msg.next_payload == PayloadType.SA
    assert msg.is_initiator and msg.is_request and not msg.is_response
    assert msg.encode() == wire
    header = peek_header(wire)
    assert (header.length, header.major_version, header.next_payload) == (76, 2, PayloadType.SA)
    assert header.is_initiator and not header.is_response


def test_esp_proposal_with_spi_and_two_alternatives_per_type() -> None:
    body = h(
        """
        02 00 00 20  01 03 04 02  ca fe ba be      # proposal (more), 32 bytes, #1, ESP, SPI, 2 T
        03 00 00 0c  01 00 00 14  80 0e 01 00      # ENCR AES_GCM_16, 256
        00 00 00 08  05 00 00 00                   # ESN (last): no ESN
        00 00 00 28  02 03 04 03  ca fe ba be      # proposal (last), 40 bytes, #2, ESP, SPI, 3 T
        03 00 00 0c  01 00 00 14  80 0e 00 80      # ENCR AES_GCM_16, 128
        03 00 00 08  05 00 00 01                   # ESN
        00 00 00 08  05 00 00 00                   # no ESN
        """
    )
    sa = SecurityAssociation.decode_body(body)
    spi = h("cafebabe")
    assert sa.proposals[0] == Proposal(
        1,
        ProtocolId.ESP,
        spi,
        (Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256), Transform(TransformType.ESN, 0)),
    )
    second = sa.proposals[1]
    assert second.transforms_of(TransformType.ESN) == (
        Transform(TransformType.ESN, EsnId.ESN),
        Transform(TransformType.ESN, EsnId.NO_ESN),
    )
    assert second.transform_types() == {TransformType.ENCR, TransformType.ESN}
    assert sa.encode_body() == body


def test_transform_keeps_unknown_tv_and_tlv_attributes() -> None:
    # RFC 7296 §3.3.5: AF=1 TV (type 0x0123, value 7), AF=0 TLV (type 0x0456, 3 bytes).
    body = h(
        """
        00 00 00 1f  01 01 00 01                  # proposal: length 31, #1, IKE, 1 transform
        00 00 00 17  01 00 00 0c                  # transform: length 23, ENCR AES_CBC
        80 0e 01 00                               # KEY_LENGTH (TV) 256
        81 23 00 07                               # TV 0x0123 = 7
        04 56 00 03  aa bb cc                     # TLV 0x0456, 3 bytes
        """
    )
    sa = SecurityAssociation.decode_body(body)
    (transform,) = sa.proposals[0].transforms
    assert transform == Transform(
        TransformType.ENCR,
        EncrId.AES_CBC,
        256,
        (TransformAttribute(0x123, 7), TransformAttribute(0x456, h("aabbcc"))),
    )
    assert transform.attributes[0].is_tv and not transform.attributes[1].is_tv
    assert sa.encode_body() == body


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        # §3.4: DH Group Num | RESERVED | Key Exchange Data
        (KeyExchange(DhId.CURVE25519, bytes(range(32))), h("00 1f 00 00") + bytes(range(32))),
        # §3.5: ID Type | RESERVED (3) | Identification Data
        (IdInitiator(IdType.ID_FQDN, b"client.test"), h("02 00 00 00") + b"client.test"),
        (IdResponder(IdType.ID_IPV4_ADDR, h("0a000001")), h("01 00 00 00 0a 00 00 01")),
        # §3.6: Cert Encoding | Certificate Data
        (Certificate(CertEncoding.X509_CERT_SIGNATURE, b"\x30\x03der"), h("04 30 03") + b"der"),
        # §3.7: Cert Encoding | Certification Authority (SHA-1 hashes)
        (CertificateRequest(CertEncoding.X509_CERT_SIGNATURE, bytes(20)), h("04") + bytes(20)),
        # §3.8: Auth Method | RESERVED (3) | Authentication Data
        (Authentication(AuthMethod.SHARED_KEY_MIC, bytes(32)), h("02 00 00 00") + bytes(32)),
        # §3.9: Nonce Data
        (Nonce(bytes(range(16))), bytes(range(16))),
        # §3.10: Protocol ID | SPI Size | Notify Message Type | SPI | Notification Data
        (
            Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=h("aabbccdd")),
            h("03 04 40 09 aa bb cc dd"),
        ),
        (
            Notify(NotifyType.COOKIE, h("0102030405060708")),
            h("00 00 40 06 01 02 03 04 05 06 07 08"),
        ),
        (Notify(NotifyType.INVALID_SYNTAX), h("00 00 00 07")),
        # §3.11: Protocol ID | SPI Size | Num of SPIs | SPIs
        (
            Delete(ProtocolId.ESP, (h("11111111"), h("22222222"))),
            h("03 04 00 02 11111111 22222222"),
        ),
        (Delete(ProtocolId.IKE), h("01 00 00 00")),
        # §3.12: Vendor ID
        (VendorId(b"strongSwan"), b"strongSwan"),
        # §3.13, §3.13.1: Number of TSs | RESERVED (3); TS Type | IP Protocol ID |
        # Selector Length | Start Port | End Port | Starting Address | Ending Address
        (
            TsInitiator((TrafficSelector.from_network("10.0.0.0/24", 6, (80, 443)),)),
            h("01 000000  07 06 0010  0050 01bb  0a000000 0a0000ff"),
        ),
        (
            TsResponder(
                (
                    TrafficSelector.from_network("2001:db8::/32"),
                    TrafficSelector.from_address("10.1.2.3"),
                )
            ),
            h(
                """
                02 000000
                08 00 0028  0000 ffff
                20010db8000000000000000000000000 20010db8ffffffffffffffffffffffff
                07 00 0010  0000 ffff  0a010203 0a010203
                """
            ),
        ),
        # §3.15, §3.15.1: CFG Type | RESERVED (3); R | Attribute Type | Length | Value
        (
            Configuration(
                CfgType.CFG_REQUEST,
                (
                    ConfigAttribute(CfgAttr.INTERNAL_IP4_ADDRESS),
                    ConfigAttribute(CfgAttr.INTERNAL_IP4_DNS),
                    ConfigAttribute(CfgAttr.INTERNAL_IP6_ADDRESS),
                ),
            ),
            h("01 000000  0001 0000  0003 0000  0008 0000"),
        ),
        (
            Configuration(
                CfgType.CFG_REPLY,
                (
                    ConfigAttribute.address("10.78.0.10"),
                    ConfigAttribute.address("fd00::10/64"),
                    ConfigAttribute.dns("9.9.9.9"),
                    ConfigAttribute.subnet("10.0.0.0/8"),
                    ConfigAttribute(CfgAttr.INTERNAL_DNS_DOMAIN, b"corp.example"),
                ),
            ),
            h(
                """
                02 000000
                0001 0004 0a4e000a
                0008 0011 fd000000000000000000000000000010 40
                0003 0004 09090909
                000d 0008 0a000000 ff000000
                0019 000c
                """
            )
            + b"corp.example",
        ),
        # §3.16 / RFC 3748 §4: Code | Identifier | Length | Type | Type-Data
        (Eap(h("02 07 00 0a 01") + b"alice"), h("02 07 00 0a 01") + b"alice"),
        (Eap(h("03 07 00 04")), h("03 07 00 04")),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Payload) else "",
)
def test_payload_body_layout(payload: Payload, body: bytes) -> None:
    assert payload.encode_body() == body
    assert type(payload).decode_body(body) == payload
    # ... and inside a chain, after a Nonce, with the generic headers computed.
    nonce = Nonce(bytes(16))
    wire = generic(payload.payload_type, bytes(16)) + generic(0, body)
    assert encode_payloads([nonce, payload]) == (PayloadType.NONCE, wire)
    assert decode_payloads(PayloadType.NONCE, wire) == [nonce, payload]


def test_eap_and_certreq_accessors() -> None:
    eap = Eap(h("01 2a 00 06 04 10"))
    assert (eap.code, eap.identifier, eap.eap_type) == (EapCode.REQUEST, 42, 4)
    assert Eap(h("04 2a 00 04")).eap_type is None
    hashes = (bytes([1]) * 20, bytes([2]) * 20)
    req = CertificateRequest.for_authorities(hashes)
    assert req.encode_body() == b"\x04" + b"".join(hashes)
    assert req.authorities() == hashes
    with pytest.raises(MalformedMessage):
        CertificateRequest(CertEncoding.X509_CERT_SIGNATURE, bytes(21)).authorities()
    with pytest.raises(LocalProtocolError):
        CertificateRequest.for_authorities([bytes(19)])


def test_notify_helpers() -> None:
    sha = Notify.signature_hash_algorithms([HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_512, 77])
    assert sha.encode_body() == h("00 00 40 2f 0002 0004 004d")
    assert sha.hash_algorithms() == (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_512, 77)
    assert not sha.is_error
    ke = Notify.invalid_ke_payload(DhId.CURVE25519)
    assert ke.encode_body() == h("00 00 00 11 00 1f")
    assert ke.is_error and ke.accepted_group() == DhId.CURVE25519
    with pytest.raises(MalformedMessage):
        Notify(NotifyType.INVALID_KE_PAYLOAD, b"\x00").accepted_group()
    with pytest.raises(MalformedMessage):
        Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, b"\x00\x02\x00").hash_algorithms()


def test_unknown_codes_stay_integers() -> None:
    notify = Notify.decode_body(h("00 00 9c 40"))  # status type 40000, unregistered
    assert notify.type == 40000 and type(notify.type) is int
    ke = KeyExchange.decode_body(h("01 00 00 00"))  # group 256
    assert ke.group == 256 and ke == KeyExchange(256, b"")


# --------------------------------------------------------------------------- unknown payloads


def test_unknown_non_critical_payload_is_kept_and_reencoded() -> None:
    # RFC 7296 §2.5: skip (here: keep) a payload we do not know when C is 0.
    chain = generic(50, bytes(16)) + generic(0, b"opaque")
    payloads = decode_payloads(PayloadType.NONCE, chain)
    assert payloads == [Nonce(bytes(16)), UnknownPayload(50, b"opaque")]
    assert encode_payloads(payloads) == (PayloadType.NONCE, chain)
    critical = UnknownPayload(50, b"x", is_critical=True)
    assert encode_payloads([critical])[1] == generic(0, b"x", critical=True)


def test_unknown_critical_payload_rejects_the_message() -> None:
    chain = generic(50, bytes(16)) + generic(0, b"opaque", critical=True)
    with pytest.raises(UnsupportedCriticalPayload) as info:
        decode_payloads(PayloadType.NONCE, chain)
    assert info.value.payload_type == 50
    assert info.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    with pytest.raises(UnsupportedCriticalPayload):
        Message.decode(ike(PayloadType.NONCE, chain))


def test_critical_bit_on_a_known_payload_is_ignored() -> None:
    # §2.5: the C bit "MUST be ignored by the recipient if [it] understands the payload type".
    assert decode_payloads(PayloadType.NONCE, generic(0, bytes(16), critical=True)) == [
        Nonce(bytes(16))
    ]


# --------------------------------------------------------------------------- SK and SKF


def test_sk_message_layout_and_aad() -> None:
    body = h("0011223344556677") + b"ciphertext" + bytes(16)  # IV || ciphertext || ICV
    wire = ike(PayloadType.SK, generic(PayloadType.IDI, body), exchange=35, spi_r=SPI_R)
    msg = Message.decode(wire)
    assert msg.payloads == (Encrypted(PayloadType.IDI, body),)
    assert msg.encrypted == Encrypted(PayloadType.IDI, body)
    # RFC 5282 §5.1: AAD = IKE header through the SK generic header (28 + 4 bytes).
    assert msg.received_aad == wire[:32]
    assert msg.received_aad[28:] == h("23 00") + (4 + len(body)).to_bytes(2, "big")
    shell = replace(msg, payloads=())
    assert shell.sk_aad(PayloadType.IDI, len(body)) == wire[:32]
    assert shell.encode_with_sk(PayloadType.IDI, body) == wire
    assert msg.encode() == wire


def test_sk_aad_counts_unencrypted_payloads_before_sk() -> None:
    shell = Message(
        SPI_I, SPI_R, ExchangeType.INFORMATIONAL, HeaderFlag.RESPONSE, 7, (VendorId(b"v"),)
    )
    body = bytes(40)
    data = shell.encode_with_sk(PayloadType.DELETE, body)
    assert data == shell.sk_aad(PayloadType.DELETE, len(body)) + body
    msg = Message.decode(data)
    assert msg.payloads == (VendorId(b"v"), Encrypted(PayloadType.DELETE, body))
    assert msg.received_aad == data[:-40]
    assert len(msg.received_aad) == 28 + 5 + 4
    assert msg.next_payload == PayloadType.VENDOR_ID


def test_skf_message_layout_and_aad() -> None:
    body = bytes(range(30))
    # RFC 7383 §2.5: generic header | Fragment Number | Total Fragments | IV, content, ICV
    skf = h("23 00") + (8 + len(body)).to_bytes(2, "big") + h("0001 0003") + body
    wire = ike(PayloadType.SKF, skf, exchange=35, spi_r=SPI_R)
    msg = Message.decode(wire)
    assert msg.payloads == (EncryptedFragment(1, 3, PayloadType.IDI, body),)
    assert msg.received_aad == wire[:36]
    shell = replace(msg, payloads=())
    assert shell.skf_aad(1, 3, PayloadType.IDI, len(body)) == wire[:36]
    assert shell.encode_with_skf(1, 3, PayloadType.IDI, body) == wire
    # Later fragments carry Next Payload 0.
    later = shell.encode_with_skf(3, 3, PayloadType.NONE, b"tail")
    assert Message.decode(later).encrypted == EncryptedFragment(3, 3, PayloadType.NONE, b"tail")


def test_seam_misuse_is_local_error() -> None:
    shell = Message(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
    with pytest.raises(LocalProtocolError):
        _ = shell.received_aad  # not decoded
    with pytest.raises(LocalProtocolError):
        _ = Message.decode(shell.encode()).received_aad  # no SK
    with pytest.raises(LocalProtocolError):
        shell.skf_aad(0, 3, PayloadType.IDI, 10)
    with pytest.raises(LocalProtocolError):
        shell.encode_with_skf(4, 3, PayloadType.IDI, b"")
    with pytest.raises(LocalProtocolError):
        shell.sk_aad(PayloadType.IDI, 65532)  # SK payload length would pass 65535
    sealed = replace(shell, payloads=(Encrypted(PayloadType.IDI, b"x"),))
    with pytest.raises(LocalProtocolError):
        sealed.encode_with_sk(PayloadType.IDI, b"y")


# --------------------------------------------------------------------------- finders


def test_finders() -> None:
    nat_src = Notify(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20))
    nat_src2 = Notify(NotifyType.NAT_DETECTION_SOURCE_IP, bytes([1]) * 20)
    error = Notify(NotifyType.NO_PROPOSAL_CHOSEN)
    payloads = (SA_PAYLOAD, KeyExchange(19, bytes(64)), nat_src, error, nat_src2)
    msg = Message(SPI_I, SPI_R, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, payloads)
    assert msg.get(KeyExchange) == KeyExchange(19, bytes(64))
    assert msg.get(Nonce) is None
    assert msg.get_all(Notify) == [nat_src, error, nat_src2]
    assert msg.notify(NotifyType.NAT_DETECTION_SOURCE_IP) == nat_src
    assert msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP) == [nat_src, nat_src2]
    assert msg.has_notify(NotifyType.NO_PROPOSAL_CHOSEN)
    assert not msg.has_notify(NotifyType.COOKIE)
    assert error_notifies(payloads) == [error]
    assert msg.encrypted is None


# --------------------------------------------------------------------------- traffic selectors


def test_traffic_selector_helpers() -> None:
    lan = TrafficSelector.from_network("10.1.0.0/16")
    assert lan.ts_type == TsType.TS_IPV4_ADDR_RANGE
    assert lan.contains(ipaddress.ip_address("10.1.200.3"))
    assert not lan.contains(ipaddress.ip_address("10.2.0.0"))
    assert not lan.contains(ipaddress.ip_address("::1"))
    assert lan.networks() == [ipaddress.ip_network("10.1.0.0/16")]
    odd = TrafficSelector(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.6"))
    assert [str(n) for n in odd.networks()] == [
        "10.0.0.1/32",
        "10.0.0.2/31",
        "10.0.0.4/31",
        "10.0.0.6/32",
    ]
    v6 = TrafficSelector.from_network("::/0")
    assert v6.ts_type == TsType.TS_IPV6_ADDR_RANGE and v6.contains(ipaddress.ip_address("fd00::1"))


def test_traffic_selector_narrowing() -> None:
    anything = TrafficSelector.from_network("0.0.0.0/0")
    host = TrafficSelector.from_address("10.78.0.10")
    assert anything.intersect(host) == host
    assert host.intersect(TrafficSelector.from_address("10.78.0.11")) is None
    assert anything.intersect(TrafficSelector.from_network("::/0")) is None
    web = TrafficSelector.from_network("10.0.0.0/8", 6, (80, 443))
    assert web.intersect(anything) == web
    assert web.intersect(TrafficSelector.from_network("10.1.0.0/16", 17)) is None  # TCP vs UDP
    assert web.intersect(TrafficSelector.from_network("10.1.0.0/16", 0, (400, 1000))) == (
        TrafficSelector.from_network("10.1.0.0/16", 6, (400, 443))
    )
    assert web.intersect(TrafficSelector.from_network("10.0.0.0/8", 6, (1000, 2000))) is None
    opaque = TrafficSelector.from_network("10.0.0.0/8", 17, (65535, 0))  # RFC 4301 OPAQUE
    assert opaque.intersect(anything) == opaque
    assert opaque.intersect(opaque) == opaque
    assert opaque.intersect(TrafficSelector.from_network("10.0.0.0/8", 17, (53, 53))) is None
    reversed_range = TrafficSelector(
        ipaddress.ip_address("10.0.0.9"), ipaddress.ip_address("10.0.0.1")
    )
    assert reversed_range.networks() == []


def test_config_attribute_accessors() -> None:
    assert ConfigAttribute.address("10.78.0.10").ip_interface() == ipaddress.ip_interface(
        "10.78.0.10/32"
    )
    v6 = ConfigAttribute.address("fd00::10/64")
    assert v6.type == CfgAttr.INTERNAL_IP6_ADDRESS
    assert v6.ip_interface() == ipaddress.ip_interface("fd00::10/64")
    assert v6.ip_address() == ipaddress.ip_address("fd00::10")
    assert ConfigAttribute.dns("2001:db8::53").type == CfgAttr.INTERNAL_IP6_DNS
    assert ConfigAttribute.dns("2001:db8::53").ip_address() == ipaddress.ip_address("2001:db8::53")
    assert ConfigAttribute.subnet("10.1.0.0/16").ip_network() == ipaddress.ip_network("10.1.0.0/16")
    assert ConfigAttribute.subnet("fd00:1::/48").ip_network() == ipaddress.ip_network("fd00:1::/48")
    assert ConfigAttribute(CfgAttr.INTERNAL_IP4_ADDRESS).ip_address() is None
    bad_mask = ConfigAttribute(CfgAttr.INTERNAL_IP4_SUBNET, h("0a000000 ff00ff00"))
    assert bad_mask.ip_network() is None
    bad_prefix = ConfigAttribute(CfgAttr.INTERNAL_IP6_ADDRESS, bytes(16) + b"\xff")
    assert bad_prefix.ip_interface() is None
    cp = Configuration(
        CfgType.CFG_REPLY, (ConfigAttribute.dns("1.1.1.1"), ConfigAttribute.dns("::1"))
    )
    assert cp.values_of(CfgAttr.INTERNAL_IP6_DNS) == (ConfigAttribute.dns("::1"),)


# --------------------------------------------------------------------------- malformed input

NONCE16 = generic(0, bytes(16))
OK_TS = h("01 000000 07 00 0010 0000 ffff 00000000 ffffffff")


def _many(payload: bytes, count: int) -> bytes:
    """`count` copies of a Vendor ID payload body chained together."""
    return b"".join(generic(43 if i < count - 1 else 0, payload) for i in range(count))


MALFORMED_MESSAGES = {
    "empty": b"",
    "short header": ike(PayloadType.NONCE, NONCE16)[:27],
    "length field too big": ike(PayloadType.NONCE, NONCE16) + b"\x00",
    "length field too small": ike(PayloadType.NONCE, NONCE16)[:-1],
    "IKEv1 major version": ike(PayloadType.NONCE, NONCE16, version=0x10),
    "payload length < 4": ike(PayloadType.NONCE, h("00 00 00 03") + bytes(16)),
    "payload past the end": ike(PayloadType.NONCE, h("00 00 00 20") + bytes(16)),
    "bytes after the last payload": ike(PayloadType.NONCE, NONCE16 + b"\x00"),
    "next payload announces a missing payload": ike(PayloadType.NONCE, generic(40, bytes(16))),
    "no payload but bytes": ike(PayloadType.NONE, NONCE16),
    "SK not last": ike(PayloadType.SK, generic(PayloadType.IDI, b"x") + NONCE16),
    "SKF fragment 0": ike(PayloadType.SKF, generic(0, h("0000 0001") + b"x")),
    "SKF fragment above total": ike(PayloadType.SKF, generic(0, h("0003 0002") + b"x")),
    "SKF header truncated": ike(PayloadType.SKF, generic(0, h("0001 00"))),
    "too many payloads": ike(PayloadType.VENDOR_ID, _many(b"", MAX_PAYLOADS + 1)),
    "longer than any transport allows": ike(
        PayloadType.VENDOR_ID, generic(0, bytes(MAX_MESSAGE_BYTES - 28))
    ),
}


@pytest.mark.parametrize("wire", MALFORMED_MESSAGES.values(), ids=MALFORMED_MESSAGES.keys())
def test_malformed_messages(wire: bytes) -> None:
    with pytest.raises(MalformedMessage):
        Message.decode(wire)


def test_higher_major_version_is_answerable() -> None:
    wire = ike(PayloadType.NONCE, NONCE16, version=0x30)
    with pytest.raises(InvalidMajorVersion) as info:
        Message.decode(wire)
    assert info.value.notify == NotifyType.INVALID_MAJOR_VERSION
    assert info.value.header.spi_i == SPI_I and info.value.header.major_version == 3
    with pytest.raises(InvalidMajorVersion):
        peek_header(wire)
    # A minor version is ignored (§3.1) but kept, so the bytes survive a round trip.
    minor = ike(PayloadType.NONCE, NONCE16, version=0x21)
    assert Message.decode(minor).encode() == minor


def _proposal(body_after_header: bytes, last: int = 0, count: int = 1, spi: bytes = b"") -> bytes:
    length = 8 + len(spi) + len(body_after_header)
    return (
        bytes([last, 0])
        + length.to_bytes(2, "big")
        + bytes([1, 1, len(spi), count])
        + spi
        + (body_after_header)
    )


ENCR_T = h("00 00 00 0c 01 00 00 0c 80 0e 00 80")

MALFORMED_BODIES: dict[str, tuple[int, bytes]] = {
    "SA empty": (PayloadType.SA, b""),
    "SA proposal says more, none follows": (PayloadType.SA, _proposal(ENCR_T, last=2)),
    "SA proposal says last, another follows": (PayloadType.SA, _proposal(ENCR_T) * 2),
    "SA bad Last Substruc": (PayloadType.SA, _proposal(ENCR_T, last=1)),
    "SA proposal length < 8": (PayloadType.SA, h("00 00 00 07 01 01 00 00")),
    "SA more transforms than counted": (PayloadType.SA, _proposal(h("03") + ENCR_T[1:] + ENCR_T)),
    "SA fewer transforms than counted": (PayloadType.SA, _proposal(ENCR_T, count=2)),
    "SA transform says more, none follows": (PayloadType.SA, _proposal(h("03") + ENCR_T[1:])),
    "SA transform says last, bytes follow": (PayloadType.SA, _proposal(ENCR_T + ENCR_T, count=2)),
    "SA bad transform Last Substruc": (PayloadType.SA, _proposal(h("01") + ENCR_T[1:])),
    "SA transform length < 8": (PayloadType.SA, _proposal(h("00 00 00 04"))),
    "SA KEY_LENGTH in TLV form": (
        PayloadType.SA,
        _proposal(h("00 00 00 0e 01 00 00 0c 00 0e 00 02 00 80")),
    ),
    "SA KEY_LENGTH twice": (
        PayloadType.SA,
        _proposal(h("00 00 00 10 01 00 00 0c 80 0e 00 80 80 0e 01 00")),
    ),
    "SA TLV attribute past its transform": (
        PayloadType.SA,
        _proposal(h("00 00 00 0e 01 00 00 0c 01 23 00 09 00 00")),
    ),
    "SA too many attributes": (
        PayloadType.SA,
        _proposal(h("00 00 00 2c 01 00 00 0c") + h("81 00 00 01") * 9),
    ),
    "SA SPI past the proposal": (PayloadType.SA, _proposal(b"", count=0, spi=b"")[:6] + h("08 00")),
    "SA too many proposals": (
        PayloadType.SA,
        _proposal(ENCR_T, last=2) * MAX_PROPOSALS + _proposal(ENCR_T),
    ),
    "KE too short": (PayloadType.KE, h("00 13 00")),
    "ID too short": (PayloadType.IDI, h("02 00 00")),
    "CERT empty": (PayloadType.CERT, b""),
    "CERTREQ empty": (PayloadType.CERTREQ, b""),
    "AUTH too short": (PayloadType.AUTH, h("02 00")),
    "nonce too short": (PayloadType.NONCE, bytes(15)),
    "nonce too long": (PayloadType.NONCE, bytes(257)),
    "notify SPI past the end": (PayloadType.NOTIFY, h("03 04 40 09 aa bb cc")),
    "notify too short": (PayloadType.NOTIFY, h("00 00 40")),
    "delete SPIs shorter than counted": (PayloadType.DELETE, h("03 04 00 02 11111111")),
    "delete SPIs longer than counted": (PayloadType.DELETE, h("03 04 00 01 11111111 22")),
    "delete count with SPI size 0": (PayloadType.DELETE, h("03 00 00 01")),
    "delete too many SPIs": (
        PayloadType.DELETE,
        h("03 04") + (MAX_DELETE_SPIS + 1).to_bytes(2, "big") + bytes(4 * (MAX_DELETE_SPIS + 1)),
    ),
    "TS count 0": (PayloadType.TSI, h("00 000000")),
    "TS fewer than counted": (PayloadType.TSI, h("02 000000") + OK_TS[4:]),
    "TS more than counted": (PayloadType.TSR, OK_TS + OK_TS[4:]),
    "TS unknown type": (PayloadType.TSI, h("01 000000 09 00 0010 0000 ffff 00000000 ffffffff")),
    "TS IPv4 with IPv6 length": (PayloadType.TSI, h("01 000000 07 00 0028") + bytes(36)),
    "TS truncated address": (PayloadType.TSI, OK_TS[:-1]),
    "CP too short": (PayloadType.CP, h("01 00")),
    "CP attribute past the end": (PayloadType.CP, h("02 000000 0001 0004 0a00")),
    "CP IPv4 address of 5 bytes": (PayloadType.CP, h("02 000000 0001 0005 0a00000a00")),
    "CP IPv6 DNS of 4 bytes": (PayloadType.CP, h("02 000000 000a 0004 0a00000a")),
    "CP half an attribute header": (PayloadType.CP, h("02 000000 0001")),
    "EAP too short": (PayloadType.EAP, h("03 01 00")),
    "EAP length mismatch": (PayloadType.EAP, h("03 01 00 05")),
    "EAP request without type": (PayloadType.EAP, h("01 01 00 04")),
}


@pytest.mark.parametrize(("ptype", "body"), MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_payload_bodies(ptype: int, body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_payloads(ptype, generic(0, body))
    with pytest.raises(MalformedMessage):
        Message.decode(ike(ptype, generic(0, body)))


def test_nested_sk_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_payloads(PayloadType.SK, generic(0, b"x"))
    with pytest.raises(MalformedMessage):
        decode_payloads(PayloadType.SKF, generic(0, h("0001 0001")))


def test_limits_accept_the_maximum() -> None:
    assert len(decode_payloads(PayloadType.VENDOR_ID, _many(b"", MAX_PAYLOADS))) == MAX_PAYLOADS
    spis = tuple(i.to_bytes(4, "big") for i in range(MAX_DELETE_SPIS))
    assert Delete.decode_body(Delete(ProtocolId.ESP, spis).encode_body()).spis == spis
    proposals = tuple(Proposal(i + 1, ProtocolId.ESP, bytes(4), ()) for i in range(MAX_PROPOSALS))
    assert SecurityAssociation.decode_body(SecurityAssociation(proposals).encode_body()) == (
        SecurityAssociation(proposals)
    )


# --------------------------------------------------------------------------- local misuse


LOCAL_ERRORS = {
    "SPI of 4 bytes": lambda: Message(SPI_I[:4], SPI_R, 34, HeaderFlag.NONE, 0).encode(),
    "message ID too big": lambda: Message(SPI_I, SPI_R, 34, HeaderFlag.NONE, 1 << 32).encode(),
    "exchange too big": lambda: Message(SPI_I, SPI_R, 256, HeaderFlag.NONE, 0).encode(),
    "short nonce": lambda: Nonce(bytes(8)).encode_body(),
    "SA without proposals": lambda: SecurityAssociation(()).encode_body(),
    "TS without selectors": lambda: TsInitiator(()).encode_body(),
    "TS mixing versions": lambda: TsInitiator(
        (TrafficSelector(ipaddress.ip_address("::"), ipaddress.ip_address("1.2.3.4")),)
    ).encode_body(),
    "delete mixed SPI sizes": lambda: Delete(ProtocolId.ESP, (bytes(4), bytes(8))).encode_body(),
    "delete empty SPI": lambda: Delete(ProtocolId.ESP, (b"",)).encode_body(),
    "group too big": lambda: KeyExchange(70000, b"").encode_body(),
    "transform attr KEY_LENGTH": lambda: SecurityAssociation(
        (Proposal(1, 1, b"", (Transform(1, 12, None, (TransformAttribute(14, 128),)),)),)
    ).encode_body(),
    "transform attr type too big": lambda: SecurityAssociation(
        (Proposal(1, 1, b"", (Transform(1, 12, None, (TransformAttribute(0x8000, 1),)),)),)
    ).encode_body(),
    "CP attr type too big": lambda: Configuration(1, (ConfigAttribute(0x8000),)).encode_body(),
    "EAP length field wrong": lambda: Eap(h("03 01 00 09")).encode_body(),
    "unknown payload with a known type": lambda: encode_payloads([UnknownPayload(40, b"")]),
    "unknown payload type 0": lambda: encode_payloads([UnknownPayload(0, b"")]),
    "SK inside encode_payloads": lambda: encode_payloads([Encrypted(0, b"")]),
    "SK not last": lambda: Message(
        SPI_I, SPI_R, 35, HeaderFlag.NONE, 0, (Encrypted(0, b""), VendorId(b""))
    ).encode(),
    "payload over 64 KiB": lambda: encode_payloads([VendorId(bytes(65532))]),
    "message over 64 KiB": lambda: Message(
        SPI_I, SPI_R, 37, HeaderFlag.NONE, 0, (VendorId(bytes(40000)), VendorId(bytes(40000)))
    ).encode(),
    "SK message over 64 KiB": lambda: Message(
        SPI_I, SPI_R, 37, HeaderFlag.NONE, 0, (VendorId(bytes(40000)),)
    ).sk_aad(0, 40000),
    "decode_body of SK": lambda: Encrypted.decode_body(b""),
}


@pytest.mark.parametrize("action", LOCAL_ERRORS.values(), ids=LOCAL_ERRORS.keys())
def test_local_misuse_raises_local_error(action: object) -> None:
    assert callable(action)
    with pytest.raises(LocalProtocolError):
        action()


def test_empty_chain_and_empty_message() -> None:
    assert encode_payloads([]) == (PayloadType.NONE, b"")
    assert decode_payloads(PayloadType.NONE, b"") == []
    empty = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, HeaderFlag.RESPONSE, 9)
    wire = empty.encode()
    assert len(wire) == 28 and wire[16] == 0
    assert Message.decode(wire) == empty


def test_reserved_flag_bits_survive_round_trip() -> None:
    # §3.1: unknown flag bits MUST be ignored on receipt; keeping them keeps the bytes.
    wire = ike(PayloadType.NONCE, NONCE16, flags=0x08 | 0x01)
    msg = Message.decode(wire)
    assert msg.is_initiator and msg.flags & 0x01
    assert msg.encode() == wire
