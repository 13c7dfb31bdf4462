"""IKEv2 payloads (RFC 7296 §3.2-§3.16, RFC 7383 §2.5): frozen dataclasses and wire codecs.

Every payload class carries only its *body* (the bytes after the 4-byte generic payload
header, RFC 7296 §3.2): the generic header depends on the neighbour in the chain (Next
Payload), so it is written by the chain codec (`encode_payloads`, `Message.encode`).

- `Payload.decode_body(body)` parses exactly one body; any length or value problem raises
  `MalformedMessage` (never IndexError, struct.error or ValueError).
- `payload.encode_body()` returns the body bytes; a value that cannot be put on the wire
  (an out-of-range integer, mixed SPI sizes, ...) raises `LocalProtocolError`.
- `decode_payloads(first_type, data)` / `encode_payloads(payloads)` handle a chain, e.g. the
  plaintext inside an SK or SKF payload once the crypto layer has opened and unpadded it.

Layouts are pull_/push_ pairs on one `Buffer` type, each next to its RFC section (the
aioquic habit). Unknown payload types follow RFC 7296 §2.5: critical -> the whole message
is rejected with `UnsupportedCriticalPayload`; not critical -> kept as `UnknownPayload`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self, TypeVar

from vpn.ike.constants import (
    GENERIC_PAYLOAD_HEADER_BYTES,
    AuthMethod,
    CertEncoding,
    CfgAttr,
    CfgType,
    DhId,
    EapCode,
    EncrId,
    EsnId,
    HashAlgorithm,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttr,
    TransformType,
    TsType,
)
from vpn.ike.errors import LocalProtocolError, MalformedMessage, UnsupportedCriticalPayload

# --- Limits (each bounds Python objects and work per message far below what the
# --- 64 KiB message length alone would allow a hostile peer to make us build).

# Payloads in one chain. Real IKE_AUTH messages with a certificate chain carry ~20
# (IDi, CERT x n, CERTREQ, AUTH, N x 6-8, CP, SA, TSi, TSr); 4-byte empty payloads would
# otherwise let one message create 16k objects.
MAX_PAYLOADS = 128
# Proposals in one SA payload. strongSwan/Windows send at most ~12; each proposal is
# matched against our whole configuration, so the count multiplies negotiation work.
MAX_PROPOSALS = 64
# Transforms in one proposal (the count field allows 255). strongSwan's "default" IKE
# proposal has ~40; negotiation cost is proposals x transforms.
MAX_TRANSFORMS = 128
# Attributes in one transform: only KEY_LENGTH is defined; a few spare for future ones.
MAX_TRANSFORM_ATTRIBUTES = 8
# Traffic selectors in one TS payload (count field is 8 bits); narrowing is quadratic.
MAX_TRAFFIC_SELECTORS = 64
# Configuration attributes in one CP payload; split tunnels with many subnets stay far below.
MAX_CONFIG_ATTRIBUTES = 128
# SPIs in one Delete payload; each one is a Child SA lookup and teardown in the session.
MAX_DELETE_SPIS = 1024
# RFC 7296 §3.9: Nonce Data is 16..256 octets.
NONCE_MIN_BYTES = 16
NONCE_MAX_BYTES = 256

_E = TypeVar("_E", bound=IntEnum)


def as_enum(enum_cls: type[_E], value: int) -> _E | int:
    """`value` as a member of `enum_cls` if it is a registered code, else the plain int."""
    try:
        return enum_cls(value)
    except ValueError:
        return value


# --------------------------------------------------------------------------- Buffer


class Buffer:
    """One byte buffer for both directions (the aioquic `Buffer` habit).

    Read mode (`Buffer(data)`): `pull_*` consume from a cursor bounded by `end`; reading past
    the end raises `MalformedMessage`, so a hostile length can never index out of bounds.
    Write mode (`Buffer()`): `push_*` append; an integer that does not fit its field raises
    `LocalProtocolError` (our bug, not the peer's).
    """

    __slots__ = ("_data", "_pos", "_end", "_out")

    def __init__(self, data: bytes = b"", start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end
        self._out = bytearray()

    # ---- reading

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def _take(self, n: int, what: str) -> int:
        if n < 0 or self._pos + n > self._end:
            raise MalformedMessage(f"truncated {what}: need {n} bytes, have {self.remaining}")
        pos = self._pos
        self._pos = pos + n
        return pos

    def pull_uint8(self, what: str = "field") -> int:
        return self._data[self._take(1, what)]

    def pull_uint16(self, what: str = "field") -> int:
        return int(struct.unpack_from("!H", self._data, self._take(2, what))[0])

    def pull_uint32(self, what: str = "field") -> int:
        return int(struct.unpack_from("!L", self._data, self._take(4, what))[0])

    def pull_bytes(self, n: int, what: str = "field") -> bytes:
        pos = self._take(n, what)
        return self._data[pos : pos + n]

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.remaining)

    def pull_sub(self, n: int, what: str) -> Buffer:
        """A reader over the next `n` bytes (a nested structure); this buffer skips them."""
        pos = self._take(n, what)
        return Buffer(self._data, pos, pos + n)

    def expect_end(self, what: str) -> None:
        if not self.eof():
            raise MalformedMessage(f"{self.remaining} trailing bytes in {what}")

    # ---- writing

    def tell(self) -> int:
        return len(self._out)

    def push_uint8(self, value: int) -> None:
        self._push_int(value, 1)

    def push_uint16(self, value: int) -> None:
        self._push_int(value, 2)

    def push_uint32(self, value: int) -> None:
        self._push_int(value, 4)

    def _push_int(self, value: int, size: int) -> None:
        if not 0 <= value < 1 << (8 * size):
            raise LocalProtocolError(f"value {value} does not fit in {size} bytes")
        self._out += value.to_bytes(size, "big")

    def push_bytes(self, value: bytes) -> None:
        self._out += value

    def patch_uint16(self, position: int, value: int, what: str) -> None:
        """Write a length field once the structure it measures is complete."""
        if not 0 <= value <= 0xFFFF:
            raise LocalProtocolError(f"{what} too long: {value} bytes")
        struct.pack_into("!H", self._out, position, value)

    def patch_uint32(self, position: int, value: int) -> None:
        struct.pack_into("!L", self._out, position, value)

    def data(self) -> bytes:
        return bytes(self._out)


def _check_count(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise MalformedMessage(f"too many {what}: more than {limit}")


def _pull_coded(buf: Buffer, enum_cls: type[_E], reserved: int, what: str) -> _E | int:
    """The common "1-byte code | RESERVED (n)" start of ID, CERT, CERTREQ and AUTH bodies."""
    code = as_enum(enum_cls, buf.pull_uint8(what))
    buf.pull_bytes(reserved, what)
    return code


def _push_coded(buf: Buffer, code: int, reserved: int, data: bytes) -> None:
    buf.push_uint8(code)
    buf.push_bytes(bytes(reserved))
    buf.push_bytes(data)


# --------------------------------------------------------------------------- base

_P = TypeVar("_P", bound="Payload")


class Payload:
    """Base of every payload. Subclasses are frozen dataclasses with a `TYPE`."""

    __slots__ = ()

    TYPE: ClassVar[PayloadType]

    @property
    def payload_type(self) -> PayloadType | int:
        """The Next Payload code that announces this payload (RFC 7296 §3.2)."""
        return self.TYPE

    @property
    def critical(self) -> bool:
        """The critical bit we send: 0 for every payload we understand (RFC 7296 §2.5)."""
        return False

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        """Parse one payload body (after the generic header); all of it must be used."""
        buf = Buffer(body)
        payload = cls._pull(buf)
        buf.expect_end(cls.__name__)
        return payload

    def encode_body(self) -> bytes:
        """The payload body, without the generic header (e.g. IDi' for AUTH, §2.15)."""
        buf = Buffer()
        self._push(buf)
        return buf.data()

    @classmethod
    def _pull(cls, buf: Buffer) -> Self:
        raise LocalProtocolError(f"{cls.__name__} is decoded by the payload chain codec")

    def _push(self, buf: Buffer) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- SA
# RFC 7296 §3.3. The SA payload is a list of Proposal substructures, each a list of
# Transform substructures, each with optional Attributes.

_LAST = 0
_MORE_PROPOSALS = 2  # §3.3.1 "Last Substruc": 2 when another proposal follows
_MORE_TRANSFORMS = 3  # §3.3.2 "Last Substruc": 3 when another transform follows
_ATTR_TV = 0x8000  # §3.3.5 AF bit: Type/Value form (2-byte value in the header)

_TRANSFORM_IDS: dict[int, type[IntEnum]] = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhId,
    TransformType.ESN: EsnId,
}


@dataclass(frozen=True, slots=True)
class TransformAttribute:
    """RFC 7296 §3.3.5 attribute other than KEY_LENGTH, preserved as received.

    `value` is an int for the TV form (AF=1, 16-bit value) and bytes for the TLV form.
    """

    type: int
    value: int | bytes

    @property
    def is_tv(self) -> bool:
        return isinstance(self.value, int)


@dataclass(frozen=True, slots=True)
class Transform:
    """RFC 7296 §3.3.2 Transform: `Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256)`.

    `key_length` is the KEY_LENGTH attribute in bits (TV form, §3.3.5), or None if absent.
    `attributes` holds any other attribute (unknown ones), in wire order.
    """

    type: TransformType | int
    id: int
    key_length: int | None = None
    attributes: tuple[TransformAttribute, ...] = ()


def _pull_transform(buf: Buffer) -> tuple[Transform, bool]:
    """Returns the transform and whether another one follows."""
    # 0 Last Substruc | RESERVED | Transform Length (2)
    # 4 Transform Type | RESERVED | Transform ID (2)
    # 8 Transform Attributes
    last = buf.pull_uint8("transform header")
    buf.pull_uint8()
    length = buf.pull_uint16()
    if last not in (_LAST, _MORE_TRANSFORMS):
        raise MalformedMessage(f"bad transform Last Substruc {last}")
    if length < 8:
        raise MalformedMessage(f"transform length {length} < 8")
    sub = buf.pull_sub(length - 4, "transform")
    ttype = as_enum(TransformType, sub.pull_uint8())
    sub.pull_uint8()
    id_enum = _TRANSFORM_IDS.get(ttype)
    raw_id = sub.pull_uint16()
    tid = as_enum(id_enum, raw_id) if id_enum is not None else raw_id
    key_length: int | None = None
    attributes: list[TransformAttribute] = []
    count = 0
    while not sub.eof():
        count += 1
        _check_count(count, MAX_TRANSFORM_ATTRIBUTES, "transform attributes")
        word = sub.pull_uint16("transform attribute")
        atype = word & 0x7FFF
        if word & _ATTR_TV:
            value: int | bytes = sub.pull_uint16("transform attribute")
        else:
            value = sub.pull_bytes(sub.pull_uint16("transform attribute"), "attribute value")
        if atype == TransformAttr.KEY_LENGTH:
            # §3.3.5: Key Length is a TV attribute, and a transform has at most one.
            if not isinstance(value, int) or key_length is not None:
                raise MalformedMessage("KEY_LENGTH attribute must appear once, in TV form")
            key_length = value
        else:
            attributes.append(TransformAttribute(atype, value))
    return Transform(ttype, tid, key_length, tuple(attributes)), last == _MORE_TRANSFORMS


def _push_transform(buf: Buffer, transform: Transform, last: bool) -> None:
    start = buf.tell()
    buf.push_uint8(_LAST if last else _MORE_TRANSFORMS)
    buf.push_uint8(0)
    buf.push_uint16(0)  # length, patched below
    buf.push_uint8(transform.type)
    buf.push_uint8(0)
    buf.push_uint16(transform.id)
    if transform.key_length is not None:
        buf.push_uint16(_ATTR_TV | TransformAttr.KEY_LENGTH)
        buf.push_uint16(transform.key_length)
    for attr in transform.attributes:
        if attr.type == TransformAttr.KEY_LENGTH or not 0 <= attr.type <= 0x7FFF:
            raise LocalProtocolError(f"bad transform attribute type {attr.type}")
        if isinstance(attr.value, int):
            buf.push_uint16(_ATTR_TV | attr.type)
            buf.push_uint16(attr.value)
        else:
            buf.push_uint16(attr.type)
            buf.push_uint16(len(attr.value))
            buf.push_bytes(attr.value)
    buf.patch_uint16(start + 2, buf.tell() - start, "transform")


@dataclass(frozen=True, slots=True)
class Proposal:
    """RFC 7296 §3.3.1 Proposal: number, protocol, SPI (empty for a new IKE SA) and transforms.

    Within a proposal, transforms of different types are ANDed and transforms of the same
    type are alternatives (§3.3.3); `transforms_of` groups them for negotiation.
    """

    num: int
    protocol: ProtocolId | int
    spi: bytes
    transforms: tuple[Transform, ...]

    def transforms_of(self, ttype: TransformType | int) -> tuple[Transform, ...]:
        """The alternatives offered for one transform type, in the peer's preference order."""
        return tuple(t for t in self.transforms if t.type == ttype)

    def transform_types(self) -> set[int]:
        return {int(t.type) for t in self.transforms}


def _pull_proposal(buf: Buffer) -> tuple[Proposal, bool]:
    # 0 Last Substruc | RESERVED | Proposal Length (2)
    # 4 Proposal Num | Protocol ID | SPI Size | Num Transforms
    # 8 SPI (variable), then the Transforms
    last = buf.pull_uint8("proposal header")
    buf.pull_uint8()
    length = buf.pull_uint16()
    if last not in (_LAST, _MORE_PROPOSALS):
        raise MalformedMessage(f"bad proposal Last Substruc {last}")
    if length < 8:
        raise MalformedMessage(f"proposal length {length} < 8")
    sub = buf.pull_sub(length - 4, "proposal")
    num = sub.pull_uint8()
    protocol = as_enum(ProtocolId, sub.pull_uint8())
    spi_size = sub.pull_uint8()
    num_transforms = sub.pull_uint8()
    _check_count(num_transforms, MAX_TRANSFORMS, "transforms")
    spi = sub.pull_bytes(spi_size, "proposal SPI")
    transforms: list[Transform] = []
    more = not sub.eof()
    while more:
        if len(transforms) == num_transforms:
            raise MalformedMessage("more transforms than Num Transforms")
        transform, more = _pull_transform(sub)
        transforms.append(transform)
    if len(transforms) != num_transforms or not sub.eof():
        raise MalformedMessage("transform count or Last Substruc disagrees with lengths")
    return Proposal(num, protocol, spi, tuple(transforms)), last == _MORE_PROPOSALS


def _push_proposal(buf: Buffer, proposal: Proposal, last: bool) -> None:
    start = buf.tell()
    buf.push_uint8(_LAST if last else _MORE_PROPOSALS)
    buf.push_uint8(0)
    buf.push_uint16(0)
    buf.push_uint8(proposal.num)
    buf.push_uint8(proposal.protocol)
    buf.push_uint8(len(proposal.spi))
    buf.push_uint8(len(proposal.transforms))
    buf.push_bytes(proposal.spi)
    for i, transform in enumerate(proposal.transforms):
        _push_transform(buf, transform, i == len(proposal.transforms) - 1)
    buf.patch_uint16(start + 2, buf.tell() - start, "proposal")


@dataclass(frozen=True, slots=True)
class SecurityAssociation(Payload):
    """SA payload (RFC 7296 §3.3): the proposals, in the sender's preference order."""

    TYPE: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]

    @classmethod
    def _pull(cls, buf: Buffer) -> SecurityAssociation:
        proposals: list[Proposal] = []
        more = True
        while more:
            # §3.3: an SA payload holds at least one proposal.
            _check_count(len(proposals) + 1, MAX_PROPOSALS, "proposals")
            proposal, more = _pull_proposal(buf)
            proposals.append(proposal)
            if more == buf.eof():
                raise MalformedMessage("proposal Last Substruc disagrees with SA length")
        return cls(tuple(proposals))

    def _push(self, buf: Buffer) -> None:
        if not self.proposals:
            raise LocalProtocolError("an SA payload needs at least one proposal")
        for i, proposal in enumerate(self.proposals):
            _push_proposal(buf, proposal, i == len(self.proposals) - 1)


