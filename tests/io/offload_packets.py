"""Packet builders and hypothesis strategies for the offload tests.

Super-packets are built the way the kernel hands them to a TUN with TSO/USO on: IP
lengths cover the whole packet, the L4 checksum field holds the pseudo-header sum
(NEEDS_CSUM), and the virtio_net_hdr names the GSO type and segment size.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field, replace

from hypothesis import strategies as st

from vpn.io import offload as ref


@dataclass(frozen=True)
class Flow:
    ver: int = 4
    src: str = "10.0.0.1"
    dst: str = "10.0.0.2"
    sport: int = 40000
    dport: int = 5201
    tos: int = 0
    ttl: int = 64
    df: bool = True
    flowlabel: int = 0
    window: int = 502
    ack: int = 1000
    options: bytes = b""

    def addrs(self) -> bytes:
        return ipaddress.ip_address(self.src).packed + ipaddress.ip_address(self.dst).packed


def ip_header(flow: Flow, proto: int, l4_len: int, ip_id: int = 0) -> bytes:
    if flow.ver == 4:
        hdr = bytearray(
            struct.pack(
                "!BBHHHBBH",
                0x45,
                flow.tos,
                20 + l4_len,
                ip_id & 0xFFFF,
                0x4000 if flow.df else 0,
                flow.ttl,
                proto,
                0,
            )
        )
        hdr += flow.addrs()
        hdr[10:12] = struct.pack("!H", ~ref.ones_sum(hdr) & 0xFFFF)
        return bytes(hdr)
    first = (6 << 28) | (flow.tos << 20) | flow.flowlabel
    return struct.pack("!IHBB", first, l4_len, proto, flow.ttl) + flow.addrs()


def tcp_packet(
    flow: Flow, seq: int, payload: bytes, flags: int = 0x10, ip_id: int = 0, partial: bool = False
) -> bytes:
    """A TCP/IP packet with a full checksum, or the pseudo-header sum when ``partial``."""
    thl = 20 + len(flow.options)
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            flow.sport,
            flow.dport,
            seq & 0xFFFFFFFF,
            flow.ack,
            (thl // 4) << 4,
            flags,
            flow.window,
            0,
            0,
        )
    )
    tcp += flow.options + payload
    ip = ip_header(flow, 6, len(tcp), ip_id)
    pseudo = ref.pseudo_sum(ip, 6, len(tcp))
    if partial:
        tcp[16:18] = struct.pack("!H", pseudo)
    else:
        tcp[16:18] = struct.pack("!H", ~ref.ones_sum(tcp, pseudo) & 0xFFFF)
    return ip + bytes(tcp)


def udp_packet(flow: Flow, payload: bytes, ip_id: int = 0, partial: bool = False) -> bytes:
    udp = bytearray(struct.pack("!HHHH", flow.sport, flow.dport, 8 + len(payload), 0)) + payload
    ip = ip_header(flow, 17, len(udp), ip_id)
    pseudo = ref.pseudo_sum(ip, 17, len(udp))
    if partial:
        udp[6:8] = struct.pack("!H", pseudo)
    else:
        udp[6:8] = struct.pack("!H", (~ref.ones_sum(udp, pseudo) & 0xFFFF) or 0xFFFF)
    return ip + bytes(udp)


def gso_frame(pkt: bytes, gso_type: int, gso_size: int, l4hl: int, ecn: bool = False) -> bytes:
    iphl = (pkt[0] & 0x0F) * 4 if pkt[0] >> 4 == 4 else 40
    hdr = ref.VnetHdr(
        flags=ref.VNET_F_NEEDS_CSUM,
        gso_type=gso_type | (ref.GSO_ECN if ecn else 0),
        hdr_len=iphl + l4hl,
        gso_size=gso_size,
        csum_start=iphl,
        csum_offset=6 if gso_type == ref.GSO_UDP_L4 else 16,
    )
    return hdr.pack() + pkt


# ---- strategies -----------------------------------------------------------------------


def _option() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b"\x01"),
        st.integers(536, 9000).map(lambda m: struct.pack("!BBH", 2, 4, m)),
        st.integers(0, 14).map(lambda s: struct.pack("!BBB", 3, 3, s)),
        st.just(b"\x04\x02"),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).map(
            lambda t: struct.pack("!BBII", 8, 10, *t)
        ),
        st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=6)
        .filter(lambda v: len(v) % 2 == 0)
        .map(lambda v: struct.pack(f"!BB{len(v)}I", 5, 2 + 4 * len(v), *v)),
    )


@st.composite
def tcp_options(draw: st.DrawFn) -> bytes:
    opts = b""
    for o in draw(st.lists(_option(), max_size=4)):
        if len(opts) + len(o) <= 40:
            opts += o
    return opts + b"\x01" * (-len(opts) % 4)


@st.composite
def flows(draw: st.DrawFn, ver: int | None = None) -> Flow:
    v = draw(st.sampled_from([4, 6])) if ver is None else ver
    if v == 4:
        addr = st.integers(1, 2**32 - 2).map(lambda a: str(ipaddress.IPv4Address(a)))
    else:
        addr = st.integers(1, 2**128 - 2).map(lambda a: str(ipaddress.IPv6Address(a)))
    return Flow(
        ver=v,
        src=draw(addr),
        dst=draw(addr),
        sport=draw(st.integers(1, 65535)),
        dport=draw(st.integers(1, 65535)),
        tos=draw(st.integers(0, 255)),
        ttl=draw(st.integers(1, 255)),
        df=draw(st.booleans()),
        flowlabel=draw(st.integers(0, 0xFFFFF)) if v == 6 else 0,
        window=draw(st.integers(0, 65535)),
        ack=draw(st.integers(0, 2**32 - 1)),
        options=draw(tcp_options()),
    )


def payload_bytes(n: int, seed: int) -> bytes:
    """Deterministic, non-repeating content (so misplaced bytes are noticed)."""
    out = bytearray()
    block = 0
    while len(out) < n:
        out += struct.pack("!IIII", seed, block, seed ^ 0x5A5A5A5A, block * 2654435761 & 0xFFFFFFFF)
        block += 1
    return bytes(out[:n])


@dataclass
class SuperPacket:
    flow: Flow
    frame: bytes
    payload: bytes
    gso_type: int
    gso_size: int
    seq: int = 0
    flags: int = 0x10
    ip_id: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@st.composite
def super_packets(draw: st.DrawFn, max_payload: int = 12000) -> SuperPacket:
    flow = draw(flows())
    udp = draw(st.integers(0, 4)) == 0
    ip_id = draw(st.integers(0, 65535))
    seed = draw(st.integers(0, 2**31))
    if udp:
        flow = replace(flow, options=b"")
        hdr = (20 if flow.ver == 4 else 40) + 8
        gso_size = draw(st.integers(1, 1472))
        n = draw(st.integers(0, min(max_payload, 65535 - hdr, gso_size * 40)))
        payload = payload_bytes(n, seed)
        pkt = udp_packet(flow, payload, ip_id=ip_id, partial=True)
        return SuperPacket(
            flow,
            gso_frame(pkt, ref.GSO_UDP_L4, gso_size, 8),
            payload,
            ref.GSO_UDP_L4,
            gso_size,
            ip_id=ip_id,
        )
    hdr = (20 if flow.ver == 4 else 40) + 20 + len(flow.options)
    gso_size = draw(st.one_of(st.integers(1, 64), st.integers(500, 1460)))
    n = draw(st.integers(0, min(max_payload, 65535 - hdr, gso_size * 40)))
    seq = draw(st.integers(0, 2**32 - 1))
    flags = draw(st.integers(0, 255))
    payload = payload_bytes(n, seed)
    pkt = tcp_packet(flow, seq, payload, flags=flags, ip_id=ip_id, partial=True)
    gso_type = ref.GSO_TCPV4 if flow.ver == 4 else ref.GSO_TCPV6
    ecn = draw(st.booleans())
    frame = gso_frame(pkt, gso_type, gso_size, 20 + len(flow.options), ecn=ecn)
    return SuperPacket(flow, frame, payload, gso_type, gso_size, seq=seq, flags=flags, ip_id=ip_id)
