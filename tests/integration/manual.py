"""Shared helpers for the manual-keyed tunnel tests: configs, `vpn up/down/status` in
the namespaces of a topology, and a byte-exact TCP transfer through the tunnel.

    with manual_tunnel(topology, tmp_path, protocol="tcp", outer=6) as tun:
        tun.up()                                 # server first, then the client
        tun.client.status()["sas"][0]["seq"]
        result = tun.transfer(200 * MB)          # client -> server, sha256 both ends

Every `vpn` command runs inside a namespace with VPN_RUN_DIR pointing into the test's
own directory, so journals, logs and state never touch the machine's /run/vpn. Daemons
detach into their own session, so the namespace's process list does not hold them: the
context manager stops them with `vpn down` and, failing that, by PID (SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns import Netns, Topology

VPN = [sys.executable, "-m", "vpn.cli"]
MB = 1 << 20
PORT = 4500
UP_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 120.0
XFER_PORT = 5299

INNER4 = {"server": "10.99.0.1", "client": "10.99.0.2"}
INNER6 = {"server": "fd99::1", "client": "fd99::2"}


def inner_addr(role: str, family: int) -> str:
    return (INNER4 if family == 4 else INNER6)[role]


def config_text(
    *,
    name: str,
    role: str,
    protocol: str,
    remote: str | None,
    key_file: Path,
    state_dir: Path,
    port: int = PORT,
    mtu: int = 1400,
    manual_extra: str = "",
) -> str:
    """A manual-mode config (vpn/config.py) with both inner families on the TUN."""
    transport = f'role = "listen"\nport = {port}'
    if role == "client":
        transport = f'role = "connect"\nremote = "{remote}"\nport = {port}'
    return textwrap.dedent(f"""\
        name = "{name}"
        mode = "manual"
        [tunnel]
        mtu = {mtu}
        addresses = ["{INNER4[role]}/24", "{INNER6[role]}/64"]
        [transport]
        protocol = "{protocol}"
        """) + transport + textwrap.dedent(f"""
        [manual]
        key_file = "{key_file}"
        state_dir = "{state_dir}"
        """) + manual_extra


@dataclass
class VpnSide:
    """One end of the tunnel: its namespace, config and the daemon `vpn up` left."""

    ns: Netns
    role: str
    name: str
    config: Path
    run_dir: Path
    pids: list[int] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_S, check: bool = True
            ) -> subprocess.CompletedProcess[bytes]:
        argv = ["env", f"VPN_RUN_DIR={self.run_dir}", *VPN, *args]
        r = self.ns.run(argv, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(
                f"[{self.role}] vpn {' '.join(args)} exited {r.returncode}: "
                f"{r.stdout.decode(errors='replace')}{r.stderr.decode(errors='replace')}"
                f"\n{self.log_tail()}"
            )
        return r

    def up(self, *extra: str) -> int:
        """`vpn up CONFIG EXTRA...`; returns the daemon PID it reports."""
        r = self.cli("up", str(self.config), *extra, timeout=UP_TIMEOUT_S)
        m = re.search(rb"daemon pid (\d+)", r.stdout)
        assert m, f"`vpn up` did not report the daemon pid: {r.stdout!r}"
        pid = int(m.group(1))
        self.pids.append(pid)
        return pid

    @property
    def pid(self) -> int:
        return self.pids[-1]

    def status(self) -> dict[str, Any]:
        r = self.cli("status", self.name, "--json")
        st: dict[str, Any] = json.loads(r.stdout)
        return st

    def counters(self) -> dict[str, int]:
        c: dict[str, int] = self.status()["counters"]
        return c

    def sa(self, direction: str) -> dict[str, Any]:
        return next(sa for sa in self.status()["sas"] if sa["dir"] == direction)

    def down(self) -> None:
        self.cli("down", self.name)
        self.wait_exit(self.pid)

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.wait_exit(self.pid)

    def wait_exit(self, pid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"[{self.role}] daemon {pid} still runs after {timeout:.0f} s")
            time.sleep(0.05)

    def run_files(self) -> list[str]:
        """The files this side's daemons keep in the run directory (journal, log)."""
        return sorted(p.name for p in self.run_dir.rglob("*") if p.is_file())

    def log_tail(self, lines: int = 25) -> str:
        logs = sorted(self.run_dir.rglob(f"{self.name}.log"))
        text = "".join(p.read_text(errors="replace") for p in logs).splitlines()[-lines:]
        return f"--- {self.role} log ---\n" + "\n".join(text)

    def stop(self) -> None:
        """Teardown: `vpn down` if a daemon answers, then SIGKILL whatever is left."""
        if any(pid_alive(p) for p in self.pids):
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.cli("down", self.name, timeout=15, check=False)
        for pid in self.pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(AssertionError):
                    self.wait_exit(pid, 5)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone: the daemon's parent never waits)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


