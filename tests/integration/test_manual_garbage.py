"""A hostile or broken peer: garbage, truncated frames, wrong SPIs, wrong ICVs and
replayed packets sent to the server's port from the client's namespace, next to a live
tunnel. Every one must be counted (`vpn status --json`) and dropped, the stream closed
where RFC 9329 says so, and the real tunnel must keep working in both directions
without its return path moving to the attacker.

Replays are real packets: ESP sent by the real client, captured on the router.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .manual import PORT, Capture, ManualKeys, TunnelPair, esp_seq, manual_tunnel, split_frames, tcp_payload
from .netns import Topology

pytestmark = pytest.mark.netns

CONSECUTIVE_BAD = 32  # csrc/vpn_frame.h VPN_CONSECUTIVE_BAD_DEFAULT (RFC 9329 §6.1, T47)

# Runs in the client namespace. stdin: {"host", "port", "tcp": [{"data": hex, "wait": s}],
# "udp": [hex]}. Each TCP case gets its own connection; prints [closed_by_server, ...].
RAW_PEER = r"""
import json, socket, sys, time
spec = json.load(sys.stdin)
host, port = spec["host"], spec["port"]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
closed = []
for case in spec["tcp"]:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(bytes.fromhex(case["data"]))
    s.settimeout(case["wait"])
    try:
        closed.append(s.recv(65536) == b"")
    except TimeoutError:
        closed.append(False)
    except ConnectionResetError:
        closed.append(True)
    s.close()
u = socket.socket(fam, socket.SOCK_DGRAM)
for d in spec["udp"]:
    u.sendto(bytes.fromhex(d), (host, port))
    time.sleep(0.01)
