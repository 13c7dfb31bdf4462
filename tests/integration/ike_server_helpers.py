"""Helpers for the IKE server tests: `vpn serve` in the server namespace, IKE clients
(`vpn up`, mode = "ike") in client namespaces, PSK files, a TLS certificate, and a
topology with a second client and a host behind the server.

    with ike_lab(build_ike_topology(lab, second_client=True), tmp_path) as ik:
        srv = ik.server(clients=["alice@test", "bob@test"])
        alice = ik.client(ik.topo.client, "alice@test", protocol="tcp")
        alice.up()
        ik.ping(ik.topo.client, SERVER_INNER)
        srv.client("alice@test")["virtual_ip"]

Every `vpn` command runs with VPN_RUN_DIR inside the test's directory (as in
manual.py); the server runs in the foreground (`vpn serve`) as a child of the test and
is stopped by PID, the clients' daemons with `vpn down` and, failing that, SIGKILL.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manual import VPN, TransferRun, VpnSide, pid_alive
from .netns import Lab, Netns, Topology, build_topology, wait_until
from .test_manual_lifecycle import snapshot
from .test_tls_transport import make_cert

SERVER_NAME = "iks"
SERVER_ID = "vpn.test"
SERVER_INNER = "10.10.0.1"
POOL4 = "10.10.0.0/24"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass
class IkeTopology:
    """The standard topology (client <-> router <-> server), and optionally:

      client2  c-r  10.201.3.2   <->  router r-c2  10.201.3.1   (a second client)
      server   s-b  10.203.0.1   <->  beyond b-s   10.203.0.2   (a host behind the server;
                                                                 no route to the pool)
    """

    base: Topology
    client2: Netns | None = None
    beyond: Netns | None = None
    client2_v4: str = "10.201.3.2"
    router_client2_v4: str = "10.201.3.1"
    uplink_if: str = "s-b"
    uplink_v4: str = "10.203.0.1"
    beyond_v4: str = "10.203.0.2"
    beyond_net: str = "10.203.0.0/24"

    @property
    def client(self) -> Netns:
        return self.base.client

    @property
    def router(self) -> Netns:
        return self.base.router

    @property
    def server(self) -> Netns:
        return self.base.server

    @property
    def server_v4(self) -> str:
        return self.base.server_v4


def build_ike_topology(lab: Lab, *, second_client: bool = False, beyond: bool = False) -> IkeTopology:
    t = IkeTopology(build_topology(lab))
    if second_client:
        c2 = t.client2 = lab.add("client2")
        lab.veth(c2, "c-r", t.router, "r-c2")
        c2.ip("addr", "add", f"{t.client2_v4}/24", "dev", "c-r")
        t.router.ip("addr", "add", f"{t.router_client2_v4}/24", "dev", "r-c2")
        c2.ip("route", "add", "default", "via", t.router_client2_v4)
    if beyond:
        b = t.beyond = lab.add("beyond")
        lab.veth(t.server, t.uplink_if, b, "b-s")
        t.server.ip("addr", "add", f"{t.uplink_v4}/24", "dev", t.uplink_if)
        b.ip("addr", "add", f"{t.beyond_v4}/24", "dev", "b-s")
    return t


class ServerProc:
    """`vpn serve CONFIG` in the server namespace, and `vpn status` for it."""

    def __init__(self, ns: Netns, config: Path, run_dir: Path, name: str = SERVER_NAME) -> None:
        self.ns = ns
        self.config = config
        self.name = name
        self.side = VpnSide(ns, "server", name, config, run_dir)
        self.log = config.parent / f"{name}.serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = self.ns.popen(["env", f"VPN_RUN_DIR={self.side.run_dir}", *VPN, "serve", str(self.config)],
                                      stdout=out, stderr=subprocess.STDOUT)
        self.pids.append(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"vpn serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            r = self.side.cli("status", self.name, "--json", check=False)
            if r.returncode == 0 and json.loads(r.stdout).get("state") == "up":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"vpn serve not up after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, Any]:
        return self.side.status()

    def events(self) -> list[str]:
        events: list[str] = self.status()["events"]
        return events

    def clients(self) -> list[dict[str, Any]]:
        clients: list[dict[str, Any]] = self.status()["clients"]
        return clients

    def client(self, identity: str) -> dict[str, Any] | None:
        """The live IKE SA of `identity` (the newest if there are several), or None."""
        found = [c for c in self.clients() if c["identity"] == identity and c["state"] == "established"]
        return found[-1] if found else None

    def wait_client(self, identity: str, pred: Any = None, timeout: float = 30.0) -> dict[str, Any]:
        """Poll until `identity` has an established SA (for which `pred(c)` holds)."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.client(identity)
            if c is not None and (pred is None or pred(c)):
                return c
            if time.monotonic() > deadline:
                raise AssertionError(f"server: no matching SA for {identity}: {c}\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"vpn serve did not exit on signal {sig}:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        return "--- server log ---\n" + "\n".join(text)


@dataclass
class IkeLab:
    """Configs, secrets and processes of one test; `close()` stops everything."""

    topo: IkeTopology
    workdir: Path
    pin: str = ""
    psks: dict[str, Path] = field(default_factory=dict)
    sides: list[VpnSide] = field(default_factory=list)
    servers: list[ServerProc] = field(default_factory=list)

    def psk_file(self, identity: str) -> Path:
        """A PSK file (0600) of its own for each identity."""
        if identity not in self.psks:
            path = self.workdir / f"{identity.replace('@', '_')}.psk"
            path.write_text(f"secret-of-{identity}-{os.urandom(8).hex()}\n")
            os.chmod(path, 0o600)
            self.psks[identity] = path
        return self.psks[identity]

    def server_config(self, *, clients: Sequence[str] = ("alice@test",), uplink: str | None = None,
                      extra: str = "", name: str = SERVER_NAME, inner6: str | None = None) -> Path:
        """`inner6` ("addr/prefix"): the server's IPv6 tunnel address; its network becomes
        the IPv6 pool."""
        entries = "".join(f'[[client]]\nidentity = "{c}"\npsk_file = "{self.psk_file(c)}"\n' for c in clients)
        server_psk = self.psk_file(SERVER_ID)
        path = self.workdir / f"{name}.toml"
        path.write_text(textwrap.dedent(f"""\
            name = "{name}"
            mode = "ike"
            [tunnel]
            addresses = ["{SERVER_INNER}/24"{f', "{inner6}"' if inner6 else ""}]
            [server]
            identity = "{SERVER_ID}"
            psk_file = "{server_psk}"
            tls_port = 443
            tls_cert = "srv.pem"
            tls_key = "srv.key"
            pool4 = "{POOL4}"
            dns = ["{SERVER_INNER}"]
            """) + (f'uplink = "{uplink}"\n' if uplink else "")
            + (f'pool6 = "{ipaddress.ip_interface(inner6).network}"\n' if inner6 else "") + extra + entries)
        return path

    def server(self, *, clients: Sequence[str] = ("alice@test",), uplink: str | None = None,
               extra: str = "", start: bool = True, inner6: str | None = None) -> ServerProc:
        srv = ServerProc(self.topo.server,
                         self.server_config(clients=clients, uplink=uplink, extra=extra, inner6=inner6),
                         self.workdir / "run-server")
        self.servers.append(srv)
        if start:
            srv.start()
        return srv

    def client(self, ns: Netns, identity: str, *, name: str = "ikc", protocol: str = "tcp",
               routes: Sequence[str] = (POOL4,), dpd: int = 30, fallback_after: float = 2.0,
               ike_extra: str = "") -> VpnSide:
        """A client config (split tunnel to `routes`) and its VpnSide; not started."""
        tls = f'tls_pin_sha256 = "{self.pin}"\n' if protocol in ("tls", "auto") else ""
        route_list = ", ".join(f'"{r}"' for r in routes)
        path = self.workdir / f"{name}-{ns.role}.toml"
        path.write_text(textwrap.dedent(f"""\
            name = "{name}"
            mode = "ike"
            [transport]
            protocol = "{protocol}"
            remote = "{self.topo.server_v4}"
            fallback_after = {fallback_after}
            """) + tls + textwrap.dedent(f"""\
            [tunnel]
            full_tunnel = false
            dns = false
            routes = [{route_list}]
            [ike]
            identity = "{identity}"
            remote_identity = "{SERVER_ID}"
            psk_file = "{self.psk_file(identity)}"
            dpd = {dpd}
            """) + ike_extra)
        side = VpnSide(ns, ns.role, name, path, self.workdir / f"run-{ns.role}-{name}")
        self.sides.append(side)
        return side

    def close(self) -> None:
        for side in self.sides:
            side.stop()
        for srv in self.servers:
            if srv.proc is not None and srv.proc.poll() is None:
                with contextlib.suppress(AssertionError):
                    srv.stop()


@contextlib.contextmanager
def ike_lab(topo: IkeTopology, workdir: Path) -> Iterator[IkeLab]:
    ik = IkeLab(topo, workdir, pin=make_cert(workdir))
    try:
        yield ik
    finally:
        ik.close()


# -- traffic --------------------------------------------------------------------------


def ping(ns: Netns, dst: str, *, count: int = 3, deadline_s: int = 10, source: str | None = None) -> str:
    family = "-6" if ":" in dst else "-4"
    argv = ["ping", family, "-n", "-c", str(count), "-i", "0.2", "-w", str(deadline_s)]
    if source:
        argv += ["-I", source]
    r = ns.run([*argv, dst], timeout=deadline_s + 5, check=False)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, f"[{ns.role}] cannot ping {dst}:\n{out}"
    return out


class TimedTransfer(TransferRun):
    """A TransferRun that remembers when each progress line (every 4 MiB) arrived."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.times: list[tuple[float, int]] = []
        super().__init__(*args, **kw)

    def _next_line(self, timeout: float) -> str | None:
        line = super()._next_line(timeout)
        if line is not None and line.startswith("progress "):
            self.times.append((time.monotonic(), int(line.split()[1])))
        return line

    def follow(self, timeout: float = 120.0) -> None:
        """Read progress until the sink is done (so every line gets its time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._next_line(max(0.1, deadline - time.monotonic()))
            except AssertionError:
                return
            if line is None or not line.startswith("progress "):
                return

    def max_gap(self) -> float:
        """The longest time between two progress lines (seconds)."""
        stamps = [t for t, _ in self.times]
        return max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=0.0)


# -- namespace state --------------------------------------------------------------------

SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


def ns_state(ns: Netns) -> dict[str, str]:
    """What `vpn serve` may change in a namespace, as text: what `vpn up` may change,
    and the forwarding sysctls."""
    state = snapshot(ns)
    for key in SYSCTLS:
        state[key] = ns.run(["cat", f"/proc/sys/{key}"]).stdout.decode().strip()
    return state


__all__ = ["POOL4", "SERVER_INNER", "IkeLab", "IkeTopology", "ServerProc", "TimedTransfer",
           "build_ike_topology", "ike_lab", "ns_state", "ping", "pid_alive", "wait_until"]
