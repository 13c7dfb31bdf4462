"""ESP Security Associations with AES-GCM: the readable reference of csrc/vpn_esp.c.

One SA direction seals (`OutboundSa`) or opens (`InboundSa`) packets in tunnel mode:

    ESP packet = SPI (4) | Sequence Number (4) | IV (8) | ciphertext | ICV (16)
    plaintext  = inner IP packet | padding 1, 2, 3 | Pad Length | Next Header

RFC 4303 §2 (layout), §2.4 (padding to a 4-octet boundary), §2.6 (Next Header 4/41,
59 = dummy), §3.3.3 (the counter never cycles), §3.4.3 (anti-replay); RFC 4106 §3.1
(IV = the 64-bit counter), §4 (nonce = salt || IV), §5 (AAD), §8.1 (salt = last 4
octets of the KEYMAT slice). Sans-IO and deterministic: the same SA state and input
always give the same bytes, which the C fast path must reproduce exactly.

A packet that cannot be sealed or must be dropped raises `EspDropped` with a
`DropReason` whose value is the C status code (VPN_ST_*).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vpn.esp.replay import (
    REPLAY_WINDOW_DEFAULT,
    REPLAY_WINDOW_MAX,
    REPLAY_WINDOW_MIN,
    ReplayWindow,
    infer_seq,
)

SPI_LEN = 4
SEQ_LEN = 4
IV_LEN = 8
HEADER_LEN = SPI_LEN + SEQ_LEN + IV_LEN  # in front of the ciphertext
ICV_LEN = 16  # RFC 4106 §6: ENCR_AES_GCM_16
SALT_LEN = 4  # RFC 4106 §8.1
MIN_PACKET_LEN = HEADER_LEN + 2 + ICV_LEN  # empty payload: Pad Length + Next Header
TRAILER_MAX = 3 + 2 + ICV_LEN
OVERHEAD_MAX = HEADER_LEN + TRAILER_MAX
FRAME_MAX_MESSAGE = 65533  # RFC 9329 §3: the 16-bit Length counts itself
MAX_INNER = FRAME_MAX_MESSAGE - OVERHEAD_MAX  # the largest inner packet one frame carries
KEY_SIZES = (16, 32)  # AES-128-GCM, AES-256-GCM

NEXT_HEADER_IPV4 = 4
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_DUMMY = 59  # RFC 4303 §2.6: a dummy packet, discarded by the receiver

SEQ_MAX_32 = (1 << 32) - 1
SEQ_MAX_64 = (1 << 64) - 1


class DropReason(IntEnum):
    """Why a packet was not sealed or delivered; values equal the C VPN_ST_* codes."""

    TOO_SHORT = 1
    BAD_LENGTH = 2
    UNKNOWN_SPI = 3
    REPLAY = 4
    ICV = 5
    BAD_PADDING = 6
    DUMMY = 7
    BAD_INNER = 8
    SEQ_EXHAUSTED = 9
    HARD_EXPIRED = 10
    NO_SPACE = 11
    TOO_BIG = 12
    KEEPALIVE = 13
    EMPTY = 14
    FATAL_LENGTH = 15
    BAD_PREFIX = 16
    CLOSE = 17
    BAD_ARG = 18
    WRONG_SA = 19


class SaFlags(IntFlag):
    """Lifetime state the control plane watches (C: VPN_SA_*)."""

    SOFT_EXPIRED = 1  # a soft limit was reached: start the rekey
    HARD_EXPIRED = 2  # a hard limit was reached: the SA refuses packets
    SEQ_EXHAUSTED = 4  # the outbound counter is at its maximum


class EspDropped(Exception):
    """The packet was dropped (receive) or could not be sealed (send), for `reason`.

    The message names the reason and the SPI only, never key material.
    """

    def __init__(self, reason: DropReason, spi: int = 0) -> None:
        super().__init__(f"ESP SPI {spi:08x}: {reason.name.lower()}")
        self.reason = reason
        self.spi = spi


@dataclass(frozen=True)
class SaParams:
    """One direction of a Child SA as IKE negotiated it (RFC 7296 §2.17 KEYMAT slice).

    `key` is 16 or 32 octets and `salt` the 4 octets after it (RFC 4106 §8.1). Limits
    of 0 mean none; bytes count inner (plaintext) octets. `replay_window` is in packets.
    """

    spi: int
    key: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    esn: bool = False
    replay_window: int = REPLAY_WINDOW_DEFAULT
    soft_packets: int = 0
    hard_packets: int = 0
    soft_bytes: int = 0
    hard_bytes: int = 0

    def __post_init__(self) -> None:
        # RFC 4303 §2.1: SPI 0 is reserved, 1..255 are reserved for IANA.
        if not 256 <= self.spi <= 0xFFFFFFFF:
            raise ValueError("SPI must be 256..2^32-1")
        if len(self.key) not in KEY_SIZES:
            raise ValueError("AES-GCM key must be 16 or 32 octets")
        if len(self.salt) != SALT_LEN:
            raise ValueError("salt must be 4 octets")
        if not REPLAY_WINDOW_MIN <= self.replay_window <= REPLAY_WINDOW_MAX:
            raise ValueError(f"replay window must be {REPLAY_WINDOW_MIN}..{REPLAY_WINDOW_MAX}")

    @classmethod
    def from_keymat(cls, spi: int, keymat: bytes, **kw: int | bool) -> SaParams:
        """Split a KEYMAT slice (key || salt, RFC 4106 §8.1) into key and salt."""
        return cls(spi, keymat[:-SALT_LEN], keymat[-SALT_LEN:], **kw)  # type: ignore[arg-type]


def next_header_for(inner: bytes) -> int:
    """Next Header of a tunnelled packet from its IP version nibble (RFC 4303 §2.6)."""
    version = inner[0] >> 4 if inner else 0
    if version == 4:
        return NEXT_HEADER_IPV4
    if version == 6:
        return NEXT_HEADER_IPV6
    raise EspDropped(DropReason.BAD_INNER)


def padding(payload_len: int) -> bytes:
    """RFC 4303 §2.4: pad so Pad Length and Next Header end a 4-octet word; 1, 2, 3."""
    return bytes(range(1, -(payload_len + 2) % 4 + 1))


def aad(spi: int, seq: int, esn: bool) -> bytes:
    """RFC 4106 §5: SPI || seq (8 octets), or with ESN SPI || seq_hi || seq_lo (12)."""
    if esn:
        return struct.pack("!III", spi, seq >> 32, seq & 0xFFFFFFFF)
    return struct.pack("!II", spi, seq)


class _SaBase:
    def __init__(self, params: SaParams) -> None:
        self.params = params
        self.seq = 0  # out: last sequence number sent; in: top of the replay window
        self.seq_max = SEQ_MAX_64 if params.esn else SEQ_MAX_32
        self.packets = 0  # lifetime use (RFC 4301 §4.4.2.1)
        self.bytes = 0
        self.flags = SaFlags(0)
        self.drops: dict[DropReason, int] = {}
        self._aead = AESGCM(params.key)

    @property
    def spi(self) -> int:
        return self.params.spi

    def _drop(self, reason: DropReason) -> EspDropped:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return EspDropped(reason, self.spi)

    def _account(self, inner_len: int) -> None:
        p = self.params
        self.packets += 1
        self.bytes += inner_len
        if (p.soft_packets and self.packets >= p.soft_packets) or (
            p.soft_bytes and self.bytes >= p.soft_bytes
        ):
            self.flags |= SaFlags.SOFT_EXPIRED
        if (p.hard_packets and self.packets >= p.hard_packets) or (
            p.hard_bytes and self.bytes >= p.hard_bytes
        ):
            self.flags |= SaFlags.HARD_EXPIRED | SaFlags.SOFT_EXPIRED

    def _nonce(self, iv: bytes) -> bytes:
        return self.params.salt + iv  # RFC 4106 §4


class OutboundSa(_SaBase):
    """Seals inner packets; the sequence number starts at 1 and never cycles."""

    def set_seq(self, seq: int) -> None:
        """The next packet gets seq + 1 (tests start near 2^32)."""
        self.seq = min(seq, self.seq_max)
        self.flags &= ~SaFlags.SEQ_EXHAUSTED
        if self.seq == self.seq_max:
            self.flags |= SaFlags.SEQ_EXHAUSTED

    def seal(self, inner: bytes, next_header: int | None = None) -> bytes:
        """Return the ESP packet carrying `inner` (Next Header from the IP version).

        Raises EspDropped: BAD_INNER (not IPv4/IPv6), TOO_BIG, HARD_EXPIRED or
        SEQ_EXHAUSTED (rekey: RFC 4303 §3.3.3 forbids cycling the counter).
        """
        nh = next_header_for(inner) if next_header is None else next_header
        if len(inner) > MAX_INNER:
            raise EspDropped(DropReason.TOO_BIG, self.spi)
        if self.flags & SaFlags.HARD_EXPIRED:
            raise self._drop(DropReason.HARD_EXPIRED)
        if self.seq >= self.seq_max:
            self.flags |= SaFlags.SEQ_EXHAUSTED
            raise self._drop(DropReason.SEQ_EXHAUSTED)
        seq = self.seq + 1
        iv = seq.to_bytes(IV_LEN, "big")  # RFC 4106 §3.1: the counter is the IV
        pad = padding(len(inner))
        plaintext = inner + pad + bytes((len(pad), nh))
        header = struct.pack("!II", self.spi, seq & 0xFFFFFFFF)  # only the low 32 bits
        sealed = self._aead.encrypt(self._nonce(iv), plaintext, aad(self.spi, seq, self.params.esn))
        self.seq = seq
        if seq == self.seq_max:
            self.flags |= SaFlags.SEQ_EXHAUSTED
        self._account(len(inner))
        return header + iv + sealed


@dataclass(frozen=True)
class Opened:
    """An authenticated inner packet and its Next Header (4 or 41)."""

    inner: bytes
    next_header: int
    seq: int  # the full (inferred) sequence number


class InboundSa(_SaBase):
    """Opens ESP packets of one SPI: replay check, ICV, window update, padding."""

    def __init__(self, params: SaParams) -> None:
        super().__init__(params)
        self.window = ReplayWindow(params.replay_window)

    def set_seq(self, seq: int) -> None:
        """Make `seq` the window top, as if just received; the window is cleared."""
        self.seq = min(seq, self.seq_max)
        self.window.reset(self.seq)

    def open(self, packet: bytes) -> Opened:
        """Return the inner packet of `packet` or raise EspDropped with the reason."""
        if len(packet) < MIN_PACKET_LEN:
            raise EspDropped(DropReason.TOO_SHORT, self.spi)
        if len(packet) > FRAME_MAX_MESSAGE:
            raise EspDropped(DropReason.BAD_LENGTH, self.spi)
        spi, seq_lo = struct.unpack_from("!II", packet)
        if spi != self.spi:
            raise EspDropped(DropReason.WRONG_SA, self.spi)
        if self.flags & SaFlags.HARD_EXPIRED:
            raise self._drop(DropReason.HARD_EXPIRED)
        # RFC 4303 App. A2: infer seq_hi first; the replay check precedes the ICV.
        seq = infer_seq(seq_lo, self.window.top, self.window.size) if self.params.esn else seq_lo
        if not self.window.check(seq):
            raise self._drop(DropReason.REPLAY)
        iv = packet[SPI_LEN + SEQ_LEN : HEADER_LEN]
        try:
            plaintext = self._aead.decrypt(
                self._nonce(iv), packet[HEADER_LEN:], aad(self.spi, seq, self.params.esn)
            )
        except InvalidTag:
            raise self._drop(DropReason.ICV) from None
        self.window.update(seq)  # only after the ICV verified
        self.seq = self.window.top
        pad_len, nh = plaintext[-2], plaintext[-1]
        inner_len = len(plaintext) - 2 - pad_len
        if inner_len < 0 or plaintext[inner_len:-2] != bytes(range(1, pad_len + 1)):
            raise self._drop(DropReason.BAD_PADDING)
        self._account(inner_len)
        if nh == NEXT_HEADER_DUMMY:
            raise self._drop(DropReason.DUMMY)
        return Opened(plaintext[:inner_len], nh, seq)