# --------------------------------------------------------------------------- KE


@dataclass(frozen=True, slots=True)
class KeyExchange(Payload):
    """KE payload (RFC 7296 §3.4): DH group and public value (validated by crypto.py)."""

    TYPE: ClassVar[PayloadType] = PayloadType.KE
    group: DhId | int
    data: bytes

    @classmethod
    def _pull(cls, buf: Buffer) -> KeyExchange:
        # 0 Diffie-Hellman Group Num (2) | RESERVED (2)
        # 4 Key Exchange Data
        group = as_enum(DhId, buf.pull_uint16("KE header"))
        buf.pull_uint16("KE header")
        return cls(group, buf.pull_rest())

    def _push(self, buf: Buffer) -> None:
        buf.push_uint16(self.group)
        buf.push_uint16(0)
        buf.push_bytes(self.data)


# --------------------------------------------------------------------------- IDi / IDr


@dataclass(frozen=True, slots=True)
class _Identification(Payload):
    # RFC 7296 §3.5: 0 ID Type | RESERVED (3); 4 Identification Data
    id_type: IdType | int
    data: bytes

    @classmethod
    def _pull(cls, buf: Buffer) -> Self:
        id_type = _pull_coded(buf, IdType, 3, "ID header")
        return cls(id_type, buf.pull_rest())

    def _push(self, buf: Buffer) -> None:
        _push_coded(buf, self.id_type, 3, self.data)


