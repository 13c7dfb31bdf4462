"""Bring-up, tear-down, crashes and the sequence-number safety of manual keys.

- `vpn down` leaves each namespace exactly as it found it (links, addresses, routes,
  rules, nftables) and no journal behind.
- A daemon killed with SIGKILL leaves its journal; the next `vpn up` undoes it, comes
  up, and `vpn down` again leaves nothing.
- RFC 4106 §2 / §8.1: a manual GCM key must never repeat a sequence number (a nonce).
  Without --new-key, a key with no state file is refused; after a restart (clean or
  crash) the first sequence number sent is above every one sent before, so the peer's
  replay window accepts the new packets.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .manual import TunnelPair, VpnSide, manual_tunnel, pid_alive
from .netns import Netns, Topology

pytestmark = pytest.mark.netns

ROUTES = 'routes = ["10.98.0.0/24", "fd98::/64"]\n'


def settle(ns: Netns, timeout: float = 10.0) -> None:
    """Wait until the kernel's own IPv6 set-up of fresh links is done (every veth has its
    link-local address, none tentative), so it cannot show up as a change of ours."""
    deadline = time.monotonic() + timeout
    while True:
        links = [ln.split()[0].split("@")[0] for ln in ns.run(["ip", "-br", "link"]).stdout.decode()
                 .splitlines() if not ln.startswith("lo ") and ln.split()[1] != "DOWN"]  # a down link has none
        addrs = ns.run(["ip", "-6", "addr"]).stdout.decode()
        lladdr = [ns.run(["ip", "-6", "addr", "show", "dev", ln, "scope", "link"]).stdout.decode()
                  for ln in links]
        if "tentative" not in addrs and all("fe80::" in a for a in lladdr):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"IPv6 on {ns.name} did not settle:\n{addrs}")
        time.sleep(0.1)


def snapshot(ns: Netns) -> dict[str, str]:
    """What `vpn up` may change in a namespace, as text."""
    views = {
        "links": ["ip", "-br", "link"],
        "addr": ["ip", "-br", "addr"],
        "route4": ["ip", "-4", "route", "show", "table", "all"],
        "route6": ["ip", "-6", "route", "show", "table", "all"],
        "rule4": ["ip", "-4", "rule"],
        "rule6": ["ip", "-6", "rule"],
        "nft": ["nft", "list", "ruleset"],
    }
    return {k: ns.run(argv).stdout.decode() for k, argv in views.items()}


def add_routes(tun: TunnelPair) -> None:
    """Give the client routes into the tunnel, so there is more to undo than the TUN."""
    text = tun.client.config.read_text()
    tun.client.config.write_text(text.replace("[transport]", ROUTES + "[transport]", 1))


def assert_clean(side: VpnSide, before: dict[str, str]) -> None:
    after = snapshot(side.ns)
    for key in before:
        assert after[key] == before[key], f"[{side.role}] {key} changed:\n{before[key]}\n---\n{after[key]}"
    assert not [f for f in side.run_files() if f.endswith(".journal")], side.run_files()
    r = side.cli("status", check=False)
    assert r.returncode != 0 and b"no instance" in r.stderr, r


def test_down_restores_the_namespace_and_a_crash_is_recovered(topology: Topology,
                                                              tmp_path: Path) -> None:
    with manual_tunnel(topology, tmp_path, protocol="tcp") as tun:
        add_routes(tun)
        for side in tun.sides:
            settle(side.ns)
        before = {s.role: snapshot(s.ns) for s in tun.sides}
        tun.up()
        routes = tun.client.ns.run(["ip", "route"]).stdout.decode()
        assert "10.98.0.0/24 dev mtc" in routes, routes
        tun.ping("client", 4)
        tun.down()
        for side in tun.sides:
            assert not pid_alive(side.pid)
            assert_clean(side, before[side.role])

        # crash: SIGKILL both daemons; their journals stay behind
        tun.up(new_key=False)
        for side in tun.sides:
            side.kill9()
            journals = [f for f in side.run_files() if f.endswith(".journal")]
            assert journals == [f"{side.name}.journal"], side.run_files()
        tun.up(new_key=False)
        assert "undoing the changes of an earlier instance" in tun.client.log_tail(40)
        routes = tun.client.ns.run(["ip", "route"]).stdout.decode()
        assert routes.count("10.98.0.0/24") == 1, routes
        tun.ping("client", 4)
        tun.ping("server", 6)
        tun.down()
        for side in tun.sides:
            assert_clean(side, before[side.role])


def test_unknown_key_state_is_refused_without_new_key(topology: Topology, tmp_path: Path) -> None:
    with manual_tunnel(topology, tmp_path, protocol="udp") as tun:
        settle(tun.server.ns)
        before = snapshot(tun.server.ns)
        r = tun.server.cli("up", str(tun.server.config), check=False, timeout=60)
        err = r.stderr.decode()
        assert r.returncode != 0
        assert "no sequence state for this key" in err and "--new-key" in err, err
        assert re.search(r"vpn genkey", err), err
        assert snapshot(tun.server.ns) == before
        assert not (tmp_path / "state-server").exists() or not any((tmp_path / "state-server").iterdir())


def first_seq_after_restart(side: VpnSide) -> int:
    """The first sequence number this daemon sent: its highest minus how many it sent."""
    out = side.sa("out")
    first: int = out["seq"] - out["packets"] + 1
    return first


@pytest.mark.parametrize("how", ["down", "kill9"])
def test_restart_resumes_above_every_sequence_number_sent(topology: Topology, tmp_path: Path,
                                                          how: str) -> None:
    with manual_tunnel(topology, tmp_path, protocol="udp") as tun:
        tun.up()
        tun.ping("client", 4, count=5)
        tun.ping("server", 4, count=5)
        sent_before = tun.client.sa("out")["seq"]
        server_in_before = tun.server.sa("in")
        assert sent_before >= 5
        if how == "down":
            tun.client.down()
            tun.client.up()
        else:
            tun.client.kill9()
            tun.client.up("--new-key")  # a wrong claim: the state file on disk still wins
        first = first_seq_after_restart(tun.client)
        assert first > sent_before, f"restarted at {first}, sent up to {sent_before} before"
        assert first > server_in_before["seq"]
        tun.ping("client", 4)
        tun.ping("server", 6)
        server_in = tun.server.sa("in")
        assert server_in["replay"] == server_in_before["replay"], "the server saw replays"
        assert server_in["seq"] > first
        tun.down()
