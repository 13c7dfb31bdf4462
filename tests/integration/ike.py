"""Shared helpers for the IKE integration tests: configs for `vpn serve` and `vpn up`
(mode = "ike", PSK), the server as a background process tracked by PID, the client as a
`VpnSide` (manual.py: `vpn up/down/status` in its namespace), snapshots of what a
client may change, and small probes.

    with ike_tunnel(topology, tmp_path, protocol="udp", kill_switch=True) as vpn:
        vpn.server.start()                   # `vpn serve` in the server namespace
        vpn.client.up()                      # returns the daemon PID
        vpn.ping("10.10.0.1")
        vpn.client.status()["ike_sa"]["spi_i"]

Everything runs with VPN_RUN_DIR inside the test's directory. The client namespace
gets its own /etc/netns/NAME/resolv.conf before anything starts, so DNS changes land
there, never in the machine's /etc/resolv.conf.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manual import CLI_TIMEOUT_S, VPN, VpnSide, pid_alive
from .netns import ETC_NETNS, Netns, Topology
from .test_manual_lifecycle import settle, snapshot

PSK = "alice-psk-0123456789abcdef-not-secret"
POOL4 = "10.10.0.0/24"
SERVER_INNER = "10.10.0.1"
CLIENT_INNER = "10.10.0.2"
ORIGINAL_RESOLV = "nameserver 192.0.2.53\nsearch example.test\noptions timeout:1 attempts:1\n"
SERVER_START_S = 20.0
FWMARK = 0x5650

# A server whose IKE proposals share nothing with our client's (test-only: the config
# has no algorithm keys, so nothing in a config file can produce NO_PROPOSAL_CHOSEN).
# It wraps vpn.policies.server_policy and runs the real `vpn serve`.
RESTRICTED_SERVER = """
import dataclasses, sys
from vpn import cli, server
from vpn.ike.constants import DhId, EncrId, IntegId, PrfId
from vpn.ike.policy import IkeProposal
real = server.server_policy
def restricted(cfg):
    policy, allocator = real(cfg)
    only = IkeProposal(encr=((EncrId.AES_CTR, 128),), prf=(PrfId.AES128_XCBC,),
                       integ=(IntegId.AES_XCBC_96,), dh=(DhId.MODP1536,))
    return dataclasses.replace(policy, ike_proposals=(only,)), allocator
