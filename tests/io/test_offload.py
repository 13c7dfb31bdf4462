"""GSO segmentation and GRO coalescing: C == Python reference, and the packets are valid.

Validity is judged by scapy (parsing, its own in4/in6 checksum routines), not by the code
under test.
"""

from __future__ import annotations

import random
import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from offload_packets import (
    Flow,
    SuperPacket,
    flows,
    gso_frame,
    payload_bytes,
    super_packets,
    tcp_packet,
    udp_packet,
)
from scapy.layers.inet import IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.utils import checksum

from vpn import fastpath
from vpn.io import offload as ref

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def c_segment(frame: bytes, out_cap: int = 65535, max_out: int = 1024) -> list[bytes] | int:
    return fastpath.gso_segment(frame, out_cap, max_out)


def py_segment(frame: bytes, out_cap: int = 65535, max_out: int = 1024) -> list[bytes] | int:
    try:
        return ref.segment(frame, out_cap, max_out)
    except ref.GsoError as e:
        return e.code


def assert_valid(pkt: bytes) -> tuple[object, object]:
    """Parse with scapy and verify the IP and L4 checksums with scapy's own routines."""
    if pkt[0] >> 4 == 4:
        ip = IP(pkt)
        assert ip.len == len(pkt)
        assert checksum(pkt[: ip.ihl * 4]) == 0, "IPv4 header checksum"
        l4 = pkt[ip.ihl * 4 :]
        assert in4_chksum(ip.proto, ip, l4) == 0, "L4 checksum (IPv4)"
    else:
        ip = IPv6(pkt)
        assert ip.plen + 40 == len(pkt)
        l4 = pkt[40:]
        assert in6_chksum(ip.nh, ip, l4) == 0, "L4 checksum (IPv6)"
    layer = ip[TCP] if TCP in ip else ip[UDP]
    return ip, layer


# ---- segmentation -----------------------------------------------------------------------


