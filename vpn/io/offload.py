"""TUN offloads in plain Python: the readable reference of csrc/vpn_gso.c.

The C fast path is held to produce the same bytes as this module (tests/io/). Nothing
here is used on the hot path.

Flow:
  1. Send: the TUN hands over a frame ``[virtio_net_hdr][IP packet]``; ``segment()``
     turns a GSO super-packet into MTU-sized IP packets with full checksums (and finishes
     the checksum of a plain NEEDS_CSUM packet).
  2. Receive: ``coalesce()`` takes decrypted IP packets and merges consecutive TCP
     segments of one flow into one super-packet whose header tells the kernel to
     resegment it (GSO TCPV4/TCPV6) and to finish its checksum (NEEDS_CSUM). Every other
     packet gets a zeroed header. Each record is written to the TUN with one write().

The virtio_net_hdr layout is virtio 1.1 §5.1.6 (little-endian, without num_buffers).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

MAX_PACKET_BYTES = 65535
GRO_MAX_BATCH = 256
GRO_MAX_FLOWS = 64

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_CWR = 0x80
PROTO_TCP = 6
PROTO_UDP = 17

# Status codes, equal to VPN_GSO_E* in csrc/vpn_gso.h.
ESHORT = -1
EHDR = -2
EIP = -3
EL4 = -4
ESIZE = -5
ETOOBIG = -6
ENOSPACE = -7
EARG = -8

_VNET = struct.Struct("<BBHHHH")


class GsoError(ValueError):
    """A frame the segmenter refuses; ``code`` is the C status (VPN_GSO_E*)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} (status {code})")
        self.code = code


@dataclass(frozen=True, slots=True)
class VnetHdr:
    """struct virtio_net_hdr (virtio 1.1 §5.1.6)."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _VNET.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )

    @classmethod
    def unpack(cls, data: bytes) -> VnetHdr:
        return cls(*_VNET.unpack_from(data))


# ---- RFC 1071 checksums ---------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """One's-complement sum of big-endian 16-bit words (odd byte padded), folded."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    return fold(s)


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_sum(ip: bytes | bytearray, proto: int, l4_len: int) -> int:
    """Pseudo-header sum: RFC 9293 §3.1 / RFC 768 (IPv4), RFC 8200 §8.1 (IPv6)."""
    if ip[0] >> 4 == 4:
        return ones_sum(bytes(ip[12:20]) + struct.pack("!HH", proto, l4_len))
    return ones_sum(bytes(ip[8:40]) + struct.pack("!IxxxB", l4_len, proto))


def _ipv4_set_csum(ip: bytearray, ihl: int) -> None:
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", ~ones_sum(ip[:ihl]) & 0xFFFF)


def finish_csum(pkt: bytearray, csum_start: int, csum_offset: int) -> None:
    """Complete a NEEDS_CSUM packet in place (the field holds the pseudo-header sum).

    A computed 0 is stored as 0xffff, as the kernel's skb_checksum_help does.
    """
    if csum_start > len(pkt) or csum_offset + 2 > len(pkt) - csum_start:
        raise GsoError(EHDR, "checksum offsets beyond the packet")
    c = ~ones_sum(pkt[csum_start:]) & 0xFFFF
    at = csum_start + csum_offset
    pkt[at : at + 2] = struct.pack("!H", c or 0xFFFF)


# ---- segmentation (send) --------------------------------------------------------------


