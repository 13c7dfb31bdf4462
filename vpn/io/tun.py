"""The TUN device, with virtio-net offloads so that the kernel hands over 64 KB packets.

Flow of ``TunDevice.open``:
  1. open /dev/net/tun non-blocking;
  2. TUNSETIFF with IFF_TUN | IFF_NO_PI | IFF_VNET_HDR: every read and write then carries
     a 10-byte virtio_net_hdr in front of the IP packet (see vpn/io/offload.py);
  3. TUNSETVNETHDRSZ 10 (no num_buffers field);
  4. TUNSETOFFLOAD with CSUM | TSO4 | TSO6 (TSO needs CSUM), then the same plus
     USO4 | USO6 together; the kernel refuses unknown bits with EINVAL, and the smaller set
     is kept;
  5. MTU and txqueuelen through pyroute2 (a full queue drops inner TCP segments).

The device is not persistent: it disappears when the fd is closed. Bringing it up and
adding addresses is vpn/io/netconf.py's job (with rollback). pyroute2's synchronous API
runs its own event loop, so from asyncio code call ``open`` in a worker thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

TUN_PATH = "/dev/net/tun"

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOAD_NAMES = {
    TUN_F_CSUM: "csum",
    TUN_F_TSO4: "tso4",
    TUN_F_TSO6: "tso6",
    TUN_F_TSO_ECN: "tso_ecn",
    TUN_F_UFO: "ufo",
    TUN_F_USO4: "uso4",
    TUN_F_USO6: "uso6",
}

VNET_HDR_BYTES = 10
IFNAMSIZ = 16
DEFAULT_MTU = 1400
MIN_MTU = 1280  # RFC 8200 §5: IPv6 must fit inside
MAX_MTU = 65535
DEFAULT_TXQUEUELEN = 1000  # TUN's own default (500) drops bursts of super-packets

OFFLOADS_BASE = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
OFFLOADS_USO = TUN_F_USO4 | TUN_F_USO6


class TunError(OSError):
    """Creating or configuring the TUN device failed; the message says what to do."""


class TunUnavailableError(TunError):
    """No /dev/net/tun (module not loaded, or a container without the device)."""


class TunPermissionError(TunError):
    """The process lacks CAP_NET_ADMIN in its network namespace."""


class TunNameInUseError(TunError):
    """An interface of that name exists already."""


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack(f"{IFNAMSIZ}sH22x", name.encode(), flags)


def _check_name(name: str) -> None:
    """Interface names: 1..15 bytes, no '/', ':' or whitespace (dev_valid_name)."""
    raw = name.encode()
    if not 0 < len(raw) < IFNAMSIZ or name in (".", "..") or any(c in name for c in "/: \t\n"):
        raise ValueError(f"invalid interface name {name!r}: 1-15 characters, no '/', ':' or spaces")


def _offload_names(flags: int) -> tuple[str, ...]:
    return tuple(n for bit, n in OFFLOAD_NAMES.items() if flags & bit)


class TunDevice:
    """An open TUN device with IFF_VNET_HDR; ``fd`` is non-blocking.

    Create with ``TunDevice.open()``; close (or leave the ``with`` block) to remove it.
    """

    def __init__(self, fd: int, name: str, index: int, mtu: int, offloads: int) -> None:
        self.fd = fd
        self.name = name
        self.index = index
        self.mtu = mtu
        self.offloads = offloads

    @classmethod
    def open(
        cls,
        name: str = "vpn%d",
        *,
        mtu: int = DEFAULT_MTU,
        txqueuelen: int = DEFAULT_TXQUEUELEN,
        uso: bool = True,
    ) -> TunDevice:
        """Create the device in the caller's network namespace and return it.

        ``name`` may contain ``%d`` for the kernel to pick a free number. ``uso=False``
        skips the UDP segmentation offload attempt. Raises TunError subclasses with a
        message a user can act on, ValueError for a bad name or MTU.
        """
        _check_name(name)
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ValueError(
                f"MTU {mtu} out of range: at least {MIN_MTU} (so IPv6 fits), at most {MAX_MTU}"
            )
        if txqueuelen < 1:
            raise ValueError("txqueuelen must be positive")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise TunUnavailableError(
                e.errno,
                f"{TUN_PATH} does not exist: load the tun module (`modprobe tun`) or, in a "
                "container, pass the device through (e.g. `--device /dev/net/tun`)",
            ) from None
        except OSError as e:
            raise _open_error(e, name) from None
        try:
            dev = cls._setup(fd, name, mtu, txqueuelen, uso)
        except BaseException:
            os.close(fd)
            raise
        return dev

    @classmethod
    def _setup(cls, fd: int, name: str, mtu: int, txqueuelen: int, uso: bool) -> TunDevice:
        features = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4))[0]
        if not features & IFF_VNET_HDR:
            raise TunError(errno.EOPNOTSUPP, "this kernel's TUN lacks IFF_VNET_HDR")
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        except OSError as e:
            raise _setiff_error(e, name) from None
        actual = ifr[:IFNAMSIZ].rstrip(b"\0").decode()
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_BYTES))
        offloads = _set_offloads(fd, uso)
        index = socket.if_nametoindex(actual)
        try:
            with IPRoute() as ipr:
                ipr.link("set", index=index, mtu=mtu, txqlen=txqueuelen)
        except NetlinkError as e:
            raise TunError(
                e.code, f"setting MTU {mtu} on {actual}: {os.strerror(e.code)}"
            ) from None
        return cls(fd, actual, index, mtu, offloads)

    @property
    def offload_names(self) -> tuple[str, ...]:
        """The offloads the kernel accepted, e.g. ('csum', 'tso4', 'tso6', 'uso4', 'uso6')."""
        return _offload_names(self.offloads)

    @property
    def gso(self) -> bool:
        """True when the kernel may hand over TCP super-packets (TSO accepted)."""
        return bool(self.offloads & TUN_F_TSO4)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        offl = ",".join(self.offload_names) or "none"
        return f"TunDevice({self.name!r}, fd={self.fd}, mtu={self.mtu}, offloads={offl})"


def _set_offloads(fd: int, uso: bool) -> int:
    """Enable CSUM+TSO, then try USO on top; return the set the kernel accepted.

    The kernel answers EINVAL to bits it does not know and then keeps its previous set.
    """
    accepted = 0
    for flags in (OFFLOADS_BASE, OFFLOADS_BASE | OFFLOADS_USO)[: 2 if uso else 1]:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise TunError(e.errno, f"TUNSETOFFLOAD: {os.strerror(e.errno or 0)}") from None
            fcntl.ioctl(fd, TUNSETOFFLOAD, accepted)  # be explicit about what stays on
            break
        accepted = flags
    return accepted


def _open_error(e: OSError, name: str) -> TunError:
    if e.errno in (errno.EPERM, errno.EACCES):
        return _permission_error(e.errno, name)
    if e.errno in (errno.ENODEV, errno.ENXIO):
        return TunUnavailableError(
            e.errno, f"{TUN_PATH} exists but the kernel has no TUN driver: `modprobe tun`"
        )
    return TunError(e.errno, f"opening {TUN_PATH}: {os.strerror(e.errno or 0)}")


def _permission_error(code: int, name: str) -> TunPermissionError:
    return TunPermissionError(
        code,
        f"creating TUN device {name!r} needs CAP_NET_ADMIN in this network namespace: "
        "run as root or grant the capability (e.g. `setcap cap_net_admin+ep`)",
    )


def _setiff_error(e: OSError, name: str) -> TunError:
    if e.errno in (errno.EPERM, errno.EACCES):
        return _permission_error(e.errno, name)
    if e.errno == errno.EBUSY:
        return TunNameInUseError(
            e.errno,
            f"interface {name!r} is already in use (another instance running?): "
            "choose another name or stop the other one",
        )
    if e.errno == errno.EINVAL and "%" not in name:
        try:
            socket.if_nametoindex(name)
        except OSError:
            pass
        else:
            return TunNameInUseError(
                e.errno, f"interface {name!r} exists and is not a TUN device: choose another name"
            )
    return TunError(e.errno, f"TUNSETIFF {name!r}: {os.strerror(e.errno or 0)}")