def check_segments(sp: SuperPacket, segs: list[bytes]) -> None:
    tcp = sp.gso_type != ref.GSO_UDP_L4
    expected_n = max(1, -(-len(sp.payload) // sp.gso_size))
    assert len(segs) == expected_n
    got = b""
    for i, seg in enumerate(segs):
        ip, l4 = assert_valid(seg)
        data = bytes(l4.payload)
        assert len(data) == (sp.gso_size if i < len(segs) - 1 else len(data))
        assert 0 < len(data) <= sp.gso_size or len(sp.payload) == 0
        got += data
        if sp.flow.ver == 4:
            assert ip.id == (sp.ip_id + i) & 0xFFFF
            assert ip.tos == sp.flow.tos and ip.ttl == sp.flow.ttl
        else:
            assert ip.fl == sp.flow.flowlabel and ip.hlim == sp.flow.ttl
        if tcp:
            assert l4.seq == (sp.seq + i * sp.gso_size) & 0xFFFFFFFF
            flags = int(l4.flags)
            last, first = i == len(segs) - 1, i == 0
            assert bool(flags & 0x01) == (last and bool(sp.flags & 0x01)), "FIN on last only"
            assert bool(flags & 0x08) == (last and bool(sp.flags & 0x08)), "PSH on last only"
            assert bool(flags & 0x80) == (first and bool(sp.flags & 0x80)), "CWR on first only"
            assert flags & 0x76 == sp.flags & 0x76, "other flags copied"
            assert (
                seg[len(seg) - len(data) - len(sp.flow.options) - 20 :][20:][: len(sp.flow.options)]
                == sp.flow.options
            )
        else:
            assert l4.len == 8 + len(data)
    assert got == sp.payload


@SETTINGS
@given(super_packets())
def test_segment_c_equals_python_and_segments_are_valid(sp: SuperPacket) -> None:
    c = c_segment(sp.frame)
    py = py_segment(sp.frame)
    assert c == py
    assert isinstance(c, list)
    check_segments(sp, c)


def test_segment_full_64k_tcpv4_with_timestamps() -> None:
    flow = Flow(options=struct.pack("!BBBBII", 1, 1, 8, 10, 123456, 654321))
    payload = payload_bytes(65535 - 20 - 32, 7)
    pkt = tcp_packet(flow, 0xFFFFF000, payload, flags=0x18 | 0x80, ip_id=0xFFFE, partial=True)
    frame = gso_frame(pkt, ref.GSO_TCPV4, 1448, 32)
    segs = c_segment(frame)
    assert segs == py_segment(frame)
    assert isinstance(segs, list) and len(segs) == 46
    sp = SuperPacket(flow, frame, payload, ref.GSO_TCPV4, 1448, 0xFFFFF000, 0x98, 0xFFFE)
    check_segments(sp, segs)  # ID and seq both wrap inside this burst


def test_segment_respects_slot_size_and_count() -> None:
    flow = Flow()
    pkt = tcp_packet(flow, 1, payload_bytes(3000, 1), partial=True)
    frame = gso_frame(pkt, ref.GSO_TCPV4, 1000, 20)
    assert c_segment(frame, out_cap=1040, max_out=3) == py_segment(frame, 1040, 3)
    assert c_segment(frame, out_cap=1039, max_out=3) == ref.ETOOBIG
    assert c_segment(frame, out_cap=1040, max_out=2) == ref.ENOSPACE
    assert py_segment(frame, 1039, 3) == ref.ETOOBIG
    assert py_segment(frame, 1040, 2) == ref.ENOSPACE


@SETTINGS
@given(flows(), st.integers(0, 1400), st.booleans(), st.integers(0, 2**31))
def test_finish_csum_c_equals_python(flow: Flow, n: int, udp: bool, seed: int) -> None:
    payload = payload_bytes(n, seed)
    if udp:
        pkt = udp_packet(flow, payload, partial=True)
        csum_offset = 6
    else:
        pkt = tcp_packet(flow, seed, payload, partial=True)
        csum_offset = 16
    iphl = 20 if flow.ver == 4 else 40
    frame = ref.VnetHdr(ref.VNET_F_NEEDS_CSUM, 0, 0, 0, iphl, csum_offset).pack() + pkt
    c = c_segment(frame)
    assert c == py_segment(frame)
    assert isinstance(c, list) and len(c) == 1
    assert_valid(c[0])
    full = udp_packet(flow, payload) if udp else tcp_packet(flow, seed, payload)
    assert c[0] == full
    again = bytearray(pkt)
    assert fastpath.gso_finish_csum(again, iphl, csum_offset) == 0
    assert bytes(again) == full


def test_plain_frame_is_copied_unchanged() -> None:
    pkt = tcp_packet(Flow(), 5, b"hello")
    assert c_segment(bytes(10) + pkt) == [pkt]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(super_packets(max_payload=3000)).frame)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0:  # truncate
            del frame[draw(st.integers(0, len(frame))) :]
        elif kind == 1 and frame:  # flip a byte in the vnet/IP/L4 headers
            at = draw(st.integers(0, min(len(frame), 10 + 100) - 1))
            frame[at] = draw(st.integers(0, 255))
        elif kind == 2 and len(frame) >= 10:  # random vnet header field
            at = draw(st.sampled_from([0, 1, 4, 5, 6, 7, 8, 9]))
            frame[at] = draw(st.integers(0, 255))
        else:  # a random IP version nibble / IHL / data offset
            if len(frame) > 10:
                frame[10] = draw(st.integers(0, 255))
    return bytes(frame)


@SETTINGS
@given(st.one_of(mutated_frames(), st.binary(max_size=200)))
def test_malformed_frames_same_status_in_c_and_python(frame: bytes) -> None:
    c = c_segment(frame, out_cap=2000, max_out=4096)
    py = py_segment(frame, out_cap=2000, max_out=4096)
    assert c == py


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda f: f[:10], ref.ESHORT),
        (lambda f: f[:5], ref.ESHORT),
        (lambda f: f[:1] + b"\x02" + f[2:], ref.EHDR),  # GSO_UDP (UFO) is never enabled
        (lambda f: f[:1] + b"\x04" + f[2:], ref.EIP),  # TCPV6 type on an IPv4 packet
        (lambda f: f[:6] + b"\x18\x00" + f[8:], ref.EHDR),  # csum_start 24, IHL 20
        (lambda f: f[:4] + b"\x00\x00" + f[6:], ref.ESIZE),  # gso_size 0
        (lambda f: f[:8] + b"\x10\x00" + f[10:40], ref.EL4),  # TCP header cut
        (lambda f: f[:10] + b"\x46" + f[11:], ref.EHDR),  # IHL 24 != csum_start 20
        (lambda f: (f[:42] + b"\xf0" + f[43:])[:80], ref.EL4),  # data offset 60 > packet
        (lambda f: f[: 10 + 32] + b"\x40" + f[43:], ref.EL4),  # data offset 16 < 20
        (lambda f: f[: 10 + 9] + b"\x11" + f[20:], ref.EIP),  # protocol UDP under TCPV4
        (lambda f: f[: 10 + 6] + b"\x20" + f[17:], ref.EIP),  # MF set: a fragment
    ],
)
def test_malformed_frame_status(mutate: object, status: int) -> None:
    pkt = tcp_packet(Flow(), 1, payload_bytes(4000, 3), partial=True)
    frame = mutate(gso_frame(pkt, ref.GSO_TCPV4, 1000, 20))  # type: ignore[operator]
    assert c_segment(frame) == status
    assert py_segment(frame) == status