server.server_policy = restricted
sys.exit(cli.main(["serve", sys.argv[1]]))
"""


def server_config_text(*, name: str, psk_file: Path, client_psk_file: Path, dpd: int = 30,
                       uplink: str | None = None, dns: tuple[str, ...] = (SERVER_INNER,),
                       tls: tuple[Path, Path] | None = None) -> str:
    dns_list = ", ".join(f'"{d}"' for d in dns)
    tls_lines = f'tls_port = 443\ntls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"' if tls else "tls_port = 0"
    text = textwrap.dedent(f"""\
        name = "{name}"
        mode = "ike"
        [tunnel]
        addresses = ["{SERVER_INNER}/24"]
        [server]
        identity = "vpn.test"
        psk_file = "{psk_file}"
        {{tls_lines}}
        pool4 = "{POOL4}"
        dns = [{dns_list}]
        dpd = {dpd}
        """) + (f'uplink = "{uplink}"\n' if uplink else "") + textwrap.dedent(f"""\
        [[client]]
        identity = "alice@test"
        psk_file = "{client_psk_file}"
        """)
    return text.replace("{tls_lines}", tls_lines)


def client_config_text(*, name: str, protocol: str, remote: str, psk_file: Path, full_tunnel: bool = True,
                       dns: bool = True, kill_switch: bool = False, dpd: int = 30, peer_timeout: int = 10,
                       routes: tuple[str, ...] = (), fallback_after: float = 2.0, transport_extra: str = "",
                       ike_extra: str = "") -> str:
    route_list = ", ".join(f'"{r}"' for r in routes)
    return textwrap.dedent(f"""\
        name = "{name}"
        mode = "ike"
        [tunnel]
        full_tunnel = {str(full_tunnel).lower()}
        dns = {str(dns).lower()}
        kill_switch = {str(kill_switch).lower()}
        routes = [{route_list}]
        [transport]
        protocol = "{protocol}"
        remote = "{remote}"
        fallback_after = {fallback_after}
        {{transport_extra}}
        [ike]
        identity = "alice@test"
        remote_identity = "vpn.test"
        psk_file = "{psk_file}"
        dpd = {dpd}
        peer_timeout = {peer_timeout}
        {{ike_extra}}
        """).replace("{transport_extra}", transport_extra).replace("{ike_extra}", ike_extra)


@dataclass
class ServerProc:
    """`vpn serve CONFIG` in the background, by PID; `start()` waits until it serves."""

    ns: Netns
    name: str
    config: Path
    run_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    script: str | None = None  # run this Python text instead of `vpn serve` (test-only policies)

    def start(self) -> None:
        env = ["env", f"VPN_RUN_DIR={self.run_dir}"]
        if self.script is not None:
            argv = [*env, sys.executable, "-c", self.script, str(self.config)]
        else:
            argv = [*env, *VPN, "serve", str(self.config)]
        with open(self.log, "ab") as out:
            self.proc = self.ns.popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_S
        while f"{self.name}: serving" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`vpn serve` did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL: the server dies without a word to its clients."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def status(self) -> dict[str, Any]:
        r = self.ns.run(["env", f"VPN_RUN_DIR={self.run_dir}", *VPN, "status", self.name, "--json"],
                        timeout=CLI_TIMEOUT_S)
        st: dict[str, Any] = json.loads(r.stdout)
        return st

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        return "--- server log ---\n" + "\n".join(text)


@dataclass
class IkeTunnel:
    """Our server and our client across client <-> router <-> server."""

    topo: Topology
    server: ServerProc
    client: VpnSide
    workdir: Path

    @property
    def resolv_conf(self) -> Path:
        """The client namespace's resolv.conf (`ip netns exec` binds it over /etc/resolv.conf)."""
        return ETC_NETNS / self.client.ns.name / "resolv.conf"

    def write_client(self, **kw: Any) -> None:
        """Rewrite the client's config (same name, PSK and server) with other options."""
        kw.setdefault("protocol", "udp")
        self.client.config.write_text(client_config_text(name=self.client.name, remote=self.topo.server_v4,
                                                         psk_file=self.workdir / "client.psk", **kw))

    def ping(self, dst: str, count: int = 3, deadline_s: int = 10) -> str:
        r = self.client.ns.run(["ping", "-4", "-c", str(count), "-i", "0.2", "-w", str(deadline_s), "-n", dst],
                               timeout=deadline_s + 5, check=False)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0, f"the client cannot ping {dst}:\n{out}\n{self.client.log_tail()}\n" \
                                  f"{self.server.log_tail()}"
        return out

    def snapshot(self) -> dict[str, str]:
        """What `vpn up` may change in the client namespace: links, addresses, routes and
        rules of both families, the nftables ruleset and resolv.conf."""
        snap = snapshot(self.client.ns)
        snap["resolv.conf"] = self.resolv_conf.read_text()
        return snap

    def assert_unchanged(self, before: dict[str, str]) -> None:
        after = self.snapshot()
        for key in before:
            assert after[key] == before[key], f"client {key} changed:\n{before[key]}\n---\n{after[key]}"
        left = [f for f in self.client.run_files() if not f.endswith(".log")]
        assert not left, f"files left in the run directory: {left}"

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
                    ) -> tuple[dict[str, Any], float]:
        """Poll the client's status until `pred` holds; returns it and the seconds waited."""
        t0 = time.monotonic()
        st: dict[str, Any] = {}
        while time.monotonic() - t0 < timeout:
            st = self.client.status()
            if pred(st):
                return st, time.monotonic() - t0
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout:.0f} s; last status:\n"
                             f"{json.dumps(st, indent=1)[:3000]}\n{self.client.log_tail()}")


