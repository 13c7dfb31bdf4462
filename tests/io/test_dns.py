"""vpn/io/dns.py: where DNS goes, the resolv.conf we write, and that restoring (also
from the journal alone, after a crash) gives back exactly what was there.

Every file here is a temporary file: nothing touches /etc/resolv.conf."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.netns import ETC_NETNS, Netns
from vpn.io import dns
from vpn.io.dns import DnsConfig, DnsError, DnsFacts, choose_method

OLD = "# from DHCP\nnameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch lan.example\noptions edns0\n"


def facts(*, in_netns: bool = False, netns_file: Path | None = None, mounted: bool = False,
          resolved: bool = False) -> DnsFacts:
    return DnsFacts(in_netns=in_netns, netns_file=netns_file, resolv_conf_mounted=mounted,
                    resolved_running=resolved)


# -- where -----------------------------------------------------------------------------


def test_a_namespace_uses_its_own_file_in_place_never_resolvectl(tmp_path: Path) -> None:
    own = tmp_path / "etc-netns-x-resolv.conf"
    assert choose_method(facts(in_netns=True, netns_file=own, mounted=True, resolved=True)) == ("in-place", own)


def test_a_namespace_without_its_own_file_is_refused() -> None:
    # mounted (e.g. a container's /etc/resolv.conf) is not enough: it is not this namespace's
    for mounted in (False, True):
        with pytest.raises(DnsError, match=r"/etc/netns/<namespace>/resolv.conf.*dns = false"):
            choose_method(facts(in_netns=True, mounted=mounted, resolved=True))


def test_the_machines_namespace_prefers_resolved_then_the_file() -> None:
    rc = Path("/etc/resolv.conf")
    assert choose_method(facts(resolved=True)) == ("resolvectl", rc)
    assert choose_method(facts(mounted=True)) == ("in-place", rc)
    assert choose_method(facts()) == ("file", rc)


def test_mount_points_are_read_from_mountinfo_with_escapes() -> None:
    info = ("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "512 22 0:5 /etc/netns/a/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n"
            "513 22 0:5 /x /mnt/with\\040space rw - ext4 /dev/sda1 rw\n")
    assert dns.is_mount_point(Path("/etc/resolv.conf"), info)
    assert dns.is_mount_point(Path("/mnt/with space"), info)
    assert not dns.is_mount_point(Path("/etc/hosts"), info)
    assert not dns.is_mount_point(Path("/etc/resolv.conf"), "garbage\n\n1 2\n")


def test_netns_names_match_by_inode(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    (tmp_path / "b").write_text("")
    os.link(tmp_path / "a", tmp_path / "c")
    ino = (tmp_path / "a").stat().st_ino
    assert dns.netns_names(ino, tmp_path) == ["a", "c"]
    assert dns.netns_names(ino, tmp_path / "missing") == []


def test_the_machines_own_namespace_is_recognised_here() -> None:
    """This test process runs in the machine's namespace. Where that can be proven
    (PID 1's or kthreadd's namespace is readable) detection must say so."""
    init = dns._init_netns_inode()
    if init is None:
        assert dns.detect().in_netns, "unprovable must count as a namespace (the safe side)"
    else:
        assert init == os.stat("/proc/self/ns/net").st_ino
        f = dns.detect()
        assert not f.in_netns and f.netns_file is None


DETECT = "from vpn.io import dns; f = dns.detect(); print(f.in_netns, f.netns_file)"


def test_inside_a_namespace_only_its_own_etc_netns_file_is_used(netns: Netns) -> None:
    own = ETC_NETNS / netns.name / "resolv.conf"
    r = netns.run([sys.executable, "-c", DETECT])
    assert r.stdout.decode().split() == ["True", "None"], r.stdout  # no file: refused later
    own.parent.mkdir(parents=True)
    own.write_text("nameserver 192.0.2.53\n")
    r = netns.run([sys.executable, "-c", DETECT])
    assert r.stdout.decode().split() == ["True", str(own)], r.stdout


# -- what we write -----------------------------------------------------------------------


def test_the_new_file_has_our_servers_and_keeps_search_and_options() -> None:
    text = dns.resolv_conf_text("vpn0", ["10.10.0.1", "fd10::1"], OLD)
    lines = text.splitlines()
    assert [ln for ln in lines if ln.startswith("nameserver")] == ["nameserver 10.10.0.1", "nameserver fd10::1"]
    assert "search lan.example" in lines and "options edns0" in lines
    assert "192.0.2.1" not in text and "vpn down vpn0" in text


def test_at_most_three_nameservers() -> None:
    text = dns.resolv_conf_text("v", [f"10.0.0.{i}" for i in range(1, 6)], "")
    assert text.count("nameserver") == dns.MAX_NAMESERVERS


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400))
def test_whatever_the_old_file_holds_only_our_nameservers_survive(old: str) -> None:
    text = dns.resolv_conf_text("v", ["10.9.9.9"], old)
    ns = [ln for ln in text.splitlines() if ln.split()[:1] == ["nameserver"]]
    assert ns == ["nameserver 10.9.9.9"]
    kept = [ln for ln in text.splitlines() if not ln.startswith(("#", "nameserver"))]
    assert all(ln in old.splitlines() for ln in kept)


# -- apply and restore -------------------------------------------------------------------


def config(tmp_path: Path, method: str, target: Path, run: dns.Runner | None = None) -> DnsConfig:
    f = facts(in_netns=method == "in-place", netns_file=target if method == "in-place" else None,
              resolved=method == "resolvectl")
    kw = {"run": run} if run else {}
    return DnsConfig("vpn0", tmp_path / "vpn0.dns.json", facts=f, resolv_conf=target, **kw)


def test_in_place_keeps_the_inode_and_restores_the_bytes(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text(OLD)
    ino = rc.stat().st_ino
    d = config(tmp_path, "in-place", rc)
    d.apply("vpn0", ["10.10.0.1"])
    assert rc.stat().st_ino == ino, "a bind-mounted file must be rewritten in place, not replaced"
    assert "nameserver 10.10.0.1" in rc.read_text()
    journal = json.loads((tmp_path / "vpn0.dns.json").read_text())
    assert journal["original"] == OLD and journal["in_place"] is True
    assert d.restore() is True
    assert rc.read_text() == OLD and rc.stat().st_ino == ino
    assert not (tmp_path / "vpn0.dns.json").exists()
    assert d.restore() is False


def test_a_second_apply_keeps_the_first_original(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text(OLD)
    d = config(tmp_path, "file", rc)
    d.apply("vpn0", ["10.10.0.1"])
    d.apply("vpn0", ["10.10.0.9"])  # a new IKE SA pushed another server
    assert "10.10.0.9" in rc.read_text() and "10.10.0.1" not in rc.read_text()
    d.restore()
    assert rc.read_text() == OLD


def test_after_a_crash_the_journal_alone_restores(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text(OLD)
    config(tmp_path, "in-place", rc).apply("vpn0", ["10.10.0.1"])  # ... and the process dies
    assert dns.undo_journal(tmp_path / "vpn0.dns.json") is True
    assert rc.read_text() == OLD
    assert dns.undo_journal(tmp_path / "vpn0.dns.json") is False


def test_a_file_changed_by_someone_else_since_is_left_alone(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text(OLD)
    d = config(tmp_path, "file", rc)
    d.apply("vpn0", ["10.10.0.1"])
    rc.write_text("nameserver 198.51.100.7\n")  # e.g. a DHCP client renewed
    assert d.restore() is True
    assert rc.read_text() == "nameserver 198.51.100.7\n"
    assert not (tmp_path / "vpn0.dns.json").exists()


def test_a_symlink_is_replaced_by_a_file_and_put_back(tmp_path: Path) -> None:
    target = tmp_path / "managed.conf"
    target.write_text(OLD)
    rc = tmp_path / "resolv.conf"
    rc.symlink_to(target)
    d = config(tmp_path, "file", rc)
    d.apply("vpn0", ["10.10.0.1"])
    assert not rc.is_symlink() and "10.10.0.1" in rc.read_text()
    assert target.read_text() == OLD, "the link's target is someone else's file"
    d.restore()
    assert rc.is_symlink() and os.readlink(rc) == str(target)


def test_a_missing_file_is_missing_again_after_restore(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    d = config(tmp_path, "file", rc)
    d.apply("vpn0", ["10.10.0.1"])
    assert rc.exists()
    d.restore()
    assert not rc.exists()


def test_nothing_to_apply_changes_nothing(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text(OLD)
    config(tmp_path, "file", rc).apply("vpn0", [])
    assert rc.read_text() == OLD and not (tmp_path / "vpn0.dns.json").exists()


def test_resolvectl_sets_the_link_and_reverts_it(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> None:
        calls.append(list(argv))

    d = config(tmp_path, "resolvectl", tmp_path / "untouched", run)
    d.apply("vpn0", ["10.10.0.1", "fd10::1"], route_all=True)
    assert calls == [["resolvectl", "dns", "vpn0", "10.10.0.1", "fd10::1"],
                     ["resolvectl", "domain", "vpn0", "~."],
                     ["resolvectl", "default-route", "vpn0", "yes"]]
    assert not (tmp_path / "untouched").exists()
    calls.clear()
    d.apply("vpn0", ["10.10.0.9"], route_all=False)  # split tunnel: the servers only
    assert calls == [["resolvectl", "dns", "vpn0", "10.10.0.9"]]
    calls.clear()
    assert dns.undo_journal(tmp_path / "vpn0.dns.json", run=run) is True
    assert calls == [["resolvectl", "revert", "vpn0"]]


def test_resolvectl_revert_of_a_vanished_link_is_not_an_error(tmp_path: Path) -> None:
    def failing(argv: Sequence[str]) -> None:
        if argv[1] == "revert":
            raise DnsError("Failed to resolve interface \"vpn0\"")

    d = config(tmp_path, "resolvectl", tmp_path / "x", failing)
    d.apply("vpn0", ["10.10.0.1"])
    assert d.restore() is True
    assert not (tmp_path / "vpn0.dns.json").exists()


def test_a_bad_address_or_journal_is_an_error(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text(OLD)
    with pytest.raises(ValueError):
        config(tmp_path, "file", rc).apply("vpn0", ["10.10.0.1\nnameserver 6.6.6.6"])
    assert rc.read_text() == OLD
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DnsError, match="unreadable"):
        dns.undo_journal(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"version": 99}')
    with pytest.raises(DnsError, match="version"):
        dns.undo_journal(tmp_path / "old.json")
