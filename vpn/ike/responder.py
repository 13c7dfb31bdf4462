"""The server's front door: route IKE messages to responder sessions by SPI, stateless
until a request deserves state (RFC 7296 §2.6, RFC 9329 §6.3).

    door = IkeResponder(policy, rng=os.urandom, local_addr=("198.51.100.1", 4500))
    d = door.receive(data, now, remote_addr=src, stream=False)
    send(d.replies)                   # stateless answers: COOKIE, INVALID_MAJOR_VERSION
    if d.session is not None:         # then drive that session as usual:
        send(d.session.messages_to_send()); events...; timer...

1. IKE_SA_INIT requests (responder SPI zero) for no known half-open session: when
   more than `CookiePolicy.threshold` SAs are half-open, a request without a valid
   COOKIE gets one, statelessly (cookie = version | SHA-256(Ni | IP | SPIi | secret),
   never the port: RFC 9329 §6.3); above `max_half_open` new requests are dropped.
   Otherwise a new responder `IkeSession` takes the message.
2. Everything else goes to the session owning our SPI (the responder's SPI, or the
   initiator's when the I flag is clear: RFC 7296 §2.6); unknown SPIs are dropped.

Sessions that ended are forgotten lazily (or with `forget`). Nothing here raises for a
bad message: it is dropped and counted.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from vpn.ike.constants import ExchangeType, HeaderFlag, NotifyType
from vpn.ike.crypto import RandomBytes
from vpn.ike.errors import MalformedMessage, RemoteProtocolError
from vpn.ike.message import IkeHeader, InvalidMajorVersion, Message, Nonce, Notify, peek_header
from vpn.ike.policy import Address, SessionPolicy
from vpn.ike.session import IkeSession, Outgoing, invalid_major_version_reply
from vpn.ike.state import IkeState

COOKIE_VERSION_BYTES = 1
COOKIE_BYTES = COOKIE_VERSION_BYTES + 32  # RFC 7296 §2.6: 1..64 octets
SECRET_BYTES = 32
ZERO_SPI = bytes(8)


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """When the front door asks for cookies and how many half-open SAs it keeps.

    - `threshold`: half-open SAs above which IKE_SA_INIT needs a cookie (0: always).
    - `max_half_open`: new IKE_SA_INIT requests beyond this are dropped (a bound on
      memory and on the DH work an attacker can make us do).
    - `secret_seconds`: the cookie secret is replaced this often; cookies made with the
      previous secret stay valid one more period (RFC 7296 §2.6).
    - `over_tcp`: RFC 9329 §6.3: SHOULD NOT ask for cookies over TCP without puzzles
      (TCP already proved the address). Off by default.
    - `tcp_close_seconds`: after a cookie over TCP, the connection should be closed if
      no retry comes within this time (RFC 9329 §6.3.1 suggests 5-10 s).
    """

    threshold: int = 64
    max_half_open: int = 4096
    secret_seconds: float = 120.0
    over_tcp: bool = False
    tcp_close_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What the front door did with one message.

    `session` took the message (None: answered statelessly or dropped); `created` is
    true for a new responder session; `replies` are stateless answers to send back;
    `close_connection_after`: over TCP, close the connection at that time unless a new
    IKE_SA_INIT arrived on it (RFC 9329 §6.3).
    """

    session: IkeSession | None = None
    created: bool = False
    replies: tuple[Outgoing, ...] = ()
    close_connection_after: float | None = None


@dataclass(slots=True)
class _Secret:
    version: int
    key: bytes
    since: float


@dataclass(slots=True)
class _Stats:
    dropped: int = 0
    cookies_sent: int = 0
    cookies_accepted: int = 0
    sessions_created: int = 0


