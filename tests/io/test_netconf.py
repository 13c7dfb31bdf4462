"""netconf: every change is visible in the kernel, journaled, and undone in reverse order
(also from the journal by another process after a crash)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.integration.netns import Netns
from vpn.io.netconf import NetConf, NetConfError, NetConfExistsError

pytestmark = pytest.mark.netns


def snapshot(ns: Netns) -> str:
    """Addresses, links, routes and rules of the namespace, without volatile fields."""
    parts = [
        ns.ip("-o", "addr"),
        # (the kernel attaches a default qdisc on the first "up": not a change of ours)
        re.sub(r"\s+link/\S+ \S+ brd \S+|qdisc \S+", "", ns.ip("-o", "link")),
        ns.ip("route", "show", "table", "all"),
        ns.ip("-6", "route", "show", "table", "all"),
        ns.ip("rule"),
        ns.ip("-6", "rule"),
    ]
    text = "\n".join(re.sub(r"(valid|preferred)_lft \S+", "", p) for p in parts)
    # d1 is only d0's peer: the kernel adds and drops its routes on carrier changes.
    return "\n".join(line for line in text.splitlines() if not re.search(r"\bd1\b", line))


@pytest.fixture
def dummy(netns: Netns) -> Netns:
    """A veth pair d0/d1 in one namespace (d1 up, so d0 gets carrier when it goes up)."""
    netns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
    for dev in ("d0", "d1"):  # no link-local addresses appearing on carrier changes
        netns.ip("link", "set", dev, "addrgenmode", "none")
    netns.ip("link", "set", "d1", "up")
    return netns


def apply_full_tunnel_like(nc: NetConf) -> None:
    nc.add_address("d0", "10.50.0.2/24")
    nc.add_address("d0", "fd50::2/64")
    nc.set_mtu("d0", 1300)
    nc.set_up("d0")
    nc.add_route("10.60.0.0/16", ifname="d0")
    nc.add_route("fd60::/48", ifname="d0", metric=50)
    nc.add_route("0.0.0.0/0", gateway="10.50.0.1", table=51820)
    nc.add_route("::/0", ifname="d0", table=51820)
    for fam in (4, 6):
        nc.add_rule(family=fam, priority=100, table=51820, fwmark=0xCA6C, invert=True)
        nc.add_rule(family=fam, priority=101, table=254, suppress_prefixlength=0)
    nc.add_rule(family=4, priority=102, table=51820, src="10.50.0.0/24")


def test_changes_are_applied_journaled_and_rolled_back(dummy: Netns, tmp_path: Path) -> None:
    before = snapshot(dummy)
    journal = tmp_path / "netconf.json"
    with NetConf(journal, netns=dummy.name) as nc:
        apply_full_tunnel_like(nc)
        assert "inet 10.50.0.2/24" in dummy.ip("-o", "addr", "show", "d0")
        assert "inet6 fd50::2/64" in dummy.ip("-o", "addr", "show", "d0")
        assert "mtu 1300" in dummy.ip("link", "show", "d0") and "UP" in dummy.ip(
            "link", "show", "d0"
        )
        assert "10.60.0.0/16 dev d0" in dummy.ip("route")
        assert "fd60::/48 dev d0 proto static metric 50" in dummy.ip("-6", "route")
        assert "default via 10.50.0.1 dev d0" in dummy.ip("route", "show", "table", "51820")
        assert "default dev d0" in dummy.ip("-6", "route", "show", "table", "51820")
        rules4, rules6 = dummy.ip("rule"), dummy.ip("-6", "rule")
        for rules in (rules4, rules6):
            assert "100:\tnot from all fwmark 0xca6c lookup 51820" in rules
            assert "101:\tfrom all lookup main suppress_prefixlength 0" in rules
        assert "102:\tfrom 10.50.0.0/24 lookup 51820" in rules4

        data = json.loads(journal.read_text())
        assert data["version"] == 1
        assert [c["op"] for c in data["changes"]] == [c.op for c in nc.changes]
        assert [c["op"] for c in data["changes"]][:4] == ["addr", "addr", "mtu", "up"]
        assert data["changes"][2]["args"] == {"ifname": "d0", "mtu": 1300, "old": 1500}
        assert journal.stat().st_mode & 0o077 == 0

        nc.rollback()
        assert nc.changes == ()
    assert snapshot(dummy) == before
    assert not journal.exists()


def test_existing_things_are_refused_and_not_recorded(dummy: Netns) -> None:
    dummy.ip("addr", "add", "10.50.0.9/24", "dev", "d0")
    with NetConf(netns=dummy.name) as nc:
        with pytest.raises(NetConfExistsError, match="10.50.0.9/24"):
            nc.add_address("d0", "10.50.0.9/24")
        nc.set_up("lo")  # already up: nothing to undo
        assert nc.changes == ()
        nc.rollback()
    assert "10.50.0.9/24" in dummy.ip("-o", "addr")
    assert "UP" in dummy.ip("link", "show", "lo")


def test_unknown_interface_is_a_clear_error(dummy: Netns) -> None:
    with NetConf(netns=dummy.name) as nc, pytest.raises(NetConfError, match="nope"):
        nc.add_address("nope", "10.1.1.1/24")


def test_undo_after_a_crash_from_the_journal(dummy: Netns, tmp_path: Path) -> None:
    before = snapshot(dummy)
    journal = tmp_path / "j.json"
    code = (
        "import os, sys\n"
        "sys.path[:0] = [sys.argv[2], sys.argv[2] + '/..']\n"
        "from vpn.io.netconf import NetConf\n"
        "from test_netconf import apply_full_tunnel_like\n"
        "nc = NetConf(sys.argv[1])\n"
        "apply_full_tunnel_like(nc)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    here = str(Path(__file__).parent)
    r = dummy.run([sys.executable, "-c", code, str(journal), here], check=False)
    assert r.returncode == -9, r.stderr.decode()
    assert snapshot(dummy) != before
    assert NetConf.undo_journal(journal, netns=dummy.name) == 13
    assert snapshot(dummy) == before
    assert not journal.exists()
    assert NetConf.undo_journal(journal, netns=dummy.name) == 0  # nothing left: no-op


def test_undo_of_things_already_gone_is_quiet(dummy: Netns, tmp_path: Path) -> None:
    with NetConf(tmp_path / "j.json", netns=dummy.name) as nc:
        nc.add_address("d0", "10.50.0.2/24")
        nc.set_up("d0")
        nc.add_route("10.70.0.0/16", ifname="d0")
        dummy.ip("link", "del", "d0")  # as a TUN vanishes with its process (d1 goes too)
        nc.rollback()
    assert not (tmp_path / "j.json").exists()


def test_failed_undo_keeps_the_journal(dummy: Netns, tmp_path: Path) -> None:
    journal = tmp_path / "j.json"
    journal.write_text(json.dumps({"version": 1, "changes": [{"op": "bogus", "args": {}}]}))
    with pytest.raises(NetConfError, match="rollback incomplete.*bogus"):
        NetConf.undo_journal(journal, netns=dummy.name)
    assert json.loads(journal.read_text())["changes"] == [{"op": "bogus", "args": {}}]


def test_route_needs_a_target() -> None:
    with NetConf() as nc, pytest.raises(ValueError, match="interface or a gateway"):
        nc.add_route("10.0.0.0/8")


def test_missing_namespace_is_an_error_not_created() -> None:
    with pytest.raises(OSError):
        NetConf(netns="vpnt-does-not-exist")
    assert not Path("/run/netns/vpnt-does-not-exist").exists()
