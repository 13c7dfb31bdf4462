"""What every tunnel daemon has: the TUN, its journaled configuration, the C
dataplane, the TUN pump with backpressure, and the stream links on top of it.

Subclasses (manual.py, client.py, server.py) add keys and peers. The flow they share:

1. `open_tun()`: undo a journal left by a crashed instance of the same name, open the
   TUN, configure it (every change journaled under /run, undone by `stop()`), build
   the dataplane and start the TUN pump.
2. `new_link()`: a TCP or TLS stream attached to the dataplane, with callbacks for IKE
   messages, authenticated receive, close and drain.
3. `stop()`: close links, listeners and UDP sockets, undo every change, close the TUN.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from vpn import config
from vpn import fastpath as fp
from vpn.io import paths
from vpn.io.netconf import NetConf
from vpn.io.stream import StreamLink, StreamServer
from vpn.io.tls import TlsClientSettings, TlsLink
from vpn.io.tun import TunDevice, TunError
from vpn.io.udp import UdpLink

log = logging.getLogger("vpn.daemon")
T = TypeVar("T")

TUN_CALLS_PER_WAKEUP = 8  # bound the work per event so receive and timers keep running
EVENT_LOG_LENGTH = 50


class StartupError(Exception):
    """The tunnel could not come up; the message is shown to the user by `vpn up`."""


class TunPump:
    """Reads the TUN in batches while no connection is backed up (backpressure)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dp: fp.Dataplane, tun_fd: int,
                 on_flags: Callable[[int], None]) -> None:
        self.loop = loop
        self.dp = dp
        self.fd = tun_fd
        self.on_flags = on_flags
        self.paused = False
        self.tun_errors = 0
        loop.add_reader(tun_fd, self._readable)

    def _readable(self) -> None:
        for _ in range(TUN_CALLS_PER_WAKEUP):
            flags, err = self.dp.tun_to_net()
            if flags & fp.DP_TUN_ERROR:
                self.tun_errors += 1
                log.debug("TUN read error: errno %d", err)
            if flags & fp.DP_BACKPRESSURE:
                # pause before the owner flushes: a flush that drains at once resumes us
                self.pause()
            self.on_flags(flags)
            if flags & (fp.DP_BACKPRESSURE | fp.DP_TUN_EMPTY):
                return

    def pause(self) -> None:
        if not self.paused:
            self.loop.remove_reader(self.fd)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if not self.paused:
            self.loop.remove_reader(self.fd)
        self.paused = True


