"""The server's forwarding state (vpn/io/firewall.py): one nftables table of its own
(MSS clamp, masquerade of the pools to the uplink) and the forwarding sysctls, set on
apply and put back on remove, also after a crash. The namespace tests run the module in
a child process inside the namespace, so nothing touches the machine's own tables,
sysctls or /run.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

from tests.integration.netns import Netns
from vpn.io import firewall
from vpn.io.firewall import FirewallError, ForwardingSpec, ruleset

POOLS = [ipaddress.ip_network("10.10.0.0/24"), ipaddress.ip_network("fd10::/64")]


def test_ruleset_clamps_and_masquerades_each_pool() -> None:
    text = ruleset("vpn_srv", ForwardingSpec(tun="srv", uplink="eth0", pools=POOLS))
    assert text.startswith("table inet vpn_srv {")
    assert 'iifname "srv" tcp flags syn tcp option maxseg size set rt mtu' in text
    assert 'oifname "srv" tcp flags syn tcp option maxseg size set rt mtu' in text
    assert 'ip saddr 10.10.0.0/24 oifname "eth0" masquerade' in text
    assert 'ip6 saddr fd10::/64 oifname "eth0" masquerade' in text


def test_ruleset_without_uplink_or_clamp() -> None:
    text = ruleset("vpn_srv", ForwardingSpec(tun="srv", uplink=None, pools=POOLS, mss_clamp=False))
    assert "masquerade" not in text and "postrouting" not in text and "maxseg" not in text
    assert "chain forward" in text  # an empty filter chain with policy accept


def test_table_name_is_safe_for_nft() -> None:
    assert firewall.Firewall("a-b.c").table == "vpn_a_b_c"


def test_missing_nft_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("vpn.io.firewall.shutil.which", lambda _name: None)
    monkeypatch.setattr("vpn.io.paths.RUN_ROOT", tmp_path)
    monkeypatch.setattr(firewall, "_read_sysctl", lambda _k: "0")
    with pytest.raises(FirewallError, match="apt-get install nftables"):
        firewall.Firewall("x").apply(ForwardingSpec(tun="x", uplink=None))


# One step of the firewall in a child process inside the namespace: apply, remove, or
# apply and die without cleaning up (a crash).
STEP = r"""
import ipaddress, os, sys
from vpn.io.firewall import Firewall, ForwardingSpec
fw = Firewall("srv")
spec = ForwardingSpec(tun="lo", uplink="up0", pools=[ipaddress.ip_network("10.10.0.0/24"),
                                                     ipaddress.ip_network("fd10::/64")])
if sys.argv[1] == "apply":
    fw.apply(spec)
elif sys.argv[1] == "crash":
    fw.apply(spec)
    os._exit(0)
else:
    fw.remove()
"""
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


def step(ns: Netns, run_root: Path, what: str) -> None:
    argv = ["env", f"VPN_RUN_DIR={run_root}", sys.executable, "-c", STEP, what]
    r = ns.run(argv, check=False)
    assert r.returncode == 0, r.stderr.decode(errors="replace")


def state(ns: Netns) -> tuple[str, str, str]:
    values = tuple(ns.run(["cat", f"/proc/sys/{k}"]).stdout.decode().strip() for k in SYSCTLS)
    return values[0], values[1], ns.run(["nft", "list", "ruleset"]).stdout.decode()


@pytest.fixture
def uplink(netns: Netns) -> Netns:
    netns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up1")
    netns.ip("link", "set", "up0", "up")
    netns.sysctl("net.ipv6.conf.all.forwarding", 1)  # a value of its own: it must come back
    return netns


@pytest.mark.netns
def test_apply_then_remove_restores_everything(uplink: Netns, tmp_path: Path) -> None:
    before = state(uplink)
    assert before[:2] == ("0", "1")
    step(uplink, tmp_path, "apply")
    v4, v6, nft = state(uplink)
    assert (v4, v6) == ("1", "1")
    assert "table inet vpn_srv" in nft and 'oifname "up0" masquerade' in nft
    assert list(tmp_path.rglob("srv.sysctl.json"))  # the old values, for remove or a crash
    step(uplink, tmp_path, "apply")  # idempotent: still one table
    assert state(uplink)[2].count("table inet vpn_srv") == 1
    step(uplink, tmp_path, "remove")
    assert state(uplink) == before
    assert not list(tmp_path.rglob("srv.sysctl.json"))
    step(uplink, tmp_path, "remove")  # removing twice is quiet
    assert state(uplink) == before


@pytest.mark.netns
def test_a_crash_is_undone_by_the_next_start(uplink: Netns, tmp_path: Path) -> None:
    before = state(uplink)
    step(uplink, tmp_path, "crash")
    assert state(uplink)[0] == "1" and "vpn_srv" in state(uplink)[2]
    # the next instance must not take the crashed one's values for the original ones
    step(uplink, tmp_path, "apply")
    assert state(uplink)[2].count("table inet vpn_srv") == 1
    step(uplink, tmp_path, "remove")
    assert state(uplink) == before


@pytest.mark.netns
def test_refused_ruleset_is_reported(netns: Netns, tmp_path: Path) -> None:
    bad = STEP.replace('uplink="up0"', 'uplink="up0\\""')  # an unbalanced quote in the text
    r = netns.run(["env", f"VPN_RUN_DIR={tmp_path}", sys.executable, "-c", bad, "apply"], check=False)
    assert r.returncode != 0 and b"nft refused the ruleset" in r.stderr
    assert "vpn_srv" not in state(netns)[2]
    assert state(netns)[0] == "0"  # nothing was changed
