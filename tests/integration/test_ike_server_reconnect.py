"""The outer connection breaks and comes back (RFC 9329 §6.1, Appendix B).

- A middlebox resets the TCP (or TLS) connection in the middle of a transfer: the
  client, the TCP Originator, reconnects; the IKE SA and its Child SA survive (the same
  SPIs on both sides); the server moves its return path to the new connection; the
  transfer completes byte for byte; over TLS the session is resumed.
- The server moves its return path only after a message authenticated on the new
  connection (§6.1, T44/T46): a connection that brings garbage under the client's IKE
  or ESP SPIs, or a replay of a request the client really sent, moves nothing; the
  listener closes it (no IKE SA on it, T34) and the client's tunnel keeps working.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .ike import ike_tunnel
from .ike_server_helpers import SERVER_INNER, TimedTransfer, build_ike_topology, ike_lab, ping, wait_until
from .manual import MB, Capture, split_frames, tcp_payload
from .netns import Lab, Netns, Topology

pytestmark = pytest.mark.netns

TOTAL = 64 * MB
RATE = 16 * MB  # bytes/s: ~4 s, so the reset lands in the middle
OUTAGE_S = 1.0


def reset_rules(port: int) -> str:
    return f"""
table inet ikereset {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        tcp dport {port} reject with tcp reset
        tcp sport {port} reject with tcp reset
    }}
}}
"""


def reset_once(router: Netns, port: int, client_status: Callable[[], dict[str, Any]]) -> None:
    """Reset the client's connection in the router until the client notices, and keep
    resetting for OUTAGE_S more."""
    router.nft(reset_rules(port))
    try:
        wait_until(lambda: any("connection lost" in e for e in client_status()["events"]),
                   "the client to see the reset", timeout=10)
        time.sleep(OUTAGE_S)
    finally:
        router.run(["nft", "delete", "table", "inet", "ikereset"])


def sa_ids(st: dict[str, object]) -> tuple[str, str, list[str]]:
    ike = st["ike_sa"] if "ike_sa" in st else st  # the client nests it, a server's client row does not
    assert isinstance(ike, dict), st
    children = st["child_sas"]
    assert isinstance(children, list)
    return ike["spi_i"], ike["spi_r"], sorted(c["spi_in"] + "/" + c["spi_out"] for c in children)


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_reset_mid_transfer_keeps_the_ike_sa(lab: Lab, tmp_path: Path, protocol: str) -> None:
    topo = build_ike_topology(lab)
    port = 443 if protocol == "tls" else 4500
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server()
        cli = ik.client(topo.client, "alice@test", protocol=protocol)
        cli.up()
        ping(topo.client, SERVER_INNER)
        before_c = cli.status()
        before_s = srv.client("alice@test")
        assert before_s is not None
        first_remote = before_s["remote"]

        run = TimedTransfer(topo.client, topo.server, SERVER_INNER, TOTAL, rate=RATE)
        run.wait_progress(TOTAL // 4)
        reset_once(topo.router, port, cli.status)
        assert run.received < TOTAL, "the transfer ended before the reset: nothing was tested"
        run.finish().assert_intact(TOTAL)

        after_s = wait_until(lambda: (c := srv.client("alice@test")) and c["connected"]
                             and c["remote"] != first_remote and c, "the server's new return path")
        after_c = cli.status()
        # the same IKE SA and Child SA on both sides (RFC 9329 §6.1, T35)
        assert sa_ids(after_c) == sa_ids(before_c)
        assert sa_ids(after_s) == sa_ids(before_s)
        assert after_c["sessions_started"] == 1
        events = srv.events()
        moved = [e for e in events if "return path moved to " + after_s["remote"] in e]
        assert moved and "authenticated there" in moved[-1], events
        assert after_s["transport"] == protocol
        if protocol == "tls":
            assert after_c["tls"]["handshakes"] >= 2 and after_c["tls"]["resumed"] >= 1, after_c["tls"]
        ping(topo.client, SERVER_INNER)
        ping(topo.server, after_c["virtual_ip"][0].split("/")[0])
        cli.down()


def ike_frames(stream: bytes) -> list[bytes]:
    """The IKE messages of one direction of an RFC 9329 stream (Non-ESP marker stripped)."""
    frames, _rest = split_frames(stream)
    return [f[4:] for f in frames if f[:4] == b"\0\0\0\0"]


INJECT = r"""
import socket, sys, time
host, hexframes = sys.argv[1], sys.argv[2:]
s = socket.create_connection((host, 4500), timeout=5)
s.sendall(b"IKETCP" + b"".join(bytes.fromhex(h) for h in hexframes))
s.settimeout(10)
got, t0 = b"", time.monotonic()
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
except (TimeoutError, ConnectionResetError):
    pass
