"""Network namespaces for tests: unique names, veth links, commands with timeouts, and
removal of everything, also when a test fails.

Every name is ``vpnt-<tag>-<pid>-<n>-<role>``: ``tag`` comes from $VPN_NETNS_TAG (default
"t"), ``pid`` is this process, so parallel runs never collide, and ``sweep_stale()``
removes only namespaces with this prefix whose process is gone.

    with Lab() as lab:
        topo = build_topology(lab)        # client <-> router <-> server, IPv4 + IPv6
        topo.client.run(["ping", "-c1", topo.server_v4])

Namespaces are handled with iproute2's ``ip`` (a test tool; the product uses pyroute2).
Code that must create something *inside* a namespace from this process (a TUN fd, a
netlink socket) uses ``Netns.entered()``, which switches only the calling thread.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "vpnt"
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
DEFAULT_TIMEOUT_S = 20.0

_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def tag() -> str:
    raw = os.environ.get("VPN_NETNS_TAG", "t")
    clean = re.sub(r"[^a-z0-9]", "", raw.lower())[:8]
    return clean or "t"


def own_prefix() -> str:
    return f"{PREFIX}-{tag()}-"


def _ip(*args: str, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(pred: Callable[[], Any], what: str, timeout: float = 20.0, interval: float = 0.1, *,
               error: type[Exception] = AssertionError) -> Any:
    """Poll `pred()` until it returns something true (returned); after `timeout`
    raise `error` naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def sweep_stale() -> list[str]:
    """Remove namespaces named with our prefix whose creating process has exited."""
    removed = []
    pattern = re.compile(re.escape(own_prefix()) + r"(\d+)-")
    names = [p.name for p in NETNS_DIR.iterdir()] if NETNS_DIR.is_dir() else []
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _ip("netns", "del", name, check=False)
            shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
            removed.append(name)
    return removed


