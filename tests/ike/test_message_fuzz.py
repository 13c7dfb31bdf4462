"""Property tests of the IKE codec (hypothesis).

1. decode(encode(x)) == x for generated payloads, chains and messages, and encoding is
   deterministic (re-encoding the decoded value gives the same bytes).
2. Any bytes into `Message.decode` / `decode_payloads` / `peek_header` raise only
   MalformedMessage or UnsupportedCriticalPayload: never IndexError, struct.error,
   ValueError or a hang (hypothesis' per-example deadline turns a hang into a failure).
   Random bytes rarely get past the header, so most inputs are valid encodings with
   bytes flipped, cut, inserted, or with random bodies behind valid headers.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpn.ike.constants import CfgAttr, HeaderFlag, PayloadType
from vpn.ike.errors import MalformedMessage, UnsupportedCriticalPayload
from vpn.ike.message import (
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
    peek_header,
)

ALLOWED = (MalformedMessage, UnsupportedCriticalPayload)
# The deadline is a hang and blow-up guard (our decoder needs well under 10 ms per input),
# generous enough for a loaded CI machine; speed itself is measured in bench/.
FUZZ = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def blob(max_size: int = 40) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


# --------------------------------------------------------------------------- strategies

attribute = st.builds(
    TransformAttribute,
    st.integers(0, 0x7FFF).filter(lambda t: t != 14),  # 14 is KEY_LENGTH, a field of its own
    st.one_of(u16, blob(12)),
)
transform = st.builds(
    Transform,
    u8,
    u16,
    st.none() | u16,
    st.lists(attribute, max_size=7).map(tuple),
)
proposal = st.builds(Proposal, u8, u8, blob(8), st.lists(transform, max_size=6).map(tuple))
security_association = st.builds(
    SecurityAssociation, st.lists(proposal, min_size=1, max_size=4).map(tuple)
)


@st.composite
def traffic_selector(draw: st.DrawFn) -> TrafficSelector:
    size = draw(st.sampled_from([4, 16]))
    start = ipaddress.ip_address(draw(st.binary(min_size=size, max_size=size)))
    end = ipaddress.ip_address(draw(st.binary(min_size=size, max_size=size)))
    return TrafficSelector(start, end, draw(u8), draw(u16), draw(u16))


selectors = st.lists(traffic_selector(), min_size=1, max_size=5).map(tuple)

_CFG_SIZES = {
    CfgAttr.INTERNAL_IP4_ADDRESS: 4,
    CfgAttr.INTERNAL_IP4_DNS: 4,
    CfgAttr.INTERNAL_IP6_ADDRESS: 17,
    CfgAttr.INTERNAL_IP6_DNS: 16,
    CfgAttr.INTERNAL_IP4_SUBNET: 8,
}


@st.composite
def config_attribute(draw: st.DrawFn) -> ConfigAttribute:
    if draw(st.booleans()):
        kind = draw(st.sampled_from(sorted(_CFG_SIZES)))
        size = draw(st.sampled_from([0, _CFG_SIZES[kind]]))
        return ConfigAttribute(kind, draw(st.binary(min_size=size, max_size=size)))
    other = draw(st.integers(16, 0x7FFF))  # no length rules above the RFC 7296 ones
    return ConfigAttribute(other, draw(blob(20)))


@st.composite
def eap(draw: st.DrawFn) -> Eap:
    code = draw(u8)
    rest = draw(st.binary(min_size=1 if code in (1, 2) else 0, max_size=20))
    return Eap(bytes([code, draw(u8)]) + (4 + len(rest)).to_bytes(2, "big") + rest)


@st.composite
def delete(draw: st.DrawFn) -> Delete:
    size = draw(st.integers(1, 8))
    spis = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=5))
    return Delete(draw(u8), tuple(spis))


_KNOWN = {int(t) for t in PayloadType} | {0}
unknown = st.builds(
    UnknownPayload,
    st.integers(1, 255).filter(lambda t: t not in _KNOWN),
    blob(),
    st.just(False),
)

cleartext_payload: st.SearchStrategy[Payload] = st.one_of(
    security_association,
    st.builds(KeyExchange, u16, blob(64)),
    st.builds(IdInitiator, u8, blob()),
    st.builds(IdResponder, u8, blob()),
    st.builds(Certificate, u8, blob()),
    st.builds(CertificateRequest, u8, blob()),
    st.builds(Authentication, u8, blob()),
    st.builds(Nonce, st.binary(min_size=16, max_size=256)),
    st.builds(Notify, u16, blob(), u8, blob(8)),
    delete(),
    st.builds(VendorId, blob()),
    st.builds(TsInitiator, selectors),
    st.builds(TsResponder, selectors),
    st.builds(Configuration, u8, st.lists(config_attribute(), max_size=6).map(tuple)),
    eap(),
    unknown,
)


@st.composite
def fragment(draw: st.DrawFn) -> EncryptedFragment:
    total = draw(st.integers(1, 0xFFFF))
    number = draw(st.integers(1, total))
    return EncryptedFragment(number, total, draw(u8), draw(blob(60)))


sealed = st.one_of(st.builds(Encrypted, u8, blob(60)), fragment())


@st.composite
def message(draw: st.DrawFn) -> Message:
    payloads = draw(st.lists(cleartext_payload, max_size=6))
    if draw(st.booleans()):
        payloads.append(draw(sealed))
    return Message(
        spi_i=draw(st.binary(min_size=8, max_size=8)),
        spi_r=draw(st.binary(min_size=8, max_size=8)),
        exchange=draw(u8),
        flags=HeaderFlag(draw(u8)),
        message_id=draw(u32),
        payloads=tuple(payloads),
        version=draw(st.integers(0x20, 0x2F)),  # major 2, any minor
    )


# --------------------------------------------------------------------------- round trips


@FUZZ
@given(cleartext_payload)
def test_payload_body_round_trip(payload: Payload) -> None:
    if isinstance(payload, UnknownPayload):
        return  # an unknown payload has no body codec of its own; the chain test covers it
    body = payload.encode_body()
    assert type(payload).decode_body(body) == payload


@FUZZ
@given(st.lists(cleartext_payload, max_size=8))
def test_payload_chain_round_trip(payloads: list[Payload]) -> None:
    first, data = encode_payloads(payloads)
    decoded = decode_payloads(first, data)
    assert decoded == payloads
    assert encode_payloads(decoded) == (first, data)


@FUZZ
@given(message())
def test_message_round_trip(msg: Message) -> None:
    data = msg.encode()
    decoded = Message.decode(data)
    assert decoded == msg
    assert decoded.encode() == data
    header = peek_header(data)
    assert (header.spi_i, header.message_id, header.length) == (
        msg.spi_i,
        msg.message_id,
        len(data),
    )
    if msg.encrypted is not None:
        assert decoded.received_aad + msg.encrypted.body == data


@FUZZ
@given(message(), sealed)
def test_aad_is_the_prefix_of_the_sealed_message(msg: Message, tail: Payload) -> None:
    shell = Message(
        msg.spi_i,
        msg.spi_r,
        msg.exchange,
        msg.flags,
        msg.message_id,
        tuple(p for p in msg.payloads if not isinstance(p, Encrypted | EncryptedFragment)),
    )
    if isinstance(tail, Encrypted):
        aad = shell.sk_aad(tail.first_payload, len(tail.body))
        data = shell.encode_with_sk(tail.first_payload, tail.body)
    else:
        assert isinstance(tail, EncryptedFragment)
        args = (tail.number, tail.total, tail.first_payload)
        aad = shell.skf_aad(*args, len(tail.body))
        data = shell.encode_with_skf(*args, tail.body)
    assert data == aad + tail.body
    assert Message.decode(data).received_aad == aad


# --------------------------------------------------------------------------- hostile input


def _decode_or_clean_error(data: bytes) -> None:
    try:
        Message.decode(data)
    except ALLOWED:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _decode_or_clean_error(data)
    try:
        peek_header(data)
    except MalformedMessage:
        pass


@FUZZ
@given(u8, st.binary(max_size=300))
def test_random_chain(first: int, data: bytes) -> None:
    try:
        decode_payloads(first, data)
    except ALLOWED:
        pass


@FUZZ
@given(message(), st.data())
def test_mutated_messages(msg: Message, data: st.DataObject) -> None:
    wire = bytearray(msg.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "flip" and wire:
            wire[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and wire:
            wire[pos] = data.draw(u8)
        elif op == "cut":
            del wire[pos:]
        elif op == "insert":
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del wire[pos : pos + data.draw(st.integers(1, 8))]
    _decode_or_clean_error(bytes(wire))
    # Fix the IKE Length so the mutation reaches the payload parsers too.
    if len(wire) >= 28:
        wire[24:28] = len(wire).to_bytes(4, "big")
        wire[17] = 0x20 | (wire[17] & 0x0F)
        _decode_or_clean_error(bytes(wire))


@FUZZ
@given(st.sampled_from(sorted(int(t) for t in PayloadType)), st.binary(max_size=120), u8)
def test_random_body_behind_valid_headers(ptype: int, body: bytes, flags: int) -> None:
    """Each payload parser gets arbitrary bodies with consistent outer lengths."""
    chain = bytes([0, flags & 0x80]) + (4 + len(body)).to_bytes(2, "big") + body
    wire = bytes(16) + bytes([ptype, 0x20, 34, 8]) + bytes(4) + (28 + len(chain)).to_bytes(4, "big")
    _decode_or_clean_error(wire + chain)
    try:
        decode_payloads(ptype, chain)
    except ALLOWED:
        pass


@settings(max_examples=30, deadline=2000)
@given(st.sampled_from(sorted(int(t) for t in PayloadType if t not in (0, 46, 53))))
def test_worst_case_sizes_end_cleanly(ptype: int) -> None:
    """A maximal message of tiny payloads or of one huge body: a result or a clean error."""
    tiny = b"".join(bytes([ptype, 0, 0, 4]) for _ in range(16000))
    huge = bytes([0, 0]) + (65535 - 28).to_bytes(2, "big") + bytes(65535 - 28 - 4)
    for chain in (tiny, huge):
        wire = bytes(16) + bytes([ptype, 0x20, 34, 8]) + bytes(4)
        wire += (28 + len(chain)).to_bytes(4, "big") + chain
        assert len(wire) <= 65535
        _decode_or_clean_error(wire)
