"""Child SA rekey under load (RFC 7296 §2.8): the server's `rekey_bytes` makes the
dataplane flag an SA after that many bytes, the server rekeys it with CREATE_CHILD_SA
while a transfer runs, the client switches, the old SAs are deleted, and the transfer
neither loses a byte nor stalls. Also the config keys that set the server's Child SA
lifetimes, and their limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vpn import config
from vpn.policies import server_policy

from .ike_server_helpers import SERVER_INNER, TimedTransfer, build_ike_topology, ike_lab, ping, wait_until
from .manual import MB
from .netns import Lab

pytestmark = pytest.mark.netns

REKEY_BYTES = 24 * MB
TOTAL = 200 * MB
RATE = 50 * MB  # bytes/s: ~4 s of transfer, a rekey every half second or so
MAX_GAP_S = 1.5  # progress lines come every 4 MiB (~80 ms at this rate)


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_child_sa_rekey_under_load(lab: Lab, tmp_path: Path, protocol: str) -> None:
    topo = build_ike_topology(lab)
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(extra=f"rekey_bytes = {REKEY_BYTES}\n")
        cli = ik.client(topo.client, "alice@test", protocol=protocol)
        cli.up()
        if protocol == "udp":
            # RFC 7296 §2.23: after NAT detection all IKE (the server's rekey requests
            # too) and ESP use port 4500; nothing may need port 500 any more
            topo.router.nft("add table inet no500\n"
                            "add chain inet no500 f { type filter hook forward priority 0; }\n"
                            "add rule inet no500 f udp sport 500 drop\n"
                            "add rule inet no500 f udp dport 500 drop\n")
        ping(topo.client, SERVER_INNER)
        first = srv.client("alice@test")
        assert first is not None and len(first["child_sas"]) == 1
        first_spis = {first["child_sas"][0]["spi_in"], first["child_sas"][0]["spi_out"]}

        run = TimedTransfer(topo.client, topo.server, SERVER_INNER, TOTAL, rate=RATE)
        run.follow()
        run.finish().assert_intact(TOTAL)
        assert run.max_gap() < MAX_GAP_S, f"the transfer stalled for {run.max_gap():.2f} s"

        rekeys = [e for e in srv.events() if "Child SA rekeyed" in e]
        assert len(rekeys) >= TOTAL // REKEY_BYTES // 2, srv.events()

        def settled() -> dict[str, Any] | None:
            """Both ends with the same single pair (a rekey started by the last bytes of
            the transfer may still be finishing)."""
            c = srv.client("alice@test")
            theirs = cli.status()["child_sas"]
            if c is None or len(c["child_sas"]) != 1 or len(theirs) != 1:
                return None
            ours = c["child_sas"][0]
            return ours if (theirs[0]["spi_in"], theirs[0]["spi_out"]) == (ours["spi_out"], ours["spi_in"]) else None

        # the old SAs are deleted: one pair left, new SPIs, the same pair on the client
        now = wait_until(settled, "one Child SA pair on both ends", timeout=10)
        assert not {now["spi_in"], now["spi_out"]} & first_spis
        # nothing was dropped for want of an SA, as a replay or as a forgery
        counters = srv.status()["counters"]
        assert counters["no_sa"] == counters["queue_full"] == counters["ts_violation"] == 0, counters
        assert now["replay_drops"] == now["icv_drops"] == 0
        ping(topo.client, SERVER_INNER)
        cli.down()


def write_server(tmp_path: Path, extra: str) -> Path:
    psk = tmp_path / "psk"
    psk.write_text("0123456789abcdef0123\n")
    psk.chmod(0o600)
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'name = "s"\nmode = "ike"\n[tunnel]\naddresses = ["10.9.0.1/24"]\n[server]\n'
                   f'identity = "s.test"\npsk_file = "{psk}"\ntls_port = 0\npool4 = "10.9.0.0/24"\n{extra}'
                   f'[[client]]\nidentity = "a@test"\npsk_file = "{psk}"\n')
    return cfg


def test_server_config_keys(tmp_path: Path) -> None:
    cfg = config.load(write_server(tmp_path, "rekey = 600\nrekey_bytes = 1048576\n"))
    assert cfg.server is not None and cfg.server.child_rekey_bytes == 1 << 20
    policy, _ = server_policy(cfg)
    assert policy.lifetimes.child_rekey_seconds == 600
    assert policy.lifetimes.child_lifetime_seconds > 600
    default = config.load(write_server(tmp_path, ""))
    assert default.server is not None and default.server.child_rekey_bytes == 0
    assert default.server.child_rekey_s == 3600
    for bad, key in (("rekey = 10\n", "rekey"), ("rekey_bytes = 1000\n", "rekey_bytes"),
                     ('uplink = "eth0\\" accept"\n', "uplink")):
        with pytest.raises(config.ConfigError, match=rf"\[server\] {key}"):
            config.load(write_server(tmp_path, bad))
