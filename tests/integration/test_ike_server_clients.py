"""Many clients on one server: each with its own identity and PSK, its own virtual
address (fixed per identity: the same after a reconnect, whatever the order in which
clients connect), forwarding among clients through the server, per-client counters,
and RFC 4301 §5.2: a client that sends with another client's inner address is dropped
and counted on its own SA, and nothing of it arrives.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .ike_server_helpers import SERVER_INNER, build_ike_topology, ike_lab, ping
from .netns import Lab, Netns

pytestmark = pytest.mark.netns

UDP_PORT = 5301
SPOOFED = 20
GENUINE = 5

# a UDP sink: counts datagrams for `seconds`, prints {"count", "sources"}
SINK = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
s.settimeout(0.2)
end = time.monotonic() + float(sys.argv[2])
n, src = 0, set()
while time.monotonic() < end:
    try:
        _, addr = s.recvfrom(2048)
    except TimeoutError:
        continue
    n += 1
    src.add(addr[0])
print(json.dumps({"count": n, "sources": sorted(src)}), flush=True)
"""

# send `n` datagrams from source address argv[1] to argv[2]:argv[3]
SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[4])):
    s.sendto(b"x" * 64, (sys.argv[2], int(sys.argv[3])))
    time.sleep(0.01)
"""


def send_udp(ns: Netns, src: str, dst: str, n: int) -> None:
    ns.run([sys.executable, "-c", SEND, src, dst, str(UDP_PORT), str(n)])


def test_two_clients_addresses_forwarding_and_spoofing(lab: Lab, tmp_path: Path) -> None:
    topo = build_ike_topology(lab, second_client=True)
    assert topo.client2 is not None
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(clients=["alice@test", "bob@test"])
        # bob connects first, over TLS; alice over TCP: each still gets its own address
        bob = ik.client(topo.client2, "bob@test", protocol="tls")
        alice = ik.client(topo.client, "alice@test", protocol="tcp")
        bob.up()
        alice.up()
        a_vip = alice.status()["virtual_ip"][0].split("/")[0]
        b_vip = bob.status()["virtual_ip"][0].split("/")[0]
        assert (a_vip, b_vip) == ("10.10.0.2", "10.10.0.3"), "addresses follow the [[client]] order"
        a, b = srv.client("alice@test"), srv.client("bob@test")
        assert a is not None and b is not None
        assert a["virtual_ip"] == [a_vip] and b["virtual_ip"] == [b_vip]
        assert (a["transport"], b["transport"]) == ("tcp", "tls")
        assert a["remote"].startswith(topo.base.client_v4 + ":") and b["remote"].startswith(topo.client2_v4 + ":")

        # forwarding among clients, through the server, both ways
        ping(topo.client, b_vip)
        ping(topo.client2, a_vip)

        # per-client counters (both ways, on the right client)
        a = srv.client("alice@test")
        assert a is not None
        ctr = a["counters"]
        for k in ("packets_in", "packets_out", "bytes_in", "bytes_out"):
            assert ctr[k] > 0, ctr
        assert ctr["bytes_in"] >= ctr["packets_in"] * 20  # inner IPv4 packets
        assert a["since"].endswith("Z") and a["since_s"] >= 0

        # alice sends with bob's address: dropped on alice's SA, counted there, nothing arrives
        before_a = srv.client("alice@test")["counters"]["ts_violation"]  # type: ignore[index]
        before_b = srv.client("bob@test")["counters"]["ts_violation"]  # type: ignore[index]
        alice.ns.run(["ip", "addr", "add", f"{b_vip}/32", "dev", alice.name])
        sink = topo.server.popen([sys.executable, "-u", "-c", SINK, str(UDP_PORT), "4"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
        sink_b = topo.client2.popen([sys.executable, "-u", "-c", SINK, str(UDP_PORT), "4"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert sink_b.stdout is not None and sink_b.stdout.readline().strip() == b"ready"
        send_udp(topo.client, b_vip, SERVER_INNER, SPOOFED)
        send_udp(topo.client, a_vip, SERVER_INNER, GENUINE)  # the sink works: these arrive
        out, _ = sink.communicate(timeout=15)
        got = json.loads(out.decode().strip().splitlines()[-1])
        out_b, _ = sink_b.communicate(timeout=15)
        got_b = json.loads(out_b.decode().strip().splitlines()[-1])
        assert got == {"count": GENUINE, "sources": [a_vip]}, got
        assert got_b["count"] == 0, got_b
        after_a = srv.client("alice@test")["counters"]["ts_violation"]  # type: ignore[index]
        after_b = srv.client("bob@test")["counters"]["ts_violation"]  # type: ignore[index]
        assert after_a - before_a == SPOOFED, (before_a, after_a)
        assert after_b == before_b
        alice.ns.run(["ip", "addr", "del", f"{b_vip}/32", "dev", alice.name])

        # a reconnect keeps the address: bob goes and comes back (alice's stays too)
        old_spi = srv.client("bob@test")["spi_r"]  # type: ignore[index]
        bob.down()
        deadline = time.monotonic() + 10
        while srv.client("bob@test") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.client("bob@test") is None, "the server kept bob's SA after his DELETE"
        bob.up()
        assert bob.status()["virtual_ip"][0].split("/")[0] == b_vip
        b = srv.client("bob@test")
        assert b is not None and b["spi_r"] != old_spi and b["virtual_ip"] == [b_vip]
        ping(topo.client, b_vip)
        ping(topo.client2, SERVER_INNER)
        alice.down()
        bob.down()


def test_a_restarted_client_replaces_its_old_sa_at_once(lab: Lab, tmp_path: Path) -> None:
    """RFC 7296 §2.4 (K16): a client that crashed and comes back sends INITIAL_CONTACT;
    the server drops the identity's old IKE SA at once (not after DPD), and the address
    goes to the new SA, still held by it once the old one is gone."""
    topo = build_ike_topology(lab)
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(clients=["alice@test"])
        cli = ik.client(topo.client, "alice@test", protocol="tcp", dpd=30)
        cli.up()
        old = srv.wait_client("alice@test")
        cli.kill9()  # no DELETE reaches the server
        assert [c["spi_i"] for c in srv.clients()] == [old["spi_i"]]
        cli.up()
        new = srv.wait_client("alice@test", lambda c: c["spi_i"] != old["spi_i"])
        clients = srv.clients()
        assert [c["spi_i"] for c in clients] == [new["spi_i"]], clients  # the old one went
        assert new["virtual_ip"] == old["virtual_ip"]
        assert any("replaced (INITIAL_CONTACT)" in e for e in srv.events()), srv.events()
        ping(topo.client, SERVER_INNER)
        ping(topo.server, new["virtual_ip"][0])
        cli.down()


def test_ipv4_and_ipv6_virtual_addresses(lab: Lab, tmp_path: Path) -> None:
    """`[ike] ipv6 = true` asks for both families (RFC 7296 §3.15: INTERNAL_IP4_ADDRESS and
    INTERNAL_IP6_ADDRESS); the server leases one of each from its pools, routes both in
    C, and gives the same pair again after a reconnect."""
    topo = build_ike_topology(lab)
    inner6, net6 = "fd10:10::1", "fd10:10::/64"
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(clients=["alice@test"], inner6=f"{inner6}/64")
        cli = ik.client(topo.client, "alice@test", protocol="tcp", routes=("10.10.0.0/24", net6),
                        ike_extra="ipv6 = true\n")
        cli.up()
        vips = cli.status()["virtual_ip"]
        v4 = [v.split("/")[0] for v in vips if "." in v]
        v6 = [v.split("/")[0] for v in vips if ":" in v]
        assert len(v4) == 1 and len(v6) == 1 and v6[0].startswith("fd10:10::"), vips
        c = srv.wait_client("alice@test")
        assert sorted(c["virtual_ip"]) == sorted([v4[0], v6[0]]), c
        ping(topo.client, inner6)
        ping(topo.server, v6[0])
        ping(topo.client, SERVER_INNER)
        cli.down()
        cli.up()
        again = cli.status()["virtual_ip"]
        assert sorted(again) == sorted(vips), (again, vips)
        ping(topo.client, inner6)
        cli.down()
