"""TCP transport of the dataplane: RFC 9329 streams, one per connection.

1. The TCP Originator (always the client, RFC 9329 §1.2) connects, writes "IKETCP"
   (§4) as the first bytes, then IKE and ESP frames share the stream.
2. The accepting side parses nothing before the whole prefix (§6.1; done in C).
3. Reading: the socket is handed to C, which deframes, opens and writes to the TUN in
   one call per readiness event; IKE messages come back up to Python.
4. Writing: one ordered queue per connection, owned by C; when the socket is full the
   remainder waits for writability and the TUN reader pauses above the high-water mark.
5. Only the client reconnects (with backoff, §6.1); the server never connects out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from vpn import fastpath as fp
from vpn.framing import PREFIX

log = logging.getLogger("vpn.io")

TCP_NOTSENT_LOWAT_BYTES = 256 * 1024  # RFC 9329 §9.1: keep the outer unsent backlog small
CONNECT_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a connection that lived this long resets the backoff
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def tune_stream_socket(sock: socket.socket) -> None:
    """TCP_NODELAY (frames are whole already) and a small unsent backlog (§9.1)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, TCP_NOTSENT_LOWAT_BYTES)
    except OSError:
        pass
    sock.setblocking(False)


class StreamLink:
    """One connected stream: the C connection plus its reader and writer."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        dp: fp.Dataplane,
        sock: socket.socket,
        *,
        originator: bool,
        on_ike: Callable[[StreamLink, bytes], None],
        on_closed: Callable[[StreamLink, str], None],
        on_rx: Callable[[StreamLink], None] | None = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.originator = originator
        self.on_ike = on_ike
        self.on_closed = on_closed
        self.on_rx = on_rx
        self.on_drained = on_drained
        self.opened_at = time.monotonic()
        self.authenticated = False  # set by the owner once a message authenticated here
        self.closed = asyncio.get_running_loop().create_future()
        self.peername = _peer(sock)
        tune_stream_socket(sock)
        self.conn = dp.conn(fp.DP_CONN_TCP, sock.fileno(), expect_prefix=not originator)
        self._writing = False
        self._open = True
        if originator:
            self.conn.send_raw(PREFIX)  # RFC 9329 §4, §6.1: first bytes, once per connection
        loop.add_reader(sock.fileno(), self._readable)
        self.flush()

    @property
    def is_open(self) -> bool:
        return self._open

    def send_ike(self, message: bytes) -> bool:
        """Queue one IKE message behind whatever ESP is already queued."""
        if not self._open:
            return False
        ok = self.conn.send_ike(message)
        self.flush()
        return ok

    def flush(self) -> None:
        """Write what C queued; wait for writability if the socket is full."""
        if not self._open:
            return
        try:
            self.conn.flush()
        except OSError as exc:
            self.close(f"write failed: {exc.strerror}")
            return
        if self.conn.pending():
            if not self._writing:
                self.loop.add_writer(self.sock.fileno(), self.flush)
                self._writing = True
        else:
            if self._writing:
                self.loop.remove_writer(self.sock.fileno())
                self._writing = False
        if self.on_drained is not None and not self.conn.above_high_water():
            self.on_drained()

    def check_error(self) -> None:
        """Close if the dataplane saw a write error on this connection."""
        if self._open and self.conn.error:
            self.close(f"write failed: errno {self.conn.error}")

    def _readable(self) -> None:
        st, ike, err = self.conn.rx()
        for msg in ike:
            self.on_ike(self, msg)
        if self.on_rx is not None:
            self.on_rx(self)
        if st == fp.DP_RX_EOF:
            self.close("closed by peer")
        elif st == fp.DP_RX_CLOSE:
            self.close("stream corrupt (RFC 9329 §3/§6.1)")
        elif st == fp.DP_RX_ERROR:
            self.close(f"read failed: errno {err}")

    def close(self, reason: str) -> None:
        """Drop the connection; a partial frame is discarded (RFC 9329 §6.1)."""
        if not self._open:
            return
        self._open = False
        fd = self.sock.fileno()
        self.loop.remove_reader(fd)
        if self._writing:
            self.loop.remove_writer(fd)
        self.conn.close()
        self.sock.close()
        if not self.closed.done():
            self.closed.set_result(reason)
        self.on_closed(self, reason)


def _peer(sock: socket.socket) -> tuple[str, int] | None:
    try:
        addr = sock.getpeername()
        return str(addr[0]), int(addr[1])
    except OSError:
        return None


async def open_connection(host: str, port: int, *, mark: int = 0, local: str | None = None,
                          timeout: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """A connected non-blocking TCP socket (SO_MARK set before connecting, for policy
    routing and the kill switch)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, _type, proto, _name, addr in infos:
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            if mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            if local:
                sock.bind((local, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            last = exc if isinstance(exc, OSError) else OSError(f"timed out after {timeout:.0f} s")
    raise last or OSError(f"cannot resolve {host}")


class StreamServer:
    """The TCP responder: accepts connections, never connects out (RFC 9329 §6.1).

    Defends itself: a connection that has not authenticated anything within
    `auth_timeout_s` is closed, and at most `max_unauthenticated` unauthenticated
    connections are kept (the oldest is evicted), so idle or hostile connections
    cannot exhaust the daemon.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 on_accept: Callable[[socket.socket], StreamLink | None], *,
                 auth_timeout_s: float = 10.0, max_unauthenticated: int = 64) -> None:
        self.loop = loop
        self.sock = sock
        self.on_accept = on_accept
        self.auth_timeout_s = auth_timeout_s
        self.max_unauthenticated = max_unauthenticated
        self.links: list[StreamLink] = []
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = loop.call_later(1.0, self._sweep)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            link = self.on_accept(conn)
            if link is None:
                continue
            self.links.append(link)
            link.closed.add_done_callback(self._forgetter(link))
            unauth = [lk for lk in self.links if not lk.authenticated and lk.is_open]
            if len(unauth) > self.max_unauthenticated:
                unauth[0].close("evicted: too many unauthenticated connections")

    def _forgetter(self, link: StreamLink) -> Callable[[asyncio.Future[str]], None]:
        def forget(_f: asyncio.Future[str]) -> None:
            if link in self.links:
                self.links.remove(link)

        return forget

    def _sweep(self) -> None:
        now = time.monotonic()
        for link in list(self.links):
            if not link.authenticated and now - link.opened_at > self.auth_timeout_s:
                link.close(f"nothing authenticated within {self.auth_timeout_s:.0f} s")
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def close(self) -> None:
        self._sweeper.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for link in list(self.links):
            link.close("server stopping")


def listen(host: str | None, port: int) -> socket.socket:
    """A listening TCP socket on host:port (both address families when host is None)."""
    if host is None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        bind_host = "::"
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        bind_host = host
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind_host, port))
    sock.listen(128)
    return sock


class Backoff:
    """Exponential reconnect delay, reset after a connection that stayed up."""

    def __init__(self, first: float = BACKOFF_FIRST_S, maximum: float = BACKOFF_MAX_S) -> None:
        self.first = first
        self.maximum = maximum
        self.delay = first

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return d

    def reset(self) -> None:
        self.delay = self.first
