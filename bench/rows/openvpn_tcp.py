"""`openvpn-tcp`: OpenVPN 2.6 from Debian, TCP, AES-256-GCM, `--disable-dco`.

Peer-to-peer TLS mode (`--tls-server` / `--tls-client`; not `--secret`: static keys
cannot carry AEAD ciphers), certificates from `keys.make_pki`, `--data-ciphers
AES-256-GCM` only, ECDHE (`--dh none`). Otherwise OpenVPN's defaults (tun-mtu 1500,
OS socket buffers, no compression). The row checks both logs for the negotiated
data-channel cipher.
"""

from __future__ import annotations

from bench.rows.base import Row, RowEnv, RowError
from bench.rows.keys import make_pki

PORT = 1194
DEV = "ovpnb0"
READY = "Initialization Sequence Completed"
CIPHER = "Data Channel: cipher '"


class OpenvpnTcp(Row):
    name = "openvpn-tcp"
    needs = {"openvpn": "openvpn"}

    def up(self, env: RowEnv) -> list[int]:
        pair, inner = env.pair, env.inner
        pki = make_pki(env.workdir, pair.server4)
        # fmt: off
        common = ["--dev", DEV, "--dev-type", "tun", "--disable-dco", "--data-ciphers", "AES-256-GCM",
                  "--ca", str(pki.ca), "--verb", "3", "--script-security", "1", "--auth-nocache"]
        server = ["openvpn", *common,
                  "--proto", "tcp-server", "--local", pair.server4, "--lport", str(PORT),
                  "--tls-server", "--dh", "none",
                  "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                  "--ifconfig", inner.server4, inner.client4,
                  "--ifconfig-ipv6", f"{inner.server6}/{inner.prefix6}", inner.client6]
        client = ["openvpn", *common,
                  "--proto", "tcp-client", "--remote", pair.server4, str(PORT), "--nobind",
                  "--connect-retry", "1", "1",
                  "--tls-client", "--cert", str(pki.client_cert), "--key", str(pki.client_key),
                  "--remote-cert-tls", "server", "--verify-x509-name", "vpnb-server", "name",
                  "--ifconfig", inner.client4, inner.server4,
                  "--ifconfig-ipv6", f"{inner.client6}/{inner.prefix6}", inner.server6]
        # fmt: on
        pids = [
            env.spawn("server", server, name="openvpn-server"),
            env.spawn("client", client, name="openvpn-client"),
        ]
        logs = [env.log_path("openvpn-server"), env.log_path("openvpn-client")]

        def ready() -> bool:
            texts = [log.read_text(errors="replace") for log in logs]
            return all(READY in t and CIPHER in t for t in texts)

        env.wait_for(f"OpenVPN {READY!r}", ready, timeout=30)
        for log in logs:
            if f"{CIPHER}AES-256-GCM'" not in log.read_text(errors="replace"):
                raise RowError(f"{log.name}: data channel is not AES-256-GCM")
        return pids
