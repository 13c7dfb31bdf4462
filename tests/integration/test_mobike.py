"""MOBIKE moves a live tunnel between UDP and TCP/TLS (RFC 4555, RFC 9329 §7.1, the
seed's Appendix B.4) and across address changes, with a transfer running.

The client has two uplinks through the router (netns.TwoUplinkTopology). It starts on
UDP over uplink 1; we move it to uplink 2, where the router drops UDP: its
UPDATE_SA_ADDRESSES gets no answer over UDP, so it opens TCP (or TLS) and resends the
same request there; the server moves the IKE SA and its Child SA; the transfer goes on.
When UDP is let through again the client's probe moves it back and it closes the stream.
The IKE and Child SA SPIs and the virtual address never change.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import require_netns
from .ike import CLIENT_INNER, SERVER_INNER, IkeTunnel, ike_tunnel
from .manual import VPN, TransferRun
from .netns import Lab, TwoUplinkTopology, build_two_uplink_topology
from .test_tls_transport import make_cert

MOBIKE_WAIT_S = 2
UDP_PROBE_S = 3


def block_udp(table: str, iifname: str | None = None) -> str:
    """nft commands that drop IKE/ESP over UDP in the router (from one uplink, or all)."""
    match = f"iifname {iifname} " if iifname else ""
    return (f"add table inet {table}\n"
            f"add chain inet {table} f {{ type filter hook forward priority 0; }}\n"
            f"add rule inet {table} f {match}udp dport {{ 500, 4500 }} drop\n")


BLOCK_UDP_ON_UPLINK2 = block_udp("mob", "r-c2")
# a NAT in the router that gives the client another outer address on each uplink
NAT_PER_UPLINK = (
    "add table ip mobnat\n"
    "add chain ip mobnat post { type nat hook postrouting priority srcnat; }\n"
    'add rule ip mobnat post iifname "r-c" oifname "r-s" snat to 10.201.2.101\n'
    'add rule ip mobnat post iifname "r-c2" oifname "r-s" snat to 10.201.2.102\n'
)


@pytest.fixture
def two_uplinks() -> Iterator[TwoUplinkTopology]:
    require_netns()
    with Lab() as lab:
        yield build_two_uplink_topology(lab)


def _client_cfg(fallback: str) -> dict[str, Any]:
    return dict(protocol="udp", full_tunnel=False, dns=False, routes=("10.10.0.0/24",), dpd=0,
                peer_timeout=30,
                transport_extra=f"mobike_wait = {MOBIKE_WAIT_S}\nudp_probe = {UDP_PROBE_S}",
                ike_extra=f'fallback = "{fallback}"')


def _auto_cfg(udp_probe: int = UDP_PROBE_S) -> dict[str, Any]:
    """`protocol = "auto"` (UDP first, TCP after 1.5 s of silence) with MOBIKE."""
    cfg = _client_cfg("tcp")
    cfg.update(protocol="auto", fallback_after=1.5,
               transport_extra=f"mobike_wait = {MOBIKE_WAIT_S}\nudp_probe = {udp_probe}")
    return cfg


def _spis(st: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]]]:
    ike = st["ike_sa"]
    return ike["spi_i"], ike["spi_r"], [(c["spi_in"], c["spi_out"]) for c in st["child_sas"]]


def _server_client(vpn: IkeTunnel) -> dict[str, Any]:
    clients = vpn.server.status()["clients"]
    assert len(clients) == 1, clients
    return dict(clients[0])


def _move_and_back(vpn: IkeTunnel, t: TwoUplinkTopology, fallback: str, *, nat: bool) -> None:
    vpn.server.start()
    vpn.client.up()
    st0 = vpn.client.status()
    assert st0["transport"] == "udp" and st0["mobike"] is True
    before = _spis(st0)
    vip = st0["virtual_ip"]
    srv0 = _server_client(vpn)
    run = TransferRun(t.client, t.server, SERVER_INNER, 48 << 20, rate=6 << 20)
    run.wait_progress(4 << 20)

    # 1. a new network that blocks UDP: the same UPDATE_SA_ADDRESSES goes over the stream
    t.router.nft(BLOCK_UDP_ON_UPLINK2)
    t.use_uplink(2)
    st1, waited = vpn.wait_status(lambda s: s["transport"] == fallback, 30, f"move to {fallback}")
    assert waited < MOBIKE_WAIT_S + 10
    move = st1["moves"][-1]
    assert (move["from"], move["to"]) == ("udp", fallback) and "no answer over UDP" in move["reason"]
    assert _spis(st1) == before and st1["virtual_ip"] == vip
    srv1 = _server_client(vpn)
    assert srv1["transport"] == fallback and (srv1["spi_i"], srv1["spi_r"]) == (srv0["spi_i"], srv0["spi_r"])
    expected_src = "10.201.2.102" if nat else t.client2_v4
    assert expected_src in str(srv1["remote"]), srv1["remote"]
    srv_move = srv1["path_moves"][-1]  # the server's status shows the move, with time and reason
    assert (srv_move["from"], srv_move["to"]) == ("udp", fallback) and srv_move["time"]
    run.wait_progress((run.received or 0) + (4 << 20))  # data flows over the stream

    # 2. UDP works again: the client's probe moves it back and closes the stream
    t.router.nft("delete table inet mob")
    st2, _ = vpn.wait_status(lambda s: s["transport"] == "udp", 30, "move back to udp")
    back = st2["moves"][-1]
    assert (back["from"], back["to"]) == (fallback, "udp")
    assert _spis(st2) == before and st2["virtual_ip"] == vip
    srv2, _ = _wait_server(vpn, lambda c: c["transport"] == "udp", 10)
    assert expected_src in str(srv2["remote"])
    assert (srv2["path_moves"][-1]["from"], srv2["path_moves"][-1]["to"]) == (fallback, "udp")
    text = vpn.server.ns.run(["env", f"VPN_RUN_DIR={vpn.server.run_dir}", *VPN, "status"],
                             check=False).stdout.decode()
    assert f"{fallback.upper()} -> UDP" in text, text
    assert st2["connections"] == 0  # RFC 9329 §7.1 (T76): the old stream is closed
    result = run.finish()
    result.assert_intact(48 << 20)
    vpn.ping(SERVER_INNER)


def _wait_server(vpn: IkeTunnel, pred: Any, timeout: float) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    c: dict[str, Any] = {}
    while time.monotonic() - t0 < timeout:
        c = _server_client(vpn)
        if pred(c):
            return c, time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"server status: {c}")


def test_udp_to_tcp_and_back_keeps_the_sas(two_uplinks: TwoUplinkTopology, tmp_path: Path) -> None:
    with ike_tunnel(two_uplinks, tmp_path, **_client_cfg("tcp")) as vpn:
        _move_and_back(vpn, two_uplinks, "tcp", nat=False)


def test_udp_to_tls_through_a_nat(two_uplinks: TwoUplinkTopology, tmp_path: Path) -> None:
    t = two_uplinks
    t.router.nft(NAT_PER_UPLINK)
    for nat_addr in ("10.201.2.101", "10.201.2.102"):  # the router answers for its NAT addresses
        t.router.ip("addr", "add", f"{nat_addr}/24", "dev", "r-s")
    pin = make_cert(tmp_path)
    cfg = _client_cfg("tls")
    cfg["transport_extra"] += f'\ntls_pin_sha256 = "{pin}"'
    with ike_tunnel(t, tmp_path, server_tls=(tmp_path / "srv.pem", tmp_path / "srv.key"), **cfg) as vpn:
        _move_and_back(vpn, t, "tls", nat=True)


def test_plain_address_change_on_udp(two_uplinks: TwoUplinkTopology, tmp_path: Path) -> None:
    """A new local address on the same transport: the server follows the authenticated
    UPDATE_SA_ADDRESSES; nothing else changes."""
    t = two_uplinks
    with ike_tunnel(t, tmp_path, **_client_cfg("tcp")) as vpn:
        vpn.server.start()
        vpn.client.up()
        before = _spis(vpn.client.status())
        t.use_uplink(2)
        st, _ = vpn.wait_status(lambda s: any(m["from"] == m["to"] == "udp" for m in s["moves"]), 20,
                                "address change on UDP")
        assert st["transport"] == "udp" and _spis(st) == before
        srv, _ = _wait_server(vpn, lambda c: t.client2_v4 in str(c["remote"]), 10)
        assert srv["transport"] == "udp"
        vpn.ping(SERVER_INNER)
        assert CLIENT_INNER in st["virtual_ip"][0]


def _informational_requests(messages: list[bytes]) -> dict[int, bytes]:
    """IKE INFORMATIONAL requests from the original initiator, by message ID."""
    out = {}
    for m in messages:
        if len(m) >= 28 and m[18] == 37 and m[19] & 0x08 and not m[19] & 0x20:
            out[int.from_bytes(m[20:24], "big")] = m
    return out


def test_the_update_is_the_same_message_on_udp_and_tcp(two_uplinks: TwoUplinkTopology,
                                                      tmp_path: Path) -> None:
    """RFC 9329 §7.1: after UDP went unanswered the client resends the same request (same
    message ID, same bytes) over TCP; it does not start a new exchange. Checked on the
    wire, on the router's port towards uplink 2."""
    from scapy.layers.inet import UDP

    from .manual import Capture, split_frames, tcp_payload

    t = two_uplinks
    with ike_tunnel(t, tmp_path, **_client_cfg("tcp")) as vpn:
        vpn.server.start()
        vpn.client.up()
        cap = Capture(t.router, "r-c2", f"host {t.server_v4}", tmp_path / "move.pcap")
        t.router.nft(BLOCK_UDP_ON_UPLINK2)
        t.use_uplink(2)
        vpn.wait_status(lambda s: s["transport"] == "tcp" and s["moves"], 30, "move to tcp")
        time.sleep(1)
        packets = cap.stop()
    over_udp = [bytes(p[UDP].payload)[4:] for p in packets
                if UDP in p and p[UDP].dport == 4500 and bytes(p[UDP].payload)[:4] == b"\0\0\0\0"]
    frames, _rest = split_frames(tcp_payload(packets, 4500))
    over_tcp = [f[4:] for f in frames if f[:4] == b"\0\0\0\0"]
    udp_reqs, tcp_reqs = _informational_requests(over_udp), _informational_requests(over_tcp)
    assert udp_reqs, "no INFORMATIONAL request went out over UDP on the new network"
    first_id = min(udp_reqs)
    assert first_id in tcp_reqs, f"the request {first_id} was not resent over TCP ({sorted(tcp_reqs)})"
    assert tcp_reqs[first_id] == udp_reqs[first_id]  # byte for byte: the same message
    # afterwards a new UPDATE with NAT detection for the TCP path follows (RFC 9329 §7.1)
    assert max(tcp_reqs) > first_id