@dataclass
class Transfer:
    """What the two ends of one transfer saw."""

    sent: int
    sent_sha256: str
    received: int
    received_sha256: str
    seconds: float

    def assert_intact(self, total: int) -> None:
        assert self.sent == total, f"sender sent {self.sent} of {total} bytes"
        assert self.received == total, f"receiver got {self.received} of {total} bytes"
        assert self.received_sha256 == self.sent_sha256, "content differs: sha256 mismatch"


# One script, two roles, stdlib only, run inside a namespace.
#   sink ADDR PORT TIMEOUT: accept one connection, read to EOF, print "progress N" lines
#     (every 4 MiB) and finally one JSON line {"bytes", "sha256"}.
#   source ADDR PORT TOTAL RATE TIMEOUT: connect (retrying until the sink listens), send
#     TOTAL random bytes (RATE bytes/s if > 0), print one JSON line {"bytes", "sha256"}.
XFER = r"""
import hashlib, json, os, socket, sys, time
role, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
timeout = float(sys.argv[-1])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
h, n = hashlib.sha256(), 0
if role == "sink":
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    print("listening", flush=True)
    s.settimeout(timeout)
    c, _ = s.accept()
    c.settimeout(timeout)
    step = 4 << 20
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b)
        if (n + len(b)) // step != n // step:
            print("progress", n + len(b), flush=True)
        n += len(b)
    c.close()
else:
    total, rate = int(sys.argv[4]), float(sys.argv[5])
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    c.settimeout(timeout)
    t0 = time.monotonic()
    while n < total:
        block = os.urandom(min(1 << 20, total - n))
        h.update(block)
        c.sendall(block)
        n += len(block)
        if rate > 0:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    c.close()
print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)
"""


