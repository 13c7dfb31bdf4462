"""Rows of the tunnel benchmark: one module per implementation, registered in `ROWS`.

To add a row, subclass `bench.rows.base.Row` in its own module (the interface is in
that module's docstring) and add the class to `ROWS` below; the order of `ROWS` is the
default order of the table. The project's own rows, `vpn-tcp` and `vpn-udp`, live in
`bench.rows.vpn_manual` (a daemon that `vpn up` detaches, handed over with `env.adopt`);
`vpn-ike-tcp`, `vpn-ike-tls` and `vpn-ike-udp` in `bench.rows.vpn_ike` (`vpn serve`
spawned, the client's `vpn up` daemon adopted).
"""

from __future__ import annotations

from bench.rows.base import Row
from bench.rows.ocserv_tls import OcservTls
from bench.rows.openvpn_tcp import OpenvpnTcp
from bench.rows.veth import Veth
from bench.rows.vpn_ike import VpnIkeTcp, VpnIkeTls, VpnIkeUdp
from bench.rows.vpn_manual import VpnTcp, VpnUdp
from bench.rows.wireguard_go import WireguardGo

ROWS: dict[str, type[Row]] = {
    cls.name: cls
    for cls in (Veth, VpnTcp, VpnUdp, VpnIkeTcp, VpnIkeTls, VpnIkeUdp, OpenvpnTcp, OcservTls, WireguardGo)
}

__all__ = ["ROWS", "Row"]