def test_a_forged_update_moves_nothing(two_uplinks: TwoUplinkTopology, tmp_path: Path) -> None:
    """An UPDATE_SA_ADDRESSES with a broken ICV, from another port, is dropped: the
    server's view of the client does not change (RFC 4555 §5: only authenticated
    messages move an SA)."""
    from scapy.layers.inet import UDP

    from .manual import Capture

    t = two_uplinks
    with ike_tunnel(t, tmp_path, **_client_cfg("tcp")) as vpn:
        vpn.server.start()
        vpn.client.up()
        cap = Capture(t.router, "r-c2", f"host {t.server_v4} and udp", tmp_path / "upd.pcap")
        t.use_uplink(2)
        vpn.wait_status(lambda s: any(m["from"] == m["to"] == "udp" for m in s["moves"]), 20, "update")
        packets = cap.stop()
        updates = [bytes(p[UDP].payload) for p in packets
                   if UDP in p and p[UDP].dport == 4500 and bytes(p[UDP].payload)[:4] == b"\0\0\0\0"]
        reqs = _informational_requests([u[4:] for u in updates])
        assert reqs
        genuine = reqs[min(reqs)]
        before = _server_client(vpn)
        forged = bytearray(genuine)
        forged[-5] ^= 0x55  # inside the ICV
        for port in (40001, 40002):  # a "new NAT mapping" that did not authenticate
            t.client.run(["python3", "-c",
                          "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                          "s.bind(('',int(sys.argv[1])));s.sendto(bytes.fromhex(sys.argv[2]),(sys.argv[3],4500))",
                          str(port), (b"\0\0\0\0" + bytes(forged)).hex(), t.server_v4])
        time.sleep(1)
        after = _server_client(vpn)
        assert after["remote"] == before["remote"]
        assert after["counters"]["moves"] == before["counters"]["moves"]
        vpn.ping(SERVER_INNER)