print(len(got), round(time.monotonic() - t0, 1), flush=True)
"""


def frame(msg: bytes, *, ike: bool) -> bytes:
    body = (b"\0\0\0\0" + msg) if ike else msg
    return (len(body) + 2).to_bytes(2, "big") + body


def test_return_path_moves_only_after_authentication(lab: Lab, tmp_path: Path) -> None:
    topo = build_ike_topology(lab)
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server()
        cli = ik.client(topo.client, "alice@test", protocol="tcp", dpd=1)
        cap = Capture(topo.router, "r-s", "tcp port 4500", tmp_path / "ike.pcap")
        cli.up()
        # an idle tunnel: the client's DPD sends INFORMATIONAL requests
        time.sleep(2.5)
        packets = cap.stop()
        requests = [m for m in ike_frames(tcp_payload(packets, 4500)) if m[19] & 0x20 == 0 and m[18] == 37]
        assert requests, "no INFORMATIONAL request from the client was captured"
        replay = requests[-1]

        c = srv.client("alice@test")
        assert c is not None
        remote, moves = c["remote"], c["counters"]["moves"]
        spi_i, spi_r = bytes.fromhex(c["spi_i"]), bytes.fromhex(c["spi_r"])
        esp_spi = bytes.fromhex(c["child_sas"][0]["spi_in"])
        forged_ike = b""
        for step in (1, 2, 3):  # new message IDs (one of them the next expected)...
            forged = bytearray(replay)
            forged[20:24] = (int.from_bytes(replay[20:24], "big") + step).to_bytes(4, "big")
            forged[-16:] = bytes(16)  # ...whose ICV cannot be right
            forged_ike += frame(bytes(forged), ike=True)
        forged_esp = esp_spi + (10**6).to_bytes(4, "big") + bytes(100)
        cases = {
            "garbage IKE under the client's SPIs": forged_ike,
            "garbage ESP under the client's SPI": frame(forged_esp, ike=False),
            "a replay of the client's last request": frame(replay, ike=True),
        }
        assert replay[:16] == spi_i + spi_r
        orphans = 0
        for what, data in cases.items():
            r = topo.client.run([sys.executable, "-c", INJECT, topo.server_v4, data.hex()], timeout=30)
            nbytes, seconds = r.stdout.decode().split()
            after = srv.client("alice@test")
            assert after is not None and after["remote"] == remote, f"{what}: the return path moved"
            assert after["counters"]["moves"] == moves, f"{what}: the dataplane followed it"
            if "replay" in what and int(nbytes) > 0:
                # still the latest request: its cached response goes back where the
                # retransmission came from (RFC 7296 §2.1); no IKE SA lives on that
                # connection, so it is closed after T34's delay
                assert 4 < float(seconds) < 9, f"{what}: closed after {seconds} s"
                orphans += 1
            else:
                # an older request (DPD went on) is out of the window, like the garbage:
                # RFC 9329 §6.1 (T47): an authentication failure closes a new connection
                assert int(nbytes) == 0 and float(seconds) < 2, f"{what}: {nbytes} bytes, {seconds} s"
            ping(topo.client, SERVER_INNER, count=2)
        closed = srv.status()["listener"]["closed"]
        assert closed.get("orphan", 0) == orphans and closed.get("auth_failed") == len(cases) - orphans, closed
        assert any("return path moved" in e for e in srv.events()) is False
        cli.down()


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_the_client_closes_its_connection_after_the_delete(lab: Lab, tmp_path: Path, protocol: str) -> None:
    """RFC 9329 §6.1 (T33), App. B.2 (T103): `vpn down` deletes the IKE SA, then the
    Originator closes the connection itself (the first FIN is the client's), not left
    to the server's orphan timer."""
    from scapy.layers.inet import IP, TCP

    from .manual import Capture

    topo = build_ike_topology(lab)
    port = 443 if protocol == "tls" else 4500
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server()
        cli = ik.client(topo.client, "alice@test", protocol=protocol)
        cli.up()
        ping(topo.client, SERVER_INNER)
        cap = Capture(topo.router, "r-c", f"tcp port {port}", tmp_path / "down.pcap")
        cli.down()
        wait_until(lambda: not srv.clients(), "the server to drop the SA", timeout=10)
        packets = cap.stop()
        orphans = srv.status()["listener"]["closed"].get("orphan", 0)
    assert orphans == 0
    tcp = [p for p in packets if TCP in p]
    end_at = next((i for i, p in enumerate(tcp) if p[TCP].flags & 0x05), None)  # FIN or RST
    assert end_at is not None, "the connection was not closed"
    assert not any(p[IP].src == topo.base.server_v4 and p[TCP].flags & 0x04 for p in tcp), "the server reset"
    first = tcp[end_at]
    if protocol == "tcp":
        assert first[IP].src == topo.base.client_v4 and first[TCP].flags == "FA", first.summary()
    else:
        # App. B.2 (T103): the client's close_notify comes before any FIN: a 24-byte
        # TLS 1.3 record (5 header + 2 alert + 1 content type + 16 tag)
        sent = [bytes(p[TCP].payload) for p in tcp[:end_at + 1]
                if p[IP].src == topo.base.client_v4 and len(p[TCP].payload)]
        assert sent and len(sent[-1]) == 24 and sent[-1][:3] == b"\x17\x03\x03", sent[-1:]


# `vpn serve` with an IKE SA lifetime of seconds, so that the server rekeys the IKE SA
IKE_REKEYING_SERVER = """
import dataclasses, sys
from vpn import cli, server
from vpn.ike.policy import Lifetimes
real = server.server_policy
def short(cfg):
    policy, allocator = real(cfg)
    lifetimes = Lifetimes(ike_rekey_seconds=6.0, ike_lifetime_seconds=600.0)
    return dataclasses.replace(policy, lifetimes=lifetimes), allocator
server.server_policy = short
sys.exit(cli.main(["serve", sys.argv[1]]))
"""


def test_after_the_server_rekeys_the_ike_sa_the_client_stays_the_tcp_originator(topology: Topology,
                                                                                  tmp_path: Path) -> None:
    """RFC 9329 §1.2, §6.1: the server rekeys the IKE SA over TCP, so it initiated the
    new IKE SA (RFC 7296 §2.18); the client is still the TCP Originator: when the
    connection breaks it reconnects, the server never connects out, and the rekeyed IKE
    SA goes on with the transfer intact."""
    total = 16 * MB
    with ike_tunnel(topology, tmp_path, protocol="tcp", server_script=IKE_REKEYING_SERVER) as vpn:
        vpn.server.start()
        vpn.client.up()
        first = vpn.client.status()["ike_sa"]
        assert first["initiator"] is True
        st, _ = vpn.wait_status(lambda s: s["ike_sa"] and s["ike_sa"]["spi_i"] != first["spi_i"], 20,
                                "the server's IKE SA rekey")
        assert st["ike_sa"]["initiator"] is False, st["ike_sa"]  # the server made the new IKE SA
        assert any("IKE SA rekeyed" in e for e in st["events"])
        run = TimedTransfer(topology.client, topology.server, SERVER_INNER, total, rate=4 * MB)
        run.wait_progress(2 * MB)
        reset_once(topology.router, 4500, vpn.client.status)
        assert run.received < total, "the transfer ended before the reset: nothing was tested"
        run.finish().assert_intact(total)
        after = vpn.client.status()
        assert after["sessions_started"] == 1 and after["transport"] == "tcp"  # the same IKE SA family
        assert after["connections"] == 1
        vpn.ping(SERVER_INNER)
