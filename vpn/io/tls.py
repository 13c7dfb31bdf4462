"""The RFC 9329 stream inside TLS (RFC 9329 Appendix A), default port 443.

TLS runs through `ssl.SSLContext.wrap_bio` (an SSLObject between two MemoryBIOs) over
the plain socket, because asyncio's and uvloop's `ssl=` transports cannot resume TLS
sessions. The flow, per readiness event:

1. socket bytes -> incoming BIO -> SSLObject.read -> plaintext -> C (`DpConn.feed`):
   deframe, open, write the TUN; IKE messages come back up.
2. C's ordered queue (ESP sealed in C, IKE from Python) -> SSLObject.write ->
   outgoing BIO -> socket. Python moves whole batches, never single packets.
3. The client keeps the latest session (TLS 1.3 sends its tickets after the handshake)
   and offers it on the next connection (RFC 9329 Appendix B.3: SHOULD resume).
4. The client checks the server against a CA (and name) or a pinned SHA-256 of its
   certificate; the server asks for no client certificate (IKE authenticates the
   client, Appendix B.1).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from vpn import fastpath as fp
from vpn.io.stream import StreamLink

log = logging.getLogger("vpn.io")

TLS_READ_CHUNK = 256 * 1024
TLS_MAX_UNSENT = 2 << 20  # ciphertext waiting for the socket; above it C's queue backs up
SESSION_READS = 16  # reads after the handshake that look for a (new) session ticket


@dataclass(frozen=True)
class TlsClientSettings:
    """How the client authenticates the TLS server."""

    server_name: str | None = None
    cafile: str | None = None
    pin_sha256: bytes | None = None  # SHA-256 of the server certificate (DER)


def client_context(s: TlsClientSettings) -> ssl.SSLContext:
    """TLS 1.2 or 1.3; RFC 9325 defaults of the ssl module. A pin replaces the CA check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.pin_sha256 is not None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin is checked after the handshake
    elif s.cafile:
        ctx.load_verify_locations(cafile=s.cafile)
        ctx.check_hostname = s.server_name is not None
    else:
        ctx.load_default_certs()
    return ctx


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    ctx.verify_mode = ssl.CERT_NONE  # RFC 9329 App. B.1: no client certificate
    return ctx


class TlsLink(StreamLink):
    """A StreamLink whose bytes pass through TLS in Python (batches, not packets)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        dp: fp.Dataplane,
        sock: socket.socket,
        *,
        originator: bool,
        context: ssl.SSLContext,
        on_ike: Callable[[StreamLink, bytes], None],
        on_closed: Callable[[StreamLink, str], None],
        on_rx: Callable[[StreamLink], None] | None = None,
        on_drained: Callable[[], None] | None = None,
        settings: TlsClientSettings | None = None,
        session: ssl.SSLSession | None = None,
        on_session: Callable[[ssl.SSLSession], None] | None = None,
        on_handshake: Callable[[TlsLink], None] | None = None,
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out_bio = ssl.MemoryBIO()
        self._unsent = bytearray()
        self._handshaken = False
        self._settings = settings or TlsClientSettings()
        self._on_session = on_session
        self._on_handshake = on_handshake
        self.session_reused = False
        self._session_reads = 0
        self.tls_version: str | None = None
        server_name = self._settings.server_name if originator else None
        self.ssl = context.wrap_bio(self._in, self._out_bio, server_side=not originator,
                                    server_hostname=server_name, session=session)
        super().__init__(loop, dp, sock, originator=originator, on_ike=on_ike, on_closed=on_closed,
                         on_rx=on_rx, on_drained=on_drained, kind=fp.DP_CONN_FEED)
        if originator:
            self._handshake()

    # -- reading -----------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            data = self.sock.recv(TLS_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"read failed: {exc.strerror}")
            return
        if not data:
            self.close("closed by peer")
            return
        self._in.write(data)
        if not self._handshaken and not self._handshake():
            return
        plain = bytearray()
        try:
            while True:
                chunk = self.ssl.read(TLS_READ_CHUNK)
                if not chunk:
                    self.close("TLS closed by peer (close_notify)")
                    return
                plain += chunk
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self.close(f"TLS error: {exc.reason or exc}")
            return
        self._remember_session()
        if plain:
            self._feed(bytes(plain))
        self.flush()

    def rx_partial(self) -> int:
        """A partial TLS record counts as much as a partial frame."""
        return self._in.pending + self.conn.rx_pending()

    def _feed(self, plain: bytes) -> None:
        off = 0
        while off < len(plain):
            st, used, ike = self.conn.feed(plain[off:])
            for msg in ike:
                self.on_ike(self, msg)
            off += used
            if st == fp.DP_RX_CLOSE:
                self.close("stream corrupt (RFC 9329 §3/§6.1)")
                return
            if st != fp.DP_RX_OK or used == 0:
                break
        if self.on_rx is not None:
            self.on_rx(self)

    def _handshake(self) -> bool:
        try:
            self.ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._pump_out()
            return False
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self.close(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
            return False
        if self.originator and self._settings.pin_sha256 is not None:
            der = self.ssl.getpeercert(binary_form=True) or b""
            if not hmac.compare_digest(hashlib.sha256(der).digest(), self._settings.pin_sha256):
                self.close("TLS server certificate does not match the pinned SHA-256")
                return False
        self._handshaken = True
        self.session_reused = bool(self.ssl.session_reused)
        self.tls_version = self.ssl.version()
        self._remember_session()
        if self._on_handshake is not None:
            self._on_handshake(self)
        self._pump_out()
        return True

    def _remember_session(self) -> None:
        """TLS 1.3 tickets come in the server's first records after the handshake, so
        the session is read only on the first reads: `SSLObject.session` allocates a
        copy on each access (CPython 3.11 leaks it), once per read would grow the
        client by megabytes a second under load."""
        if not self.originator or self._on_session is None or self._session_reads >= SESSION_READS:
            return
        self._session_reads += 1
        session = self.ssl.session
        if session is not None:
            self._on_session(session)

    # -- writing -----------------------------------------------------------------------
    def flush(self) -> None:
        """Move C's queued frames through TLS to the socket, as far as it takes them."""
        if not self._open:
            return
        if self._handshaken:
            while len(self._unsent) < TLS_MAX_UNSENT and self.conn.pending():
                data = self.conn.take_pending()
                try:
                    self.ssl.write(data)
                except ssl.SSLError as exc:
                    self.close(f"TLS error: {exc.reason or exc}")
                    return
                self._unsent += self._out_bio.read()
        self._pump_out()

    def _pump_out(self) -> None:
        if not self._open:
            return
        self._unsent += self._out_bio.read()
        while self._unsent:
            try:
                n = self.sock.send(self._unsent)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"write failed: {exc.strerror}")
                return
            del self._unsent[:n]
        want = bool(self._unsent) or (self._handshaken and self.conn.pending() > 0)
        if want and not self._writing:
            self.loop.add_writer(self.sock.fileno(), self.flush)
            self._writing = True
        elif not want and self._writing:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False
        if self.on_drained is not None and not self.conn.above_high_water():
            self.on_drained()

    def close(self, reason: str) -> None:
        """Send close_notify if we can (RFC 9329 App. B.2), then drop the connection."""
        if self._open and self._handshaken:
            try:
                self.ssl.unwrap()
            except ssl.SSLError:
                pass
            try:
                out = self._out_bio.read()
                if out:
                    self.sock.send(out)
            except OSError:
                pass
        super().close(reason)

