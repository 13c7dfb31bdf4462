"""Forwarding to an uplink: a host beyond the server (with no route back to the pool) is
reached from the client through the tunnel and sees the server's uplink address as the
source (nftables masquerade); TCP SYNs leaving through the tunnel have their MSS
clamped to the tunnel MTU; the server's table is gone after it stops.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .ike_server_helpers import POOL4, SERVER_INNER, build_ike_topology, ike_lab, ns_state, ping
from .manual import Capture
from .netns import Lab

pytestmark = pytest.mark.netns

PORT = 5302
TUN_MTU = 1400  # the default [tunnel] mtu
CLAMPED_MSS = TUN_MTU - 40  # IPv4 + TCP headers

# accept one connection, report who it came from
ECHO_PEER = r"""
import json, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
s.settimeout(20)
c, addr = s.accept()
c.sendall(b"hello")
c.close()
print(json.dumps({"peer": addr[0]}), flush=True)
"""

FETCH = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(c.recv(100).decode(), flush=True)
"""


def test_uplink_masquerade_and_mss_clamp(lab: Lab, tmp_path: Path) -> None:
    topo = build_ike_topology(lab, beyond=True)
    assert topo.beyond is not None
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(uplink=topo.uplink_if)
        cli = ik.client(topo.client, "alice@test", protocol="tcp", routes=(POOL4, topo.beyond_net))
        cli.up()
        ping(topo.client, SERVER_INNER)
        ping(topo.client, topo.beyond_v4)  # through the tunnel, then out of the uplink

        cap = Capture(topo.server, "iks", f"tcp port {PORT}", tmp_path / "tun.pcap")
        peer = topo.beyond.popen([sys.executable, "-u", "-c", ECHO_PEER, str(PORT)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert peer.stdout is not None and peer.stdout.readline().strip() == b"listening"
        r = topo.client.run([sys.executable, "-c", FETCH, topo.beyond_v4, str(PORT)], timeout=20)
        assert r.stdout.decode().strip() == "hello"
        out, _ = peer.communicate(timeout=20)
        seen = json.loads(out.decode().strip().splitlines()[-1])
        assert seen["peer"] == topo.uplink_v4, f"the host beyond saw {seen['peer']}, not the uplink address"

        # the beyond host offered MSS 1460 (its link has MTU 1500); what entered the
        # tunnel toward the client was clamped to fit the tunnel MTU
        from scapy.layers.inet import TCP

        packets = cap.stop()
        synacks = [p[TCP] for p in packets if TCP in p and p[TCP].flags & 0x12 == 0x12]
        assert synacks, "no SYN-ACK crossed the server's TUN"
        mss = dict(synacks[0].options).get("MSS")
        assert mss == CLAMPED_MSS, f"SYN-ACK MSS {mss}, want {CLAMPED_MSS}"

        c = srv.client("alice@test")
        assert c is not None and c["counters"]["ts_violation"] == 0
        nft = ns_state(topo.server)["nft"]
        assert f'oifname "{topo.uplink_if}" masquerade' in nft and "maxseg size set rt mtu" in nft
        assert srv.stop(signal.SIGTERM) == 0
        assert "vpn_iks" not in ns_state(topo.server)["nft"]
        cli.down()


def test_a_client_reaches_only_the_offered_subnets(lab: Lab, tmp_path: Path) -> None:
    """RFC 4301 §5.2: with `subnets` the server narrows the client's TSr to them and
    drops (and counts) inner packets to anywhere else, even if the client routes them
    into the tunnel."""
    topo = build_ike_topology(lab, beyond=True)
    assert topo.beyond is not None
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(uplink=topo.uplink_if, extra=f'subnets = ["{POOL4}"]\n')
        cli = ik.client(topo.client, "alice@test", protocol="tcp", routes=(POOL4, topo.beyond_net))
        cli.up()
        assert [c["ts_remote"] for c in cli.status()["child_sas"]] == [[f"{POOL4.split('/')[0]}-10.10.0.255"]]
        ping(topo.client, SERVER_INNER)
        r = topo.client.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", topo.beyond_v4], check=False)
        assert r.returncode != 0, "the host beyond the offered subnets was reached"
        c = srv.client("alice@test")
        assert c is not None and c["counters"]["ts_violation"] >= 3, c["counters"]
        cli.down()
