"""TUN offloads end to end with the kernel.

Two namespaces, a TUN in each; this process relays between the two TUN fds with the C
batch functions (read batch -> segment -> coalesce -> write batch, one call each per
batch, no crypto) while real TCP transfers run through it. The kernel must hand over GSO
super-packets, accept the coalesced ones we write, and the bytes must arrive intact.
"""

from __future__ import annotations

import collections
import hashlib
import random
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpn import fastpath
from vpn.io.netconf import NetConf
from vpn.io.offload import GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4
from vpn.io.tun import TunDevice

from . import netns as netns_mod
from .conftest import require_netns
from .netns import Lab, Netns, Topology

pytestmark = pytest.mark.netns

TRANSFER_BYTES = 50 * 1024 * 1024
CHUNK = 1 << 20
DEADLINE_S = 180.0

# Sink: accept one TCP connection, read to EOF, print "<length> <sha256>".
SINK = """
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(float(sys.argv[3]))
c, _ = s.accept()
c.settimeout(float(sys.argv[3]))
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
"""

# Source: connect (retrying until the sink listens), send content_blocks(total, seed).
SOURCE = """
import socket, sys, time
sys.path.insert(0, sys.argv[6])
from integration.test_tun_offload import content_blocks
addr, port, total, seed, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + timeout
while True:
    try:
        c = socket.create_connection((addr, port), timeout=timeout)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
for block in content_blocks(total, seed):
    c.sendall(block)
c.shutdown(socket.SHUT_WR)
c.recv(1)
c.close()
"""  # noqa: E501


def content_blocks(total: int, seed: int) -> Iterator[bytes]:
    """``total`` bytes in 1 MiB blocks that never repeat (misplaced data shows)."""
    for i, at in enumerate(range(0, total, CHUNK)):
        yield random.Random(seed * 100003 + i).randbytes(min(CHUNK, total - at))


def expected_digest(total: int, seed: int) -> str:
    h = hashlib.sha256()
    for block in content_blocks(total, seed):
        h.update(block)
    return h.hexdigest()


class Relay:
    """Moves packets between two TUN fds with one C call per step per batch."""

    def __init__(self) -> None:
        self.reads = fastpath.TunReadBatch(64)
        self.slots = fastpath.PacketSlots(1024, 1500)
        self.records = fastpath.RecordBuffer(1024, 1024 * 1510)
        self.stats = fastpath.GsoStats()
        self.gso_types: collections.Counter[int] = collections.Counter()
        self.batches = 0
        self.write_failed = 0

    def pump(self, src: int, dst: int) -> int:
        n = self.reads.read(src)
        if n == 0:
            return 0
        self.batches += 1
        stride = self.reads.stride
        for i in range(n):  # test bookkeeping only: which GSO types the kernel sent
            self.gso_types[self.reads.buf[i * stride + 1] & 0x7F] += 1
        start = 0
        while start < n:
            _, consumed = fastpath.segment_batch(self.reads, start, self.slots, self.stats)
            start += consumed
            fastpath.coalesce_batch(self.slots, self.records, self.stats)
            done = 0
            for _ in range(1000):
                if done >= self.records.count:
                    break
                w, failed = fastpath.tun_write_batch(dst, self.records, done)
                done += w
                self.write_failed += failed
            else:
                raise AssertionError("TUN write kept returning EAGAIN")
        return n

    def run(self, a: int, b: int, procs: list[subprocess.Popen[bytes]], deadline_s: float) -> None:
        """Relay both ways until every process in ``procs`` has exited."""
        poller = select.poll()
        poller.register(a, select.POLLIN)
        poller.register(b, select.POLLIN)
        end = time.monotonic() + deadline_s
        while any(p.poll() is None for p in procs):
            if time.monotonic() > end:
                raise AssertionError("transfer did not finish in time")
            for fd, _ in poller.poll(50):
                self.pump(fd, b if fd == a else a)


