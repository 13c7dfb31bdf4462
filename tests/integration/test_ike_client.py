"""The IKE client (`vpn up`, mode = "ike") against our server, in network namespaces.

- Full tunnel: traffic to an address beyond the server goes through the tunnel (seen on
  the server's TUN, never in clear on the client's outer link) while the outer
  connection stays outside it (fwmark + policy routing); the pushed DNS server is used
  for lookups (they arrive on the server's TUN); `vpn status` shows the SAs; `vpn down`
  leaves the namespace exactly as it was (addresses, routes, rules, nftables,
  resolv.conf).
- A crash (SIGKILL) leaves the kill switch and the journal; the next `vpn up` undoes the
  journal and comes up, and its `vpn down` leaves the namespace as found; after another
  crash, `vpn down` with no daemon undoes everything too.
- With a split tunnel, the kill switch lets nothing out in clear, also after the server
  died; `vpn status` says when and why `auto` fell back to TCP.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .ike import (
    CLIENT_INNER,
    FWMARK,
    ORIGINAL_RESOLV,
    SERVER_INNER,
    Listener,
    daemon_gone,
    ike_tunnel,
    tcp_probe,
    udp_probe,
)
from .manual import Capture
from .netns import Topology

pytestmark = pytest.mark.netns

PROBE_PORT = 7070


def test_full_tunnel_routes_beyond_the_server_and_uses_the_pushed_dns(topology: Topology,
                                                                      tmp_path: Path) -> None:
    t = topology
    with ike_tunnel(t, tmp_path, protocol="udp", uplink=t.server_if) as vpn:
        before = vpn.snapshot()
        vpn.server.start()
        vpn.client.up()
        tun = vpn.client.status()["device"]

        # the outer connection leaves by the main table, everything else by our table
        route = t.client.run(["ip", "route", "get", t.router_server_v4]).stdout.decode()
        assert f"dev {tun}" in route, route
        route = t.client.run(["ip", "route", "get", t.server_v4, "mark", hex(FWMARK)]).stdout.decode()
        assert f"dev {t.client_if}" in route, route
        route6 = t.client.run(["ip", "-6", "route", "get", t.router_server_v6]).stdout.decode()
        assert f"dev {tun}" in route6, route6

        # DNS: the server's address replaced ours; search and options were kept
        text = vpn.resolv_conf.read_text()
        assert f"nameserver {SERVER_INNER}" in text and "192.0.2.53" not in text, text
        assert "search example.test" in text and "options timeout:1 attempts:1" in text, text

        server_tun = vpn.server.status()["device"]
        inner = Capture(t.server, server_tun, "icmp or udp port 53", tmp_path / "server-tun.pcap")
        outer = Capture(t.client, t.client_if, "ip or ip6", tmp_path / "client-outer.pcap")
        vpn.ping(t.router_server_v4)  # beyond the server: forwarded and masqueraded there
        t.client.run(["getent", "hosts", "probe.example.test"], check=False, timeout=15)
        inner_pkts, outer_pkts = inner.stop(), outer.stop()

        from scapy.layers.inet import ICMP, IP, UDP

        echoes = [p for p in inner_pkts if ICMP in p and p[ICMP].type == 8]
        assert echoes and all(p[IP].src == CLIENT_INNER and p[IP].dst == t.router_server_v4 for p in echoes)
        queries = [p for p in inner_pkts if UDP in p and p[UDP].dport == 53]
        assert queries and all(p[IP].src == CLIENT_INNER and p[IP].dst == SERVER_INNER for p in queries)
        # in clear on the client's outer link: only the tunnel itself, to and from the server
        for p in outer_pkts:
            if IP not in p:
                continue  # IPv6: neighbour discovery only (nothing is routed there in clear)
            assert ICMP not in p, f"ICMP in clear on the outer link: {p.summary()}"
            peer = p[IP].dst if p[IP].src == t.client_v4 else p[IP].src
            assert peer == t.server_v4 and UDP in p and 4500 in (p[UDP].sport, p[UDP].dport), p.summary()
        assert any(IP in p for p in outer_pkts), "no tunnel packets on the outer link"

        st = vpn.client.status()
        assert st["state"] == "up" and st["role"] == "client"
        assert st["transport"] == "udp" and st["fell_back"] is False and st["fallback_reason"] is None
        assert st["virtual_ip"] == [f"{CLIENT_INNER}/32"]
        assert st["dns"] == [SERVER_INNER] and st["dns_method"] == "in-place"
        assert st["server_address"] == f"{t.server_v4}:4500"
        ike = st["ike_sa"]
        assert re.fullmatch(r"[0-9a-f]{16}", ike["spi_i"]) and re.fullmatch(r"[0-9a-f]{16}", ike["spi_r"])
        assert ike["peer"] == "vpn.test" and "AES_GCM_16" in ike["algorithms"]
        assert 0 < ike["rekey_in_s"] <= 4 * 3600
        assert ike["dpd"]["interval_s"] == 30 and ike["dpd"]["next_in_s"] is not None
        (child,) = st["child_sas"]
        assert re.fullmatch(r"[0-9a-f]{8}", child["spi_in"]) and child["algorithms"].startswith("AES_GCM_16")
        assert child["out_packets"] >= 3 and child["in_packets"] >= 3 and child["out_bytes"] > 0
        assert 0 < child["rekey_in_s"] <= 3600
        server_side = vpn.server.status()["clients"][0]["child_sas"][0]
        assert server_side["spi_in"] == child["spi_out"] and server_side["spi_out"] == child["spi_in"]

        human = vpn.client.cli("status").stdout.decode()
        for text in (f"IKE SA {ike['spi_i']}_i {ike['spi_r']}_r", f"Child SA in {child['spi_in']}",
                     "over UDP", "rekey in", "full tunnel", f"virtual IP: {CLIENT_INNER}/32", "kill switch: off"):
            assert text in human, f"{text!r} not in:\n{human}"

        vpn.client.down()
        vpn.assert_unchanged(before)
        assert vpn.resolv_conf.read_text() == ORIGINAL_RESOLV


def test_kill_switch_through_a_crash_until_vpn_down(topology: Topology, tmp_path: Path) -> None:
    t = topology
    with ike_tunnel(t, tmp_path, protocol="tcp", kill_switch=True) as vpn:
        listener = Listener(t.router, t.router_client_v4, PROBE_PORT, tmp_path / "listener.out")
        assert tcp_probe(t.client, t.router_client_v4, PROBE_PORT) == "ok"
        before = vpn.snapshot()
        vpn.server.start()
        vpn.client.up()
        vpn.ping(SERVER_INNER)
        nft = t.client.run(["nft", "list", "ruleset"]).stdout.decode()
        assert "table inet vpnks_ikc" in nft, nft

        vpn.client.kill9()  # no clean-up at all: TUN, routes and the SA are gone with it
        assert daemon_gone(vpn.client)
        left = vpn.client.run_files()
        assert {"ikc.journal", "ikc.dns.json", "ikc.killswitch.json"} <= set(left), left
        # nothing unmarked gets out: TCP is reset locally, UDP refused at sendto
        assert tcp_probe(t.client, t.router_client_v4, PROBE_PORT) == "ConnectionRefusedError"
        assert udp_probe(t.client, t.router_client_v4, PROBE_PORT, b"leak") == "PermissionError"
        # ... but our own marked sockets still do (the next `vpn up` needs them)
        assert tcp_probe(t.client, t.router_client_v4, PROBE_PORT, mark=FWMARK) == "ok"
        assert udp_probe(t.client, t.router_client_v4, PROBE_PORT, b"marked", mark=FWMARK) == "sent"
        blocked = t.client.run(["nft", "list", "table", "inet", "vpnks_ikc"]).stdout.decode()
        assert re.search(r"counter packets [1-9]", blocked), blocked

        # the next `vpn up` undoes the crashed instance's journal and comes up
        vpn.client.up()
        assert "undid the changes of an earlier instance" in vpn.client.log_tail(60)
        vpn.ping(SERVER_INNER)
        rules = t.client.run(["ip", "rule"]).stdout.decode()
        assert rules.count("not from all fwmark 0x5650") == 1, rules
        st = vpn.client.status()
        assert st["kill_switch"]["table"] == "inet vpnks_ikc"
        vpn.client.down()  # the recovered instance stops cleanly: exactly as found
        vpn.assert_unchanged(before)

        vpn.client.up()
        vpn.client.kill9()
        r = vpn.client.cli("status", check=False)
        assert r.returncode == 1 and b"ikc did not stop cleanly" in r.stderr and b"vpn down ikc" in r.stderr, r
        r = vpn.client.cli("down")  # no daemon: undo what it left
        out = r.stdout.decode()
        assert "not running; undid" in out and "DNS" in out and "kill switch" in out, out
        vpn.assert_unchanged(before)
        assert tcp_probe(t.client, t.router_client_v4, PROBE_PORT) == "ok"
        assert udp_probe(t.client, t.router_client_v4, PROBE_PORT, b"after") == "sent"
        got = listener.lines()
        udp = [ln for ln in got if ln.startswith("udp")]
        assert udp[-1].endswith("after") and not any(ln.endswith("leak") for ln in udp), got
        assert any(ln.endswith("marked") for ln in udp), got
        r = vpn.client.cli("down", check=False)
        assert r.returncode != 0 and b"no instance" in r.stderr, r


def test_status_json_is_valid_json_for_a_split_tunnel(topology: Topology, tmp_path: Path) -> None:
    with ike_tunnel(topology, tmp_path, protocol="tcp", full_tunnel=False, dns=False) as vpn:
        vpn.server.start()
        vpn.client.up()
        st = json.loads(vpn.client.cli("status", "--json").stdout)
        assert st["full_tunnel"] is False and st["dns"] == [] and st["kill_switch"] is None
        routes = topology.client.run(["ip", "route"]).stdout.decode()
        assert "default" in routes and f"dev {st['device']}" not in routes.split("default")[1].split("\n")[0]
        vpn.client.down()


def test_kill_switch_lets_nothing_out_in_clear_while_the_server_is_dead(topology: Topology,
                                                                       tmp_path: Path) -> None:
    """Split tunnel (only the pool is routed into it) with the kill switch: a plain
    connection to the router fails with the tunnel up and after the server died; on the
    outer link there is nothing but the client's own tunnel packets to the server."""
    t = topology
    with ike_tunnel(t, tmp_path, protocol="udp", kill_switch=True, full_tunnel=False, dns=False,
                    routes=("10.10.0.0/24",), dpd=1, peer_timeout=3) as vpn:
        listener = Listener(t.router, t.router_client_v4, PROBE_PORT, tmp_path / "listener.out")
        before = vpn.snapshot()
        vpn.server.start()
        outer = Capture(t.client, t.client_if, "ip", tmp_path / "client-outer.pcap")
        vpn.client.up()
        vpn.ping(SERVER_INNER)
        assert tcp_probe(t.client, t.router_client_v4, PROBE_PORT) == "ConnectionRefusedError"
        assert udp_probe(t.client, t.router_client_v4, PROBE_PORT, b"leak-up") == "PermissionError"

        vpn.server.kill9()
        vpn.wait_status(lambda st: st["ike_sa"] is None, 15, "the client noticed the dead server")
        assert tcp_probe(t.client, t.router_client_v4, PROBE_PORT) == "ConnectionRefusedError"
        assert udp_probe(t.client, t.router_client_v4, PROBE_PORT, b"leak-dead") == "PermissionError"
        r = t.client.run(["ping", "-c", "1", "-W", "1", t.router_client_v4], check=False)
        assert r.returncode != 0
        packets = outer.stop()

        from scapy.layers.inet import IP, UDP

        sent = [p for p in packets if IP in p and p[IP].src == t.client_v4]
        assert sent, "the client sent nothing (no DPD, no new IKE_SA_INIT?)"
        for p in sent:
            assert p[IP].dst == t.server_v4 and UDP in p and p[UDP].dport in (500, 4500), p.summary()
        assert listener.lines() == []
        st = vpn.client.status()
        assert st["kill_switch"]["blocked_packets"] >= 5, st["kill_switch"]

        vpn.client.down()
        vpn.assert_unchanged(before)
        assert tcp_probe(t.client, t.router_client_v4, PROBE_PORT) == "ok"


