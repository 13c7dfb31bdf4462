"""IKEv2 messages (RFC 7296 §3.1): the header, the payload chain and the SK/SKF seam.

`Message.decode(data)` parses one whole IKE message (no RFC 9329 Length or non-ESP
marker: framing.py strips those); `Message.encode()` writes it, computing every length and
the Next Payload chain. Payload classes live in payloads.py and are re-exported here.

The seam with crypto.py (its `SkCipher` owns keys, IVs, padding and the algorithms; this
module only produces and splits bytes):

Receiving (1-4)::

    1. msg = Message.decode(data)            # MalformedMessage / UnsupportedCriticalPayload
    2. sk = msg.encrypted                     # Encrypted (SK) or EncryptedFragment (SKF)
    3. plaintext = cipher.open(msg.received_aad, sk.body)
         received_aad: the message as received, from the IKE header through the 4-byte SK
         header (8-byte SKF header), i.e. every byte before the IV. AEAD (RFC 5282 §5.1):
         it is the AAD. CBC + HMAC (RFC 7296 §3.14): the ICV covers it, then IV and
         ciphertext. `open` checks the ICV and strips the padding and Pad Length.
    4. inner = decode_payloads(sk.first_payload, plaintext)
         (for SKF: reassemble the fragments' plaintexts first, RFC 7383 §2.6, then decode
         with fragment 1's first_payload)

Sending (1-4)::

    1. first, plaintext = encode_payloads(inner)
    2. shell = Message(spi_i, spi_r, exchange, flags, message_id)   # payloads: usually ()
       aad = shell.sk_aad(first, cipher.body_length(len(plaintext)))
         (the IKE Length and the SK Payload Length already count the body to come)
    3. body = cipher.seal(aad, plaintext, iv)   # IV || ciphertext || ICV
    4. data = shell.encode_with_sk(first, body)   # the same bytes as aad + body

SKF works the same with `skf_aad(number, total, first, body_length)` and
`encode_with_skf(...)`; `first` is the inner type in fragment 1 and 0 in the others
(RFC 7383 §2.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from vpn.ike.constants import (
    GENERIC_PAYLOAD_HEADER_BYTES,
    IKE_HEADER_BYTES,
    IKE_VERSION,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from vpn.ike.errors import LocalProtocolError, MalformedMessage
from vpn.ike.payloads import (
    _P,
    MAX_CONFIG_ATTRIBUTES,
    MAX_DELETE_SPIS,
    MAX_PAYLOADS,
    MAX_PROPOSALS,
    MAX_TRAFFIC_SELECTORS,
    MAX_TRANSFORM_ATTRIBUTES,
    MAX_TRANSFORMS,
    SKF_HEADER_BYTES,
    Authentication,
    Buffer,
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
    all_of,
    as_enum,
    decode_payloads,
    encode_payloads,
    error_notifies,
    first_of,
    notifies_of,
    notify_of,
    pull_payload_chain,
    push_payload_chain,
)

__all__ = [
    "MAX_CONFIG_ATTRIBUTES",
    "MAX_DELETE_SPIS",
    "MAX_MESSAGE_BYTES",
    "MAX_PAYLOADS",
    "MAX_PROPOSALS",
    "MAX_TRAFFIC_SELECTORS",
    "MAX_TRANSFORM_ATTRIBUTES",
    "MAX_TRANSFORMS",
    "SK_HEADER_BYTES",
    "SKF_HEADER_BYTES",
    "Authentication",
    "Certificate",
    "CertificateRequest",
    "ConfigAttribute",
    "Configuration",
    "Delete",
    "Eap",
    "Encrypted",
    "EncryptedFragment",
    "IdInitiator",
    "IdResponder",
    "IkeHeader",
    "InvalidMajorVersion",
    "KeyExchange",
    "Message",
    "Nonce",
    "Notify",
    "Payload",
    "Proposal",
    "SecurityAssociation",
    "TrafficSelector",
    "Transform",
    "TransformAttribute",
    "TsInitiator",
    "TsResponder",
    "UnknownPayload",
    "VendorId",
    "all_of",
    "decode_payloads",
    "encode_payloads",
    "error_notifies",
    "first_of",
    "notifies_of",
    "notify_of",
    "peek_header",
]

# An IKE message travels in one UDP datagram or one RFC 9329 frame (at most 65533 bytes
# with the marker), so nothing longer can be genuine; refusing early bounds all work.
MAX_MESSAGE_BYTES = 65535
SK_HEADER_BYTES = GENERIC_PAYLOAD_HEADER_BYTES  # RFC 7296 §3.14: the SK header is generic
_MAJOR_VERSION = IKE_VERSION >> 4


class _HeaderFlags:
    """Views of the version and flags octets shared by `IkeHeader` and `Message`."""

    __slots__ = ()
    version: int
    flags: HeaderFlag

    @property
    def major_version(self) -> int:
        return self.version >> 4

    @property
    def is_response(self) -> bool:
        """The R flag (RFC 7296 §3.1)."""
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def is_request(self) -> bool:
        return not self.is_response

    @property
    def is_initiator(self) -> bool:
        """The I flag: sent by the original initiator of the IKE SA (RFC 7296 §3.1)."""
        return bool(self.flags & HeaderFlag.INITIATOR)


@dataclass(frozen=True, slots=True)
class IkeHeader(_HeaderFlags):
    """The fixed 28-byte IKE header (RFC 7296 §3.1), as `peek_header` reads it.

    Enough to route a message (SPIs, exchange, flags, message ID) before the full decode,
    e.g. to answer INVALID_IKE_SPI or to find the cached response to a retransmission.
    """

    spi_i: bytes
    spi_r: bytes
    next_payload: PayloadType | int
    version: int
    exchange: ExchangeType | int
    flags: HeaderFlag
    message_id: int
    length: int


class InvalidMajorVersion(MalformedMessage):
    """The header's major version is above 2 (RFC 7296 §2.5).

    The message is dropped and SHOULD be answered, unauthenticated, with INVALID_MAJOR_VERSION
    carrying version 2; `header` holds the SPIs and message ID for that answer. A major
    version below 2 (IKEv1) is a plain `MalformedMessage`: dropped without an answer.
    """

    notify = NotifyType.INVALID_MAJOR_VERSION

    def __init__(self, header: IkeHeader) -> None:
        super().__init__(f"IKE major version {header.major_version}")
        self.header = header


def _pull_header(buf: Buffer, total: int) -> IkeHeader:
    # RFC 7296 §3.1:
    #  0 IKE SA Initiator's SPI (8)
    #  8 IKE SA Responder's SPI (8)
    # 16 Next Payload | MjVer | MnVer | Exchange Type | Flags (X X R V I X X X)
    # 20 Message ID (4)
    # 24 Length (4): the whole message, header included
    if total > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {total} bytes exceeds {MAX_MESSAGE_BYTES}")
    header = IkeHeader(
        spi_i=buf.pull_bytes(8, "IKE header"),
        spi_r=buf.pull_bytes(8, "IKE header"),
        next_payload=as_enum(PayloadType, buf.pull_uint8("IKE header")),
        version=buf.pull_uint8("IKE header"),
        exchange=as_enum(ExchangeType, buf.pull_uint8("IKE header")),
        flags=HeaderFlag(buf.pull_uint8("IKE header")),
        message_id=buf.pull_uint32("IKE header"),
        length=buf.pull_uint32("IKE header"),
    )
    if header.length != total:
        raise MalformedMessage(f"IKE header length {header.length}, message has {total}")
    if header.major_version > _MAJOR_VERSION:
        raise InvalidMajorVersion(header)
    if header.major_version < _MAJOR_VERSION:
        raise MalformedMessage(f"IKE major version {header.major_version}")
    return header


def peek_header(data: bytes) -> IkeHeader:
    """Parse only the IKE header of a whole message; checks its length and version.

    Raises `MalformedMessage` (too short, Length not equal to len(data)) or its subclass
    `InvalidMajorVersion`. The payloads are not looked at.
    """
    return _pull_header(Buffer(data), len(data))


def is_response(data: bytes) -> bool:
    """Is this whole IKE message a well-formed response (R flag, RFC 7296 §3.1)?"""
    try:
        return peek_header(data).is_response
    except MalformedMessage:
        return False


@dataclass(frozen=True, slots=True)
class Message(_HeaderFlags):
    """One IKE message: header fields and payloads, in wire order.

    `flags` combines `HeaderFlag.INITIATOR` (sender is the original initiator) and
    `HeaderFlag.RESPONSE`. `next_payload` and the length are derived from `payloads` on
    encode. An SK or SKF payload, if present, is last (RFC 7296 §3.14).
    """

    spi_i: bytes
    spi_r: bytes
    exchange: ExchangeType | int
    flags: HeaderFlag
    message_id: int
    payloads: tuple[Payload, ...] = ()
    version: int = IKE_VERSION
    _raw: bytes = field(default=b"", init=False, repr=False, compare=False)

    # ---- header views

    @property
    def next_payload(self) -> PayloadType | int:
        return self.payloads[0].payload_type if self.payloads else PayloadType.NONE

    # ---- finders

    def get(self, cls: type[_P]) -> _P | None:
        """The first payload of a class, e.g. `msg.get(KeyExchange)`, or None."""
        return first_of(self.payloads, cls)

    def get_all(self, cls: type[_P]) -> list[_P]:
        """Every payload of a class, in order (e.g. all CERT payloads of a chain)."""
        return all_of(self.payloads, cls)

    def notify(self, ntype: NotifyType | int) -> Notify | None:
        """The first Notify of a type, e.g. `msg.notify(NotifyType.COOKIE)`, or None."""
        return notify_of(self.payloads, ntype)

    def notifies(self, ntype: NotifyType | int) -> list[Notify]:
        """Every Notify of a type (e.g. both NAT_DETECTION_SOURCE_IP of a multihomed peer)."""
        return notifies_of(self.payloads, ntype)

    def has_notify(self, ntype: NotifyType | int) -> bool:
        return self.notify(ntype) is not None

    @property
    def encrypted(self) -> Encrypted | EncryptedFragment | None:
        """The trailing SK or SKF payload, or None for a cleartext message."""
        last = self.payloads[-1] if self.payloads else None
        return last if isinstance(last, Encrypted | EncryptedFragment) else None

    # ---- wire

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse one whole IKE message.

        Raises `MalformedMessage` (any length or value problem, or a major version other
        than 2 as `InvalidMajorVersion`) or `UnsupportedCriticalPayload` (RFC 7296 §2.5).
        """
        data = bytes(data)
        buf = Buffer(data)
        header = _pull_header(buf, len(data))
        payloads = pull_payload_chain(buf, header.next_payload, allow_encrypted=True)
        msg = cls(
            header.spi_i,
            header.spi_r,
            header.exchange,
            header.flags,
            header.message_id,
            tuple(payloads),
            header.version,
        )
        object.__setattr__(msg, "_raw", data)
        return msg

    def encode(self) -> bytes:
        """The message bytes, with every length and Next Payload field computed."""
        buf = Buffer()
        self._push(buf, self.payloads)
        return buf.data()

    def _push(self, buf: Buffer, payloads: tuple[Payload, ...]) -> None:
        if len(self.spi_i) != 8 or len(self.spi_r) != 8:
            raise LocalProtocolError("IKE SPIs are 8 bytes")
        buf.push_bytes(self.spi_i)
        buf.push_bytes(self.spi_r)
        buf.push_uint8(payloads[0].payload_type if payloads else PayloadType.NONE)
        buf.push_uint8(self.version)
        buf.push_uint8(self.exchange)
        buf.push_uint8(self.flags)
        buf.push_uint32(self.message_id)
        buf.push_uint32(0)  # Length, patched below
        push_payload_chain(buf, payloads)
        _check_size(buf.tell())
        buf.patch_uint32(IKE_HEADER_BYTES - 4, buf.tell())

    # ---- the SK / SKF seam (see the module docstring)

    @property
    def received_aad(self) -> bytes:
        """The received bytes from the IKE header through the SK (4) or SKF (8) header.

        The AAD of an AEAD SK/SKF payload (RFC 5282 §5.1) and, followed by the body minus
        its ICV, the data an integrity checksum covers (RFC 7296 §3.14). Taken from the
        bytes as received, not re-encoded. Only for decoded messages with SK/SKF.
        """
        sealed = self.encrypted
        if not self._raw or sealed is None:
            raise LocalProtocolError("received_aad needs a decoded message with SK or SKF")
        return self._raw[: len(self._raw) - len(sealed.body)]

    def sk_aad(self, first_payload: PayloadType | int, body_length: int) -> bytes:
        """The bytes before the body of an SK payload appended to this message.

        `self.payloads` are the unencrypted payloads before SK (usually none); the header's
        and SK header's lengths already count `body_length` (IV + ciphertext + ICV).
        """
        return self._aad(Encrypted(first_payload, b""), SK_HEADER_BYTES, body_length)

    def encode_with_sk(self, first_payload: PayloadType | int, body: bytes) -> bytes:
        """This message plus an SK payload with the sealed `body`: `sk_aad(...) + body`."""
        return self._sealed(Encrypted(first_payload, body))

    def skf_aad(
        self, number: int, total: int, first_payload: PayloadType | int, body_length: int
    ) -> bytes:
        """The bytes before the body of fragment `number` of `total` (RFC 7383 §2.5)."""
        _check_fragment(number, total)
        fragment = EncryptedFragment(number, total, first_payload, b"")
        return self._aad(fragment, SKF_HEADER_BYTES, body_length)

    def encode_with_skf(
        self, number: int, total: int, first_payload: PayloadType | int, body: bytes
    ) -> bytes:
        """This message plus one SKF payload (RFC 7383 §2.5) with the sealed `body`."""
        _check_fragment(number, total)
        return self._sealed(EncryptedFragment(number, total, first_payload, body))

    def _sealed(self, tail: Encrypted | EncryptedFragment) -> bytes:
        if self.encrypted is not None:
            raise LocalProtocolError("the message already ends with SK/SKF")
        buf = Buffer()
        self._push(buf, (*self.payloads, tail))
        return buf.data()

    def _aad(
        self, tail: Encrypted | EncryptedFragment, header_bytes: int, body_length: int
    ) -> bytes:
        # Encode with an empty body, then make both lengths count the body to come.
        if body_length < 0:
            raise LocalProtocolError("negative body length")
        data = bytearray(self._sealed(tail))
        total = len(data) + body_length
        _check_size(total)
        payload_length = header_bytes + body_length
        if payload_length > 0xFFFF:
            raise LocalProtocolError(f"SK/SKF payload too long: {payload_length} bytes")
        data[IKE_HEADER_BYTES - 4 : IKE_HEADER_BYTES] = total.to_bytes(4, "big")
        tail_start = len(data) - header_bytes
        data[tail_start + 2 : tail_start + 4] = payload_length.to_bytes(2, "big")
        return bytes(data)


def _check_size(length: int) -> None:
    # Symmetric with decode: nothing longer could be carried or would be accepted.
    if length > MAX_MESSAGE_BYTES:
        raise LocalProtocolError(f"message of {length} bytes exceeds {MAX_MESSAGE_BYTES}")


def _check_fragment(number: int, total: int) -> None:
    if not 1 <= number <= total <= 0xFFFF:
        raise LocalProtocolError(f"fragment {number} of {total} (RFC 7383 §2.5)")
