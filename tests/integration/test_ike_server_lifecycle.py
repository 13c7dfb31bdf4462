"""`vpn serve` comes and goes: a restart is survived by its clients, and every way of
stopping it leaves the namespace as it was.

- SIGTERM, then a new `vpn serve`: the server deletes its IKE SAs on the way out
  (RFC 7296 §1.4.1); the client notices, makes a new IKE SA with backoff, gets the same
  virtual address (fixed per configured identity) and traffic flows again.
- SIGTERM and `vpn down` restore the namespace: links, addresses, routes, rules, the
  nftables ruleset and the forwarding sysctls; no journal is left.
- After SIGKILL the TUN is gone with the process but the nft table, the sysctls and the
  journal stay; the next `vpn serve` undoes them first, and its own stop leaves the
  namespace as it was before the first start.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from .ike_server_helpers import (
    SERVER_INNER,
    build_ike_topology,
    ike_lab,
    ns_state,
    ping,
    wait_until,
)
from .netns import Lab
from .test_manual_lifecycle import settle

pytestmark = pytest.mark.netns


def test_server_restart_is_survived(lab: Lab, tmp_path: Path) -> None:
    topo = build_ike_topology(lab)
    with ike_lab(topo, tmp_path) as ik:
        clients = ["bob@test", "alice@test"]  # alice is second: 10.10.0.3 every time
        srv = ik.server(clients=clients)
        cli = ik.client(topo.client, "alice@test", protocol="tcp", dpd=2)
        cli.up()
        vip = cli.status()["virtual_ip"][0].split("/")[0]
        assert vip == "10.10.0.3"
        ping(topo.client, SERVER_INNER)
        old_spi = cli.status()["ike_sa"]["spi_i"]

        assert srv.stop(signal.SIGTERM) == 0
        events = wait_until(lambda: [e for e in cli.status()["events"] if "IKE SA closed" in e],
                            "the client to see the server go", timeout=15)
        assert "deleted by peer" in events[-1], events
        srv2 = ik.server(clients=clients)

        st = wait_until(lambda: (s := cli.status())["ike_sa"] and s["ike_sa"]["spi_i"] != old_spi and s,
                        "a new IKE SA after the restart", timeout=45)
        assert st["sessions_started"] >= 2
        assert st["virtual_ip"][0].split("/")[0] == vip
        c = srv2.wait_client("alice@test")
        assert c["virtual_ip"] == [vip]
        ping(topo.client, SERVER_INNER)
        ping(topo.server, vip)
        cli.down()


@pytest.mark.parametrize("how", ["sigterm", "vpn-down", "kill9-then-serve"])
def test_stop_leaves_the_namespace_as_found(lab: Lab, tmp_path: Path, how: str) -> None:
    topo = build_ike_topology(lab, beyond=True)
    settle(topo.server)
    before = ns_state(topo.server)
    assert before["net/ipv4/ip_forward"] == "0"
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(uplink=topo.uplink_if)
        cli = ik.client(topo.client, "alice@test", protocol="tcp")
        cli.up()
        ping(topo.client, SERVER_INNER)
        during = ns_state(topo.server)
        assert "table inet vpn_iks" in during["nft"] and "masquerade" in during["nft"]
        assert during["net/ipv4/ip_forward"] == "1" and during["net/ipv6/conf/all/forwarding"] == "1"
        assert "iks" in during["links"] and SERVER_INNER in during["addr"]
        run_dir = srv.side.run_dir
        assert list(run_dir.rglob("iks.journal")) and list(run_dir.rglob("iks.sysctl.json"))

        if how == "sigterm":
            assert srv.stop(signal.SIGTERM) == 0
        elif how == "vpn-down":
            srv.side.cli("down", "iks")
            assert srv.proc is not None and srv.proc.wait(timeout=15) == 0
        else:
            srv.stop(signal.SIGKILL)
            crashed = ns_state(topo.server)
            # the kernel removed the TUN (and its routes) with the process; the rest stays
            assert "iks" not in crashed["links"]
            assert "table inet vpn_iks" in crashed["nft"] and crashed["net/ipv4/ip_forward"] == "1"
            srv = ik.server(uplink=topo.uplink_if)
            again = ns_state(topo.server)
            assert again["nft"].count("table inet vpn_iks") == 1
            st = srv.status()
            assert st["state"] == "up"
            assert srv.stop(signal.SIGTERM) == 0

        wait_until(lambda: not list(run_dir.rglob("iks.journal")), "the journal to go", timeout=5)
        assert not list(run_dir.rglob("iks.sysctl.json"))
        after = ns_state(topo.server)
        for key in before:
            assert after[key] == before[key], f"{key} differs after {how}:\n{before[key]}\n---\n{after[key]}"
        cli.down()
