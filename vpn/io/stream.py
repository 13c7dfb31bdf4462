"""TCP transport of the dataplane: RFC 9329 streams, one per connection.

1. The TCP Originator (always the client, RFC 9329 §1.2) connects, writes "IKETCP"
   (§4) as the first bytes, then IKE and ESP frames share the stream.
2. The accepting side parses nothing before the whole prefix (§6.1; done in C).
3. Reading: the socket is handed to C, which deframes, opens and writes to the TUN in
   one call per readiness event; IKE messages come back up to Python.
4. Writing: one ordered queue per connection, owned by C; when the socket is full the
   remainder waits for writability and the TUN reader pauses above the high-water mark.
5. Only the client reconnects (with backoff, §6.1); the server never connects out.
6. The accepting side defends itself (StreamServer, ListenerLimits): the prefix and a
   first message in time, a cap on unauthenticated connections, no stalled partial
   frame, no connection left without an IKE SA.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from vpn import fastpath as fp
from vpn.framing import PREFIX

log = logging.getLogger("vpn.io")

TCP_NOTSENT_LOWAT_BYTES = 256 * 1024  # RFC 9329 §9.1: keep the outer unsent backlog small
CONNECT_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a connection that lived this long resets the backoff
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
# linux/in6.h: lease a flow label for a socket and send the one given at connect()
IPV6_FLOWLABEL_MGR = 32
IPV6_FLOWINFO_SEND = 33
IPV6_FL_A_GET, IPV6_FL_F_CREATE, IPV6_FL_S_ANY = 0, 1, 255
FLOW_LABEL_MAX = 0x7FFFF  # the upper half is for stateless labels (flowlabel_state_ranges)


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
        kind: int = fp.DP_CONN_TCP,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.originator = originator
        self.on_ike = on_ike
        self.on_closed = on_closed
        self.on_rx = on_rx
        self.on_drained = on_drained
        self.opened_at = time.monotonic()
        self.last_rx_at = self.opened_at  # the socket was last readable (bytes or EOF)
        self.first_message = False  # set by the owner: a whole IKE or ESP message arrived
        self.authenticated = False  # set by the owner once a message authenticated here
        self.closed = asyncio.get_running_loop().create_future()
        self.peername = _peer(sock)
        tune_stream_socket(sock)
        self.conn = dp.conn(kind, sock.fileno(), expect_prefix=not originator)
        self._writing = False
        self._open = True
        if originator:
            self.conn.send_raw(PREFIX)  # RFC 9329 §4, §6.1: first bytes, once per connection
        loop.add_reader(sock.fileno(), self._on_readable)
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

    def rx_partial(self) -> int:
        """Bytes received that do not make a whole prefix or frame yet."""
        return self.conn.rx_pending()

    def check_error(self) -> None:
        """Close if the dataplane saw a write error on this connection."""
        if self._open and self.conn.error:
            self.close(f"write failed: errno {self.conn.error}")

    def _on_readable(self) -> None:
        self.last_rx_at = time.monotonic()
        self._readable()

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
        _discard_unread(self.sock)
        self.sock.close()
        if not self.closed.done():
            self.closed.set_result(reason)
        self.on_closed(self, reason)


def _discard_unread(sock: socket.socket, rounds: int = 8) -> None:
    """Read what already arrived (say, the peer's own close_notify) so that close()
    ends the connection with a FIN, not a reset (Linux resets on unread data)."""
    for _ in range(rounds):
        try:
            if not sock.recv(65536):
                return
        except OSError:  # nothing more (EAGAIN), or the connection is already gone
            return


def _peer(sock: socket.socket) -> tuple[str, int] | None:
    try:
        addr = sock.getpeername()
        return str(addr[0]), int(addr[1])
    except OSError:
        return None


def new_flow_label() -> int:
    """A random IPv6 flow label for one TCP Originator's connections."""
    return 1 + secrets.randbelow(FLOW_LABEL_MAX)


def _use_flow_label(sock: socket.socket, dst: str, label: int) -> bool:
    """Lease `label` towards `dst` and send it: the same label on every connection of an
    IKE SA (RFC 9329 §6.1, T38), so that ECMP paths do not change on a reconnect; by
    default Linux derives the label from the 5-tuple, which a new port changes."""
    req = (socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!I", label)
           + struct.pack("=BBHHHI", IPV6_FL_A_GET, IPV6_FL_S_ANY, IPV6_FL_F_CREATE, 0, 0, 0))
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWLABEL_MGR, req)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWINFO_SEND, 1)
    except OSError as exc:
        log.warning("IPv6 flow label not set (%s); the kernel picks one per connection", exc.strerror)
        return False
    return True