class IkeResponder:
    """Routes messages to responder sessions; see the module docstring."""

    def __init__(
        self,
        policy: SessionPolicy,
        *,
        rng: RandomBytes,
        local_addr: Address | None = None,
        cookies: CookiePolicy | None = None,
    ) -> None:
        self.policy = policy
        self._rng = rng
        self._local = local_addr
        self.cookies = cookies or CookiePolicy()
        self._by_spi: dict[bytes, IkeSession] = {}  # our SPIs -> session
        self._spis_of: dict[IkeSession, frozenset[bytes]] = {}  # the reverse, for forget()
        self._half_open: dict[tuple[bytes, str], IkeSession] = {}  # (SPIi, peer IP)
        self._init_key: dict[IkeSession, tuple[bytes, str]] = {}
        # every session by its (SPIi, peer IP), for its whole life: a late retransmitted
        # IKE_SA_INIT reaches it (and is dropped there) instead of opening a new SA
        self._by_init: dict[tuple[bytes, str], IkeSession] = {}
        self._secrets: list[_Secret] = []
        self.stats = _Stats()
        self._sessions: set[IkeSession] = set()

    # ---- queries

    def sessions(self) -> list[IkeSession]:
        """The sessions that have not ended."""
        for session in [s for s in self._sessions if s.closed]:
            self.forget(session)
        return list(self._sessions)

    def session_for(self, spi: bytes) -> IkeSession | None:
        """The session owning one of our IKE SPIs."""
        session = self._by_spi.get(spi)
        return session if session is not None and not session.closed else None

    def session_of(self, header: IkeHeader, remote_ip: str) -> IkeSession | None:
        """The live session this message would be handed to, without handling it: by
        our SPI, or for an IKE_SA_INIT retransmission by (SPIi, peer IP)."""
        if header.exchange == ExchangeType.IKE_SA_INIT and header.is_request and header.spi_r == ZERO_SPI:
            known = self._by_init.get((header.spi_i, remote_ip))
            return known if known is not None and not known.closed else None
        return self.session_for(header.spi_r if header.is_initiator else header.spi_i)

    @property
    def half_open(self) -> int:
        return sum(1 for s in self._half_open.values() if s.state is IkeState.INIT_ANSWERED)

    def forget(self, session: IkeSession) -> None:
        """Drop every reference to a session (the daemon saw its IkeSaClosed)."""
        self._sessions.discard(session)
        self._leave_half_open(session)
        init_key = self._init_key.pop(session, None)
        if init_key is not None and self._by_init.get(init_key) is session:
            del self._by_init[init_key]
        for spi in self._spis_of.pop(session, frozenset()):
            if self._by_spi.get(spi) is session:
                del self._by_spi[spi]

    # ---- input

    def receive(
        self,
        data: bytes,
        now: float,
        *,
        remote_addr: Address,
        local_addr: Address | None = None,
        stream: bool = False,
    ) -> Dispatch:
        """Route one IKE message (no non-ESP marker or framing). Never raises for bad input."""
        try:
            header = peek_header(data)
        except InvalidMajorVersion as exc:
            reply = invalid_major_version_reply(exc.header)
            self.stats.dropped += 1
            return Dispatch(replies=(Outgoing(reply, remote_addr),) if reply else ())
        except MalformedMessage:
            self.stats.dropped += 1
            return Dispatch()
        if header.exchange == ExchangeType.IKE_SA_INIT and header.is_request and header.spi_r == ZERO_SPI:
            return self._init_request(header.spi_i, data, now, remote_addr, local_addr, stream)
        ours = header.spi_r if header.is_initiator else header.spi_i
        session = self._by_spi.get(ours)
        if session is None or session.closed:
            self.stats.dropped += 1
            return Dispatch()
        session.receive_message(data, now, remote_addr, local_addr=local_addr)
        self._index(session)
        return Dispatch(session)

    def _init_request(
        self,
        spi_i: bytes,
        data: bytes,
        now: float,
        remote: Address,
        local: Address | None,
        stream: bool,
    ) -> Dispatch:
        known = self._by_init.get((spi_i, remote[0]))
        if known is not None and not known.closed:
            known.receive_message(data, now, remote, local_addr=local)  # a retransmission
            return Dispatch(known)
        self._prune()
        busy = self.half_open
        if busy >= self.cookies.max_half_open:
            self.stats.dropped += 1
            return Dispatch()
        if busy >= self.cookies.threshold and (self.cookies.over_tcp or not stream):
            valid, reply = self._check_cookie(spi_i, data, now, remote)
            if not valid:
                if reply is None:
                    self.stats.dropped += 1
                    return Dispatch()
                self.stats.cookies_sent += 1
                close = now + self.cookies.tcp_close_seconds if stream else None
                return Dispatch(replies=(Outgoing(reply, remote),), close_connection_after=close)
            self.stats.cookies_accepted += 1
        session = IkeSession(
            self.policy,
            initiator=False,
            rng=self._rng,
            stream=stream,
            local_addr=local or self._local,
            remote_addr=remote,
        )
        session.receive_message(data, now, remote, local_addr=local)
        self.stats.sessions_created += 1
        if not session.closed:
            self._sessions.add(session)
            self._half_open[(spi_i, remote[0])] = session
            self._init_key[session] = (spi_i, remote[0])
            self._by_init[(spi_i, remote[0])] = session
            self._index(session)
        return Dispatch(session, created=True)

    # ---- cookies (RFC 7296 §2.6)

    def _secret(self, now: float) -> _Secret:
        if not self._secrets or now - self._secrets[-1].since >= self.cookies.secret_seconds:
            version = (self._secrets[-1].version + 1) % 256 if self._secrets else 0
            self._secrets = [*self._secrets[-1:], _Secret(version, self._rng(SECRET_BYTES), now)]
        return self._secrets[-1]

    @staticmethod
    def _cookie(secret: _Secret, nonce: bytes, ip: str, spi_i: bytes) -> bytes:
        # Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>); the IP as text
        # is unambiguous for v4 and v6; no port (RFC 9329 §6.3: connections change).
        digest = hashlib.sha256(nonce + ip.encode() + spi_i + secret.key).digest()
        return bytes([secret.version]) + digest

    def _check_cookie(
        self, spi_i: bytes, data: bytes, now: float, remote: Address
    ) -> tuple[bool, bytes | None]:
        """(True, None) if the request carries a valid cookie; else (False, the COOKIE
        reply to send, or None when the request is too broken to answer)."""
        try:
            msg = Message.decode(data)
        except RemoteProtocolError:
            return False, None
        nonce = msg.get(Nonce)
        if nonce is None:
            return False, None
        current = self._secret(now)
        got = msg.notify(NotifyType.COOKIE)
        if got is not None and len(got.data) == COOKIE_BYTES:
            for secret in self._secrets:
                if secret.version == got.data[0] and hmac.compare_digest(
                    got.data, self._cookie(secret, nonce.data, remote[0], spi_i)
                ):
                    return True, None
        # RFC 7296 §2.6: a wrong cookie is ignored; the answer is a new one.
        cookie = self._cookie(current, nonce.data, remote[0], spi_i)
        reply = Message(
            spi_i,
            ZERO_SPI,
            ExchangeType.IKE_SA_INIT,
            HeaderFlag.RESPONSE,
            0,
            (Notify(NotifyType.COOKIE, cookie),),
        )
        return False, reply.encode()

    # ---- bookkeeping

    def _index(self, session: IkeSession) -> None:
        if session.closed:
            self.forget(session)
            return
        spis = session.local_spis()
        old = self._spis_of.get(session, frozenset())
        if spis != old:
            for spi in old - spis:
                if self._by_spi.get(spi) is session:
                    del self._by_spi[spi]
            for spi in spis:
                self._by_spi[spi] = session
            self._spis_of[session] = spis
        if session.state is not IkeState.INIT_ANSWERED:
            self._leave_half_open(session)

    def _leave_half_open(self, session: IkeSession) -> None:
        key = self._init_key.get(session)
        if key is not None and self._half_open.get(key) is session:
            del self._half_open[key]

    def _prune(self) -> None:
        """Forget half-open sessions that ended (bounded by max_half_open)."""
        for session in [s for s in self._half_open.values() if s.closed]:
            self.forget(session)

    def refresh(self, session: IkeSession) -> None:
        """Re-read a session's SPIs after driving it directly (timers, commands): an IKE
        rekey adds SPIs, an ended session is forgotten."""
        self._index(session)


__all__ = ["CookiePolicy", "Dispatch", "IkeResponder"]
