"""vpn/client.py without the network: the DPD budget's retransmission schedule, how
`vpn status` renders a client, and finding what a crashed instance left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpn import client, policies
from vpn.cli import format_status
from vpn.ike.policy import RetransmitPolicy
from vpn.io import paths


@given(st.integers(min_value=2, max_value=3600))
def test_the_retransmissions_fit_the_peer_timeout(total: int) -> None:
    rt = policies.retransmit_policy(float(total))
    assert rt.total() <= total * 1.01
    assert rt.stream_timeout() == total  # TCP: no resends, one timeout (RFC 9329 §6.2)
    assert rt.tries >= 2  # a lost datagram or two never declares the server dead
    assert rt.interval(0) <= policies.RETRANSMIT_FIRST_S


def test_the_default_peer_timeout_is_strongswans_schedule() -> None:
    rt = policies.retransmit_policy(165.0)
    default = RetransmitPolicy()
    assert (rt.timeout, rt.base, rt.tries) == (default.timeout, default.base, default.tries)


STATUS: dict[str, object] = {
    "ok": True, "state": "up", "role": "client", "mode": "ike", "device": "vpn0", "mtu": 1400, "uptime_s": 75.2,
    "server": "vpn.example.org (192.0.2.10)", "server_address": "192.0.2.10:4500", "transport": "tcp",
    "configured_transport": "auto", "fell_back": True, "fallback_reason": "no answer over UDP within 4 s",
    "virtual_ip": ["10.10.0.2/32"], "dns": ["10.10.0.1"], "dns_method": "resolvectl", "full_tunnel": True,
    "kill_switch": {"table": "inet vpnks_vpn0", "blocked_packets": 12},
    "ike_sa": {"spi_i": "0011223344556677", "spi_r": "8899aabbccddeeff", "peer": "vpn.example.org",
               "algorithms": "AES_GCM_16_256/HMAC_SHA2_256/CURVE25519", "established_s_ago": 70.0,
               "rekey_in_s": 13000.0, "expires_in_s": 15000.0, "last_heard_s_ago": 3.0,
               "dpd": {"interval_s": 30.0, "peer_timeout_s": 165.0, "next_in_s": 27.0, "in_progress": False,
                       "last_sent_s_ago": 40.0, "last_answered_s_ago": 39.9}},
    "child_sas": [{"spi_in": "c0ffee01", "spi_out": "c0ffee02", "algorithms": "AES_GCM_16_256",
                   "ts_local": ["10.10.0.2-10.10.0.2"], "ts_remote": ["0.0.0.0-255.255.255.255"],
                   "in_packets": 10, "in_bytes": 12000, "out_packets": 11, "out_bytes": 9000,
                   "replay_drops": 0, "icv_drops": 2, "rekey_in_s": 3400.0}],
    "events": ["12:00:00 IKE SA established"],
}


def test_status_shows_a_client_readably() -> None:
    text = format_status("vpn0", STATUS)
    for line in (
        "vpn0: up",
        "  server: vpn.example.org (192.0.2.10) at 192.0.2.10:4500 over TCP (fell back from UDP: "
        "no answer over UDP within 4 s)",
        "  virtual IP: 10.10.0.2/32; DNS 10.10.0.1 (resolvectl)",
        "  kill switch: on (inet vpnks_vpn0, 12 packets blocked)",
        "  IKE SA 0011223344556677_i 8899aabbccddeeff_r with vpn.example.org: "
        "AES_GCM_16_256/HMAC_SHA2_256/CURVE25519, established 70 s ago, rekey in 3 h 36 min",
        "  liveness: last heard 3 s ago; next DPD in 27 s; last DPD 40 s ago, answered 39 s ago",
        "  Child SA in c0ffee01 out c0ffee02: AES_GCM_16_256, rekey in 56 min 40 s",
        "    in  10 packets, 12.00 kB, 2 failed ICV",
        "    out 11 packets, 9.00 kB",
    ):
        assert line in text.splitlines(), f"{line!r} not in:\n{text}"


def test_status_of_a_client_between_ike_sas() -> None:
    st_ = {**STATUS, "state": "reconnecting", "ike_sa": None, "child_sas": [], "kill_switch": None,
           "next_attempt_in_s": 4.0, "last_failure": "IKE SA closed: peer dead (liveness check unanswered)"}
    text = format_status("vpn0", st_)
    assert "vpn0: reconnecting" in text and "kill switch: off" in text
    assert "  IKE SA: none (next attempt in 4 s); last failure: IKE SA closed: peer dead" in text


@pytest.fixture
def run_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(paths, "RUN_ROOT", tmp_path)
    return paths.run_dir()


def test_leftovers_are_found_and_a_dns_change_is_undone(run_root: Path, tmp_path: Path) -> None:
    assert client.leftover_names() == []
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.10.0.1\n")
    (run_root / "a.dns.json").write_text(json.dumps({
        "version": 1, "name": "a", "method": "file", "path": str(resolv), "original": "nameserver 192.0.2.1\n",
        "symlink": None, "written": "nameserver 10.10.0.1\n", "in_place": True}))
    (run_root / "b.journal").write_text(json.dumps({"version": 1, "changes": []}))
    (run_root / "a.log").write_text("a log is not a leftover\n")
    assert client.leftover_names() == ["a", "b"]
    assert client.undo_leftovers("a") == ["DNS"]
    assert resolv.read_text() == "nameserver 192.0.2.1\n"
    assert client.leftover_names() == ["b"]


def test_status_of_a_lost_connection_and_a_request_in_flight() -> None:
    base: dict[str, Any] = STATUS["ike_sa"]  # type: ignore[assignment]
    ike = {**base, "dpd": {**base["dpd"], "waiting_for": "empty informational"}}
    text = format_status("vpn0", {**STATUS, "connected": False, "fell_back": False, "ike_sa": ike})
    assert "over TCP (auto), connection lost: reconnecting" in text
    assert "; waiting for the answer to: empty informational" in text