async def open_connection(host: str, port: int, *, mark: int = 0, local: str | None = None,
                          timeout: float = CONNECT_TIMEOUT_S, flow_label: int = 0) -> socket.socket:
    """A connected non-blocking TCP socket (SO_MARK set before connecting, for policy
    routing and the kill switch); over IPv6 with `flow_label` (1..2^19-1) set on it."""
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
            if family == socket.AF_INET6 and flow_label and _use_flow_label(sock, str(addr[0]), flow_label):
                host6, port6, _flow, scope = addr  # type: ignore[misc]
                addr = (host6, port6, flow_label, scope)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            last = exc if isinstance(exc, OSError) else OSError(f"timed out after {timeout:.0f} s")
    raise last or OSError(f"cannot resolve {host}")


@dataclass(frozen=True)
class ListenerLimits:
    """How the TCP responder defends itself (RFC 9329 §6.1, §6.3, §10).

    - `first_message_s`: the "IKETCP" prefix and one whole IKE (or authenticated ESP)
      message must arrive within this time after the connection opens.
    - `handshake_s`: a connection on which nothing authenticated within this time is
      closed (bounds what an unauthenticated peer can hold).
    - `orphan_s`: a connection that carries no IKE SA (none was made on it, or its SA
      ended) is closed after this time (T34: "a few seconds").
    - `partial_frame_s`: a partial prefix, frame or TLS record with no further byte
      for this time is discarded with its connection (§6.1: discard partial messages).
    - `max_unauthenticated`: at most this many connections that have not authenticated
      yet; the oldest is evicted when a new one comes.
    """

    first_message_s: float = 10.0
    handshake_s: float = 30.0
    orphan_s: float = 5.0
    partial_frame_s: float = 10.0
    max_unauthenticated: int = 64
    sweep_s: float = 0.5


class StreamServer:
    """The TCP responder: accepts connections, never connects out (RFC 9329 §6.1).

    Every connection is on its own (non-blocking, driven by the event loop), so a slow
    or silent one never delays another's handshake; the limits in `ListenerLimits`
    close the ones that do not make progress. `has_sa(link)` tells whether a
    connection carries a live IKE SA (the owner knows); without it the orphan rule
    is off.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 on_accept: Callable[[socket.socket], StreamLink | None], *,
                 limits: ListenerLimits | None = None,
                 has_sa: Callable[[StreamLink], bool] | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.on_accept = on_accept
        self.limits = limits or ListenerLimits()
        self.has_sa = has_sa
        self.links: list[StreamLink] = []  # in accept order: the oldest first
        self.closed_by_rule: dict[str, int] = {}
        self._orphan_since: dict[StreamLink, float] = {}
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = loop.call_later(self.limits.sweep_s, self._sweep)

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
            if len(unauth) > self.limits.max_unauthenticated:
                self._close(unauth[0], "evicted", "evicted: too many unauthenticated connections")

    def _forgetter(self, link: StreamLink) -> Callable[[asyncio.Future[str]], None]:
        def forget(_f: asyncio.Future[str]) -> None:
            if link in self.links:
                self.links.remove(link)
            self._orphan_since.pop(link, None)

        return forget

    def _close(self, link: StreamLink, rule: str, reason: str) -> None:
        self.closed_by_rule[rule] = self.closed_by_rule.get(rule, 0) + 1
        link.close(reason)

    def _sweep(self) -> None:
        self._sweeper = self.loop.call_later(self.limits.sweep_s, self._sweep)
        now = time.monotonic()
        lim = self.limits
        for link in list(self.links):
            if not link.is_open:
                continue
            age = now - link.opened_at
            if not link.first_message and not link.authenticated and age > lim.first_message_s:
                self._close(link, "no_first_message", f"no IKE message within {lim.first_message_s:g} s")
            elif not link.authenticated and age > lim.handshake_s:
                self._close(link, "handshake_timeout", f"nothing authenticated within {lim.handshake_s:g} s")
            elif link.rx_partial() and now - link.last_rx_at > lim.partial_frame_s:
                self._close(link, "partial_frame", f"a partial frame stalled for {lim.partial_frame_s:g} s")
            elif self.has_sa is not None and (link.first_message or link.authenticated):
                if self.has_sa(link):
                    self._orphan_since.pop(link, None)
                else:
                    since = self._orphan_since.setdefault(link, now)
                    if now - since > lim.orphan_s:
                        self._close(link, "orphan", "no IKE SA on this connection (RFC 9329 §6.1)")

    def unauthenticated(self) -> int:
        return sum(1 for lk in self.links if lk.is_open and not lk.authenticated)

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