@dataclass(frozen=True, slots=True)
class IdInitiator(_Identification):
    """IDi payload (RFC 7296 §3.5). `encode_body()` is the IDi' that AUTH signs (§2.15)."""

    TYPE: ClassVar[PayloadType] = PayloadType.IDI


@dataclass(frozen=True, slots=True)
class IdResponder(_Identification):
    """IDr payload (RFC 7296 §3.5). `encode_body()` is the IDr' that AUTH signs (§2.15)."""

    TYPE: ClassVar[PayloadType] = PayloadType.IDR


# --------------------------------------------------------------------------- CERT, CERTREQ


@dataclass(frozen=True, slots=True)
class Certificate(Payload):
    """CERT payload (RFC 7296 §3.6): encoding (4 = DER X.509) and the certificate data."""

    TYPE: ClassVar[PayloadType] = PayloadType.CERT
    encoding: CertEncoding | int
    data: bytes

    @classmethod
    def _pull(cls, buf: Buffer) -> Certificate:
        # 0 Cert Encoding; 1 Certificate Data
        return cls(_pull_coded(buf, CertEncoding, 0, "CERT header"), buf.pull_rest())

    def _push(self, buf: Buffer) -> None:
        _push_coded(buf, self.encoding, 0, self.data)


SHA1_BYTES = 20


