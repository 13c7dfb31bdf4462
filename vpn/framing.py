"""RFC 9329 (TCP encapsulation of IKE and ESP) framing, and the UDP 4500 demux.

Stream layout (RFC 9329 §3, §4):

    "IKETCP" (once, only from the side that opened the connection)
    Length (16 bits, counts itself) | message          ... repeated
    message = 00 00 00 00 (Non-ESP marker) | IKE message     (§3.1)
            | ESP packet (first 4 octets = SPI, never 0)     (§3.2)
            | FF (NAT keepalive: drop silently, §6.6)

Length 0 or 1 is fatal: the stream is closed (§3). Length 2 is an empty message,
ignored. The accepting side parses nothing before the whole prefix (§6.1). On UDP 4500
(RFC 3948 §2.2-§2.3) a 1-octet 0xFF is a keepalive and a 4-zero marker means IKE.

`Deframer.feed` accepts the stream in any split and returns typed items; the C fast
path (csrc/vpn_frame.c) applies the same rules and tests hold the two equal. Sans-IO.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PREFIX = b"IKETCP"  # RFC 9329 §4
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 9329 §3.1, RFC 3948 §2.2
KEEPALIVE = b"\xff"  # RFC 3948 §2.3
LENGTH_LEN = 2
MAX_FRAME_LEN = 0xFFFF
MAX_MESSAGE_LEN = MAX_FRAME_LEN - LENGTH_LEN  # 65533 (RFC 9329 §3)


@dataclass(frozen=True, slots=True)
class IkeMessage:
    """An IKE message, Non-ESP marker removed: hand it to the IKE state machine."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EspPacket:
    """An ESP packet (SPI first): open it with the SA of that SPI."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A NAT keepalive: dropped silently, not an error (RFC 9329 §6.6)."""


@dataclass(frozen=True, slots=True)
class EmptyMessage:
    """A Length-2 frame: ignored (RFC 9329 §3)."""


@dataclass(frozen=True, slots=True)
class TooShort:
    """1..3 octets that are no keepalive: neither IKE nor ESP; counted and dropped."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Fatal:
    """The stream must be closed: Length 0/1 (RFC 9329 §3) or a wrong prefix (§4)."""

    reason: str


Item = IkeMessage | EspPacket | Keepalive | EmptyMessage | TooShort
StreamItem = Item | Fatal


class DeframerClosed(Exception):
    """feed() after the deframer returned Fatal: the connection is to be closed."""


def classify(message: bytes) -> Item:
    """What one frame body or one UDP 4500 datagram is (RFC 9329 §3, RFC 3948 §2)."""
    if not message:
        return EmptyMessage()
    if message == KEEPALIVE:
        return Keepalive()
    if len(message) < len(NON_ESP_MARKER):
        return TooShort(message)
    if message[:4] == NON_ESP_MARKER:
        return IkeMessage(message[4:])
    return EspPacket(message)


def demux_udp(datagram: bytes) -> Item:
    """UDP 4500: keepalive, IKE (after the 4-zero marker) or ESP (RFC 3948 §2.2, §2.3)."""
    return classify(datagram)


def encode_frame(message: bytes) -> bytes:
    """Length || message; the Length counts itself (RFC 9329 §3)."""
    if len(message) > MAX_MESSAGE_LEN:
        raise ValueError(f"message of {len(message)} octets exceeds {MAX_MESSAGE_LEN}")
    return struct.pack("!H", len(message) + LENGTH_LEN) + message


def encode_ike(ike_message: bytes) -> bytes:
    """An IKE message framed for the stream: Length || Non-ESP marker || message."""
    return encode_frame(NON_ESP_MARKER + ike_message)


class Deframer:
    """Incremental RFC 9329 stream parser: bytes in any split -> items.

    `expect_prefix` is True on the accepting side (the TCP responder), which waits for
    all six octets of "IKETCP" before parsing (RFC 9329 §6.1). A partial frame is kept
    between calls; `pending` tells how many octets (discard them on reconnect).
    """

    def __init__(self, expect_prefix: bool = False) -> None:
        self._prefix_left = len(PREFIX) if expect_prefix else 0
        self._buf = bytearray()
        self.closed = False

    @property
    def pending(self) -> int:
        return len(PREFIX) - self._prefix_left if self._prefix_left else len(self._buf)

    def feed(self, data: bytes) -> list[StreamItem]:
        """Parse what `data` completes. A Fatal item ends the list and closes the stream."""
        if self.closed:
            raise DeframerClosed("the stream was closed after a fatal framing error")
        items: list[StreamItem] = []
        view = memoryview(data)
        if self._prefix_left:
            expected = PREFIX[len(PREFIX) - self._prefix_left :]
            got = bytes(view[: self._prefix_left])
            if got != expected[: len(got)]:
                return self._fatal(items, "prefix")
            self._prefix_left -= len(got)
            view = view[len(got) :]
            if self._prefix_left:
                return items
        self._buf += view
        buf = self._buf
        pos = 0
        while len(buf) - pos >= LENGTH_LEN:
            (length,) = struct.unpack_from("!H", buf, pos)
            if length < LENGTH_LEN:
                del buf[:pos]
                return self._fatal(items, "length")
            if len(buf) - pos < length:
                break
            items.append(classify(bytes(buf[pos + LENGTH_LEN : pos + length])))
            pos += length
        del buf[:pos]
        return items

    def _fatal(self, items: list[StreamItem], reason: str) -> list[StreamItem]:
        self.closed = True
        self._buf.clear()
        items.append(Fatal(reason))
        return items
