"""Rows of the tunnel benchmark: one module per implementation, registered in `ROWS`.

To add a row (e.g. `vpn-tcp`), subclass `bench.rows.base.Row` in its own module and
add the class to `ROWS` below; the order of `ROWS` is the default order of the table.
"""

from __future__ import annotations

from bench.rows.base import Row
from bench.rows.ocserv_tls import OcservTls
from bench.rows.openvpn_tcp import OpenvpnTcp
from bench.rows.veth import Veth
from bench.rows.wireguard_go import WireguardGo

ROWS: dict[str, type[Row]] = {cls.name: cls for cls in (Veth, OpenvpnTcp, OcservTls, WireguardGo)}

__all__ = ["ROWS", "Row"]
