"""A middlebox kills the outer TCP connection mid-transfer (RFC 9329 §6.1: only the
TCP Originator reconnects). The router answers the tunnel's TCP flow with resets for a
moment; the client must reconnect on its own, the server must move its return path to
the new connection, and the inner TCP transfer must finish with every byte intact
(its retransmissions cross the new connection).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .manual import MB, PORT, VpnSide, manual_tunnel
from .netns import Topology

pytestmark = pytest.mark.netns

RESET_RULES = f"""
table inet mtest_reset {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        tcp dport {PORT} reject with tcp reset
        tcp sport {PORT} reject with tcp reset
    }}
}}
"""
TOTAL = 64 * MB
RATE = 16 * MB  # bytes/s: the transfer lasts ~4 s, so the reset lands in its middle
OUTAGE_S = 1.0


def wait_event(side: VpnSide, text: str, count: int, timeout: float = 20.0) -> list[str]:
    """Poll `vpn status` until `count` events contain `text`; return the events."""
    deadline = time.monotonic() + timeout
    while True:
        events: list[str] = side.status()["events"]
        if sum(text in e for e in events) >= count:
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"[{side.role}] no {count} x {text!r} in {events}")
        time.sleep(0.1)


def test_tcp_reset_mid_transfer_reconnects_and_transfer_completes(topology: Topology,
                                                                   tmp_path: Path) -> None:
    with manual_tunnel(topology, tmp_path, protocol="tcp") as tun:
        tun.up()
        tun.ping("client", 4)
        first_peer = tun.server.status()["peer"]
        run = tun.start_transfer(TOTAL, rate=RATE)
        run.wait_progress(TOTAL // 4)

        topology.router.nft(RESET_RULES)
        try:
            events = wait_event(tun.client, "connection lost", 1, timeout=10)
            time.sleep(OUTAGE_S)
        finally:
            topology.router.run(["nft", "delete", "table", "inet", "mtest_reset"])
        assert run.received < TOTAL, "the transfer ended before the reset: nothing was tested"

        result = run.finish()
        result.assert_intact(TOTAL)

        events = wait_event(tun.client, "connected to", 2)
        assert any("connection lost" in e for e in events), events
        server = tun.server.status()
        assert sum("accepted a connection" in e for e in server["events"]) >= 2, server["events"]
        assert sum("return path moved" in e for e in server["events"]) >= 2, server["events"]
        assert server["peer"] != first_peer, "the server still sends on the dead connection"
        assert tun.client.status()["connections"] == 1
        tun.ping("server", 4)
        tun.ping("client", 6)
        tun.down()