def test_without_mobike_the_client_says_so_and_the_server_follows(two_uplinks: TwoUplinkTopology,
                                                                  tmp_path: Path) -> None:
    """A client that does not negotiate MOBIKE keeps the connection-level behaviour: it
    says so, and over UDP the server follows its authenticated new address (RFC 7296
    §2.23) so the tunnel keeps working."""
    t = two_uplinks
    cfg = _client_cfg("tcp")
    cfg["ike_extra"] += "\nmobike = false"
    with ike_tunnel(t, tmp_path, **cfg) as vpn:
        vpn.server.start()
        vpn.client.up()
        st0 = vpn.client.status()
        assert st0["mobike"] is False
        t.use_uplink(2)
        st, _ = vpn.wait_status(lambda s: any("did not negotiate MOBIKE" in e for e in s["events"]), 20,
                                "the no-MOBIKE notice")
        assert _spis(st) == _spis(st0)
        vpn.ping(SERVER_INNER)  # ESP from the new address authenticates; the server follows it
        srv, _ = _wait_server(vpn, lambda c: t.client2_v4 in str(c["remote"]), 10)
        assert srv["transport"] == "udp"


def test_auto_fallback_moves_to_udp_once_it_works(two_uplinks: TwoUplinkTopology, tmp_path: Path) -> None:
    """`protocol = "auto"` with UDP blocked falls back to a new IKE SA over TCP (RFC 9329
    §5.1); with MOBIKE the client keeps probing UDP and, once UDP passes, moves that
    same IKE SA to UDP and closes the stream (RFC 9329 §9: UDP is preferred)."""
    t = two_uplinks
    t.router.nft(block_udp("blk"))
    cfg = _auto_cfg()
    with ike_tunnel(t, tmp_path, **cfg) as vpn:
        vpn.server.start()
        vpn.client.up()
        st0 = vpn.client.status()
        assert st0["transport"] == "tcp" and st0["fell_back"] is True and st0["mobike"] is True, st0
        before = _spis(st0)
        run = TransferRun(t.client, t.server, SERVER_INNER, 24 << 20, rate=6 << 20)
        run.wait_progress(2 << 20)
        time.sleep(UDP_PROBE_S + MOBIKE_WAIT_S)  # probes go unanswered meanwhile
        assert vpn.client.status()["transport"] == "tcp"
        t.router.nft("delete table inet blk")
        st, _ = vpn.wait_status(lambda s: s["transport"] == "udp", 30, "move to udp")
        assert (st["moves"][-1]["from"], st["moves"][-1]["to"]) == ("tcp", "udp")
        assert _spis(st) == before and st["virtual_ip"] == st0["virtual_ip"]
        srv, _ = _wait_server(vpn, lambda c: c["transport"] == "udp", 10)
        assert (srv["path_moves"][-1]["from"], srv["path_moves"][-1]["to"]) == ("tcp", "udp")
        assert st["connections"] == 0  # the stream is closed (RFC 9329 §7.1, T76)
        run.finish().assert_intact(24 << 20)
        vpn.ping(SERVER_INNER)


def test_on_a_stream_a_new_network_tries_udp_at_once(two_uplinks: TwoUplinkTopology, tmp_path: Path) -> None:
    """RFC 9329 §7.1 (T72): fallen back to TCP on a network that blocks UDP, the client
    moves to a network where UDP passes: it reconnects the stream and tries UDP right
    away (not at the next periodic probe, a minute away here), and ends up on UDP."""
    t = two_uplinks
    t.router.nft(block_udp("blk1", "r-c"))
    cfg = _auto_cfg(udp_probe=60)
    with ike_tunnel(t, tmp_path, **cfg) as vpn:
        vpn.server.start()
        vpn.client.up()
        st0 = vpn.client.status()
        assert st0["transport"] == "tcp" and st0["fell_back"] is True, st0
        t.use_uplink(2)
        st, waited = vpn.wait_status(lambda s: s["transport"] == "udp", 30, "move to udp")
        assert waited < 15, waited
        assert _spis(st) == _spis(st0) and st["connections"] == 0
        _wait_server(vpn, lambda c: c["transport"] == "udp" and t.client2_v4 in str(c["remote"]), 10)
        vpn.ping(SERVER_INNER)
