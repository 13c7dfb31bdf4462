"""Two network namespaces joined by one veth, for the tunnel benchmark.

`namespaces()` creates `vpnb<PID>-<N>-client` and `vpnb<PID>-<N>-server`, one veth pair
between them with IPv4 and IPv6 addresses from the benchmarking ranges (RFC 2544
198.18.0.0/15, RFC 5180 2001:2::/48), and removes both on exit, on exceptions and on
Ctrl-C. Before creating, it sweeps namespaces of its own prefix whose creating process is
gone (a crashed or SIGKILLed run), ending the processes still inside them by PID.

Nothing here touches the machine's own namespace: the veth is created inside the
client namespace with its peer directly in the server namespace.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

PREFIX = "vpnb"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)-\d+-(client|server)$")
_seq = itertools.count()

# Timeouts (seconds) for `ip` commands and process ends.
IP_TIMEOUT = 10.0
TERM_GRACE = 3.0


class NetnsError(RuntimeError):
    """An `ip` command failed or timed out; the message names the command."""


@dataclass(frozen=True)
class Pair:
    """The two namespaces and the veth between them (outer addresses)."""

    tag: str  # "<PID>x<N>": unique on this machine while the run lives
    client: str
    server: str
    client_if: str = "vbc"
    server_if: str = "vbs"
    client4: str = "198.18.0.1"
    server4: str = "198.18.0.2"
    prefix4: int = 24
    client6: str = "2001:2:0:1::1"
    server6: str = "2001:2:0:1::2"
    prefix6: int = 64


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside namespace `ns` (ip netns exec execs: same PID)."""
    return ["ip", "netns", "exec", ns, *argv]


def ip(*args: str, ns: str | None = None, timeout: float = IP_TIMEOUT) -> str:
    """Run `ip [-n ns] ARGS`; return stdout, raise NetnsError on failure."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"{' '.join(argv)}: timed out after {timeout:.0f} s") from exc
    if res.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {res.stderr.strip() or f'exit {res.returncode}'}")
    return res.stdout


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def is_zombie(pid: int) -> bool:
    """True if `pid` has exited but is not reaped yet (this machine's init is slow to)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].startswith(b"Z")


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and has not exited."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not is_zombie(pid)


def _ns_pids(ns: str) -> list[int]:
    try:
        out = ip("netns", "pids", ns)
    except NetnsError:
        return []
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _end_pids(pids: Sequence[int], grace: float = TERM_GRACE) -> None:
    """SIGTERM each PID, wait up to `grace` seconds, then SIGKILL the survivors."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if pid_alive(p)]
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove(ns: str) -> None:
    """End every process still in `ns` (by PID), then delete it; quiet if already gone."""
    pids = [p for p in _ns_pids(ns) if p != os.getpid()]
    if pids:
        _end_pids(pids)
    with contextlib.suppress(NetnsError):
        ip("netns", "delete", ns)


def sweep_stale() -> list[str]:
    """Remove namespaces of this prefix whose creating process has exited; return their names."""
    swept = []
    for ns in list_namespaces():
        m = _NAME_RE.match(ns)
        if m and not pid_alive(int(m.group(1))):
            remove(ns)
            swept.append(ns)
    return swept


@contextlib.contextmanager
def no_sigint() -> Iterator[None]:
    """Let cleanup finish even if Ctrl-C is pressed again (main thread only)."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _wait_operstate_up(ns: str, dev: str, timeout: float = 10.0) -> None:
    """The kernel reports carrier asynchronously (linkwatch); wait for it, bounded."""
    deadline = time.monotonic() + timeout
    while "state UP" not in ip("link", "show", "dev", dev, ns=ns):
        if time.monotonic() > deadline:
            raise NetnsError(f"{ns}: {dev} not UP after {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def namespaces() -> Iterator[Pair]:
    """Create the client/server namespaces and the veth; always remove them."""
    sweep_stale()
    tag = f"{os.getpid()}x{next(_seq)}"
    base = f"{PREFIX}{tag.replace('x', '-')}"
    pair = Pair(tag=tag, client=f"{base}-client", server=f"{base}-server")
    created: list[str] = []
    try:
        for ns in (pair.client, pair.server):
            ip("netns", "add", ns)
            created.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        veth = f"link add {pair.client_if} type veth peer name {pair.server_if} netns {pair.server}"
        ip(*veth.split(), ns=pair.client)
        for ns, dev, a4, a6 in (
            (pair.client, pair.client_if, pair.client4, pair.client6),
            (pair.server, pair.server_if, pair.server4, pair.server6),
        ):
            ip("addr", "add", f"{a4}/{pair.prefix4}", "dev", dev, ns=ns)
            ip("addr", "add", f"{a6}/{pair.prefix6}", "dev", dev, "nodad", ns=ns)
            ip("link", "set", dev, "up", ns=ns)
        for ns, dev in ((pair.client, pair.client_if), (pair.server, pair.server_if)):
            _wait_operstate_up(ns, dev)
        yield pair
    finally:
        with no_sigint():
            for ns in reversed(created):
                remove(ns)