@dataclass(frozen=True, slots=True)
class CertificateRequest(Payload):
    """CERTREQ payload (RFC 7296 §3.7).

    For X509_CERT_SIGNATURE, `data` is a concatenation of SHA-1 hashes of trusted CAs'
    SubjectPublicKeyInfo; `authorities()` splits it.
    """

    TYPE: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: CertEncoding | int
    data: bytes

    @classmethod
    def for_authorities(cls, hashes: Sequence[bytes]) -> CertificateRequest:
        if any(len(h) != SHA1_BYTES for h in hashes):
            raise LocalProtocolError("CA hashes in CERTREQ are 20-byte SHA-1 values")
        return cls(CertEncoding.X509_CERT_SIGNATURE, b"".join(hashes))

    def authorities(self) -> tuple[bytes, ...]:
        """The 20-byte CA key hashes (§3.7); MalformedMessage if the data is not a multiple."""
        if self.encoding != CertEncoding.X509_CERT_SIGNATURE:
            return ()
        if len(self.data) % SHA1_BYTES:
            raise MalformedMessage("CERTREQ authority data is not a list of SHA-1 hashes")
        d = self.data
        return tuple(d[i : i + SHA1_BYTES] for i in range(0, len(d), SHA1_BYTES))

    @classmethod
    def _pull(cls, buf: Buffer) -> CertificateRequest:
        # 0 Cert Encoding; 1 Certification Authority
        return cls(_pull_coded(buf, CertEncoding, 0, "CERTREQ header"), buf.pull_rest())

    def _push(self, buf: Buffer) -> None:
        _push_coded(buf, self.encoding, 0, self.data)


# --------------------------------------------------------------------------- AUTH


@dataclass(frozen=True, slots=True)
class Authentication(Payload):
    """AUTH payload (RFC 7296 §3.8): method and data (for method 14, RFC 7427 §3 layout)."""

    TYPE: ClassVar[PayloadType] = PayloadType.AUTH
    method: AuthMethod | int
    data: bytes

    @classmethod
    def _pull(cls, buf: Buffer) -> Authentication:
        # 0 Auth Method | RESERVED (3); 4 Authentication Data
        method = _pull_coded(buf, AuthMethod, 3, "AUTH header")
        return cls(method, buf.pull_rest())

    def _push(self, buf: Buffer) -> None:
        _push_coded(buf, self.method, 3, self.data)


# --------------------------------------------------------------------------- Nonce


@dataclass(frozen=True, slots=True)
class Nonce(Payload):
    """Nonce payload (RFC 7296 §3.9): 16 to 256 octets, enforced both ways."""

    TYPE: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes

    @classmethod
    def _pull(cls, buf: Buffer) -> Nonce:
        if not NONCE_MIN_BYTES <= buf.remaining <= NONCE_MAX_BYTES:
            raise MalformedMessage(f"nonce of {buf.remaining} bytes (RFC 7296 §3.9: 16..256)")
        return cls(buf.pull_rest())

    def _push(self, buf: Buffer) -> None:
        if not NONCE_MIN_BYTES <= len(self.data) <= NONCE_MAX_BYTES:
            raise LocalProtocolError("nonce must be 16..256 bytes (RFC 7296 §3.9)")
        buf.push_bytes(self.data)


# --------------------------------------------------------------------------- Notify


@dataclass(frozen=True, slots=True)
class Notify(Payload):
    """Notify payload (RFC 7296 §3.10): `Notify(NotifyType.COOKIE, data=cookie)`.

    `protocol` and `spi` name a Child SA for notifies about one (e.g. REKEY_SA: ESP + SPI);
    for notifies about the IKE SA both stay empty (§3.10: SPI Size 0, Protocol ID 0).
    """

    TYPE: ClassVar[PayloadType] = PayloadType.NOTIFY
    type: NotifyType | int
    data: bytes = b""
    protocol: ProtocolId | int = ProtocolId.NONE
    spi: bytes = b""

    @property
    def is_error(self) -> bool:
        """§3.10.1: types below 16384 report errors, the others status."""
        return self.type < 16384

    @classmethod
    def signature_hash_algorithms(cls, algorithms: Sequence[HashAlgorithm | int]) -> Notify:
        """SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4): a list of 16-bit hash identifiers."""
        buf = Buffer()
        for alg in algorithms:
            buf.push_uint16(alg)
        return cls(NotifyType.SIGNATURE_HASH_ALGORITHMS, buf.data())

    def hash_algorithms(self) -> tuple[HashAlgorithm | int, ...]:
        """The data of SIGNATURE_HASH_ALGORITHMS as identifiers (RFC 7427 §4)."""
        if len(self.data) % 2:
            raise MalformedMessage("SIGNATURE_HASH_ALGORITHMS data has an odd length")
        d = self.data
        return tuple(
            as_enum(HashAlgorithm, int.from_bytes(d[i : i + 2], "big")) for i in range(0, len(d), 2)
        )

    @classmethod
    def invalid_ke_payload(cls, group: DhId | int) -> Notify:
        """INVALID_KE_PAYLOAD carrying the group the responder wants (RFC 7296 §1.3)."""
        return cls(NotifyType.INVALID_KE_PAYLOAD, group.to_bytes(2, "big"))

    def accepted_group(self) -> DhId | int:
        """The 2-byte DH group in an INVALID_KE_PAYLOAD notify (RFC 7296 §3.10.1)."""
        if len(self.data) != 2:
            raise MalformedMessage("INVALID_KE_PAYLOAD data is not a 2-byte group")
        return as_enum(DhId, int.from_bytes(self.data, "big"))

    @classmethod
    def _pull(cls, buf: Buffer) -> Notify:
        # 0 Protocol ID | SPI Size | Notify Message Type (2)
        # 4 Security Parameter Index (SPI Size bytes), then Notification Data
        protocol = as_enum(ProtocolId, buf.pull_uint8("Notify header"))
        spi_size = buf.pull_uint8("Notify header")
        ntype = as_enum(NotifyType, buf.pull_uint16("Notify header"))
        spi = buf.pull_bytes(spi_size, "Notify SPI")
        return cls(ntype, buf.pull_rest(), protocol, spi)

    def _push(self, buf: Buffer) -> None:
        buf.push_uint8(self.protocol)
        buf.push_uint8(len(self.spi))
        buf.push_uint16(self.type)
        buf.push_bytes(self.spi)
        buf.push_bytes(self.data)


