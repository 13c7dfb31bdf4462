"""`vpn up` fails with the reason, and leaves nothing behind: unreachable server (TCP
refused, UDP unanswered), wrong PSK (AUTHENTICATION_FAILED), no proposal chosen. And
liveness: DPD notices a server killed with SIGKILL within its budget, the client
retries with backoff and is back when the server is started again."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .ike import PSK, RESTRICTED_SERVER, SERVER_INNER, IkeTunnel, daemon_gone, ike_tunnel
from .netns import Topology
from .test_manual_lifecycle import snapshot

pytestmark = pytest.mark.netns

DPD_S = 1
PEER_TIMEOUT_S = 3


def up_fails(vpn: IkeTunnel, before: dict[str, str], timeout: float = 30) -> str:
    """`vpn up` must fail within `timeout`, say why, and change nothing."""
    t0 = time.monotonic()
    r = vpn.client.cli("up", str(vpn.client.config), check=False, timeout=timeout + 10)
    took = time.monotonic() - t0
    err = r.stderr.decode()
    assert r.returncode == 1, f"`vpn up` exited {r.returncode}: {r.stdout!r} {err}"
    assert took < timeout, f"`vpn up` took {took:.1f} s to fail"
    st = vpn.client.cli("status", check=False)
    assert st.returncode != 0 and b"no instance" in st.stderr, "a daemon stayed behind"
    vpn.assert_unchanged(before)
    return err


def test_up_fails_with_the_reason(topology: Topology, tmp_path: Path) -> None:
    t = topology
    with ike_tunnel(t, tmp_path, protocol="tcp", kill_switch=True, peer_timeout=PEER_TIMEOUT_S) as vpn:
        before = vpn.snapshot()
        # nothing listens: TCP is refused at once
        err = up_fails(vpn, before, timeout=10)
        assert f"cannot reach {t.server_v4}" in err and "port 4500 over TCP" in err, err
        assert "Connection refused" in err, err
        # over UDP nobody answers: given up after the peer timeout
        vpn.write_client(protocol="udp", kill_switch=True, peer_timeout=PEER_TIMEOUT_S)
        err = up_fails(vpn, before, timeout=PEER_TIMEOUT_S + 8)
        assert f"no answer from {t.server_v4} over UDP" in err, err


def test_up_fails_on_a_wrong_psk(topology: Topology, tmp_path: Path) -> None:
    with ike_tunnel(topology, tmp_path, protocol="tcp", server_psk="another-psk-0123456789abcdef") as vpn:
        before = vpn.snapshot()
        vpn.server.start()
        err = up_fails(vpn, before, timeout=15)
        assert "authentication failed" in err.lower(), err
        assert PSK not in err and "another-psk" not in err, err  # never a secret in a message
        assert PSK not in vpn.client.log_tail(200)


def test_up_fails_when_no_proposal_is_chosen(topology: Topology, tmp_path: Path) -> None:
    """The config has no algorithm keys, so the server is the real `vpn serve` with its
    policy narrowed by a test-only wrapper (RESTRICTED_SERVER) to proposals our client
    never offers: its IKE_SA_INIT answer is NO_PROPOSAL_CHOSEN (RFC 7296 §2.7)."""
    with ike_tunnel(topology, tmp_path, protocol="udp", server_script=RESTRICTED_SERVER) as vpn:
        before = vpn.snapshot()
        vpn.server.start()
        err = up_fails(vpn, before, timeout=15)
        assert "no proposal chosen" in err.lower(), err


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_dpd_notices_a_dead_server_and_the_client_comes_back(topology: Topology, tmp_path: Path,
                                                             protocol: str) -> None:
    with ike_tunnel(topology, tmp_path, protocol=protocol, dpd=DPD_S, peer_timeout=PEER_TIMEOUT_S) as vpn:
        vpn.server.start()
        vpn.client.up()
        vpn.ping(SERVER_INNER)
        first = vpn.client.status()
        spi = first["ike_sa"]["spi_i"]
        # idle: DPD runs every DPD_S and is answered
        st, _ = vpn.wait_status(lambda s: (s["ike_sa"] or {}).get("dpd", {}).get("last_answered_s_ago")
                                is not None, 10, "a DPD answered")
        assert "last DPD" in vpn.client.cli("status").stdout.decode()

        vpn.server.kill9()
        budget = DPD_S + PEER_TIMEOUT_S + 3  # idle interval + unanswered request + polling slack
        st, took = vpn.wait_status(lambda s: s["ike_sa"] is None, budget, "IKE SA gone after the server died")
        assert st["state"] == "reconnecting", st["state"]
        assert "peer dead" in (st["last_failure"] or "") or "no response" in (st["last_failure"] or ""), st
        assert st["child_sas"] == []
        human = vpn.client.cli("status").stdout.decode()
        assert "IKE SA: none" in human and "last failure" in human, human

        # it keeps trying (with backoff) and is back once a server answers again
        time.sleep(2)
        vpn.server.start()
        st, took = vpn.wait_status(lambda s: s["state"] == "up" and s["ike_sa"] is not None
                                   and bool(s["child_sas"]), 30, "back up after the server restart")
        assert st["ike_sa"]["spi_i"] != spi
        assert st["sessions_started"] >= 2
        assert st["virtual_ip"] == first["virtual_ip"]
        vpn.ping(SERVER_INNER)
        delays = [int(d) for d in re.findall(r"starting a new IKE SA in (\d+) s", vpn.client.log_tail(200))]
        assert delays and delays[0] == 1 and delays == sorted(delays), delays  # exponential backoff
        vpn.client.down()
        assert daemon_gone(vpn.client)


def test_dns_is_refused_where_the_namespace_has_no_resolv_conf_of_its_own(topology: Topology,
                                                                         tmp_path: Path) -> None:
    """Without /etc/netns/NAME/resolv.conf, /etc/resolv.conf inside the namespace is the
    machine's own file: when the server pushes DNS servers, `vpn up` fails with the fix
    instead of touching it, and undoes the rest."""
    machine = Path("/etc/resolv.conf")
    machine_before = (machine.read_bytes(), machine.stat().st_ino, machine.stat().st_mtime_ns)
    with ike_tunnel(topology, tmp_path, protocol="tcp") as vpn:
        vpn.resolv_conf.unlink()
        before = snapshot(topology.client)
        vpn.server.start()
        r = vpn.client.cli("up", str(vpn.client.config), check=False, timeout=30)
        err = r.stderr.decode()
        assert r.returncode == 1 and "has no resolv.conf of its own" in err and "dns = false" in err, err
        assert snapshot(topology.client) == before
        assert not [f for f in vpn.client.run_files() if not f.endswith(".log")]
    assert (machine.read_bytes(), machine.stat().st_ino, machine.stat().st_mtime_ns) == machine_before


def test_a_server_that_pushes_no_dns_needs_no_resolv_conf(topology: Topology, tmp_path: Path) -> None:
    with ike_tunnel(topology, tmp_path, protocol="tcp", server_dns=()) as vpn:
        vpn.resolv_conf.unlink()
        vpn.server.start()
        vpn.client.up()
        st = vpn.client.status()
        assert st["dns"] == [] and st["dns_method"] is None
        vpn.ping(SERVER_INNER)
        vpn.client.down()