class TransferRun:
    """A transfer in progress: `wait_progress()` while it runs, `finish()` for the result."""

    def __init__(self, src: Netns, dst: Netns, dst_addr: str, total: int, *, rate: float = 0.0,
                 timeout: float = TRANSFER_TIMEOUT_S, port: int = XFER_PORT) -> None:
        self.total = total
        self.timeout = timeout
        self.started = time.monotonic()
        sink_argv = [sys.executable, "-u", "-c", XFER, "sink", dst_addr, str(port), str(timeout)]
        self.sink = dst.popen(sink_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.received = 0
        self._sink_lines: list[str] = []
        self._buf = b""
        assert self._next_line(10.0) == "listening", "the sink did not start"
        src_argv = [sys.executable, "-c", XFER, "source", dst_addr, str(port), str(total), str(rate),
                    str(timeout)]
        self.source = src.popen(src_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def _next_line(self, timeout: float) -> str | None:
        """The sink's next stdout line (None at EOF); bounded by `timeout`."""
        assert self.sink.stdout is not None
        fd = self.sink.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"the transfer sink said nothing for {timeout:.0f} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\n", 1)
        line = raw.decode().strip()
        self._sink_lines.append(line)
        if line.startswith("progress "):
            self.received = int(line.split()[1])
        return line

    def wait_progress(self, nbytes: int, timeout: float = 30.0) -> None:
        """Block until the sink has received at least `nbytes`."""
        deadline = time.monotonic() + timeout
        while self.received < nbytes:
            left = deadline - time.monotonic()
            if left <= 0 or self._next_line(left) is None:
                raise AssertionError(f"transfer stalled at {self.received} bytes")

    def finish(self) -> Transfer:
        """Wait for both ends (bounded), return what they saw."""
        left = self.timeout - (time.monotonic() - self.started) + 5
        try:
            src_out, src_err = self.source.communicate(timeout=max(left, 5))
            sink_out, sink_err = self.sink.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.source.kill()
            self.sink.kill()
            raise AssertionError(f"transfer of {self.total} bytes not done in {self.timeout:.0f} s"
                                 f" (sink at {self.received})") from None
        lines = self._sink_lines + (self._buf + sink_out).decode().splitlines()
        if self.source.returncode != 0 or self.sink.returncode != 0 or not lines:
            raise AssertionError(f"transfer failed: source {self.source.returncode} "
                                 f"{src_err.decode(errors='replace')[-600:]}; sink "
                                 f"{self.sink.returncode} {sink_err.decode(errors='replace')[-600:]}")
        sent, got = json.loads(src_out.decode().strip().splitlines()[-1]), json.loads(lines[-1])
        return Transfer(sent["bytes"], sent["sha256"], got["bytes"], got["sha256"],
                        time.monotonic() - self.started)


@dataclass
class TunnelPair:
    """Client and server of one manual tunnel across a client <-> router <-> server topology."""

    topo: Topology
    client: VpnSide
    server: VpnSide
    keys_dir: Path
    protocol: str
    outer: int

    @property
    def sides(self) -> tuple[VpnSide, VpnSide]:
        return self.server, self.client

    def up(self, *extra: str, new_key: bool = True) -> None:
        """Server first (it listens), then the client (TCP: returns once connected).
        `new_key`: the keys come from `vpn genkey` and were never used (first start)."""
        flags = ("--new-key", *extra) if new_key else extra
        self.server.up(*flags)
        self.client.up(*flags)

    def down(self) -> None:
        self.client.down()
        self.server.down()

    def ping(self, src: str, family: int, count: int = 3, *, pattern: str | None = None,
             deadline_s: int = 10) -> str:
        """Ping the other side's inner address from side `src` ("client" or "server");
        all `count` replies must arrive within `deadline_s`."""
        ns = self.client.ns if src == "client" else self.server.ns
        dst = inner_addr("server" if src == "client" else "client", family)
        argv = ["ping", f"-{family}", "-c", str(count), "-i", "0.2", "-w", str(deadline_s), "-n"]
        if pattern:
            argv += ["-p", pattern]
        r = ns.run([*argv, dst], timeout=deadline_s + 5, check=False)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0, f"{src} cannot ping {dst} through the tunnel:\n{out}" + \
            f"\n{self.client.log_tail()}\n{self.server.log_tail()}"
        return out

    def start_transfer(self, total: int, *, family: int = 4, reverse: bool = False,
                       rate: float = 0.0) -> TransferRun:
        """A TCP transfer between the inner addresses: client -> server (or reverse)."""
        src, dst = (self.server, self.client) if reverse else (self.client, self.server)
        return TransferRun(src.ns, dst.ns, inner_addr(dst.role, family), total, rate=rate)

    def transfer(self, total: int, **kw: Any) -> Transfer:
        result = self.start_transfer(total, **kw).finish()
        result.assert_intact(total)
        return result


def genkey(out_dir: Path) -> None:
    """`vpn genkey`: a matched pair client.keys/server.keys (0600)."""
    subprocess.run([*VPN, "genkey", "--out-dir", str(out_dir)], check=True, capture_output=True,
                   timeout=CLI_TIMEOUT_S)


def outer_server_addr(topo: Topology, family: int) -> str:
    return topo.server_v4 if family == 4 else topo.server_v6


@contextlib.contextmanager
def manual_tunnel(topo: Topology, workdir: Path, *, protocol: str = "tcp", outer: int = 4,
                  names: Sequence[str] = ("mts", "mtc"), manual_extra: str = ""
                  ) -> Iterator[TunnelPair]:
    """Keys and configs for a tunnel server <-> client in `workdir`; daemons always stopped."""
    keys = workdir / "keys"
    keys.mkdir(mode=0o700)
    genkey(keys)
    sides = {}
    for role, ns, name in (("server", topo.server, names[0]), ("client", topo.client, names[1])):
        cfg = workdir / f"{role}.toml"
        cfg.write_text(config_text(name=name, role=role, protocol=protocol,
                                   remote=outer_server_addr(topo, outer),
                                   key_file=keys / f"{role}.keys", state_dir=workdir / f"state-{role}",
                                   manual_extra=manual_extra))
        run_dir = workdir / f"run-{role}"
        sides[role] = VpnSide(ns, role, name, cfg, run_dir)
    pair = TunnelPair(topo, sides["client"], sides["server"], keys, protocol, outer)
    try:
        yield pair
    finally:
        pair.client.stop()
        pair.server.stop()


# -- the wire: captures, the RFC 9329 stream, keys -----------------------------------


class Capture:
    """dumpcap inside a namespace, writing a pcap file until `stop()`."""

    def __init__(self, ns: Netns, iface: str, bpf: str, path: Path) -> None:
        self.path = path
        argv = ["dumpcap", "-q", "-P", "-i", iface, "-f", bpf, "-w", str(path)]
        self.proc = ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not (path.exists() and path.stat().st_size > 0):  # the header: capturing
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"dumpcap did not start: {err}")
            time.sleep(0.05)
        time.sleep(0.2)

    def stop(self) -> list[Any]:
        """End the capture (SIGINT: dumpcap flushes) and return its packets (scapy)."""
        from scapy.layers import inet, inet6, l2  # noqa: F401  (the link types rdpcap decodes)
        from scapy.utils import rdpcap

        time.sleep(0.3)  # let the last packets reach the file
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        return list(rdpcap(str(self.path)))