# --------------------------------------------------------------------------- Delete


@dataclass(frozen=True, slots=True)
class Delete(Payload):
    """Delete payload (RFC 7296 §3.11): `Delete(ProtocolId.IKE)` or ESP with 4-byte SPIs.

    Each side names the SPIs it *receives* on (the inbound SPI of its Child SA).
    """

    TYPE: ClassVar[PayloadType] = PayloadType.DELETE
    protocol: ProtocolId | int
    spis: tuple[bytes, ...] = ()

    @classmethod
    def _pull(cls, buf: Buffer) -> Delete:
        # 0 Protocol ID | SPI Size | Num of SPIs (2); 4 SPIs (SPI Size x Num of SPIs)
        protocol = as_enum(ProtocolId, buf.pull_uint8("Delete header"))
        spi_size = buf.pull_uint8("Delete header")
        count = buf.pull_uint16("Delete header")
        _check_count(count, MAX_DELETE_SPIS, "SPIs in Delete")
        if count and not spi_size:
            raise MalformedMessage("Delete lists SPIs of size 0")
        if buf.remaining != spi_size * count:
            raise MalformedMessage("Delete SPI list length disagrees with its counts")
        return cls(protocol, tuple(buf.pull_bytes(spi_size) for _ in range(count)))

    def _push(self, buf: Buffer) -> None:
        spi_size = len(self.spis[0]) if self.spis else 0
        if any(len(spi) != spi_size for spi in self.spis) or (self.spis and not spi_size):
            raise LocalProtocolError("SPIs in one Delete payload must have one non-zero size")
        buf.push_uint8(self.protocol)
        buf.push_uint8(spi_size)
        buf.push_uint16(len(self.spis))
        for spi in self.spis:
            buf.push_bytes(spi)


# --------------------------------------------------------------------------- Vendor ID


@dataclass(frozen=True, slots=True)
class VendorId(Payload):
    """Vendor ID payload (RFC 7296 §3.12): opaque bytes."""

    TYPE: ClassVar[PayloadType] = PayloadType.VENDOR_ID
    data: bytes

    @classmethod
    def _pull(cls, buf: Buffer) -> VendorId:
        return cls(buf.pull_rest())

    def _push(self, buf: Buffer) -> None:
        buf.push_bytes(self.data)


