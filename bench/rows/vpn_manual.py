"""`vpn-tcp` and `vpn-udp`: this project's dataplane, manually keyed (`mode = "manual"`).

Fresh keys per run from `vpn genkey` (AES-256-GCM, 32-byte key + 4-byte salt per
direction, ESN), MTU 1400, the server listening on the veth's server address, port
4500: an RFC 9329 TCP stream (`vpn-tcp`) or RFC 3948 UDP (`vpn-udp`). `vpn up` daemonizes
and prints "daemon pid N"; that process is adopted for CPU/RSS accounting. Each side's
run directory (journal, log, control state) is kept in `env.workdir` through
VPN_RUN_DIR, so nothing lands in the machine's /run/vpn.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar

from bench.rows.base import Row, RowEnv, RowError, Side
from bench.rows.vpn_cli import adopt_daemon, vpn_argv

PORT = 4500
MTU = 1400
NAMES: dict[Side, str] = {"server": "vpnbs", "client": "vpnbc"}  # also the TUN names


class _VpnManual(Row):
    protocol: ClassVar[str]
    needs = {"env": "coreutils"}

    def _vpn(self, env: RowEnv, side: Side, *args: str, timeout: float = 30.0) -> str:
        return env.run(side, vpn_argv(env, side, *args), timeout=timeout)

    def _config(self, env: RowEnv, side: Side, keys: Path) -> Path:
        inner, pair = env.inner, env.pair
        me4, me6 = (inner.server4, inner.server6) if side == "server" else (inner.client4, inner.client6)
        if side == "server":
            transport = f'role = "listen"\nlocal = "{pair.server4}"\nport = {PORT}\n'
        else:
            transport = f'role = "connect"\nremote = "{pair.server4}"\nport = {PORT}\n'
        path = env.workdir / f"{side}.toml"
        path.write_text(
            f'name = "{NAMES[side]}"\nmode = "manual"\n\n'
            f'[tunnel]\nmtu = {MTU}\n'
            f'addresses = ["{me4}/{inner.prefix4}", "{me6}/{inner.prefix6}"]\n\n'
            f'[transport]\nprotocol = "{self.protocol}"\n{transport}\n'
            f'[manual]\nkey_file = "{keys / f"{side}.keys"}"\n'
            f'state_dir = "{env.workdir / f"state-{side}"}"\n'
        )
        return path

    def up(self, env: RowEnv) -> list[int]:
        keys = env.workdir / "keys"
        self._vpn(env, "client", "genkey", "--out-dir", str(keys))
        pids = []
        sides: tuple[Side, Side] = ("server", "client")
        for side in sides:
            out = self._vpn(env, side, "up", str(self._config(env, side, keys)), "--new-key", timeout=60)
            pids.append(adopt_daemon(env, out, f"vpn-{side}"))
        return pids

    def down(self, env: RowEnv) -> None:
        sides: tuple[Side, Side] = ("client", "server")
        for side in sides:
            with contextlib.suppress(RowError):  # the harness ends what is left by PID
                self._vpn(env, side, "down", NAMES[side], timeout=20)


class VpnTcp(_VpnManual):
    name = "vpn-tcp"
    protocol = "tcp"


class VpnUdp(_VpnManual):
    name = "vpn-udp"
    protocol = "udp"