class Netns:
    """One namespace; created by ``Lab.add``, removed by the lab's cleanup."""

    def __init__(self, name: str, role: str) -> None:
        self.name = name
        self.role = role
        self._procs: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        check: bool = True,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside; kill it after ``timeout`` (raises TimeoutExpired)."""
        r = subprocess.run(
            self.argv(argv), capture_output=True, timeout=timeout, input=input, check=False
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"[{self.role}] {' '.join(argv)} exited {r.returncode}: "
                f"{r.stderr.decode(errors='replace').strip()}"
            )
        return r

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start a background command inside; the lab kills it (by PID) at cleanup."""
        p: subprocess.Popen[bytes] = subprocess.Popen(self.argv(argv), **kw)  # type: ignore[call-overload]
        self._procs.append(p)
        return p

    def sysctl(self, key: str, value: str | int) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f -``) into this namespace."""
        self.run(["nft", "-f", "-"], input=ruleset.encode())

    def ip(self, *args: str) -> str:
        return _ip("-n", self.name, *args)

    def resolv_conf(self, text: str) -> None:
        """Give commands run here their own /etc/resolv.conf (``ip netns exec`` binds it)."""
        d = ETC_NETNS / self.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(text)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Switch the calling thread into this namespace for the ``with`` block."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(NETNS_DIR / self.name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(back)
        finally:
            os.close(target)
            os.close(back)

    def _stop_processes(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for p in self._procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self._procs.clear()


class Lab:
    """A set of namespaces removed together (context manager; ``cleanup`` is idempotent)."""

    def __init__(self) -> None:
        self.namespaces: list[Netns] = []
        self._id = next(_counter)

    def add(self, role: str) -> Netns:
        if not re.fullmatch(r"[a-z0-9]{1,12}", role):
            raise ValueError("role: 1-12 lowercase letters or digits")
        name = f"{own_prefix()}{os.getpid()}-{self._id}-{role}"
        _ip("netns", "add", name)
        ns = Netns(name, role)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair created directly across two namespaces (never in the host's)."""
        _ip(
            "-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name
        )
        a.ip("link", "set", a_if, "up")
        b.ip("link", "set", b_if, "up")

    def cleanup(self) -> None:
        errors = []
        for ns in reversed(self.namespaces):
            ns._stop_processes()
            try:
                _ip("netns", "del", ns.name)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors.append(str(e))
            shutil.rmtree(ETC_NETNS / ns.name, ignore_errors=True)
        self.namespaces.clear()
        if errors:
            raise RuntimeError("netns cleanup: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


@dataclass
class Topology:
    """client <-> router <-> server, each link with IPv4 and IPv6; router forwards.

    Addresses (prefix lengths 24 and 64):
      client  c-r  10.201.1.2   fd00:201:1::2     router r-c  10.201.1.1  fd00:201:1::1
      server  s-r  10.201.2.2   fd00:201:2::2     router r-s  10.201.2.1  fd00:201:2::1
    client and server route everything via the router. nftables works in every namespace
    (``router.nft(...)``) for middlebox behaviour: UDP blocking, NAT, TCP resets.
    """

    client: Netns
    router: Netns
    server: Netns
    client_v4: str = "10.201.1.2"
    client_v6: str = "fd00:201:1::2"
    router_client_v4: str = "10.201.1.1"
    router_client_v6: str = "fd00:201:1::1"
    router_server_v4: str = "10.201.2.1"
    router_server_v6: str = "fd00:201:2::1"
    server_v4: str = "10.201.2.2"
    server_v6: str = "fd00:201:2::2"
    client_if: str = "c-r"
    server_if: str = "s-r"


def build_topology(lab: Lab) -> Topology:
    client, router, server = lab.add("client"), lab.add("router"), lab.add("server")
    t = Topology(client, router, server)
    lab.veth(client, "c-r", router, "r-c")
    lab.veth(server, "s-r", router, "r-s")
    for ns, ifname, v4, v6 in (
        (client, "c-r", t.client_v4, t.client_v6),
        (router, "r-c", t.router_client_v4, t.router_client_v6),
        (router, "r-s", t.router_server_v4, t.router_server_v6),
        (server, "s-r", t.server_v4, t.server_v6),
    ):
        ns.ip("addr", "add", f"{v4}/24", "dev", ifname)
        ns.ip("-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
    client.ip("route", "add", "default", "via", t.router_client_v4)
    client.ip("-6", "route", "add", "default", "via", t.router_client_v6)
    server.ip("route", "add", "default", "via", t.router_server_v4)
    server.ip("-6", "route", "add", "default", "via", t.router_server_v6)
    router.sysctl("net.ipv4.ip_forward", 1)
    router.sysctl("net.ipv6.conf.all.forwarding", 1)
    return t


@dataclass
class TwoUplinkTopology(Topology):
    """The standard topology plus a second client uplink: client c-r2 10.201.3.2 /
    fd00:201:3::2 <-> router r-c2 10.201.3.1 / fd00:201:3::1. `use_uplink(n)` moves the
    client's default routes to uplink n (1 or 2) and takes the other link down, as a
    laptop moving from one network to another does."""

    client2_v4: str = "10.201.3.2"
    client2_v6: str = "fd00:201:3::2"
    router_client2_v4: str = "10.201.3.1"
    router_client2_v6: str = "fd00:201:3::1"
    client2_if: str = "c-r2"

    def use_uplink(self, n: int) -> None:
        up, down = ((self.client_if, self.client2_if) if n == 1 else (self.client2_if, self.client_if))
        gw4, gw6 = ((self.router_client_v4, self.router_client_v6) if n == 1
                    else (self.router_client2_v4, self.router_client2_v6))
        self.client.ip("link", "set", up, "up")
        self.client.ip("link", "set", down, "down")
        deadline = time.monotonic() + 5  # the link's prefix routes appear once it is up
        while True:
            try:
                self.client.ip("route", "replace", "default", "via", gw4, "dev", up)
                self.client.ip("-6", "route", "replace", "default", "via", gw6, "dev", up)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def build_two_uplink_topology(lab: Lab) -> TwoUplinkTopology:
    base = build_topology(lab)
    t = TwoUplinkTopology(base.client, base.router, base.server)
    lab.veth(t.client, t.client2_if, t.router, "r-c2")
    for ifname in (t.client_if, t.client2_if):  # keep IPv6 addresses while a link is down
        t.client.sysctl(f"net.ipv6.conf.{ifname}.keep_addr_on_down", 1)
    t.client.ip("addr", "add", f"{t.client2_v4}/24", "dev", t.client2_if)
    t.client.ip("-6", "addr", "add", f"{t.client2_v6}/64", "dev", t.client2_if, "nodad")
    t.router.ip("addr", "add", f"{t.router_client2_v4}/24", "dev", "r-c2")
    t.router.ip("-6", "addr", "add", f"{t.router_client2_v6}/64", "dev", "r-c2", "nodad")
    t.client.ip("link", "set", t.client2_if, "down")
    return t