def tcp_payload(packets: Sequence[Any], port: int, *, from_server: bool = False) -> bytes:
    """The reassembled payload of the (only) TCP connection to `port` in a capture, one
    direction, from its SYN on; retransmissions and overlaps are merged, a gap is an error."""
    from scapy.layers.inet import TCP

    segs = [p[TCP] for p in packets
            if TCP in p and (p[TCP].sport if from_server else p[TCP].dport) == port]
    syns = {s.seq for s in segs if s.flags & 0x02}  # a retransmitted SYN has the same seq
    assert len(syns) == 1, f"expected one connection on port {port}, saw SYNs {syns}"
    isn = syns.pop() + 1
    pieces: dict[int, bytes] = {}
    for s in segs:
        data = bytes(s.payload)
        if data:
            off = (s.seq - isn) & 0xFFFFFFFF
            if len(data) > len(pieces.get(off, b"")):
                pieces[off] = data
    out = bytearray()
    for off in sorted(pieces):
        data = pieces[off]
        assert off <= len(out), f"capture gap at stream offset {len(out)}"
        out += data[len(out) - off:]
    return bytes(out)


def split_frames(stream: bytes, *, prefix: bool = True) -> tuple[list[bytes], bytes]:
    """RFC 9329 §3/§4: "IKETCP" (from the TCP Originator only), then 16-bit Length
    (counting itself) || message. Returns the messages and what trails the last frame."""
    pos = 0
    if prefix:
        assert stream[:6] == b"IKETCP", f"the stream starts with {stream[:6]!r}, not IKETCP"
        pos = 6
    frames = []
    while pos + 2 <= len(stream):
        length = int.from_bytes(stream[pos:pos + 2], "big")
        assert length >= 2, f"Length {length} at stream offset {pos} (RFC 9329 §3: fatal)"
        if pos + length > len(stream):
            break
        frames.append(stream[pos + 2:pos + length])
        pos += length
    return frames, stream[pos:]


def esp_seq(packet: bytes) -> int:
    return int.from_bytes(packet[4:8], "big")


@dataclass(frozen=True)
class ManualKeys:
    """One side's key file: (spi, key || salt) per direction."""

    out_spi: int
    out_keymat: bytes
    in_spi: int
    in_keymat: bytes

    @classmethod
    def load(cls, path: Path) -> ManualKeys:
        import tomllib

        d = tomllib.loads(path.read_text())
        return cls(int(d["outbound"]["spi"]), bytes.fromhex(d["outbound"]["key"]),
                   int(d["inbound"]["spi"]), bytes.fromhex(d["inbound"]["key"]))
