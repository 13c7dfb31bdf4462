"""The C dataplane end to end in one process, with no kernel TUN.

A SOCK_DGRAM socketpair stands in for each TUN fd (one read = one frame with its
virtio_net_hdr, like /dev/net/tun with IFF_VNET_HDR), so the whole batch path runs:
read, segment, route, seal, frame, queue, send -> recv, deframe, open, policy check,
coalesce, write. The bytes on the stream are checked against the Python reference.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.io.offload_packets import Flow, gso_frame, tcp_packet
from vpn import fastpath as fp
from vpn.esp.sa import InboundSa, OutboundSa, SaParams
from vpn.framing import encode_frame
from vpn.io import offload as ref

VNET0 = bytes(10)
NET_A = ipaddress.ip_network("10.0.0.0/24")
NET_B = ipaddress.ip_network("10.0.1.0/24")
K_AB = bytes(range(32)), b"\x01\x02\x03\x04"
K_BA = bytes(range(32, 64)), b"\x05\x06\x07\x08"


def params(spi: int, k: tuple[bytes, bytes], **kw: int | bool) -> SaParams:
    return SaParams(spi=spi, key=k[0], salt=k[1], **kw)  # type: ignore[arg-type]


def tun_pair() -> tuple[socket.socket, socket.socket]:
    app, dp = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (app, dp):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    dp.setblocking(False)
    app.setblocking(False)
    return app, dp


def read_all(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


@dataclass
class Side:
    app: socket.socket  # the "kernel" end of the TUN
    dp: fp.Dataplane
    conn: fp.DpConn
    peer: fp.DpPeer
    sock: socket.socket


def make_side(tun_dp: socket.socket, app: socket.socket, sock: socket.socket, kind: int,
              out: SaParams, inb: SaParams, peer_src: ipaddress.IPv4Network) -> Side:
    dp = fp.Dataplane(tun_dp.fileno(), 1400, batch=64)
    conn = dp.conn(kind, sock.fileno(), capacity=1 << 20, high_water=256 << 10)
    peer = dp.peer(1)
    peer.set_conn(conn)
    peer.set_sa(fp.FastSa(out, outbound=True))
    dp.set_default_peer(peer)
    dp.install_inbound(fp.FastSa(inb, outbound=False))
    dp.bind_spi(inb.spi, peer, [peer_src])
    side = Side(app, dp, conn, peer, sock)
    side._keep = tun_dp  # type: ignore[attr-defined]
    return side


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Side, Side]]:
    sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (sa, sb):
        s.setblocking(False)
    app_a, dp_a = tun_pair()
    app_b, dp_b = tun_pair()
    a = make_side(dp_a, app_a, sa, fp.DP_CONN_TCP, params(0x1001, K_AB), params(0x2002, K_BA), NET_B)
    b = make_side(dp_b, app_b, sb, fp.DP_CONN_TCP, params(0x2002, K_BA), params(0x1001, K_AB), NET_A)
    yield a, b
    for s in (sa, sb, app_a, dp_a, app_b, dp_b):
        s.close()


def ping(src: str, dst: str, payload: bytes, ident: int = 1) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload)
    icmp[2:4] = struct.pack("!H", ~ref.ones_sum(icmp) & 0xFFFF)
    hdr = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0))
    hdr += ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    hdr[10:12] = struct.pack("!H", ~ref.ones_sum(hdr) & 0xFFFF)
    return bytes(hdr + icmp)


def test_packets_cross_and_stream_bytes_equal_python_reference(tcp_pair: tuple[Side, Side]) -> None:
    a, b = tcp_pair
    pkts = [ping("10.0.0.5", "10.0.1.7", os.urandom(n), ident=i) for i, n in enumerate((0, 1, 100, 1372))]
    for p in pkts:
        a.app.send(VNET0 + p)
    flags, err = a.dp.tun_to_net()
    assert err == 0 and flags & fp.DP_TUN_EMPTY and not flags & fp.DP_BLOCKED
    wire = b.sock.recv(1 << 20)
    ref_sa = OutboundSa(params(0x1001, K_AB))
    assert wire == b"".join(encode_frame(ref_sa.seal(p)) for p in pkts)
    # deliver the same bytes to B through its connection
    b.sock.close()
    a2, b2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = b.dp.conn(fp.DP_CONN_TCP, b2.fileno())
    b.peer.set_conn(conn)
    a2.send(wire)
    st, ike, err = conn.rx()
    assert (st, ike, err) == (fp.DP_RX_OK, [], 0)
    got = read_all(b.app)
    assert [g[10:] for g in got] == pkts and all(g[:10] == VNET0 for g in got)
    assert b.dp.counters()["rx_packets"] == 4 and b.peer.counters()["rx_packets"] == 4
    a2.close()
    b2.close()


def test_gso_superpacket_segmented_then_coalesced(tcp_pair: tuple[Side, Side]) -> None:
    a, b = tcp_pair
    flow = Flow(src="10.0.0.5", dst="10.0.1.7")
    data = os.urandom(30000)
    sup = tcp_packet(flow, 1000, data, flags=0x18, partial=True)
    a.app.send(gso_frame(sup, ref.GSO_TCPV4, 1360, 20))
    flags, _ = a.dp.tun_to_net()
    assert a.dp.gso_stats()["seg_gso_in"] == 1
    assert a.dp.counters()["tx_packets"] == -(-30000 // 1360)
    st, _, _ = b.conn.rx()
    assert st == fp.DP_RX_OK
    recs = read_all(b.app)
    assert len(recs) < a.dp.counters()["tx_packets"]  # GRO merged segments again
    payload = b""
    for r in recs:
        hdr = ref.VnetHdr.unpack(r[:10])
        pkt = r[10:]
        if hdr.gso_type:
            assert hdr.gso_type == ref.GSO_TCPV4 and hdr.gso_size == 1360
        payload += pkt[40:]
    assert payload == data


def test_ike_frames_share_the_queue_in_order(tcp_pair: tuple[Side, Side]) -> None:
    a, b = tcp_pair
    msg = b"\x11" * 8 + b"\x00" * 8 + b"\x21\x20\x22\x08" + b"\x00" * 4 + struct.pack("!I", 28)
    assert a.conn.send_ike(msg)
    a.app.send(VNET0 + ping("10.0.0.5", "10.0.1.7", b"x"))
    a.dp.tun_to_net()
    assert a.conn.pending() == 0
    st, ike, _ = b.conn.rx()
    assert st == fp.DP_RX_OK and ike == [msg]
    assert len(read_all(b.app)) == 1


def test_spoofed_inner_source_is_dropped_and_counted(tcp_pair: tuple[Side, Side]) -> None:
    a, b = tcp_pair
    a.app.send(VNET0 + ping("10.9.9.9", "10.0.1.7", b"spoof"))
    a.app.send(VNET0 + ping("10.0.0.9", "10.0.1.7", b"fine"))
    a.dp.tun_to_net()
    b.conn.rx()
    got = read_all(b.app)
    assert len(got) == 1 and got[0].endswith(b"fine")
    assert b.dp.counters()["ts_violation"] == 1 and b.peer.counters()["ts_violation"] == 1


def test_inner_destination_outside_our_selectors_is_dropped(tcp_pair: tuple[Side, Side]) -> None:
    """RFC 4301 §5.2: the destination must lie in the receiver's own selectors too (a
    client may reach only the subnets the server offers)."""
    a, b = tcp_pair
    b.dp.bind_spi(0x1001, b.peer, [NET_A], [ipaddress.ip_network("10.0.1.0/25")])
    for dst, payload in (("10.0.1.7", b"inside"), ("10.0.1.200", b"outside"), ("192.0.2.1", b"far")):
        a.app.send(VNET0 + ping("10.0.0.9", dst, payload))
    a.dp.tun_to_net()
    b.conn.rx()
    got = read_all(b.app)
    assert len(got) == 1 and got[0].endswith(b"inside")
    assert b.dp.counters()["ts_violation"] == 2 and b.peer.counters()["ts_violation"] == 2
    b.dp.bind_spi(0x1001, b.peer, [NET_A])  # no destinations given: any
    a.app.send(VNET0 + ping("10.0.0.9", "192.0.2.1", b"far"))
    a.dp.tun_to_net()
    b.conn.rx()
    assert len(read_all(b.app)) == 1
    with pytest.raises(ValueError, match="too many traffic selectors"):
        b.dp.bind_spi(0x1001, b.peer, [NET_A], [NET_B] * 99)


def test_garbage_counted_stream_closed_after_fatal_length(tcp_pair: tuple[Side, Side]) -> None:
    a, b = tcp_pair
    junk_esp = b"\xde\xad\xbe\xef" + os.urandom(40)  # an SPI nobody has
    a.sock.send(b"\x00\x03\xff" + b"\x00\x02" + b"\x00\x10" + os.urandom(14)
                + struct.pack("!H", 2 + len(junk_esp)) + junk_esp + b"\x00\x01")
    st, ike, _ = b.conn.rx()
    assert st == fp.DP_RX_CLOSE and ike == []
    c = b.conn.rx_counters()
    assert (c.keepalive, c.empty, c.too_short, c.unknown_spi, c.fatal) == (1, 1, 1, 1, 1)
    assert read_all(b.app) == []


def test_backpressure_bounds_the_queue(tcp_pair: tuple[Side, Side]) -> None:
    a, b = tcp_pair
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pkt = VNET0 + ping("10.0.0.5", "10.0.1.7", bytes(1372))
    seen = 0
    for _ in range(200):
        for _ in range(64):
            try:
                a.app.send(pkt)
            except BlockingIOError:
                break
        flags, _ = a.dp.tun_to_net()
        if flags & fp.DP_BACKPRESSURE:
            seen += 1
            break
    assert seen, "the queue never reported backpressure"
    assert a.conn.pending() <= (1 << 20)
    # while above the mark the TUN is not read at all
    before = a.dp.counters()["tun_reads"]
    flags, _ = a.dp.tun_to_net()
    assert flags & fp.DP_BACKPRESSURE and a.dp.counters()["tun_reads"] == before
    # drain the stream: reading resumes
    for _ in range(1000):
        b.conn.rx()
        a.conn.flush()
        if not a.conn.above_high_water():
            break
    flags, _ = a.dp.tun_to_net()
    assert not flags & fp.DP_BACKPRESSURE or a.dp.counters()["tun_reads"] > before


def test_udp_datagrams_and_ike_with_source_address() -> None:
    ua = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (ua, ub):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    app_a, dp_a = tun_pair()
    app_b, dp_b = tun_pair()
    a = make_side(dp_a, app_a, ua, fp.DP_CONN_UDP, params(0x1001, K_AB), params(0x2002, K_BA), NET_B)
    b = make_side(dp_b, app_b, ub, fp.DP_CONN_UDP, params(0x2002, K_BA), params(0x1001, K_AB), NET_A)
    a.peer.set_addr(*ub.getsockname())
    b.peer.set_addr("127.0.0.1", 9)  # stale: B follows A's authenticated address
    b.peer.set_follow(True)
    pkts = [ping("10.0.0.5", "10.0.1.7", os.urandom(n), ident=n) for n in (10, 500, 1372)]
    for p in pkts:
        a.app.send(VNET0 + p)
    a.dp.tun_to_net()
    ua.sendto(b"\xff", ub.getsockname())  # NAT keepalive: dropped silently
    ua.sendto(b"\x00\x00\x00\x00" + b"I" * 28, ub.getsockname())
    import time

    deadline = time.monotonic() + 2
    got: list[bytes] = []
    ikes: list[tuple[bytes, tuple[str, int]]] = []
    while time.monotonic() < deadline and (len(got) < 3 or not ikes):
        st, msgs, err = b.conn.udp_rx()
        assert st == fp.DP_RX_OK and err == 0
        ikes += msgs
        got += read_all(b.app)
    assert [g[10:] for g in got] == pkts
    assert ikes == [(b"I" * 28, ua.getsockname())]
    assert b.peer.addr() == ua.getsockname() and b.peer.counters()["moves"] == 1
    assert b.conn.rx_counters().keepalive == 1
    for s in (ua, ub, app_a, dp_a, app_b, dp_b):
        s.close()


def test_udp_gso_send_arrives_as_ordinary_datagrams() -> None:
    """A batch of equal-sized packets leaves as one UDP_SEGMENT send; the peer's socket
    still sees one ESP packet per datagram, each of which opens."""
    ua = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (ua, ub):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    ub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    app_a, dp_a = tun_pair()
    a = make_side(dp_a, app_a, ua, fp.DP_CONN_UDP, params(0x1001, K_AB), params(0x2002, K_BA), NET_B)
    a.peer.set_addr(*ub.getsockname())
    pkts = [ping("10.0.0.5", "10.0.1.7", os.urandom(1372), ident=i) for i in range(60)]
    for p in pkts:
        a.app.send(VNET0 + p)
    a.dp.tun_to_net()
    got = []
    import time

    deadline = time.monotonic() + 2
    while len(got) < 60 and time.monotonic() < deadline:
        try:
            got.append(ub.recv(70000))
        except BlockingIOError:
            time.sleep(0.01)
    assert len(got) == 60 and a.dp.counters()["udp_send_drop"] == 0
    assert len({len(g) for g in got}) == 1  # equal-sized ESP datagrams, not one blob
    ref = InboundSa(params(0x1001, K_AB))
    assert [ref.open(g).inner for g in got] == pkts
    for s in (ua, ub, app_a, dp_a):
        s.close()
