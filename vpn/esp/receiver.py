"""Receive side reference: frames or datagrams -> SA by SPI -> opened inner packets.

The readable model of vpn_stream_rx_feed / vpn_udp_rx_batch (csrc/vpn_frame.c):

  1. the Deframer (vpn.framing) cuts the stream into messages; Fatal closes it;
  2. each message is classified (RFC 9329 §3): empty, keepalive, too short, IKE, ESP;
  3. ESP: the inbound SA is found by SPI (unknown: counted, dropped), then opened
     (replay check, ICV, window update, padding; Next Header 59 dropped);
  4. bad frames in a row (too short, unknown SPI, ICV, padding) are counted; after
     `max_consecutive_bad` of them the stream is to be closed (RFC 9329 §6.1: not for
     a few unknown SPIs, but for persistent corruption; checklist T47/T48).

The counters have the same names and meaning as the C struct vpn_counters.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from vpn.esp.sa import MIN_PACKET_LEN, DropReason, EspDropped, InboundSa
from vpn.framing import (
    Deframer,
    EmptyMessage,
    Fatal,
    IkeMessage,
    Item,
    Keepalive,
    TooShort,
    classify,
)

CONSECUTIVE_BAD_DEFAULT = 32  # C: VPN_CONSECUTIVE_BAD_DEFAULT

_BAD = frozenset(
    {
        DropReason.TOO_SHORT,
        DropReason.UNKNOWN_SPI,
        DropReason.ICV,
        DropReason.BAD_PADDING,
        DropReason.WRONG_SA,
        DropReason.BAD_LENGTH,
    }
)

_COUNTER_OF = {
    DropReason.TOO_SHORT: "too_short",
    DropReason.BAD_LENGTH: "bad_length",
    DropReason.UNKNOWN_SPI: "unknown_spi",
    DropReason.REPLAY: "replay",
    DropReason.ICV: "icv",
    DropReason.BAD_PADDING: "bad_padding",
    DropReason.DUMMY: "dummy",
    DropReason.BAD_INNER: "bad_inner",
    DropReason.TOO_BIG: "too_big",
    DropReason.SEQ_EXHAUSTED: "refused",
    DropReason.HARD_EXPIRED: "refused",
    DropReason.KEEPALIVE: "keepalive",
    DropReason.EMPTY: "empty",
}


@dataclass
class Counters:
    """Per-reason counters (C: struct vpn_counters, same field names)."""

    packets: int = 0
    bytes: int = 0
    ike: int = 0
    keepalive: int = 0
    empty: int = 0
    dummy: int = 0
    too_short: int = 0
    bad_length: int = 0
    unknown_spi: int = 0
    replay: int = 0
    icv: int = 0
    bad_padding: int = 0
    bad_inner: int = 0
    too_big: int = 0
    refused: int = 0
    no_space: int = 0
    fatal: int = 0
    consecutive_bad: int = 0

    def count(self, reason: DropReason) -> None:
        name = _COUNTER_OF.get(reason)
        if name is not None:
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Delivered:
    """What the receive path hands on: an inner packet (to the TUN) or IKE (to Python)."""

    kind: str  # "inner", "ike" or "esp" (raw, when no SA table is used)
    data: bytes
    spi: int = 0
    next_header: int = 0


class EspReceiver:
    """Inbound SAs by SPI plus the counters of one stream or socket."""

    def __init__(self, max_consecutive_bad: int = CONSECUTIVE_BAD_DEFAULT) -> None:
        self.sas: dict[int, InboundSa] = {}
        self.counters = Counters()
        self.max_consecutive_bad = max_consecutive_bad or CONSECUTIVE_BAD_DEFAULT
        self.closed = False

    def add(self, sa: InboundSa) -> None:
        if sa.spi in self.sas:
            raise ValueError(f"SPI {sa.spi:08x} already installed")
        self.sas[sa.spi] = sa

    def remove(self, spi: int) -> InboundSa | None:
        return self.sas.pop(spi, None)

    def _process(self, item: Item) -> Delivered | DropReason:
        if isinstance(item, EmptyMessage):
            return DropReason.EMPTY
        if isinstance(item, Keepalive):
            return DropReason.KEEPALIVE
        if isinstance(item, TooShort):
            return DropReason.TOO_SHORT
        if isinstance(item, IkeMessage):
            return Delivered("ike", item.data)
        packet = item.data
        if len(packet) < MIN_PACKET_LEN:
            return DropReason.TOO_SHORT
        spi = int.from_bytes(packet[:4], "big")
        sa = self.sas.get(spi)
        if sa is None:
            return DropReason.UNKNOWN_SPI
        try:
            opened = sa.open(packet)
        except EspDropped as e:
            return e.reason
        return Delivered("inner", opened.inner, spi, opened.next_header)

    def _deliver(self, result: Delivered | DropReason) -> Delivered | None:
        c = self.counters
        if isinstance(result, Delivered):
            if result.kind == "ike":
                c.ike += 1
            else:
                c.packets += 1
                c.bytes += len(result.data)
            return result
        c.count(result)
        return None

    def receive_stream(self, deframer: Deframer, data: bytes) -> list[Delivered]:
        """Feed stream bytes; returns what is delivered. Check `closed` afterwards."""
        out: list[Delivered] = []
        if self.closed:
            return out
        c = self.counters
        for item in deframer.feed(data):
            if isinstance(item, Fatal):
                if item.reason == "length":
                    c.bad_length += 1
                c.fatal += 1
                self.closed = True
                return out
            result = self._process(item)
            delivered = self._deliver(result)
            if delivered is not None:
                out.append(delivered)
                c.consecutive_bad = 0
            elif result is DropReason.DUMMY:
                c.consecutive_bad = 0
            elif result in _BAD:
                c.consecutive_bad += 1
                if c.consecutive_bad >= self.max_consecutive_bad:
                    c.fatal += 1
                    self.closed = True
                    return out
        return out

    def receive_datagram(self, datagram: bytes) -> Delivered | DropReason:
        """One UDP 4500 datagram: the delivered item or why it was dropped."""
        result = self._process(classify(datagram))
        self._deliver(result)
        return result