@contextlib.contextmanager
def ike_tunnel(topo: Topology, workdir: Path, *, server_psk: str = PSK, uplink: str | None = None,
               server_script: str | None = None, names: tuple[str, str] = ("iks", "ikc"),
               server_dns: tuple[str, ...] = (SERVER_INNER,), server_tls: tuple[Path, Path] | None = None,
               **client_kw: Any) -> Iterator[IkeTunnel]:
    """Configs and PSK files in `workdir`, the client namespace's own resolv.conf; the
    server process and client daemons are always stopped at the end."""
    for fname, secret in (("client.psk", PSK), ("server-alice.psk", server_psk), ("server.psk", PSK)):
        path = workdir / fname
        path.write_text(secret + "\n")
        os.chmod(path, 0o600)
    srv_cfg = workdir / "server.toml"
    srv_cfg.write_text(server_config_text(name=names[0], psk_file=workdir / "server.psk",
                                          client_psk_file=workdir / "server-alice.psk", uplink=uplink,
                                          dns=server_dns, tls=server_tls))
    server = ServerProc(topo.server, names[0], srv_cfg, workdir / "run-server", workdir / "server.log",
                        script=server_script)
    client = VpnSide(topo.client, "client", names[1], workdir / "client.toml", workdir / "run-client")
    topo.client.resolv_conf(ORIGINAL_RESOLV)
    tun = IkeTunnel(topo, server, client, workdir)
    tun.write_client(**client_kw)
    settle(topo.client)
    try:
        yield tun
    finally:
        client.stop()
        # a killed client's changes (kill switch included) must not outlive the test
        if any(f.endswith((".journal", ".json")) for f in client.run_files()):
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                client.cli("down", client.name, timeout=15, check=False)
        server.stop()


def tcp_probe(ns: Netns, addr: str, port: int, *, mark: int = 0, timeout: float = 3.0) -> str:
    """Connect from `ns` to addr:port (with SO_MARK `mark`); "ok" or the error's name."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
            "m=int(sys.argv[3])\n"
            "m and s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, m)\n"
            f"s.settimeout({timeout})\n"
            "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('ok')\n"
            "except OSError as e: print(type(e).__name__)\n")
    r = ns.run([sys.executable, "-c", code, addr, str(port), str(mark)], timeout=timeout + 10)
    return r.stdout.decode().strip()


def udp_probe(ns: Netns, addr: str, port: int, payload: bytes, *, mark: int = 0) -> str:
    """Send one datagram from `ns`; "sent" or the error's name."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "m=int(sys.argv[3])\n"
            "m and s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, m)\n"
            "try:\n s.sendto(sys.argv[4].encode(), (sys.argv[1], int(sys.argv[2]))); print('sent')\n"
            "except OSError as e: print(type(e).__name__)\n")
    r = ns.run([sys.executable, "-c", code, addr, str(port), str(mark), payload.decode()], timeout=10)
    return r.stdout.decode().strip()


class Listener:
    """A TCP and UDP listener in a namespace (e.g. the router) that records what it got."""

    CODE = r"""
import select, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((addr, port)); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, port))
print("ready", flush=True)
while True:
    r, _, _ = select.select([t, u], [], [], 60)
    if not r:
        break
    for s in r:
        if s is t:
            c, peer = t.accept(); print("tcp", peer[0], flush=True); c.close()
        else:
            data, peer = u.recvfrom(2048); print("udp", peer[0], data.decode(errors="replace"), flush=True)
"""

    def __init__(self, ns: Netns, addr: str, port: int, out: Path) -> None:
        self.out = out
        fh = open(out, "wb")  # noqa: SIM115 - the child keeps writing after this returns
        self.proc = ns.popen([sys.executable, "-u", "-c", self.CODE, addr, str(port)], stdout=fh,
                             stderr=subprocess.STDOUT)
        fh.close()
        deadline = time.monotonic() + 10
        while "ready" not in out.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)

    def lines(self) -> list[str]:
        return [ln for ln in self.out.read_text().splitlines() if ln != "ready"]


def daemon_gone(side: VpnSide) -> bool:
    return not any(pid_alive(p) for p in side.pids)
