"""`ocserv-tls`: ocserv in the server namespace, openconnect `--no-dtls` in the client one.

TLS only (no `udp-port`, and the client refuses DTLS), TLS 1.2 as in Debian's default
`tls-priorities`, pinned to AES-256-GCM; password auth (`plain`, file made by ocpasswd
with a random password per run); certificates from `keys.make_pki`, the client pins the
server key. The client's tunnel is configured by a small script of ours instead of
vpnc-script (which would touch DNS); ocserv leases the client address and takes the
first host of `ipv4-network` for itself (= `inner.server4`). MTU as negotiated.
"""

from __future__ import annotations

import secrets

from bench.rows.base import Row, RowEnv, RowError, find_exe
from bench.rows.keys import make_pki

PORT = 4443
USER = "bench"
TLS_PRIORITIES = (
    "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1"
    ":-VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM"
)
CLIENT_DEV = "ocb0"

_SCRIPT = """#!/bin/sh
# openconnect --script: bring the tun up with the leased address, route the inner nets.
[ "$reason" = connect ] || exit 0
{ip} link set dev "$TUNDEV" up mtu "$INTERNAL_IP4_MTU"
{ip} addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
{ip} route replace {net4}/{prefix4} dev "$TUNDEV"
if [ -n "$INTERNAL_IP6_ADDRESS" ]; then
  {ip} -6 addr add "$INTERNAL_IP6_ADDRESS/128" dev "$TUNDEV" nodad
  {ip} -6 route replace {net6}/{prefix6} dev "$TUNDEV"
fi
"""


class OcservTls(Row):
    name = "ocserv-tls"
    needs = {"ocserv": "ocserv", "ocpasswd": "ocserv", "openconnect": "openconnect"}

    def up(self, env: RowEnv) -> list[int]:
        pair, inner, wd = env.pair, env.inner, env.workdir
        pki = make_pki(wd, pair.server4)
        # The workers run as nobody and must reach sec-mod's socket under the workdir:
        # let them traverse it (keys and the password file stay 0600).
        wd.chmod(0o711)
        password = secrets.token_hex(16)
        env.run(
            "server", ["ocpasswd", "-c", str(wd / "passwd"), USER], input=f"{password}\n{password}\n".encode()
        )
        conf = wd / "ocserv.conf"
        conf.write_text(
            "\n".join(
                [
                    f'auth = "plain[passwd={wd / "passwd"}]"',
                    f"listen-host = {pair.server4}",
                    f"tcp-port = {PORT}",
                    "run-as-user = nobody",
                    "run-as-group = nogroup",
                    f"socket-file = {wd / 'ocserv.sock'}",
                    f"pid-file = {wd / 'ocserv.pid'}",
                    "isolate-workers = false",
                    "use-occtl = false",
                    f"server-cert = {pki.server_cert}",
                    f"server-key = {pki.server_key}",
                    f"ca-cert = {pki.ca}",
                    "max-clients = 4",
                    "max-same-clients = 2",
                    "keepalive = 32400",
                    "dpd = 90",
                    "try-mtu-discovery = false",
                    f'tls-priorities = "{TLS_PRIORITIES}"',
                    "auth-timeout = 240",
                    "cookie-timeout = 300",
                    "rekey-time = 172800",
                    "rekey-method = ssl",
                    "device = ocsb",
                    "predictable-ips = true",
                    f"ipv4-network = {inner.net4}/{inner.prefix4}",
                    f"ipv6-network = {inner.net6}/{inner.prefix6}",
                    f"route = {inner.net4}/{inner.prefix4}",
                    f"route = {inner.net6}/{inner.prefix6}",
                    "ping-leases = false",
                    "cisco-client-compat = true",
                    "log-level = 1",
                    "",
                ]
            )
        )
        ip = find_exe("ip")
        if ip is None:
            raise RowError("executable 'ip' not found")
        script = wd / "oc-script.sh"
        script.write_text(
            _SCRIPT.format(
                ip=ip, net4=inner.net4, prefix4=inner.prefix4, net6=inner.net6, prefix6=inner.prefix6
            )
        )
        script.chmod(0o700)
        pids = [env.spawn("server", ["ocserv", "-f", "-c", str(conf)], name="ocserv")]
        server_log = env.procs[-1].log
        env.wait_for(
            "ocserv listening",
            lambda: "listening (TCP)" in server_log.read_text(errors="replace"),
            timeout=15,
        )
        pids.append(
            env.spawn(
                "client",
                [
                    "openconnect",
                    "--no-dtls",
                    "--non-inter",
                    "--passwd-on-stdin",
                    "--user",
                    USER,
                    "--cafile",
                    str(pki.ca),
                    "--servercert",
                    pki.server_pin,
                    "--script",
                    str(script),
                    "--interface",
                    CLIENT_DEV,
                    f"https://{pair.server4}:{PORT}/",
                ],
                name="openconnect",
                stdin=f"{password}\n".encode(),
            )
        )
        return pids