# --------------------------------------------------------------------------- TSi / TSr

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_TS_LENGTH: dict[int, int] = {TsType.TS_IPV4_ADDR_RANGE: 16, TsType.TS_IPV6_ADDR_RANGE: 40}
PORT_ANY = (0, 65535)


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One RFC 7296 §3.13.1 traffic selector: an address range, an IP protocol, a port range.

    `protocol` 0 means any protocol, ports 0..65535 any port. OPAQUE ports (RFC 4301) are
    start 65535, end 0 and are kept as such. Both addresses have the same IP version.
    """

    start: IPAddress
    end: IPAddress
    protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def from_network(
        cls, network: IPNetwork | str, protocol: int = 0, ports: tuple[int, int] = PORT_ANY
    ) -> TrafficSelector:
        """The selector covering a prefix, e.g. `TrafficSelector.from_network("0.0.0.0/0")`."""
        net = ipaddress.ip_network(network) if isinstance(network, str) else network
        return cls(net.network_address, net.broadcast_address, protocol, ports[0], ports[1])

    @classmethod
    def from_address(cls, address: IPAddress | str, protocol: int = 0) -> TrafficSelector:
        """The selector of one host address."""
        addr = ipaddress.ip_address(address) if isinstance(address, str) else address
        return cls(addr, addr, protocol)

    @property
    def ts_type(self) -> TsType:
        return TsType.TS_IPV4_ADDR_RANGE if self.start.version == 4 else TsType.TS_IPV6_ADDR_RANGE

    def contains(self, address: IPAddress) -> bool:
        """Whether an address lies in the range (protocol and ports not considered)."""
        return address.version == self.start.version and (
            int(self.start) <= int(address) <= int(self.end)
        )

    def networks(self) -> list[IPNetwork]:
        """The range as the smallest list of CIDR prefixes (for routes and firewall rules)."""
        if int(self.start) > int(self.end):
            return []
        if isinstance(self.start, ipaddress.IPv4Address):
            assert isinstance(self.end, ipaddress.IPv4Address)
            return list(ipaddress.summarize_address_range(self.start, self.end))
        assert isinstance(self.end, ipaddress.IPv6Address)
        return list(ipaddress.summarize_address_range(self.start, self.end))

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        """The selector in both `self` and `other` (narrowing, RFC 7296 §2.9), or None.

        Protocol 0 is a wildcard. Port ranges intersect numerically; an OPAQUE port range
        (start > end) only matches itself or the full range.
        """
        if self.start.version != other.start.version:
            return None
        start = max(int(self.start), int(other.start))
        end = min(int(self.end), int(other.end))
        if start > end:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        ports = _intersect_ports(
            (self.start_port, self.end_port), (other.start_port, other.end_port)
        )
        if ports is None:
            return None
        make = ipaddress.IPv4Address if self.start.version == 4 else ipaddress.IPv6Address
        return TrafficSelector(
            make(start), make(end), self.protocol or other.protocol, ports[0], ports[1]
        )


def _intersect_ports(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    if a == PORT_ANY:
        return b
    if b == PORT_ANY:
        return a
    if a[0] > a[1] or b[0] > b[1]:  # OPAQUE, RFC 4301 §4.4.1.1
        return a if a == b else None
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else None


def _pull_traffic_selector(buf: Buffer) -> TrafficSelector:
    # 0 TS Type | IP Protocol ID | Selector Length (2)
    # 4 Start Port (2) | End Port (2)
    # 8 Starting Address | Ending Address (4 or 16 bytes each)
    ts_type = buf.pull_uint8("traffic selector")
    protocol = buf.pull_uint8()
    length = buf.pull_uint16()
    expected = _TS_LENGTH.get(ts_type)
    if expected is None:
        raise MalformedMessage(f"unsupported traffic selector type {ts_type}")
    if length != expected:
        raise MalformedMessage(f"traffic selector length {length}, expected {expected}")
    start_port = buf.pull_uint16("traffic selector")
    end_port = buf.pull_uint16("traffic selector")
    size = (expected - 8) // 2
    start = ipaddress.ip_address(buf.pull_bytes(size, "traffic selector"))
    end = ipaddress.ip_address(buf.pull_bytes(size, "traffic selector"))
    return TrafficSelector(start, end, protocol, start_port, end_port)


def _push_traffic_selector(buf: Buffer, ts: TrafficSelector) -> None:
    if ts.start.version != ts.end.version:
        raise LocalProtocolError("traffic selector mixes IPv4 and IPv6")
    buf.push_uint8(ts.ts_type)
    buf.push_uint8(ts.protocol)
    buf.push_uint16(_TS_LENGTH[ts.ts_type])
    buf.push_uint16(ts.start_port)
    buf.push_uint16(ts.end_port)
    buf.push_bytes(ts.start.packed)
    buf.push_bytes(ts.end.packed)


@dataclass(frozen=True, slots=True)
class _TrafficSelectors(Payload):
    # RFC 7296 §3.13: 0 Number of TSs | RESERVED (3); 4 Traffic Selectors
    selectors: tuple[TrafficSelector, ...]

    @classmethod
    def _pull(cls, buf: Buffer) -> Self:
        count = buf.pull_uint8("TS header")
        buf.pull_bytes(3, "TS header")
        _check_count(count, MAX_TRAFFIC_SELECTORS, "traffic selectors")
        if count == 0:
            raise MalformedMessage("TS payload without traffic selectors")
        return cls(tuple(_pull_traffic_selector(buf) for _ in range(count)))

    def _push(self, buf: Buffer) -> None:
        if not self.selectors:
            raise LocalProtocolError("a TS payload needs at least one traffic selector")
        buf.push_uint8(len(self.selectors))
        buf.push_bytes(b"\x00\x00\x00")
        for ts in self.selectors:
            _push_traffic_selector(buf, ts)


@dataclass(frozen=True, slots=True)
class TsInitiator(_TrafficSelectors):
    """TSi payload (RFC 7296 §3.13): the initiator-side selectors."""

    TYPE: ClassVar[PayloadType] = PayloadType.TSI


@dataclass(frozen=True, slots=True)
class TsResponder(_TrafficSelectors):
    """TSr payload (RFC 7296 §3.13): the responder-side selectors."""

    TYPE: ClassVar[PayloadType] = PayloadType.TSR


# --------------------------------------------------------------------------- SK, SKF


@dataclass(frozen=True, slots=True)
class Encrypted(Payload):
    """SK payload (RFC 7296 §3.14), still sealed.

    `first_payload` is the Next Payload field of the SK header: the type of the first
    payload inside. `body` is IV || ciphertext (with padding and Pad Length) || ICV, exactly
    as on the wire; opening it is crypto.py's job (see message.py for the AAD seam).
    """

    TYPE: ClassVar[PayloadType] = PayloadType.SK
    first_payload: PayloadType | int
    body: bytes

    def _push(self, buf: Buffer) -> None:
        buf.push_bytes(self.body)


SKF_HEADER_BYTES = 8  # RFC 7383 §2.5: generic header + Fragment Number + Total Fragments


@dataclass(frozen=True, slots=True)
class EncryptedFragment(Payload):
    """SKF payload (RFC 7383 §2.5), one sealed fragment of an SK payload.

    `number` counts from 1 to `total`. `first_payload` is the first inner payload type in
    fragment 1 and 0 in the others. `body` is IV || ciphertext || ICV of this fragment.
    """

    TYPE: ClassVar[PayloadType] = PayloadType.SKF
    number: int
    total: int
    first_payload: PayloadType | int
    body: bytes

    def _push(self, buf: Buffer) -> None:
        buf.push_uint16(self.number)
        buf.push_uint16(self.total)
        buf.push_bytes(self.body)


def _pull_fragment(first_payload: int, buf: Buffer) -> EncryptedFragment:
    # 0 Fragment Number (2) | Total Fragments (2); 4 IV, encrypted content, ICV
    number = buf.pull_uint16("SKF header")
    total = buf.pull_uint16("SKF header")
    # RFC 7383 §2.5: numbering starts at 1; a number above the total is invalid.
    if not 1 <= number <= total:
        raise MalformedMessage(f"fragment {number} of {total}")
    return EncryptedFragment(number, total, as_enum(PayloadType, first_payload), buf.pull_rest())


# --------------------------------------------------------------------------- CP


# RFC 7296 §3.15.1 (and RFC 8598 for the DNS ones): allowed value lengths.
_CFG_LENGTHS: dict[int, tuple[int, ...]] = {
    CfgAttr.INTERNAL_IP4_ADDRESS: (0, 4),
    CfgAttr.INTERNAL_IP4_NETMASK: (0, 4),
    CfgAttr.INTERNAL_IP4_DNS: (0, 4),
    CfgAttr.INTERNAL_IP4_NBNS: (0, 4),
    CfgAttr.INTERNAL_IP4_DHCP: (0, 4),
    CfgAttr.INTERNAL_IP6_ADDRESS: (0, 17),
    CfgAttr.INTERNAL_IP6_DNS: (0, 16),
    CfgAttr.INTERNAL_IP6_DHCP: (0, 16),
    CfgAttr.INTERNAL_IP4_SUBNET: (0, 8),
    CfgAttr.INTERNAL_IP6_SUBNET: (0, 17),
}


@dataclass(frozen=True, slots=True)
class ConfigAttribute:
    """RFC 7296 §3.15.1 configuration attribute. An empty value asks for one (CFG_REQUEST).

    Build typed values with `ConfigAttribute.address(...)`, `.dns(...)`, `.subnet(...)`;
    read them with `.ip_address()`, `.ip_interface()`, `.ip_network()`.
    """

    type: CfgAttr | int
    value: bytes = b""

    @classmethod
    def address(cls, interface: IPInterface | str) -> ConfigAttribute:
        """INTERNAL_IP4_ADDRESS (4 bytes) or INTERNAL_IP6_ADDRESS (16 bytes + prefix length)."""
        iface = ipaddress.ip_interface(interface) if isinstance(interface, str) else interface
        if iface.version == 4:
            return cls(CfgAttr.INTERNAL_IP4_ADDRESS, iface.ip.packed)
        return cls(CfgAttr.INTERNAL_IP6_ADDRESS, iface.ip.packed + bytes([iface.network.prefixlen]))

    @classmethod
    def dns(cls, server: IPAddress | str) -> ConfigAttribute:
        """INTERNAL_IP4_DNS or INTERNAL_IP6_DNS."""
        addr = ipaddress.ip_address(server) if isinstance(server, str) else server
        kind = CfgAttr.INTERNAL_IP4_DNS if addr.version == 4 else CfgAttr.INTERNAL_IP6_DNS
        return cls(kind, addr.packed)

    @classmethod
    def subnet(cls, network: IPNetwork | str) -> ConfigAttribute:
        """INTERNAL_IP4_SUBNET (address + netmask) or INTERNAL_IP6_SUBNET (+ prefix length)."""
        net = ipaddress.ip_network(network) if isinstance(network, str) else network
        if net.version == 4:
            return cls(CfgAttr.INTERNAL_IP4_SUBNET, net.network_address.packed + net.netmask.packed)
        return cls(CfgAttr.INTERNAL_IP6_SUBNET, net.network_address.packed + bytes([net.prefixlen]))

    def ip_address(self) -> IPAddress | None:
        """The address in an IP4/IP6 address, DNS, NBNS, DHCP or netmask attribute."""
        if len(self.value) in (4, 16, 17):
            return ipaddress.ip_address(self.value[:16] if len(self.value) == 17 else self.value)
        return None

    def ip_interface(self) -> IPInterface | None:
        """INTERNAL_IP6_ADDRESS as address/prefix, INTERNAL_IP4_ADDRESS as address/32."""
        if len(self.value) == 4:
            return ipaddress.IPv4Interface(self.value)
        if len(self.value) == 17 and self.value[16] <= 128:
            return ipaddress.IPv6Interface((self.value[:16], self.value[16]))
        return None

    def ip_network(self) -> IPNetwork | None:
        """INTERNAL_IP4_SUBNET / INTERNAL_IP6_SUBNET as a network (host bits cleared)."""
        try:
            if len(self.value) == 8:
                mask = ipaddress.IPv4Address(self.value[4:])
                return ipaddress.IPv4Network((self.value[:4], str(mask)), strict=False)
            if len(self.value) == 17:
                return ipaddress.IPv6Network((self.value[:16], self.value[16]), strict=False)
        except ValueError:  # a non-contiguous netmask or a prefix length above 128
            return None
        return None


@dataclass(frozen=True, slots=True)
class Configuration(Payload):
    """CP payload (RFC 7296 §3.15): `Configuration(CfgType.CFG_REQUEST, attributes)`."""

    TYPE: ClassVar[PayloadType] = PayloadType.CP
    cfg_type: CfgType | int
    attributes: tuple[ConfigAttribute, ...] = ()

    def values_of(self, attr_type: CfgAttr | int) -> tuple[ConfigAttribute, ...]:
        return tuple(a for a in self.attributes if a.type == attr_type)

    @classmethod
    def _pull(cls, buf: Buffer) -> Configuration:
        # 0 CFG Type | RESERVED (3); 4 Configuration Attributes
        cfg_type = as_enum(CfgType, buf.pull_uint8("CP header"))
        buf.pull_bytes(3, "CP header")
        attributes: list[ConfigAttribute] = []
        while not buf.eof():
            _check_count(len(attributes) + 1, MAX_CONFIG_ATTRIBUTES, "configuration attributes")
            # §3.15.1: 0 R | Attribute Type (15) | Length (2); 4 Value
            atype = buf.pull_uint16("CP attribute") & 0x7FFF
            value = buf.pull_bytes(buf.pull_uint16("CP attribute"), "CP attribute value")
            allowed = _CFG_LENGTHS.get(atype)
            if allowed is not None and len(value) not in allowed:
                raise MalformedMessage(f"CP attribute {atype} has length {len(value)}")
            attributes.append(ConfigAttribute(as_enum(CfgAttr, atype), value))
        return cls(cfg_type, tuple(attributes))

    def _push(self, buf: Buffer) -> None:
        buf.push_uint8(self.cfg_type)
        buf.push_bytes(b"\x00\x00\x00")
        for attr in self.attributes:
            if not 0 <= attr.type <= 0x7FFF:
                raise LocalProtocolError(f"bad configuration attribute type {attr.type}")
            buf.push_uint16(attr.type)
            buf.push_uint16(len(attr.value))
            buf.push_bytes(attr.value)


# --------------------------------------------------------------------------- EAP


@dataclass(frozen=True, slots=True)
class Eap(Payload):
    """EAP payload (RFC 7296 §3.16): one whole EAP message (RFC 3748 §4), checked framing."""

    TYPE: ClassVar[PayloadType] = PayloadType.EAP
    data: bytes

    @property
    def code(self) -> EapCode | int:
        return as_enum(EapCode, self.data[0])

    @property
    def identifier(self) -> int:
        return self.data[1]

    @property
    def eap_type(self) -> int | None:
        """The EAP method type of a Request/Response, None for Success/Failure."""
        return self.data[4] if len(self.data) > 4 else None

    @classmethod
    def _pull(cls, buf: Buffer) -> Eap:
        # RFC 3748 §4: 0 Code | Identifier | Length (2); 4 Data (Type first for 1 and 2)
        data = buf.pull_rest()
        if len(data) < 4 or int.from_bytes(data[2:4], "big") != len(data):
            raise MalformedMessage("EAP message length disagrees with the payload")
        if data[0] in (EapCode.REQUEST, EapCode.RESPONSE) and len(data) < 5:
            raise MalformedMessage("EAP Request/Response without a Type")
        return cls(data)

    def _push(self, buf: Buffer) -> None:
        if len(self.data) < 4 or int.from_bytes(self.data[2:4], "big") != len(self.data):
            raise LocalProtocolError("EAP message length field disagrees with its size")
        buf.push_bytes(self.data)


# --------------------------------------------------------------------------- unknown


@dataclass(frozen=True, slots=True)
class UnknownPayload(Payload):
    """A payload type we do not implement, not critical: kept and skipped (RFC 7296 §2.5)."""

    type: int
    data: bytes
    is_critical: bool = False

    @property
    def payload_type(self) -> int:
        return self.type

    @property
    def critical(self) -> bool:
        return self.is_critical

    def _push(self, buf: Buffer) -> None:
        if self.type in _PAYLOAD_CLASSES or self.type in _NOT_UNKNOWN:
            raise LocalProtocolError(f"payload type {self.type} cannot be an UnknownPayload")
        buf.push_bytes(self.data)


# --------------------------------------------------------------------------- chain

_PAYLOAD_CLASSES: dict[int, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        SecurityAssociation,
        KeyExchange,
        IdInitiator,
        IdResponder,
        Certificate,
        CertificateRequest,
        Authentication,
        Nonce,
        Notify,
        Delete,
        VendorId,
        TsInitiator,
        TsResponder,
        Configuration,
        Eap,
    )
}
_NOT_UNKNOWN = (PayloadType.NONE, PayloadType.SK, PayloadType.SKF)
_CRITICAL = 0x80  # RFC 7296 §3.2: the C bit, top bit of the second header octet


def pull_payload_chain(buf: Buffer, first_type: int, *, allow_encrypted: bool) -> list[Payload]:
    """Decode payloads until Next Payload is 0; the chain must end exactly at buf's end.

    RFC 7296 §3.2 generic header: 0 Next Payload | C | RESERVED (7) | Payload Length (2).
    SK/SKF (allowed only at message level) end the chain: their Next Payload names the
    first *inner* payload, and they must be last (RFC 7296 §3.14, RFC 7383 §2.5).
    """
    payloads: list[Payload] = []
    ptype = first_type
    while ptype != PayloadType.NONE:
        _check_count(len(payloads) + 1, MAX_PAYLOADS, "payloads")
        next_type = buf.pull_uint8("generic payload header")
        critical = bool(buf.pull_uint8("generic payload header") & _CRITICAL)
        length = buf.pull_uint16("generic payload header")
        if length < GENERIC_PAYLOAD_HEADER_BYTES:
            raise MalformedMessage(f"payload length {length} < 4")
        body = buf.pull_sub(length - GENERIC_PAYLOAD_HEADER_BYTES, f"payload type {ptype}")
        if ptype in (PayloadType.SK, PayloadType.SKF):
            if not allow_encrypted:
                raise MalformedMessage("SK/SKF payload inside encrypted payloads")
            if not buf.eof():
                raise MalformedMessage("SK/SKF payload is not the last payload")
            if ptype == PayloadType.SK:
                payloads.append(Encrypted(as_enum(PayloadType, next_type), body.pull_rest()))
            else:
                payloads.append(_pull_fragment(next_type, body))
            return payloads
        cls = _PAYLOAD_CLASSES.get(ptype)
        if cls is not None:
            payload = cls._pull(body)
            body.expect_end(cls.__name__)
        elif critical:
            raise UnsupportedCriticalPayload(ptype)
        else:
            payload = UnknownPayload(ptype, body.pull_rest())
        payloads.append(payload)
        ptype = next_type
    buf.expect_end("payload chain (Next Payload 0 before the end)")
    return payloads


def push_payload_chain(buf: Buffer, payloads: Sequence[Payload]) -> int:
    """Write the payloads with their generic headers; returns the first payload's type."""
    count = len(payloads)
    for i, payload in enumerate(payloads):
        if isinstance(payload, Encrypted | EncryptedFragment):
            if i != count - 1:
                raise LocalProtocolError("SK/SKF must be the last payload (RFC 7296 §3.14)")
            next_type = int(payload.first_payload)
        else:
            next_type = int(payloads[i + 1].payload_type) if i + 1 < count else 0
        start = buf.tell()
        buf.push_uint8(next_type)
        buf.push_uint8(_CRITICAL if payload.critical else 0)
        buf.push_uint16(0)  # Payload Length, patched below
        payload._push(buf)
        buf.patch_uint16(start + 2, buf.tell() - start, f"payload type {payload.payload_type}")
    return int(payloads[0].payload_type) if payloads else PayloadType.NONE