class TunnelHost:
    """The TUN, the dataplane and the links of one daemon; see the module docstring."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.started = time.time()
        self.state = "starting"
        self.links: list[StreamLink] = []
        self.udp_links: list[UdpLink] = []
        self.servers: list[StreamServer] = []
        self.tun: TunDevice | None = None
        self.netconf: NetConf | None = None
        self.pump: TunPump | None = None
        self.dp: fp.Dataplane
        self.events: list[str] = []
        self._closed_rx: dict[str, int] = {}  # receive counters of connections gone
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._stopping = False
        self._nc_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netconf")
        self.tls_handshakes = 0
        self.tls_resumed = 0

    # -- bring-up ---------------------------------------------------------------------
    async def open_tun(self) -> None:
        cfg = self.cfg
        journal = paths.journal_path(cfg.name)
        if journal.exists():
            log.info("undoing the changes of an earlier instance that did not stop cleanly")
            await self.netconf_call(NetConf.undo_journal, journal)
        try:
            self.tun = await self.netconf_call(TunDevice.open, cfg.tunnel.device, mtu=cfg.tunnel.mtu)
        except TunError as exc:
            raise StartupError(str(exc)) from None
        self.netconf = await self.netconf_call(NetConf, journal)
        await self.netconf_call(self._configure_links)
        self.dp = fp.Dataplane(self.tun.fileno(), cfg.tunnel.mtu)
        self.pump = TunPump(self.loop, self.dp, self.tun.fileno(), self.on_tun_flags)

    async def netconf_call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """pyroute2's synchronous API runs an event loop of its own, so every call goes
        to one dedicated thread (never the daemon's loop thread)."""
        return await self.loop.run_in_executor(self._nc_exec, functools.partial(fn, *args, **kw))

    def _configure_links(self) -> None:
        assert self.tun is not None and self.netconf is not None
        nc, t = self.netconf, self.cfg.tunnel
        _no_ipv6_link_local(self.tun.name)
        for addr in t.addresses:
            nc.add_address(self.tun.name, str(addr))
        nc.set_up(self.tun.name)
        for net in t.routes:
            nc.add_route(str(net), ifname=self.tun.name)

    def spawn(self, coro: Any) -> None:
        """Run a coroutine in the background; its failure is logged, never lost."""
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._task_done)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed: %s", exc, exc_info=exc)
            self.event(f"internal error: {type(exc).__name__}: {exc}")

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self._timers = [t for t in self._timers if not t.cancelled()]
        self._timers.append(self.loop.call_later(delay, fn))

    # -- links ------------------------------------------------------------------------
    def new_link(self, sock: socket.socket, *, originator: bool, tls_context: ssl.SSLContext | None = None,
                 tls_settings: TlsClientSettings | None = None,
                 tls_session: ssl.SSLSession | None = None) -> StreamLink:
        common: dict[str, Any] = dict(originator=originator, on_ike=self.on_stream_ike,
                                      on_closed=self._link_closed, on_rx=self.on_link_rx,
                                      on_drained=self.on_drained)
        link: StreamLink
        if tls_context is not None:
            link = TlsLink(self.loop, self.dp, sock, context=tls_context, settings=tls_settings,
                           session=tls_session if originator else None,
                           on_session=self.on_tls_session, on_handshake=self._tls_handshake, **common)
        else:
            link = StreamLink(self.loop, self.dp, sock, **common)
        self.links.append(link)
        return link

    def _tls_handshake(self, link: TlsLink) -> None:
        self.tls_handshakes += 1
        self.tls_resumed += int(link.session_reused)
        self.on_tls_handshake(link)

    def _link_closed(self, link: StreamLink, reason: str) -> None:
        if link in self.links:
            self.links.remove(link)
        for k, v in link.conn.rx_counters().as_dict().items():  # drops stay counted
            self._closed_rx[k] = self._closed_rx.get(k, 0) + v
        self.on_link_closed(link, reason)
        if self.pump is not None:
            self.pump.resume()

    # hooks for subclasses
    def on_stream_ike(self, link: StreamLink, msg: bytes) -> None:
        """An IKE message arrived on a stream (Non-ESP marker stripped)."""

    def on_link_rx(self, link: StreamLink) -> None:
        """Called after every receive on `link` (check for authenticated traffic)."""

    def on_link_closed(self, link: StreamLink, reason: str) -> None:
        """`link` is gone (already removed from `links`)."""

    def on_tls_session(self, session: ssl.SSLSession) -> None:
        """A TLS client connection has a (new) session to resume later."""

    def on_tls_handshake(self, link: TlsLink) -> None:
        """A TLS handshake completed on `link`."""

    def on_drained(self) -> None:
        if self.pump is not None and self.pump.paused and not any(
            lk.conn.above_high_water() for lk in self.links if lk.is_open
        ):
            self.pump.resume()

    # -- the hot loop's Python side -------------------------------------------------------
    def on_tun_flags(self, flags: int) -> None:
        if flags & (fp.DP_BLOCKED | fp.DP_CONN_ERROR):
            for link in list(self.links):
                link.check_error()
                if link.is_open and link.conn.pending():
                    link.flush()

    def event(self, text: str) -> None:
        """One line in the log and in `vpn status` (never with secrets)."""
        log.info("%s", text)
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.events[:-EVENT_LOG_LENGTH]

    # -- status and stop -----------------------------------------------------------------
    def rx_totals(self) -> dict[str, int]:
        rx = dict(self._closed_rx)
        conns = [lk.conn for lk in self.links] + [u.conn for u in self.udp_links]
        for conn in conns:
            for k, v in conn.rx_counters().as_dict().items():
                rx[k] = rx.get(k, 0) + v
        return rx

    def base_status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "state": self.state,
            "mode": self.cfg.mode,
            "device": self.tun.name if self.tun else None,
            "mtu": self.cfg.tunnel.mtu,
            "offloads": list(self.tun.offload_names) if self.tun else [],
            "tun_paused": bool(self.pump and self.pump.paused),
            "uptime_s": round(time.time() - self.started, 1),
            "connections": len([lk for lk in self.links if lk.is_open]),
            "tls": {"handshakes": self.tls_handshakes, "resumed": self.tls_resumed}
            if self.tls_handshakes else None,
            "counters": {**self.dp.counters(), **{f"rx_{k}": v for k, v in self.rx_totals().items()}}
            if self.tun else {},
            "gso": self.dp.gso_stats() if self.tun else {},
            "events": self.events[-10:],
        }

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.state = "stopping"
        await self.before_stop()
        for tm in self._timers:
            tm.cancel()
        for t in self._tasks:
            t.cancel()
        if self.pump is not None:
            self.pump.close()
        for server in self.servers:
            server.close()
        for link in list(self.links):
            link.close("shutting down")
        for udp in self.udp_links:
            udp.close()
        await self.after_links_closed()
        if self.netconf is not None:
            await self.netconf_call(self.netconf.rollback)
            await self.netconf_call(self.netconf.close)
        if self.tun is not None:
            self.tun.close()
        paths.journal_path(self.cfg.name).unlink(missing_ok=True)

    async def before_stop(self) -> None:
        """Subclasses: say goodbye (e.g. delete IKE SAs) while links are still up."""

    async def after_links_closed(self) -> None:
        """Subclasses: undo what they added beyond the journal."""


def _no_ipv6_link_local(ifname: str) -> None:
    """No automatic IPv6 link-local address on the TUN (addr_gen_mode 1, before it goes
    up), as a WireGuard device has none: the kernel would otherwise send router
    solicitations and MLD reports from it into the tunnel, outside every Child SA's
    selectors (RFC 4301 §5.1; strongSwan drops them "due to policy"). Configured
    addresses still work. The device dies with the daemon, so nothing to journal."""
    path = Path("/proc/sys/net/ipv6/conf") / ifname / "addr_gen_mode"
    try:
        path.write_text("1\n")
    except OSError as exc:  # IPv6 disabled in this kernel or namespace: nothing to stop
        log.debug("cannot set %s: %s", path, exc.strerror)


async def resolve(host: str, port: int) -> str:
    """A numeric address for host (names resolved before any DNS change is made)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise StartupError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    if not infos:
        raise StartupError(f"cannot resolve {host}")
    return str(infos[0][4][0])