def test_status_says_that_and_why_it_fell_back_to_tcp(topology: Topology, tmp_path: Path) -> None:
    """auto: UDP first; the router drops UDP 500/4500, so after `fallback_after` a fresh
    IKE_SA_INIT goes over TCP (RFC 9329 §5.1), and status and log say so, and why."""
    t = topology
    t.router.nft("table inet blockudp {\n chain forward_udp {\n  type filter hook forward priority 0;\n"
                 "  udp dport { 500, 4500 } drop\n }\n}\n")
    with ike_tunnel(t, tmp_path, protocol="auto", fallback_after=1.5, dns=False) as vpn:
        vpn.server.start()
        vpn.client.up()
        vpn.ping(SERVER_INNER)
        st = vpn.client.status()
        assert st["configured_transport"] == "auto" and st["transport"] == "tcp"
        assert st["fell_back"] is True and st["fallback_reason"] == "no answer over UDP within 1.5 s"
        assert st["server_address"] == f"{t.server_v4}:4500"
        human = vpn.client.cli("status").stdout.decode()
        assert "over TCP (fell back from UDP: no answer over UDP within 1.5 s)" in human, human
        assert "falling back from UDP to TCP: no answer over UDP within 1.5 s" in vpn.client.log_tail()
        vpn.client.down()
