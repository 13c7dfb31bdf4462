"""`wireguard-go`: userspace WireGuard from Debian's wireguard-go, configured with `wg`.

One wireguard-go process per namespace (`-f`, foreground). Its UAPI socket lives in
/var/run/wireguard/<ifname>.sock, a directory shared by all namespaces, so the
interface names carry the run's unique tag. Keys are fresh X25519 pairs per run; the
cipher is WireGuard's only one, ChaCha20-Poly1305. MTU is wireguard-go's default (1420).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bench.rows.base import Row, RowEnv, Side
from bench.rows.keys import write_x25519

PORT = 51820
SOCK_DIR = Path("/var/run/wireguard")
# wireguard-go refuses to run on Linux (where a kernel module exists) without this.
WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}


class WireguardGo(Row):
    name = "wireguard-go"
    needs = {"wireguard-go": "wireguard-go", "wg": "wireguard-tools"}

    def _ifname(self, env: RowEnv, side: Side) -> str:
        return f"wgb{env.pair.tag}{side[0]}"  # <= 15 bytes for any PID

    def up(self, env: RowEnv) -> list[int]:
        pair, inner = env.pair, env.inner
        pubs = {side: write_x25519(env.workdir / f"{side}.key") for side in ("client", "server")}
        pids = []
        sides: tuple[Side, Side] = ("server", "client")
        for side in sides:
            dev = self._ifname(env, side)
            pids.append(env.spawn(side, ["wireguard-go", "-f", dev], name=f"wireguard-go-{side}", env=WG_ENV))
        ends: list[tuple[Side, Side, str, str, str, str]] = [
            ("server", "client", inner.server4, inner.server6, inner.client4, inner.client6),
            ("client", "server", inner.client4, inner.client6, inner.server4, inner.server6),
        ]
        for side, peer, me4, me6, peer4, peer6 in ends:
            dev = self._ifname(env, side)
            sock = SOCK_DIR / f"{dev}.sock"
            env.wait_for(f"{sock}", sock.exists, timeout=10)
            own = ["listen-port", str(PORT)] if side == "server" else []
            endpoint = ["endpoint", f"{pair.server4}:{PORT}"] if side == "client" else []
            key = env.workdir / f"{side}.key"
            # fmt: off
            argv = ["wg", "set", dev, "private-key", str(key), *own,
                    "peer", pubs[peer], "allowed-ips", f"{peer4}/32,{peer6}/128", *endpoint]
            # fmt: on
            env.run(side, argv)
            env.run(side, ["ip", "addr", "add", f"{me4}/{inner.prefix4}", "dev", dev])
            env.run(side, ["ip", "addr", "add", f"{me6}/{inner.prefix6}", "dev", dev, "nodad"])
            env.run(side, ["ip", "link", "set", dev, "up"])
        return pids

    def down(self, env: RowEnv) -> None:
        sides: tuple[Side, Side] = ("server", "client")
        env.stop_all()  # wireguard-go removes its socket on SIGTERM; make sure of it
        for side in sides:
            with contextlib.suppress(FileNotFoundError):
                (SOCK_DIR / f"{self._ifname(env, side)}.sock").unlink()
