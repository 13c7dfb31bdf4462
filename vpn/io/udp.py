"""UDP transport of the dataplane (RFC 3948 UDP encapsulation on port 4500).

One socket carries IKE (behind the 4-octet Non-ESP marker) and ESP; C reads it with
recvmmsg, opens ESP straight to the TUN and hands IKE up with each sender's address.
Port 500 carries bare IKE and no ESP (RFC 7296 §2.23: UDP encapsulation MUST NOT be
done on port 500).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from vpn import fastpath as fp
from vpn.framing import KEEPALIVE, NON_ESP_MARKER

log = logging.getLogger("vpn.io")

UDP_SOCKET_BUFFER_BYTES = 8 << 20  # bursts of a GSO batch must not overflow the socket

Address = tuple[str, int]


def udp_socket(host: str | None, port: int, *, family: int = socket.AF_INET6, mark: int = 0) -> socket.socket:
    """A bound, non-blocking UDP socket with large buffers (dual-stack if host is None)."""
    if host is not None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6 and host is None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, UDP_SOCKET_BUFFER_BYTES)
        except OSError:
            pass
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    sock.setblocking(False)
    return sock


class UdpLink:
    """A UDP socket attached to the dataplane."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dp: fp.Dataplane, sock: socket.socket,
                 on_ike: Callable[[bytes, Address], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.on_ike = on_ike
        self.conn = dp.conn(fp.DP_CONN_UDP, sock.fileno())
        self.v4mapped = sock.family == socket.AF_INET6
        loop.add_reader(sock.fileno(), self._readable)
        self._open = True

    def dest(self, host: str, port: int) -> tuple[str, int]:
        """The address form this socket needs (v4-mapped on a dual-stack socket)."""
        if self.v4mapped and ":" not in host:
            return f"::ffff:{host}", port
        return host, port

    def send_ike(self, message: bytes, addr: Address) -> None:
        """IKE on port 4500 goes behind the Non-ESP marker (RFC 3948 §2.2)."""
        self._send(NON_ESP_MARKER + message, addr)

    def send_keepalive(self, addr: Address) -> None:
        """NAT-keepalive: one octet 0xFF (RFC 3948 §2.3)."""
        self._send(KEEPALIVE, addr)

    def send_raw(self, data: bytes, addr: Address) -> None:
        self._send(data, addr)

    def _send(self, data: bytes, addr: Address) -> None:
        try:
            self.sock.sendto(data, self.dest(*addr))
        except (BlockingIOError, InterruptedError):
            log.debug("UDP send to %s dropped: socket full", addr)
        except OSError as exc:
            log.info("UDP send to %s failed: %s", addr, exc.strerror)

    def _readable(self) -> None:
        st, msgs, err = self.conn.udp_rx()
        for msg, addr in msgs:
            self.on_ike(msg, _unmap(addr))
        if st == fp.DP_RX_ERROR:
            log.debug("UDP receive error: errno %d", err)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self.loop.remove_reader(self.sock.fileno())
        self.conn.close()
        self.sock.close()


def _unmap(addr: Address) -> Address:
    host, port = addr
    if host.startswith("::ffff:") and "." in host:
        return host[7:], port
    return host, port
