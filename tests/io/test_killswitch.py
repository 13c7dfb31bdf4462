"""vpn/io/killswitch.py in a pair of namespaces: with the table in place only loopback,
the tunnel device and our marked sockets get out (IPv4 and IPv6; neighbour discovery
still works for the marked ones); the table is journaled first, replaced atomically,
and removed with its state."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import require_netns
from tests.integration.netns import Lab, Netns
from vpn.io import killswitch
from vpn.io.killswitch import KillSwitch

MARK = 0x5650
A4, B4, A6, B6 = "10.61.0.1", "10.61.0.2", "fd61::1", "fd61::2"
TUN4_PEER = "10.62.0.2"

PROBE = r"""
import socket, sys
proto, addr, port, mark = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
if mark:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
s.settimeout(3)
try:
    if proto == "tcp":
        s.connect((addr, port))
    else:
        s.sendto(b"x", (addr, port))
    print("ok")
except OSError as e:
    print(type(e).__name__)
"""


def probe(ns: Netns, proto: str, addr: str, port: int = 7171, mark: int = 0) -> str:
    r = ns.run([sys.executable, "-c", PROBE, proto, addr, str(port), str(mark)], timeout=15)
    return r.stdout.decode().strip()


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    """a <-> b over a veth (IPv4 + IPv6); a also has a TUN device (nobody reads it);
    b listens on TCP 7171 (both families)."""
    require_netns()
    with Lab() as lab:
        a, b = lab.add("ksa"), lab.add("ksb")
        lab.veth(a, "a-b", b, "b-a")
        a.ip("addr", "add", f"{A4}/24", "dev", "a-b")
        b.ip("addr", "add", f"{B4}/24", "dev", "b-a")
        a.ip("-6", "addr", "add", f"{A6}/64", "dev", "a-b", "nodad")
        b.ip("-6", "addr", "add", f"{B6}/64", "dev", "b-a", "nodad")
        a.ip("tuntap", "add", "dev", "kstun", "mode", "tun")
        a.ip("addr", "add", "10.62.0.1/24", "dev", "kstun")
        a.ip("link", "set", "kstun", "up")
        b.popen([sys.executable, "-c", "import socket,time\n"
                 "s=[socket.create_server(('::',7171),family=socket.AF_INET6,dualstack_ipv6=True)]\n"
                 "time.sleep(60)"], stdout=subprocess.DEVNULL)
        for _ in range(100):
            if probe(a, "tcp", B4) == "ok":
                break
        yield a, b


def test_ruleset_names_and_allows_exactly_what_the_doc_says() -> None:
    assert killswitch.table_name("my-vpn.0") == "vpnks_my_vpn_0"
    text = killswitch.ruleset("vpnks_x", "tun0", MARK)
    assert text.startswith("add table inet vpnks_x\ndelete table inet vpnks_x\n")  # atomic replace
    assert 'oifname "tun0" accept' in text and "meta mark 0x5650 accept" in text
    assert "policy drop" in text and text.count("accept") == 7


def test_only_loopback_the_tunnel_and_marked_sockets_get_out(pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, _b = pair
    ks = KillSwitch("t1", tmp_path / "t1.killswitch.json")
    assert probe(a, "tcp", B4) == "ok" and probe(a, "tcp", B6) == "ok"
    with a.entered():
        ks.apply("kstun", MARK)
    assert ks.recorded
    assert probe(a, "tcp", B4) == "ConnectionRefusedError"  # reset at once, no hang
    assert probe(a, "tcp", B6) == "ConnectionRefusedError"
    assert probe(a, "udp", B4) == "PermissionError"
    assert probe(a, "udp", B6) == "PermissionError"
    assert probe(a, "tcp", B4, mark=MARK) == "ok"
    assert probe(a, "udp", TUN4_PEER) == "ok"  # out of the tunnel device
    assert probe(a, "udp", "127.0.0.1") == "ok"
    # NDP passes: with the neighbour entry gone, marked IPv6 still finds its next hop
    a.ip("-6", "neigh", "flush", "dev", "a-b")
    assert probe(a, "tcp", B6, mark=MARK) == "ok"
    with a.entered():
        assert (ks.blocked() or 0) >= 4
    with a.entered():
        assert ks.remove() is True
        assert ks.blocked() is None
    assert not ks.recorded
    assert probe(a, "tcp", B4) == "ok" and probe(a, "udp", B6) == "ok"
    nft = a.run(["nft", "list", "ruleset"]).stdout.decode()
    assert "vpnks_" not in nft


def test_apply_replaces_and_remove_is_idempotent(pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    a, _b = pair
    ks = KillSwitch("t2", tmp_path / "t2.killswitch.json")
    with a.entered():
        ks.apply("old0", MARK)
        ks.apply("kstun", MARK)  # e.g. the next `vpn up` after a crash
        tables = a.run(["nft", "list", "tables"]).stdout.decode()
        assert tables.count("vpnks_t2") == 1, tables
        listing = a.run(["nft", "list", "table", "inet", "vpnks_t2"]).stdout.decode()
        assert '"kstun"' in listing and '"old0"' not in listing
        assert KillSwitch("t2", tmp_path / "t2.killswitch.json").remove() is True  # another process
        assert ks.remove() is False
    assert "vpnks_t2" not in a.run(["nft", "list", "tables"]).stdout.decode()


def test_a_refused_table_is_an_error_and_stays_recorded(netns: Netns, tmp_path: Path) -> None:
    ks = KillSwitch("t3", tmp_path / "t3.killswitch.json")
    with netns.entered(), pytest.raises(killswitch.KillSwitchError, match="nft refused"):
        ks.apply('bad"name', MARK)
    assert ks.recorded  # journaled before nft ran: `vpn down` still tries to remove it
    with netns.entered():
        assert ks.remove() is True
