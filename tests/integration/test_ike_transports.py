"""Our IKE client against our server (`vpn serve`) over each transport: TCP (RFC 9329),
TLS around it (Appendix A), UDP (RFC 3948), and auto with UDP blocked in the router
(RFC 9329 §5.1 fallback to TCP).

Each case: `vpn up` returns with a virtual address from the pool, pings cross the
tunnel, a TCP transfer through it arrives byte for byte (200 MB over TCP), both
statuses name the transport, and the server counts the traffic on that client.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .ike_server_helpers import SERVER_INNER, build_ike_topology, ike_lab, ping
from .manual import MB, TransferRun
from .netns import Lab

pytestmark = pytest.mark.netns

BLOCK_UDP = """
table inet ikeblock {
    chain forward {
        type filter hook forward priority 0; policy accept;
        udp dport { 500, 4500 } drop
    }
}
"""

CASES = [
    pytest.param("tcp", 200 * MB, id="tcp-200MB"),
    pytest.param("tls", 64 * MB, id="tls-64MB"),
    pytest.param("udp", 64 * MB, id="udp-64MB"),
    pytest.param("auto", 32 * MB, id="auto-udp-blocked-32MB"),
]


@pytest.mark.parametrize(("protocol", "total"), CASES)
def test_transport_ping_and_byte_exact_transfer(lab: Lab, tmp_path: Path, protocol: str, total: int) -> None:
    topo = build_ike_topology(lab)
    if protocol == "auto":
        topo.router.nft(BLOCK_UDP)
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server()
        cli = ik.client(topo.client, "alice@test", protocol=protocol, fallback_after=1.5)
        cli.up()
        ping(topo.client, SERVER_INNER)
        st = cli.status()
        vip = st["virtual_ip"][0].split("/")[0]
        assert vip.startswith("10.10.0.") and vip != SERVER_INNER
        ping(topo.server, vip)

        run = TransferRun(topo.client, topo.server, SERVER_INNER, total)
        run.finish().assert_intact(total)
        back = TransferRun(topo.server, topo.client, vip, total // 4)
        back.finish().assert_intact(total // 4)

        st = cli.status()
        want = "tcp" if protocol == "auto" else protocol
        assert st["transport"] == want, st
        if protocol == "auto":
            # RFC 9329 §5.1: the fallback and its reason are shown, not hidden
            assert st["configured_transport"] == "auto"
            assert st["fell_back"] is True and "no answer over UDP" in st["fallback_reason"], st
            assert any("falling back from UDP to TCP" in e for e in st["events"]), st["events"]
        else:
            assert st["fell_back"] is False and st["fallback_reason"] is None
        c = srv.client("alice@test")
        assert c is not None, srv.clients()
        assert c["transport"] == want and c["virtual_ip"] == [vip]
        assert c["remote"].startswith(topo.base.client_v4 + ":"), c
        assert c["counters"]["bytes_in"] > total and c["counters"]["bytes_out"] > total // 4, c
        assert c["spi_i"] == st["ike_sa"]["spi_i"] and c["spi_r"] == st["ike_sa"]["spi_r"]
        assert [ch["spi_in"] for ch in c["child_sas"]] == [ch["spi_out"] for ch in st["child_sas"]]
        cli.down()
