"""`vpn-ike-tcp`, `vpn-ike-tls`, `vpn-ike-udp`: this project as a user runs it, IKEv2.

`vpn serve` (foreground, spawned) on the server side with a fresh PSK per run, the pools
198.19.0.0/24 and 2001:2:0:2::/64 (the server's own tunnel addresses are the first of
each, as the harness wants), no uplink (nothing to masquerade); `vpn up` with
`mode = "ike"` on the client side, split tunnel to the two inner prefixes, asking for
an IPv6 address too. The IKE and ESP algorithms are the defaults both ends negotiate
(AES-256-GCM ESP). Transports: an RFC 9329 TCP stream on port 4500 (`vpn-ike-tcp`),
the same inside TLS on port 443 with a throwaway CA (`vpn-ike-tls`), RFC 3948 UDP
(`vpn-ike-udp`). MTU 1400 (the default). The client's daemon (`vpn up` prints "daemon
pid N") is adopted; run directories live in `env.workdir` through VPN_RUN_DIR.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import ClassVar

from bench.rows.base import Row, RowEnv, RowError, Side
from bench.rows.keys import make_pki
from bench.rows.vpn_cli import adopt_daemon, vpn_argv

NAMES: dict[Side, str] = {"server": "vpnis", "client": "vpnic"}  # also the TUN names
CLIENT_ID = "bench@vpn.test"
SERVER_ID = "server.vpn.test"


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class _VpnIke(Row):
    protocol: ClassVar[str]
    needs = {"env": "coreutils"}

    def _server_config(self, env: RowEnv, psk: Path) -> Path:
        inner = env.inner
        tls = ""
        if self.protocol == "tls":
            pki = make_pki(env.workdir, env.pair.server4)
            tls = f'tls_port = 443\ntls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
        else:
            tls = "tls_port = 0\n"
        path = env.workdir / "server.toml"
        path.write_text(
            f'name = "{NAMES["server"]}"\nmode = "ike"\n\n'
            f'[tunnel]\naddresses = ["{inner.server4}/{inner.prefix4}", "{inner.server6}/{inner.prefix6}"]\n\n'
            f'[server]\nidentity = "{SERVER_ID}"\npsk_file = "{psk}"\nlisten = "{env.pair.server4}"\n'
            f'udp = {"true" if self.protocol == "udp" else "false"}\n'
            f'tcp_port = {4500 if self.protocol == "tcp" else 0}\n{tls}'
            f'pool4 = "{inner.net4}/{inner.prefix4}"\npool6 = "{inner.net6}/{inner.prefix6}"\n\n'
            f'[[client]]\nidentity = "{CLIENT_ID}"\npsk_file = "{psk}"\n'
        )
        return path

    def _client_config(self, env: RowEnv, psk: Path) -> Path:
        inner = env.inner
        tls = f'tls_ca = "{env.workdir / "ca.pem"}"\n' if self.protocol == "tls" else ""
        path = env.workdir / "client.toml"
        path.write_text(
            f'name = "{NAMES["client"]}"\nmode = "ike"\n\n'
            f'[transport]\nprotocol = "{self.protocol}"\nremote = "{env.pair.server4}"\n{tls}\n'
            f'[tunnel]\nfull_tunnel = false\ndns = false\n'
            f'routes = ["{inner.net4}/{inner.prefix4}", "{inner.net6}/{inner.prefix6}"]\n\n'
            f'[ike]\nidentity = "{CLIENT_ID}"\nremote_identity = "{SERVER_ID}"\npsk_file = "{psk}"\nipv6 = true\n'
        )
        return path

    def up(self, env: RowEnv) -> list[int]:
        psk = _write_private(env.workdir / "psk", secrets.token_urlsafe(32) + "\n")
        server = env.spawn("server", vpn_argv(env, "server", "serve", str(self._server_config(env, psk))),
                           name="vpn-serve")
        env.wait_for("vpn serve", lambda: self._serving(env), timeout=30)
        out = env.run("client", vpn_argv(env, "client", "up", str(self._client_config(env, psk))), timeout=60)
        return [server, adopt_daemon(env, out, "vpn-client")]

    def _serving(self, env: RowEnv) -> bool:
        try:
            out = env.run("server", vpn_argv(env, "server", "status", NAMES["server"], "--json"), timeout=10)
        except RowError:
            return False
        return '"state": "up"' in out

    def down(self, env: RowEnv) -> None:
        with contextlib.suppress(RowError):  # the harness ends what is left by PID
            env.run("client", vpn_argv(env, "client", "down", NAMES["client"]), timeout=20)


class VpnIkeTcp(_VpnIke):
    name = "vpn-ike-tcp"
    protocol = "tcp"


class VpnIkeTls(_VpnIke):
    name = "vpn-ike-tls"
    protocol = "tls"


class VpnIkeUdp(_VpnIke):
    name = "vpn-ike-udp"
    protocol = "udp"
