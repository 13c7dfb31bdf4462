"""Notice network changes at once: a netlink socket subscribed to link, address and
route changes (RTMGRP_*), read from the event loop. Each burst of messages triggers one
callback; the owner then asks the kernel which source address its marked sockets would
use now (a cheap route lookup, no packet sent). Polling alone would add up to its
period to every MOBIKE move (RFC 4555 §3.5)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("vpn.io")

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
SETTLE_S = 0.005  # a link change comes as a burst of messages: look once it settled


class PathWatcher:
    """Calls `on_change()` shortly after any link, address or route change."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None]) -> None:
        self.loop = loop
        self.on_change = on_change
        self._pending: asyncio.TimerHandle | None = None
        self.sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.bind((0, GROUPS))
            sock.setblocking(False)
        except OSError as exc:  # the owner's periodic check still works
            log.info("no netlink notifications (%s): network changes are noticed by polling", exc)
            return
        self.sock = sock
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        for _ in range(64):
            try:
                self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ENOBUFS: we missed messages; a check follows anyway
                break
        if self._pending is None:
            self._pending = self.loop.call_later(SETTLE_S, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.on_change()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
