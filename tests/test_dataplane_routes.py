"""The dataplane's routing table (csrc/vpn_dp.c): inner destination -> peer by longest
prefix, full-length host routes in a hash, shorter prefixes in order. Checked against a
plain Python model of longest-prefix match, packets counted per peer."""

from __future__ import annotations

import gc
import ipaddress
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_dataplane import VNET0, params, ping, read_all, tun_pair
from vpn import fastpath as fp

NET = ipaddress.ip_network("10.20.0.0/16")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
KEY = bytes(32), b"\x00\x00\x00\x01"
PEERS = 5


class Router:
    """One dataplane with PEERS peers on one stream, each with its own outbound SA."""

    def __init__(self) -> None:
        self.app, self.tun = tun_pair()
        self.sock, self.far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (self.sock, self.far):
            s.setblocking(False)
        self.dp = fp.Dataplane(self.tun.fileno(), 1400, batch=64)
        self.conn = self.dp.conn(fp.DP_CONN_TCP, self.sock.fileno(), capacity=1 << 22)
        self.peers = []
        for i in range(PEERS):
            p = self.dp.peer(i + 1)
            p.set_conn(self.conn)
            p.set_sa(fp.FastSa(params(0x100 + i, KEY), outbound=True))
            self.peers.append(p)

    def deliver(self, dst: Address) -> int | None:
        """Route one packet to `dst`: the index of the peer that sealed it, or None."""
        before = [p.counters()["tx_packets"] for p in self.peers]
        self.app.send(VNET0 + (ping("10.99.0.1", str(dst), b"r") if dst.version == 4 else udp6(dst)))
        self.dp.tun_to_net()
        while True:
            try:
                self.far.recv(1 << 20)
            except BlockingIOError:
                break
        after = [p.counters()["tx_packets"] for p in self.peers]
        hit = [i for i in range(len(self.peers)) if after[i] != before[i]]
        assert len(hit) <= 1
        return hit[0] if hit else None

    def close(self) -> None:
        for s in (self.app, self.tun, self.sock, self.far):
            s.close()


def udp6(dst: Address) -> bytes:
    """An IPv6 UDP datagram to `dst` (the checksum does not matter for routing)."""
    udp = struct.pack("!HHHH", 1000, 2000, 9, 0) + b"r"
    return (struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + ipaddress.IPv6Address("fd99::1").packed
            + dst.packed + udp)


@pytest.fixture
def router() -> Iterator[Router]:
    r = Router()
    yield r
    r.close()


def model(routes: dict[Network, int], dst: Address) -> int | None:
    best = max((n for n in routes if dst in n), key=lambda n: n.prefixlen, default=None)
    return routes[best] if best is not None else None


prefixes = st.builds(lambda a, plen: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{plen}", strict=False),
                     st.integers(int(NET.network_address), int(NET.broadcast_address)),
                     st.sampled_from([16, 20, 24, 28, 30, 32, 32, 32]))
ops = st.lists(st.tuples(st.booleans(), prefixes, st.integers(0, PEERS - 1)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=12))
def test_longest_prefix_wins_as_routes_come_and_go(steps: list[tuple[bool, Network, int]],
                                                   probes: list[int]) -> None:
    r = Router()
    try:
        routes: dict[Network, int] = {}
        for add, net, peer in steps:
            if add:
                r.dp.route_add(net, r.peers[peer])
                routes[net] = peer
            else:
                assert r.dp.route_del(net) == (net in routes)
                routes.pop(net, None)
        # probe the routed addresses themselves and some others
        dsts = [n.network_address for n in routes] + [NET.network_address + p for p in probes]
        for dst in dsts:
            assert r.deliver(dst) == model(routes, dst), (dst, routes)
    finally:
        r.close()


def test_host_routes_scale_and_go_with_their_peer(router: Router) -> None:
    """Thousands of client addresses (hashed), a covering prefix, and a peer's removal
    taking its host routes with it."""
    hosts = [NET.network_address + i for i in range(1, 3001)]
    for i, h in enumerate(hosts):
        router.dp.route_add(ipaddress.ip_network(f"{h}/32"), router.peers[i % 4])
    router.dp.route_add(NET, router.peers[4])
    for i in (0, 1, 2, 2999, 1500):
        assert router.deliver(hosts[i]) == i % 4
    assert router.deliver(NET.network_address + 4000) == 4
    assert router.dp.route_del(ipaddress.ip_network(f"{hosts[7]}/32"))
    assert router.deliver(hosts[7]) == 4  # falls back to the covering prefix
    assert not router.dp.route_del(ipaddress.ip_network(f"{hosts[7]}/32"))
    del router.peers[1]  # peer 1 is freed: its host routes go with it
    gc.collect()
    assert router.deliver(hosts[1]) == 3  # index shift: the /16 peer is now at 3
    read_all(router.app)


def test_ipv6_host_routes_and_prefixes(router: Router) -> None:
    """Host routes hash the full 16 octets; a /64 covers the rest of its prefix."""
    net = ipaddress.ip_network("fd00:20::/64")
    router.dp.route_add(net, router.peers[0])
    hosts = [net.network_address + (i << 40) + i for i in range(1, 200)]
    for i, h in enumerate(hosts):
        router.dp.route_add(ipaddress.ip_network(f"{h}/128"), router.peers[1 + i % 3])
    router.dp.route_add(ipaddress.ip_network("10.20.0.1/32"), router.peers[4])  # same hash space, other family
    for i in (0, 5, 198):
        assert router.deliver(hosts[i]) == 1 + i % 3
    assert router.deliver(net.network_address + 7) == 0
    assert router.deliver(ipaddress.ip_address("fd00:21::1")) is None  # no route, no default peer
    assert router.dp.counters()["no_route"] == 1
    assert router.deliver(ipaddress.ip_address("10.20.0.1")) == 4