def test_segment_batch_continues_where_slots_ran_out() -> None:
    frames = []
    for k in range(6):
        pkt = tcp_packet(Flow(sport=1000 + k), k * 10000, payload_bytes(4000, k), partial=True)
        frames.append(gso_frame(pkt, ref.GSO_TCPV4, 1000, 20))  # 4 segments each
    frames.insert(2, b"\x00" * 5)  # malformed: dropped and counted
    src = fastpath.TunReadBatch(len(frames))
    for i, f in enumerate(frames):
        src.buf[i * src.stride : i * src.stride + len(f)] = f
        src.lens[i] = len(f)
    src.count = len(frames)
    dst = fastpath.PacketSlots(10, 1500)
    stats = fastpath.GsoStats()
    out: list[bytes] = []
    start = 0
    while start < src.count:
        n, consumed = fastpath.segment_batch(src, start, dst, stats)
        assert n <= 10 and consumed > 0
        out += [dst.packet(i) for i in range(n)]
        start += consumed
    expected = [s for f in frames for s in (py_segment(f) if len(f) > 5 else [])]
    assert out == expected
    s = stats.as_dict()
    assert (s["seg_in"], s["seg_gso_in"], s["seg_out"], s["seg_malformed"]) == (7, 6, 24, 1)


# ---- coalescing ---------------------------------------------------------------------------


def c_coalesce(pkts: list[bytes]) -> tuple[list[bytes], dict[str, int]]:
    stats = fastpath.GsoStats()
    out = fastpath.gro_coalesce(pkts, stats)
    return out, {k: v for k, v in stats.as_dict().items() if k.startswith("gro_")}


def py_coalesce(pkts: list[bytes]) -> tuple[list[bytes], dict[str, int]]:
    c = ref.GroCounters()
    out = ref.coalesce(pkts, c)
    return out, {
        k: getattr(c, k) for k in ("gro_in", "gro_out", "gro_super", "gro_merged", "gro_bad_csum")
    }


def unfold(records: list[bytes]) -> list[bytes]:
    """Records back into MTU packets: resegment super-packets, strip plain headers."""
    out = []
    for r in records:
        h = ref.VnetHdr.unpack(r)
        if h.gso_type:
            out += ref.segment(r)
        else:
            assert r[:10] == bytes(10)
            out.append(r[10:])
    return out


def check_records(pkts: list[bytes], records: list[bytes]) -> None:
    for r in records:
        h = ref.VnetHdr.unpack(r)
        if not h.gso_type:
            continue
        # A super-packet as the kernel expects it: finish its checksum, then it is valid.
        ip = bytearray(r[10:])
        ref.finish_csum(ip, h.csum_start, h.csum_offset)
        _, tcp = assert_valid(bytes(ip))
        assert h.flags == ref.VNET_F_NEEDS_CSUM and h.csum_offset == 16
        assert h.hdr_len == h.csum_start + tcp.dataofs * 4
        assert len(ip) > h.hdr_len + h.gso_size and len(ip) <= 65535
    # Nothing lost, nothing changed, each flow still in order.
    flat = unfold(records)
    assert sorted(flat) == sorted(pkts)

    def flow_of(p: bytes) -> bytes:
        return p[8:44] if p[:1] and p[0] >> 4 == 6 else p[12:24]

    for key in {flow_of(p) for p in pkts}:
        assert [p for p in flat if flow_of(p) == key] == [p for p in pkts if flow_of(p) == key]