def segment(frame: bytes, out_cap: int = MAX_PACKET_BYTES, max_out: int = 1 << 16) -> list[bytes]:
    """Split one TUN frame into IP packets of at most hdr + gso_size bytes.

    Raises GsoError for a frame the C code would refuse with the same status, in the same
    order of checks. ``out_cap``/``max_out`` are the C output slot size and count.
    """
    if len(frame) < VNET_HDR_LEN + 1:
        raise GsoError(ESHORT, "frame shorter than virtio_net_hdr + 1")
    h = VnetHdr.unpack(frame)
    gso = h.gso_type & ~GSO_ECN
    pkt = frame[VNET_HDR_LEN:]
    if len(pkt) > MAX_PACKET_BYTES:
        raise GsoError(ESHORT, "packet longer than 65535")

    needs_csum = bool(h.flags & VNET_F_NEEDS_CSUM)
    if gso == GSO_NONE:
        if needs_csum and (h.csum_start > len(pkt) or h.csum_offset + 2 > len(pkt) - h.csum_start):
            raise GsoError(EHDR, "checksum offsets beyond the packet")
        if len(pkt) > out_cap:
            raise GsoError(ETOOBIG, "packet larger than the output slot")
        if max_out < 1:
            raise GsoError(ENOSPACE, "no output slot")
        out = bytearray(pkt)
        if needs_csum:
            finish_csum(out, h.csum_start, h.csum_offset)
        return [bytes(out)]
    if gso not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise GsoError(EHDR, f"unsupported gso_type {h.gso_type}")

    ver = pkt[0] >> 4
    is_udp = gso == GSO_UDP_L4
    if ver == 4 and gso != GSO_TCPV6:
        if len(pkt) < 20:
            raise GsoError(EIP, "IPv4 header truncated")
        l4off = (pkt[0] & 0x0F) * 4
        frag = struct.unpack_from("!H", pkt, 6)[0] & 0x3FFF
        if l4off < 20 or l4off > len(pkt) or frag:
            raise GsoError(EIP, "bad IPv4 header length or a fragment")
        proto = pkt[9]
    elif ver == 6 and gso != GSO_TCPV4:
        if len(pkt) < 40:
            raise GsoError(EIP, "IPv6 header truncated")
        l4off = 40
        proto = pkt[6]
    else:
        raise GsoError(EIP, f"IP version {ver} does not match gso_type {gso}")
    if proto != (PROTO_UDP if is_udp else PROTO_TCP):
        raise GsoError(EIP, f"protocol {proto} does not match gso_type {gso}")
    if h.csum_start != l4off:
        raise GsoError(EHDR, "csum_start is not the L4 header offset")
    if needs_csum and h.csum_offset != (6 if is_udp else 16):
        raise GsoError(EHDR, "csum_offset is not the L4 checksum field")

    if is_udp:
        l4hl = 8
        if l4off + l4hl > len(pkt):
            raise GsoError(EL4, "UDP header truncated")
    else:
        if l4off + 20 > len(pkt):
            raise GsoError(EL4, "TCP header truncated")
        l4hl = (pkt[l4off + 12] >> 4) * 4  # RFC 9293 §3.1 data offset
        if l4hl < 20 or l4off + l4hl > len(pkt):
            raise GsoError(EL4, "bad TCP data offset")
    hdr_len = l4off + l4hl
    payload = pkt[hdr_len:]
    if h.gso_size == 0:
        raise GsoError(ESIZE, "gso_size is 0")
    nseg = max(1, -(-len(payload) // h.gso_size))
    if hdr_len + min(len(payload), h.gso_size) > out_cap:
        raise GsoError(ETOOBIG, "segment larger than the output slot")
    if nseg > max_out:
        raise GsoError(ENOSPACE, "more segments than output slots")

    ip_id = struct.unpack_from("!H", pkt, 4)[0] if ver == 4 else 0
    seq0 = 0 if is_udp else struct.unpack_from("!I", pkt, l4off + 4)[0]
    tflags = 0 if is_udp else pkt[l4off + 13]
    segs = []
    for i in range(nseg):
        chunk = payload[i * h.gso_size : (i + 1) * h.gso_size]
        seg = bytearray(pkt[:hdr_len]) + chunk
        if ver == 4:
            struct.pack_into("!HH", seg, 2, len(seg), (ip_id + i) & 0xFFFF)  # RFC 6864 §4.1
            _ipv4_set_csum(seg, l4off)
        else:
            struct.pack_into("!H", seg, 4, len(seg) - 40)
        l4_len = l4hl + len(chunk)
        if is_udp:
            struct.pack_into("!H", seg, l4off + 4, l4_len)
            csum_at = l4off + 6
        else:
            struct.pack_into("!I", seg, l4off + 4, (seq0 + i * h.gso_size) & 0xFFFFFFFF)
            f = tflags
            if i < nseg - 1:
                f &= ~(TCP_FIN | TCP_PSH)  # only the last segment ends or pushes
            if i > 0:
                f &= ~TCP_CWR  # RFC 3168 §6.1.2: CWR on the first segment only
            seg[l4off + 13] = f
            csum_at = l4off + 16
        seg[csum_at : csum_at + 2] = b"\0\0"
        c = ~ones_sum(seg[l4off:], pseudo_sum(seg, proto, l4_len)) & 0xFFFF
        if is_udp and c == 0:
            c = 0xFFFF  # RFC 768
        seg[csum_at : csum_at + 2] = struct.pack("!H", c)
        segs.append(bytes(seg))
    return segs


# ---- coalescing (receive) -------------------------------------------------------------


@dataclass(slots=True)
class _Parsed:
    key: bytes | None = None
    ver: int = 0
    iphl: int = 0
    thl: int = 0
    seq: int = 0
    payload: int = 0
    psh: bool = False
    eligible: bool = False


@dataclass(slots=True, eq=False)
class _Group:
    key: bytes
    members: list[int]
    next_seq: int
    total: int
    next_id: int


def _parse(p: bytes) -> tuple[_Parsed, bool]:
    """Flow key and merge eligibility of one packet; second value: checksum failed."""
    r = _Parsed()
    if len(p) < 20:
        return r, False
    if p[0] >> 4 == 4:
        iphl = (p[0] & 0x0F) * 4
        if iphl < 20 or iphl + 20 > len(p) or p[9] != PROTO_TCP:
            return r, False
        r.ver, r.key = 4, b"\x04" + p[12:20] + p[iphl : iphl + 4]
    elif p[0] >> 4 == 6:
        iphl = 40
        if len(p) < 60 or p[6] != PROTO_TCP:
            return r, False
        r.ver, r.key = 6, b"\x06" + p[8:40] + p[40:44]
    else:
        return r, False
    r.iphl = iphl
    thl = (p[iphl + 12] >> 4) * 4
    if thl < 20 or iphl + thl > len(p):
        return r, False
    if r.ver == 4:
        tot_len, frag = struct.unpack_from("!H2xH", p, 2)
        if iphl != 20 or tot_len != len(p) or frag & 0x3FFF:
            return r, False
    elif struct.unpack_from("!H", p, 4)[0] + 40 != len(p):
        return r, False
    flags = p[iphl + 13]
    if flags not in (TCP_ACK, TCP_ACK | TCP_PSH) or len(p) == iphl + thl:
        return r, False
    ip_ok = r.ver == 6 or ones_sum(p[:20]) == 0xFFFF
    if not ip_ok or ones_sum(p[iphl:], pseudo_sum(p, PROTO_TCP, len(p) - iphl)) != 0xFFFF:
        return r, True
    r.thl = thl
    r.seq = struct.unpack_from("!I", p, iphl + 4)[0]
    r.payload = len(p) - iphl - thl
    r.psh = bool(flags & TCP_PSH)
    r.eligible = True
    return r, False


def _can_append(h: bytes, ph: _Parsed, g: _Group, p: bytes, pp: _Parsed, last: _Parsed) -> bool:
    if not pp.eligible or last.psh or last.payload < ph.payload:
        return False  # nothing follows a PSH or a short segment
    if pp.payload > ph.payload or pp.seq != g.next_seq or pp.thl != ph.thl:
        return False
    if g.total + pp.payload > MAX_PACKET_BYTES:
        return False
    if ph.ver == 4:
        if h[1] != p[1] or h[8] != p[8] or h[6] >> 5 != p[6] >> 5:
            return False  # TOS, TTL, DF/reserved bits
        if struct.unpack_from("!H", p, 4)[0] != g.next_id:
            return False  # IDs increment by one: resegmenting restores them (RFC 6864 §4.1)
    elif h[:4] != p[:4] or h[7] != p[7]:
        return False  # traffic class, flow label, hop limit
    th, tp = ph.iphl, pp.iphl
    # Same ACK number and identical options (timestamps included), as Linux GRO; the
    # same window too, so that resegmenting gives back exactly the packets received.
    return (
        h[th + 8 : th + 12] == p[tp + 8 : tp + 12]
        and h[th + 14 : th + 16] == p[tp + 14 : tp + 16]
        and h[th + 20 : th + ph.thl] == p[tp + 20 : tp + pp.thl]
    )


def _merge(pkts: Sequence[bytes], parsed: Sequence[_Parsed], members: list[int]) -> bytes:
    head, ph = pkts[members[0]], parsed[members[0]]
    hl = ph.iphl + ph.thl
    ip = bytearray(head[:hl])
    for k in members:
        ip += pkts[k][hl:]
    if parsed[members[-1]].psh:
        ip[ph.iphl + 13] |= TCP_PSH
    if ph.ver == 4:
        struct.pack_into("!H", ip, 2, len(ip))
        _ipv4_set_csum(ip, ph.iphl)
    else:
        struct.pack_into("!H", ip, 4, len(ip) - 40)
    # NEEDS_CSUM: the kernel expects the uncomplemented pseudo-header sum in the field.
    struct.pack_into("!H", ip, ph.iphl + 16, pseudo_sum(ip, PROTO_TCP, len(ip) - ph.iphl))
    vh = VnetHdr(
        flags=VNET_F_NEEDS_CSUM,
        gso_type=GSO_TCPV4 if ph.ver == 4 else GSO_TCPV6,
        hdr_len=hl,
        gso_size=ph.payload,
        csum_start=ph.iphl,
        csum_offset=16,
    )
    return vh.pack() + bytes(ip)


@dataclass(slots=True)
class GroCounters:
    """Mirror of the gro_* fields of struct vpn_gso_stats."""

    gro_in: int = 0
    gro_out: int = 0
    gro_super: int = 0
    gro_merged: int = 0
    gro_bad_csum: int = 0


def coalesce(pkts: Sequence[bytes], counters: GroCounters | None = None) -> list[bytes]:
    """Merge consecutive TCP segments of each flow; return ``[virtio_net_hdr][packet]``.

    Packets are looked at in chunks of GRO_MAX_BATCH with at most GRO_MAX_FLOWS open
    flows (the oldest is closed first), exactly as the C code.
    """
    c = counters if counters is not None else GroCounters()
    out: list[bytes] = []
    for at in range(0, len(pkts), GRO_MAX_BATCH):
        out += _coalesce_chunk(pkts[at : at + GRO_MAX_BATCH], c)
    c.gro_in += len(pkts)
    c.gro_out += len(out)
    return out


def _coalesce_chunk(pkts: Sequence[bytes], c: GroCounters) -> list[bytes]:
    parsed: list[_Parsed] = []
    groups: list[_Group] = []  # open groups, oldest first
    group_of: dict[int, list[int]] = {}  # head index -> members (kept after closing)
    member = [False] * len(pkts)
    for i, p in enumerate(pkts):
        pp, bad = _parse(p)
        c.gro_bad_csum += bad
        parsed.append(pp)
        if pp.key is None:
            continue
        g = next((g for g in groups if g.key == pp.key), None)
        if g is not None:
            h = g.members[0]
            if _can_append(pkts[h], parsed[h], g, p, pp, parsed[g.members[-1]]):
                g.members.append(i)
                member[i] = True
                g.next_seq = (g.next_seq + pp.payload) & 0xFFFFFFFF
                g.total += pp.payload
                g.next_id = (g.next_id + 1) & 0xFFFF
                continue
            groups = [x for x in groups if x is not g]  # same flow, not appendable: close it
        if not pp.eligible or pp.psh:
            continue
        if len(groups) == GRO_MAX_FLOWS:
            groups.pop(0)
        next_id = (struct.unpack_from("!H", p, 4)[0] + 1) & 0xFFFF if pp.ver == 4 else 0
        g = _Group(pp.key, [i], (pp.seq + pp.payload) & 0xFFFFFFFF, len(p), next_id)
        groups.append(g)
        group_of[i] = g.members

    out = []
    for i, p in enumerate(pkts):
        if member[i]:
            continue
        members = group_of.get(i, [i])
        if len(members) > 1:
            out.append(_merge(pkts, parsed, members))
            c.gro_super += 1
            c.gro_merged += len(members)
        else:
            out.append(bytes(VNET_HDR_LEN) + bytes(p))
    return out