def tun_in(ns: Netns, name: str, cidrs: list[str]) -> TunDevice:
    """A TUN device inside ``ns``, addressed and up (the namespace owns it)."""
    with ns.entered():
        tun = TunDevice.open(name)
        with NetConf() as nc:
            for cidr in cidrs:
                nc.add_address(tun.name, cidr)
            nc.set_up(tun.name)
    return tun


def _sink(ns: Netns, addr: str, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", SINK, addr, str(port), str(DEADLINE_S)]
    return ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _source(ns: Netns, addr: str, port: int, seed: int) -> subprocess.Popen[bytes]:
    tests_dir = str(Path(__file__).resolve().parents[1])
    args = [addr, str(port), str(TRANSFER_BYTES), str(seed), str(DEADLINE_S), tests_dir]
    argv = [sys.executable, "-c", SOURCE, *args]
    return ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_tcp_through_tun_relay_uses_gso_and_gro(lab: Lab) -> None:
    a, b = lab.add("tuna"), lab.add("tunb")
    ta = tun_in(a, "tun0", ["10.99.0.1/24", "fd99::1/64"])
    tb = tun_in(b, "tun0", ["10.99.0.2/24", "fd99::2/64"])
    with ta, tb:
        assert {"csum", "tso4", "tso6"} <= set(ta.offload_names)
        # IPv4 a -> b and IPv6 b -> a at the same time: data and ACKs mix in every batch.
        sink4 = _sink(b, "10.99.0.2", 5001)
        sink6 = _sink(a, "fd99::1", 5002)
        src4 = _source(a, "10.99.0.2", 5001, seed=4)
        src6 = _source(b, "fd99::1", 5002, seed=6)
        relay = Relay()
        relay.run(ta.fd, tb.fd, [sink4, sink6, src4, src6], DEADLINE_S)

    out = {}
    for p in (src4, src6, sink4, sink6):
        stdout, stderr = p.communicate(timeout=5)
        assert p.returncode == 0, stderr.decode()
        out[p.pid] = stdout.decode().strip()
    assert out[sink4.pid] == f"{TRANSFER_BYTES} {expected_digest(TRANSFER_BYTES, 4)}"
    assert out[sink6.pid] == f"{TRANSFER_BYTES} {expected_digest(TRANSFER_BYTES, 6)}"

    s = relay.stats.as_dict()
    print("relay:", relay.batches, "batches", dict(relay.gso_types), s)
    assert relay.gso_types[GSO_TCPV4] > 0, "the kernel sent no TCPv4 super-packets"
    assert relay.gso_types[GSO_TCPV6] > 0, "the kernel sent no TCPv6 super-packets"
    assert (
        s["seg_gso_in"]
        == relay.gso_types[GSO_TCPV4] + relay.gso_types[GSO_TCPV6] + relay.gso_types[GSO_UDP_L4]
    )
    assert s["seg_out"] > s["seg_in"], "segmentation produced no extra packets"
    assert s["gro_super"] > 0 and s["gro_merged"] > 2 * s["gro_super"], "nothing coalesced"
    assert s["seg_malformed"] == 0 and s["seg_toobig"] == 0
    assert relay.write_failed == 0, "the kernel refused packets we wrote"


# UDP: the sender asks for UDP segmentation offload (UDP_SEGMENT, Linux 4.18); with USO
# on the TUN the kernel hands over one UDP_L4 super-packet per send.
UDP_SENDER = """
import socket, sys, time
addr, port, seg, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, seg)  # UDP_SEGMENT
for k in range(count):
    s.sendto(bytes([k]) * (seg * 10 + 7), (addr, port))
    time.sleep(0.02)
"""

UDP_RECEIVER = """
import socket, sys
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((addr, port))
s.settimeout(20)
sizes = []
data = b""
for _ in range(n):
    d = s.recv(65535)
    sizes.append(len(d))
    data += d
print(sizes.count(1000), sizes.count(7), data == b"".join(bytes([k]) * 10007 for k in range(3)))
"""


@pytest.mark.parametrize("family", [4, 6])
def test_udp_segmentation_offload_through_tun_relay(lab: Lab, family: int) -> None:
    a, b = lab.add("udpa"), lab.add("udpb")
    ta = tun_in(a, "tun0", ["10.98.0.1/24", "fd98::1/64"])
    tb = tun_in(b, "tun0", ["10.98.0.2/24", "fd98::2/64"])
    dst = "10.98.0.2" if family == 4 else "fd98::2"
    with ta, tb:
        if "uso4" not in ta.offload_names:
            pytest.skip("this kernel's TUN has no UDP segmentation offload (Linux < 6.2)")
        recv = b.popen(
            [sys.executable, "-c", UDP_RECEIVER, dst, "6000", "33"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.3)  # the receiver binds before the first datagram
        send = a.popen(
            [sys.executable, "-c", UDP_SENDER, dst, "6000", "1000", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        relay = Relay()
        relay.run(ta.fd, tb.fd, [recv, send], 30)
    out, err = recv.communicate(timeout=5)
    assert recv.returncode == 0, err.decode()
    assert out.decode().split() == ["30", "3", "True"]
    assert relay.gso_types[GSO_UDP_L4] == 3
    assert relay.write_failed == 0


def test_topology_forwards_both_families(topology: Topology) -> None:
    """The standard topology: client reaches server through the router, v4 and v6."""
    echo = (
        "import socket\n"
        "s = socket.create_server(('::', 7000), family=socket.AF_INET6, dualstack_ipv6=True)\n"
        "s.settimeout(10)\n"
        "for _ in range(2):\n"
        "    c, _ = s.accept()\n"
        "    c.sendall(c.recv(100)[::-1])\n"
        "    c.close()\n"
    )
    server = topology.server.popen([sys.executable, "-c", echo])
    ask = (
        "import socket, sys, time\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        c = socket.create_connection((sys.argv[1], 7000), timeout=5); break\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
        "c.sendall(b'hello')\n"
        "print(c.recv(100).decode(), c.getpeername()[0])\n"
    )
    for addr in (topology.server_v4, topology.server_v6):
        r = topology.client.run([sys.executable, "-c", ask, addr])
        assert r.stdout.decode().split() == ["olleh", addr]
    server.wait(timeout=10)
    assert server.returncode == 0
    # The router forwards (and sees) the traffic; nothing is routed in the host namespace.
    assert "10.201.2.0/24" in topology.router.ip("route")
    assert topology.router.run(["nft", "list", "ruleset"]).returncode == 0


# ---- the namespace helper itself (netns.py; kept here with its first user) ---------------


def test_lab_removes_namespaces_and_processes_even_on_failure() -> None:
    require_netns()
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        ns = lab.add("fail")
        sleeper = ns.popen(["sleep", "60"])
        names = [n.name for n in lab.namespaces]
        raise RuntimeError("boom")
    assert sleeper.poll() is not None  # stopped by PID
    listed = netns_mod._ip("netns", "list")
    assert not any(n in listed for n in names)


def test_commands_inside_are_bounded_by_a_timeout(lab: Lab) -> None:
    ns = lab.add("slow")
    with pytest.raises(subprocess.TimeoutExpired):
        ns.run(["sleep", "30"], timeout=0.3)
    assert ns.run(["cat", "/proc/self/net/dev"]).stdout.count(b":") == 1  # only lo here


def test_sweep_removes_only_our_stale_namespaces(lab: Lab) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    ours = f"{netns_mod.own_prefix()}{dead.pid}-0-stale"
    foreign = f"vpnt-zz{netns_mod.tag()}-{dead.pid}-0-stale"  # another tag: not ours
    live = lab.add("live")  # this process is alive: never swept
    netns_mod._ip("netns", "add", ours)
    netns_mod._ip("netns", "add", foreign)
    try:
        assert netns_mod.sweep_stale() == [ours]
        listed = netns_mod._ip("netns", "list")
        assert ours not in listed and foreign in listed and live.name in listed
    finally:
        netns_mod._ip("netns", "del", ours, check=False)
        netns_mod._ip("netns", "del", foreign, check=False)