def flow_segments(
    flow: Flow, seq: int, sizes: list[int], ip_id: int, seed: int, psh_last: bool = False
) -> list[bytes]:
    """What a peer's kernel sends: one super-packet segmented by our reference."""
    payload = payload_bytes(sum(sizes), seed)
    gso = sizes[0] if sizes else 1
    flags = 0x10 | (0x08 if psh_last else 0)
    pkt = tcp_packet(flow, seq, payload, flags=flags, ip_id=ip_id, partial=True)
    gso_type = ref.GSO_TCPV4 if flow.ver == 4 else ref.GSO_TCPV6
    return ref.segment(gso_frame(pkt, gso_type, gso, 20 + len(flow.options)))


@st.composite
def receive_batches(draw: st.DrawFn) -> list[bytes]:
    """Several flows, each a run of super-packets, interleaved, with some damage."""
    streams: list[list[bytes]] = []
    for f in range(draw(st.integers(1, 5))):
        flow = draw(flows())
        mss = draw(st.sampled_from([1, 7, 100, 536, 1240, 1448]))
        seq = draw(st.integers(0, 2**32 - 1))
        ip_id = draw(st.integers(0, 65535))
        pkts: list[bytes] = []
        for _ in range(draw(st.integers(1, 3))):
            n = draw(st.integers(1, 12))
            last = draw(st.integers(1, mss))
            sizes = [mss] * (n - 1) + [last]
            pkts += flow_segments(flow, seq, sizes, ip_id, f, psh_last=draw(st.booleans()))
            seq = (seq + sum(sizes)) & 0xFFFFFFFF
            ip_id = (ip_id + n) & 0xFFFF
        streams.append(pkts)
    rnd = random.Random(draw(st.integers(0, 2**32)))
    batch: list[bytes] = []
    while any(streams):
        s = rnd.choice([s for s in streams if s])
        batch.append(s.pop(0))
    for _ in range(draw(st.integers(0, 3))):  # damage: bad checksum, other protocol, junk
        kind = draw(st.integers(0, 2))
        at = draw(st.integers(0, len(batch)))
        if kind == 0 and any(batch):
            i = draw(st.sampled_from([i for i, b in enumerate(batch) if b]))
            b = bytearray(batch[i])
            b[-1] ^= 0x55
            batch[i] = bytes(b)
        elif kind == 1:
            batch.insert(at, udp_packet(Flow(), b"dns?"))
        else:
            batch.insert(at, draw(st.binary(max_size=80)))
    return batch


@SETTINGS
@given(receive_batches())
def test_coalesce_c_equals_python_and_roundtrips(pkts: list[bytes]) -> None:
    c, c_stats = c_coalesce(pkts)
    py, py_stats = py_coalesce(pkts)
    assert c == py
    assert c_stats == py_stats
    check_records(pkts, c)


def test_coalesce_interleaved_flows_merge_per_flow() -> None:
    a = flow_segments(Flow(sport=1), 100, [1000] * 4, 1, 1)
    b = flow_segments(Flow(sport=2, ver=6, src="fd00::1", dst="fd00::2"), 7, [500] * 3, 0, 2)
    pkts = [a[0], b[0], a[1], b[1], a[2], b[2], a[3]]
    out, stats = c_coalesce(pkts)
    assert out == py_coalesce(pkts)[0]
    assert len(out) == 2
    assert [ref.VnetHdr.unpack(r).gso_type for r in out] == [ref.GSO_TCPV4, ref.GSO_TCPV6]
    assert [ref.VnetHdr.unpack(r).gso_size for r in out] == [1000, 500]
    assert stats["gro_super"] == 2 and stats["gro_merged"] == 7
    check_records(pkts, out)


def _gso_types(pkts: list[bytes]) -> list[int]:
    out, _ = c_coalesce(pkts)
    assert out == py_coalesce(pkts)[0]
    check_records(pkts, out)
    return [r[1] for r in out]