def decode_payloads(first_type: PayloadType | int, data: bytes) -> list[Payload]:
    """Decode a payload chain without an IKE header: the plaintext of an SK payload.

    `first_type` is the SK payload's `first_payload`; `data` is the decrypted content with
    the padding and Pad Length already removed. Raises `MalformedMessage` (including for
    nested SK/SKF) or `UnsupportedCriticalPayload`.
    """
    return pull_payload_chain(Buffer(data), first_type, allow_encrypted=False)


def encode_payloads(payloads: Sequence[Payload]) -> tuple[PayloadType | int, bytes]:
    """Encode a payload chain; returns (type of the first payload, bytes) for sealing in SK."""
    if any(isinstance(p, Encrypted | EncryptedFragment) for p in payloads):
        raise LocalProtocolError("SK/SKF cannot be nested inside encrypted payloads")
    buf = Buffer()
    first = push_payload_chain(buf, payloads)
    return as_enum(PayloadType, first), buf.data()


# --------------------------------------------------------------------------- finders


def first_of(payloads: Sequence[Payload], cls: type[_P]) -> _P | None:
    """The first payload of a class (e.g. `first_of(inner, Nonce)`), or None."""
    for payload in payloads:
        if isinstance(payload, cls):
            return payload
    return None


def all_of(payloads: Sequence[Payload], cls: type[_P]) -> list[_P]:
    """Every payload of a class, in order."""
    return [p for p in payloads if isinstance(p, cls)]


def notifies_of(payloads: Sequence[Payload], ntype: NotifyType | int) -> list[Notify]:
    """Every Notify of one type, in order."""
    return [p for p in payloads if isinstance(p, Notify) and p.type == ntype]


def notify_of(payloads: Sequence[Payload], ntype: NotifyType | int) -> Notify | None:
    """The first Notify of one type, or None."""
    for p in payloads:
        if isinstance(p, Notify) and p.type == ntype:
            return p
    return None


def error_notifies(payloads: Sequence[Payload]) -> list[Notify]:
    """Notifies of error types (< 16384, RFC 7296 §3.10.1), in order."""
    return [p for p in payloads if isinstance(p, Notify) and p.is_error]
