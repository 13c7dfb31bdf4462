"""The manually keyed tunnel end to end: `vpn up` on both sides of a router, pings both
ways, and TCP transfers through the tunnel whose content must arrive byte for byte.

Each case is one transport (RFC 9329 TCP stream or UDP), one outer family (the
router's addresses) and one inner family (the TUN addresses the transfer uses). Every
case moves 200 MB client -> server and 50 MB back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .manual import MB, manual_tunnel
from .netns import Topology

pytestmark = pytest.mark.netns

CASES = [
    # protocol, outer family, inner family, bytes client -> server (a quarter back)
    pytest.param("tcp", 4, 4, 200 * MB, id="tcp-v4outer-v4inner-200MB"),
    pytest.param("tcp", 6, 6, 200 * MB, id="tcp-v6outer-v6inner-200MB"),
    pytest.param("udp", 4, 6, 200 * MB, id="udp-v4outer-v6inner-200MB"),
    pytest.param("udp", 6, 4, 200 * MB, id="udp-v6outer-v4inner-200MB"),
]


@pytest.mark.parametrize(("protocol", "outer", "inner", "total"), CASES)
def test_ping_and_byte_exact_transfer(topology: Topology, tmp_path: Path, protocol: str,
                                      outer: int, inner: int, total: int) -> None:
    with manual_tunnel(topology, tmp_path, protocol=protocol, outer=outer) as tun:
        tun.up()
        for src in ("client", "server"):
            for family in (4, 6):
                tun.ping(src, family)
        tun.transfer(total, family=inner)
        tun.transfer(total // 4, family=inner, reverse=True)

        server, client = tun.server.status(), tun.client.status()
        assert server["transport"] == client["transport"] == protocol
        # the outer packets used the configured family: the server saw the client's
        # outer address of that family
        client_outer = topology.client_v4 if outer == 4 else topology.client_v6
        assert server["peer"] is not None and client_outer in server["peer"]
        # the bytes went through the SAs (inner bytes count headers too), nothing was
        # dropped as forged or replayed, and a stream lost nothing at all
        for a, b, carried in ((client, server, total), (server, client, total // 4)):
            out = next(sa for sa in a["sas"] if sa["dir"] == "out")
            inb = next(sa for sa in b["sas"] if sa["dir"] == "in")
            assert inb["bytes"] > carried, (out, inb)
            assert inb["replay"] == inb["icv"] == 0
            assert b["counters"]["rx_unknown_spi"] == b["counters"]["rx_fatal"] == 0
            if protocol == "tcp":
                assert inb["packets"] == out["packets"], (out, inb)
        tun.down()