def test_coalesce_rules() -> None:
    f = Flow()
    base = flow_segments(f, 0, [1000] * 3, 1, 1)
    assert _gso_types(base) == [1]
    # A bad checksum in the middle passes through and splits the run.
    bad = bytearray(base[1])
    bad[-1] ^= 1
    assert _gso_types([base[0], bytes(bad), base[2]]) == [0, 0, 0]
    # A gap in sequence numbers.
    assert _gso_types([base[0], base[2]]) == [0, 0]
    # Out of order: the later one cannot be prepended.
    assert _gso_types([base[1], base[0]]) == [0, 0]
    # IPv4 IDs that do not increment by one: no merge (resegmenting would change them).
    p1 = tcp_packet(f, 1000, payload_bytes(1000, 1), ip_id=5)
    assert _gso_types([base[0], p1]) == [0, 0]
    # Different TTL, ACK number, window, TOS, options, DF: no merge.
    others = (replace(f, ttl=3), replace(f, ack=5), replace(f, window=9), replace(f, tos=1))
    for other in (*others, replace(f, options=b"\x01" * 4), replace(f, df=False)):
        p1 = tcp_packet(other, 1000, payload_bytes(1000, 1)[:1000], ip_id=2)
        assert _gso_types([base[0], p1]) == [0, 0]
    # PSH in the middle ends the group; a short segment ends it too.
    psh = flow_segments(f, 0, [1000], 1, 1, psh_last=True) + flow_segments(f, 1000, [1000], 2, 1)
    assert _gso_types(psh) == [0, 0]
    short = flow_segments(f, 0, [1000, 500], 1, 1) + flow_segments(f, 1500, [1000], 3, 1)
    assert _gso_types(short) == [1, 0]
    # PSH is allowed on the last one and kept.
    out, _ = c_coalesce(flow_segments(f, 0, [1000] * 3, 1, 1, psh_last=True))
    assert len(out) == 1 and out[0][10 + 20 + 13] == 0x18
    # A bigger segment after smaller ones starts a new group.
    grow = flow_segments(f, 0, [500, 500], 1, 1) + flow_segments(f, 1000, [800, 800], 3, 1)
    assert _gso_types(grow) == [1, 1]
    # FIN, SYN, RST, URG, ECE, CWR segments are never merged.
    for flags in (0x11, 0x12, 0x14, 0x30, 0x50, 0x90):
        p1 = tcp_packet(f, 1000, payload_bytes(1000, 1), flags=flags, ip_id=2)
        assert _gso_types([base[0], p1]) == [0, 0]


def test_coalesce_never_exceeds_64k() -> None:
    pkts = flow_segments(Flow(), 0, [1400] * 30, 1, 1) + flow_segments(
        Flow(), 42000, [1400] * 30, 31, 2
    )
    out, _ = c_coalesce(pkts)
    assert out == py_coalesce(pkts)[0]
    assert [ref.VnetHdr.unpack(r).gso_type for r in out] == [1, 1]
    assert all(len(r) - 10 <= 65535 for r in out)
    assert len(out[0]) - 10 == 40 + 1400 * 46  # the most that fits under 65535
    check_records(pkts, out)


@pytest.mark.parametrize(("nflows", "merges"), [(40, True), (80, False)])
def test_coalesce_many_flows_and_chunks_match_reference(nflows: int, merges: bool) -> None:
    """Packets beyond one chunk (256); with more flows than the table holds (64) round
    robin, every group is closed before its flow comes back: nothing merges."""
    streams = []
    for k in range(1, nflows + 1):
        v6 = k % 2 == 0
        flow = Flow(
            ver=6 if v6 else 4,
            sport=k,
            src="fd::1" if v6 else "10.1.1.1",
            dst="fd::2" if v6 else "10.2.2.2",
        )
        streams.append(flow_segments(flow, k * 1000, [600] * 8, k, k))
    pkts = [s[i] for i in range(8) for s in streams]
    c, cs = c_coalesce(pkts)
    py, ps = py_coalesce(pkts)
    assert c == py and cs == ps
    check_records(pkts, c)
    assert (cs["gro_super"] > 0) == merges


def test_coalesce_output_buffer_too_small_is_refused() -> None:
    pkts = flow_segments(Flow(), 0, [1000] * 3, 1, 1)
    src = fastpath.PacketSlots(3, 1100)
    src.load(pkts)
    dst = fastpath.RecordBuffer(3, sum(map(len, pkts)) + 29)
    with pytest.raises(ValueError, match="ENOSPACE"):
        fastpath.coalesce_batch(src, dst, fastpath.GsoStats())
