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
{ip} route replace {i.net4}/{i.prefix4} dev "$TUNDEV"
if [ -n "$INTERNAL_IP6_ADDRESS" ]; then
  {ip} -6 addr add "$INTERNAL_IP6_ADDRESS/128" dev "$TUNDEV" nodad
  {ip} -6 route replace {i.net6}/{i.prefix6} dev "$TUNDEV"
fi
"""

# Debian's /etc/ocserv/ocserv.conf values, except: paths under the workdir, no UDP
# (no udp-port), no chroot, no occtl, the inner networks, AES-256-GCM only.
_CONF = """\
auth = "plain[passwd={wd}/passwd]"
listen-host = {listen}
tcp-port = {port}
run-as-user = nobody
run-as-group = nogroup
socket-file = {wd}/ocserv.sock
pid-file = {wd}/ocserv.pid
isolate-workers = true
use-occtl = false
server-cert = {pki.server_cert}
server-key = {pki.server_key}
ca-cert = {pki.ca}
max-clients = 16
max-same-clients = 2
rate-limit-ms = 100
keepalive = 32400
dpd = 90
mobile-dpd = 1800
try-mtu-discovery = false
tls-priorities = "{prio}"
auth-timeout = 240
min-reauth-time = 300
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
log-level = 1
device = ocsb
predictable-ips = true
ipv4-network = {i.net4}/{i.prefix4}
ipv6-network = {i.net6}/{i.prefix6}
route = {i.net4}/{i.prefix4}
route = {i.net6}/{i.prefix6}
ping-leases = false
cisco-client-compat = true
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
            _CONF.format(wd=wd, pki=pki, port=PORT, listen=pair.server4, prio=TLS_PRIORITIES, i=inner)
        )
        ip = find_exe("ip")
        if ip is None:
            raise RowError("executable 'ip' not found")
        script = wd / "oc-script.sh"
        script.write_text(_SCRIPT.format(ip=ip, i=inner))
        script.chmod(0o700)
        pids = [env.spawn("server", ["ocserv", "-f", "-c", str(conf)], name="ocserv")]
        server_log = env.log_path("ocserv")
        env.wait_for("ocserv listening", lambda: "listening (TCP)" in server_log.read_text(errors="replace"))
        # fmt: off
        client = ["openconnect", "--no-dtls", "--non-inter", "--passwd-on-stdin", "--user", USER,
                  "--cafile", str(pki.ca), "--servercert", pki.server_pin,
                  "--script", str(script), "--interface", CLIENT_DEV, f"https://{pair.server4}:{PORT}/"]
        # fmt: on
        pids.append(env.spawn("client", client, name="openconnect", stdin=f"{password}\n".encode()))
        client_log = env.log_path("openconnect")
        env.wait_for(
            "openconnect 'CSTP connected'", lambda: "CSTP connected" in client_log.read_text(errors="replace")
        )
        if "-(AES-256-GCM)" not in client_log.read_text(errors="replace"):
            raise RowError("openconnect: the TLS cipher is not AES-256-GCM")
        return pids
