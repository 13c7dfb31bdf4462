"""The TUN device: offload negotiation, MTU/queue settings, errors users can act on, and
batched reads and writes through the kernel (inside a throwaway network namespace)."""

from __future__ import annotations

import os
import platform
import socket
import struct
import sys
import time

import pytest

from tests.integration.netns import Netns
from vpn import fastpath
from vpn.io import offload as ref
from vpn.io import tun as tunmod
from vpn.io.netconf import NetConf
from vpn.io.tun import TunDevice, TunNameInUseError, TunPermissionError, TunUnavailableError

pytestmark = pytest.mark.netns


def _kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _link(ns: Netns, name: str) -> str:
    return ns.ip("-d", "link", "show", name)


def test_open_negotiates_offloads_and_sets_mtu_and_queue(netns: Netns) -> None:
    with netns.entered(), TunDevice.open("vpn%d") as tun:
        assert tun.name == "vpn0"
        assert {"csum", "tso4", "tso6"} <= set(tun.offload_names)
        assert tun.gso
        if _kernel() >= (6, 2):
            assert {"uso4", "uso6"} <= set(tun.offload_names)
        link = _link(netns, tun.name)
        assert "mtu 1400" in link and "qlen 1000" in link and "vnet_hdr on" in link
        assert os.get_blocking(tun.fd) is False
    assert "vpn0" not in netns.ip("link")  # closing the fd removed the device


def test_uso_can_be_left_off_and_mtu_chosen(netns: Netns) -> None:
    with netns.entered(), TunDevice.open("t1", mtu=9000, txqueuelen=5000, uso=False) as tun:
        assert tun.offload_names == ("csum", "tso4", "tso6")
        assert "mtu 9000" in _link(netns, "t1") and "qlen 5000" in _link(netns, "t1")


@pytest.mark.parametrize("mtu", [1279, 0, 65536])
def test_mtu_outside_range_is_refused(mtu: int) -> None:
    with pytest.raises(ValueError, match="MTU"):
        TunDevice.open("t1", mtu=mtu)


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a b", "a:b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="interface name"):
        TunDevice.open(name)


def test_name_taken_by_a_tun_or_another_device(netns: Netns) -> None:
    with netns.entered(), TunDevice.open("t1"):
        with pytest.raises(TunNameInUseError, match="already in use"):
            TunDevice.open("t1")
        with pytest.raises(TunNameInUseError, match="not a TUN device"):
            TunDevice.open("lo")


def test_missing_device_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunmod, "TUN_PATH", "/nonexistent/net/tun")
    with pytest.raises(TunUnavailableError, match="modprobe tun"):
        TunDevice.open("t1")


def test_without_cap_net_admin(netns: Netns) -> None:
    """Dropped from the bounding set, root loses CAP_NET_ADMIN on exec."""
    code = (
        "from vpn.io.tun import TunDevice, TunPermissionError\n"
        "try:\n"
        "    TunDevice.open('t1')\n"
        "except TunPermissionError as e:\n"
        "    print('refused:', e)\n"
    )
    r = netns.run(["setpriv", "--bounding-set", "-net_admin", sys.executable, "-c", code])
    out = r.stdout.decode()
    assert out.startswith("refused:") and "CAP_NET_ADMIN" in out
    assert issubclass(TunPermissionError, OSError)


def _udp_checksum_ok(pkt: bytes) -> bool:
    return ref.ones_sum(pkt[20:], ref.pseudo_sum(pkt, 17, len(pkt) - 20)) == 0xFFFF


def test_batch_read_and_write_through_the_kernel(netns: Netns) -> None:
    """Datagrams sent to the TUN come out of one batch read; an ICMP echo request we
    write in is answered by the kernel (so writes with a zeroed header work)."""
    with netns.entered():
        tun = TunDevice.open("t1")
        with NetConf() as nc:
            nc.add_address("t1", "10.77.0.1/24")
            nc.set_up("t1")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tun, s:
        batch = fastpath.TunReadBatch(16)
        while batch.read(tun.fd):  # drop anything the kernel sent on link up
            pass
        for k in range(5):
            s.sendto(bytes([k]) * 100, ("10.77.0.2", 9000 + k))
        assert batch.read(tun.fd) == 5
        for k in range(5):
            frame = batch.frame(k)
            hdr = ref.VnetHdr.unpack(frame)
            pkt = bytearray(frame[10:])
            assert hdr.gso_type == 0 and len(pkt) == 128 and pkt[9] == 17
            assert struct.unpack_from("!H", pkt, 22)[0] == 9000 + k
            if hdr.flags & ref.VNET_F_NEEDS_CSUM:  # the kernel left the checksum to us
                ref.finish_csum(pkt, hdr.csum_start, hdr.csum_offset)
            assert _udp_checksum_ok(bytes(pkt))
        assert batch.read(tun.fd) == 0  # EAGAIN: non-blocking, nothing left

        # ICMP echo request 10.77.0.2 -> 10.77.0.1, written with a zeroed vnet header.
        icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"ping-payload")
        icmp[2:4] = struct.pack("!H", ~ref.ones_sum(icmp) & 0xFFFF)
        ip = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(icmp),
                1,
                0,
                64,
                1,
                0,
                socket.inet_aton("10.77.0.2"),
                socket.inet_aton("10.77.0.1"),
            )
        )
        ip[10:12] = struct.pack("!H", ~ref.ones_sum(ip) & 0xFFFF)
        rec = fastpath.RecordBuffer(2, 4096)
        data = bytes(10) + bytes(ip) + bytes(icmp)
        rec.buf[: len(data)] = data
        rec.offs[0], rec.lens[0] = 0, len(data)
        # NEEDS_CSUM with the checksum beyond the packet: the kernel refuses it (EINVAL).
        bad = ref.VnetHdr(ref.VNET_F_NEEDS_CSUM, 0, 0, 0, 1000, 6).pack() + data[10:]
        rec.buf[100 : 100 + len(bad)] = bad
        rec.offs[1], rec.lens[1] = 100, len(bad)
        rec.count = 2
        assert fastpath.tun_write_batch(tun.fd, rec) == (2, 1)
        reply = b""
        for _ in range(50):
            if batch.read(tun.fd):
                reply = batch.frame(0)[10:]
                break
            time.sleep(0.02)
        assert reply[9] == 1 and reply[20] == 0  # ICMP echo reply
        assert reply[-len(b"ping-payload") :] == b"ping-payload"


def test_read_batch_refuses_small_slots() -> None:
    r, w = os.pipe()
    try:
        err = fastpath.ffi.new("int *")
        buf = fastpath.ffi.new("uint8_t[]", 100)
        lens = fastpath.ffi.new("uint32_t[]", 1)
        assert fastpath.lib.vpn_tun_read_batch(r, buf, 100, lens, 1, err) == -1
        assert err[0] == 22
    finally:
        os.close(r)
        os.close(w)