print(json.dumps(closed))
"""


def frame(message: bytes) -> bytes:
    """RFC 9329 §3: the 16-bit Length counts itself."""
    return (len(message) + 2).to_bytes(2, "big") + message


def fake_esp(spi: int, seq: int, size: int = 96) -> bytes:
    """SPI || seq || random bytes: parses as ESP, fails authentication."""
    return spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + os.urandom(size - 8)


def raw_peer(tun: TunnelPair, host: str, tcp: list[dict[str, Any]], udp: list[bytes]) -> list[bool]:
    spec = {"host": host, "port": PORT, "tcp": tcp, "udp": [d.hex() for d in udp]}
    r = tun.client.ns.run([sys.executable, "-c", RAW_PEER], input=json.dumps(spec).encode(),
                          timeout=60)
    result: list[bool] = json.loads(r.stdout)
    return result


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def settled_deltas(tun: TunnelPair, before: dict[str, int], last: str) -> dict[str, int]:
    """The server's counter changes once it has counted the last message sent (`last`):
    datagrams may still wait in its socket when the sender is done."""
    deadline = time.monotonic() + 5
    while True:
        d = deltas(before, tun.server.counters())
        if d.get(last) or time.monotonic() > deadline:
            return d
        time.sleep(0.05)


def captured_client_esp(tun: TunnelPair, topology: Topology, tmp_path: Path) -> list[bytes]:
    """Bring the tunnel up under a capture on the router; ping; the client's ESP packets
    as they crossed the wire (TCP: the frames of the reassembled stream)."""
    bpf = f"{tun.protocol} port {PORT}"
    cap = Capture(topology.router, "r-s", bpf, tmp_path / "replay.pcap")
    tun.up()
    tun.ping("client", 4)
    tun.ping("server", 6)
    packets = cap.stop()
    if tun.protocol == "tcp":
        frames, rest = split_frames(tcp_payload(packets, PORT))
        assert rest == b""
    else:
        from scapy.layers.inet import UDP

        frames = [bytes(p[UDP].payload) for p in packets if UDP in p and p[UDP].dport == PORT]
    keys = ManualKeys.load(tun.keys_dir / "client.keys")
    esp = [f for f in frames if len(f) > 8 and int.from_bytes(f[:4], "big") == keys.out_spi]
    assert len(esp) >= 6, f"captured only {len(esp)} ESP packets of the client"
    return esp


def assert_tunnel_healthy(tun: TunnelPair, first_peer: str) -> None:
    for src in ("client", "server"):
        for family in (4, 6):
            tun.ping(src, family)
    assert tun.server.status()["peer"] == first_peer, "the return path moved to the attacker"
    assert tun.server.status()["state"] == "up"


def test_tcp_garbage_is_counted_dropped_or_closes_the_stream(topology: Topology,
                                                             tmp_path: Path) -> None:
    with manual_tunnel(topology, tmp_path, protocol="tcp") as tun:
        replay = captured_client_esp(tun, topology, tmp_path)[2:6]
        server_keys = ManualKeys.load(tun.keys_dir / "server.keys")
        wrong_spi = server_keys.out_spi  # an SPI the server sends with, never receives
        first_peer = tun.server.status()["peer"]
        before = tun.server.counters()
        prefix = b"IKETCP"

        # one connection that stays open: each message counted and dropped
        mixed = prefix + b"".join([
            frame(fake_esp(wrong_spi, 7)),                       # unknown SPI
            frame(b"\x12\x34\x56\x78\x9a"),                      # too short for ESP
            frame(fake_esp(server_keys.in_spi, 1 << 24)),       # known SPI, bad ICV
            *(frame(p) for p in replay),                         # captured, replayed
            frame(b""),                                          # Length 2: ignored
            frame(b"\xff"),                                      # keepalive
            frame(bytes(4) + os.urandom(40)),                    # IKE: manual mode ignores
        ])
        cases = [
            {"data": mixed.hex(), "wait": 1.0},
            {"data": (prefix + b"\x00\x00").hex(), "wait": 5.0},  # Length 0: fatal (§3)
            {"data": (prefix + b"\x00\x01").hex(), "wait": 5.0},  # Length 1: fatal (§3)
            {"data": b"GET / HTTP/1.1\r\n\r\n".hex(), "wait": 5.0},  # no prefix (§4, §6.1)
            # many messages in a row that are neither IKE nor ESP of a known SPI (§6.1)
            {"data": (prefix + b"".join(frame(fake_esp(wrong_spi, i))
                                        for i in range(CONSECUTIVE_BAD + 8))).hex(), "wait": 5.0},
            # a frame cut short, then the peer goes away: discarded, nothing delivered
            {"data": (prefix + (200).to_bytes(2, "big") + os.urandom(50)).hex(), "wait": 0.5},
        ]
        closed = raw_peer(tun, topology.server_v4, cases, [])
        assert closed == [False, True, True, True, True, False]

        d = settled_deltas(tun, before, "rx_fatal")
        assert d.get("rx_unknown_spi") == 1 + CONSECUTIVE_BAD, d
        assert d.get("rx_too_short") == 1, d
        assert d.get("rx_icv") == 1, d
        assert d.get("rx_replay") == len(replay), d
        assert d.get("rx_empty") == 1 and d.get("rx_keepalive") == 1, d
        assert d.get("rx_ike") == 1 and d.get("ike_ignored") == 1, d
        assert d.get("rx_bad_length") == 2, d
        assert d.get("rx_fatal") == 4, d  # Length 0, Length 1, no prefix, too many bad
        assert "rx_packets" not in d and "rx_packets" not in d, d  # nothing reached the TUN
        events = tun.server.status()["events"]
        assert sum("stream corrupt" in e for e in events) == 4, events
        assert tun.server.status()["connections"] == 1
        assert_tunnel_healthy(tun, first_peer)
        tun.down()


def test_udp_garbage_and_replays_are_counted_and_dropped(topology: Topology,
                                                         tmp_path: Path) -> None:
    with manual_tunnel(topology, tmp_path, protocol="udp") as tun:
        replay = captured_client_esp(tun, topology, tmp_path)
        server_keys = ManualKeys.load(tun.keys_dir / "server.keys")
        first_peer = tun.server.status()["peer"]
        before = tun.server.counters()
        in_before = tun.server.sa("in")
        datagrams = [
            *replay,                                            # captured ESP, replayed
            fake_esp(server_keys.out_spi, 9),                   # unknown SPI
            fake_esp(server_keys.in_spi, 1 << 24),              # known SPI, bad ICV
            b"\x01\x02\x03",                                    # shorter than any header
            b"\x12\x34\x56\x78\x00\x00\x00\x01",                # ESP header, no body
            b"\xff",                                            # NAT keepalive (RFC 3948)
            bytes(4) + os.urandom(60),                          # IKE behind the marker
        ]
        raw_peer(tun, topology.server_v4, [], datagrams)

        d = settled_deltas(tun, before, "ike_ignored")
        assert d.get("rx_replay") == len(replay), d
        assert d.get("rx_unknown_spi") == 1, d
        assert d.get("rx_icv") == 1, d
        assert d.get("rx_too_short") == 2, d
        assert d.get("rx_keepalive") == 1, d
        assert d.get("rx_ike") == 1 and d.get("ike_ignored") == 1, d
        assert "rx_packets" not in d, d
        in_after = tun.server.sa("in")
        assert in_after["packets"] == in_before["packets"]
        assert in_after["replay"] - in_before["replay"] == len(replay)
        assert max(esp_seq(p) for p in replay) <= in_after["seq"]
        assert_tunnel_healthy(tun, first_peer)
        tun.down()
