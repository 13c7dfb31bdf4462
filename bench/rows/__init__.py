"""Rows of the tunnel benchmark: one module per implementation, registered in `ROWS`.

To add a row, subclass `bench.rows.base.Row` in its own module (the interface is in
that module's docstring) and add the class to `ROWS` below; the order of `ROWS` is the
default order of the table. A sketch of the project's own rows:

    class VpnTcp(Row):
        name = "vpn-tcp"

        def up(self, env: RowEnv) -> list[int]:
            # server.toml / client.toml in env.workdir (0600): mode = "manual",
            # transport = "tcp", outer env.pair.server4, inner env.inner.server4/client4
            # (and the /64s of env.inner), fresh random keys per run.
            pids = []
            for side in ("server", "client"):
                env.run(side, [sys.executable, "-m", "vpn.cli", "up", str(conf[side])], timeout=30)
                pids.append(env.adopt(daemon_pid(side), f"vpn-{side}"))  # e.g. from `vpn status`
            return pids

        def down(self, env: RowEnv) -> None:
            for side in ("client", "server"):
                env.run(side, [sys.executable, "-m", "vpn.cli", "down"], timeout=15)

(or `env.spawn(side, [..., "--foreground"], name=...)` if the daemon can stay in the
foreground; then no `adopt` and no `down` are needed.)
"""

from __future__ import annotations

from bench.rows.base import Row
from bench.rows.ocserv_tls import OcservTls
from bench.rows.openvpn_tcp import OpenvpnTcp
from bench.rows.veth import Veth
from bench.rows.vpn_manual import VpnTcp, VpnUdp
from bench.rows.wireguard_go import WireguardGo

ROWS: dict[str, type[Row]] = {
    cls.name: cls for cls in (Veth, VpnTcp, VpnUdp, OpenvpnTcp, OcservTls, WireguardGo)
}

__all__ = ["ROWS", "Row"]
