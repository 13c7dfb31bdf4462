"""IkeSession: one IKEv2 peer relationship, sans-IO (RFC 7296, 4555, 7383, 9329).

Bytes and time in; messages, events and the next timer out. No sockets, no clock, no
global randomness (`rng` is injected). One session lives across IKE SA rekeys: the
Child SAs move to the new IKE SA, the session keeps its identity.

Flow (the aioquic habit: inputs, outputs the caller pulls, local commands):

1. Create: `IkeSession(policy, initiator=True, rng=os.urandom, stream=False,
   local_addr=("192.0.2.1", 4500), remote_addr=("198.51.100.1", 4500))`.
   A server's front door (responder.py) creates responder sessions itself.
2. Client: `initiate(now)`. Both: feed every IKE message of this SA, without the
   non-ESP marker or RFC 9329 framing, to `receive_message(data, now, remote_addr)`.
3. After every input: send everything from `messages_to_send()` (each has the bytes and
   the destination), handle every `next_event()` (events.py), and arm one timer for
   `get_timer()`; when it fires call `handle_timer(now)`.
4. Transport: over UDP requests are retransmitted with exponential backoff (RFC 7296
   §2.1); over a stream (TCP/TLS) they are not, and the SA is deleted after a timeout
   (RFC 9329 §6.2). When a new connection carries the SA, call `transport_changed()`:
   the outstanding request is resent on it, byte for byte (RFC 9329 §6.2 MUST).
5. Commands: `rekey_child`, `create_child`, `rekey_ike`, `delete_child`, `close`,
   `update_addresses` (MOBIKE, client only), `check_liveness`, `report_invalid_spi`,
   and `peer_activity` (ESP arrived: postpones the liveness check).

Notes for the driver:
- Clock: `now` is any monotonic clock in seconds; certificate checks map it to wall
  time through `CertAuthenticator(wall_clock=...)`.
- UDP -> TCP for a new SA (RFC 9329 §5.1) is a new session (new SPI, new NAT-D); a
  client may switch after a few `RequestRetransmitted` events or an `IkeSaClosed`
  with reason TIMEOUT. For an established SA, `transport_changed` moves it.
- TCP: keep the connection after an INVALID_KE_PAYLOAD answer (RFC 9329 §6.4); the
  front door says when to close one after a COOKIE (`Dispatch.close_connection_after`).
- Server: after `InitialContactReceived`, close the identity's other sessions; after
  `IkeSaClosed`, `IkeResponder.forget(session)`; after commands or timers on a
  responder session, `IkeResponder.refresh(session)` (an IKE rekey adds SPIs).

A bad message never raises out of `receive_message`: it is dropped (unauthenticated or
out of window) or answered with an error notify (RFC 7296 §2.21). Misuse of the API
raises `LocalProtocolError`. Secrets never reach logs or reprs.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from vpn.ike.constants import (
    IKE_NATT_PORT,
    IKE_UDP_PORT,
    CertEncoding,
    CfgAttr,
    CfgType,
    DhId,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    NotifyType,
    ProtocolId,
    TransformType,
)
from vpn.ike.credentials import AuthContext
from vpn.ike.crypto import (
    DhPrivateKey,
    EspSuite,
    IkeSaKeys,
    IkeSuite,
    RandomBytes,
    dh_group,
    nat_detection_hash,
)
from vpn.ike.errors import (
    AuthenticationFailed,
    IntegrityError,
    InvalidKePayload,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    UnsupportedCriticalPayload,
)
from vpn.ike.events import (
    AddressesUpdated,
    ChildCloseReason,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaInfo,
    ChildSaRekeyed,
    CloseReason,
    EspAlgorithms,
    Event,
    IkeAlgorithms,
    IkeSaClosed,
    IkeSaEstablished,
    IkeSaRekeyed,
    InitialContactReceived,
    PeerAddressChanged,
    RequestRetransmitted,
    VirtualAddressAssigned,
)
from vpn.ike.message import (
    Authentication,
    Certificate,
    CertificateRequest,
    ConfigAttribute,
    Configuration,
    Delete,
    IdInitiator,
    IdResponder,
    IkeHeader,
    InvalidMajorVersion,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    TsInitiator,
    TsResponder,
    first_of,
    notifies_of,
    notify_of,
    peek_header,
)
from vpn.ike.negotiate import (
    InvalidKeGroup,
    NoProposalChosen,
    accept_esp_response,
    accept_ike_response,
    esp_proposals,
    ike_proposals,
    narrow,
    select_esp,
    select_ike,
    within,
)
from vpn.ike.payloads import Transform
from vpn.ike.policy import Address, AddressLease, Identity, SessionPolicy
from vpn.ike.sa import ChildSa, ChildState, Handler, IkeSa, Request, Task, TaskKind, digest
from vpn.ike.state import LIVE_STATES, IkeInput, IkeState

log = logging.getLogger("vpn.ike")

NONCE_BYTES = 32  # RFC 7296 §2.10: at least half the PRF key size (SHA-512: 32)
IKE_SPI_BYTES = 8
ESP_SPI_BYTES = 4
ESP_SPI_MIN = 256  # RFC 4303 §2.1: SPI values 1..255 are reserved
ZERO_SPI = bytes(IKE_SPI_BYTES)
NATD_HASH_BYTES = 20  # RFC 7296 §2.23: SHA-1 of SPIs, address and port
SIGNATURE_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)
# RFC 7296 §2.25: after TEMPORARY_FAILURE wait before retrying; give up after a few minutes.
TEMPORARY_FAILURE_RETRY_SECONDS = 10.0
TEMPORARY_FAILURE_MAX_RETRIES = 12
# An IKE rekey waits this long for our own Child SA rekeys to finish (RFC 7296 §2.25.1),
# and is tried again this long after a refusal (the hard lifetime ends it otherwise).
IKE_REKEY_WAIT_SECONDS = 1.0
IKE_REKEY_RETRY_SECONDS = 60.0
# RFC 7383 §2.6.2: drop a reassembly that does not complete in this time.
REASSEMBLY_TIMEOUT_SECONDS = 30.0
_SK_EXCHANGES = frozenset({ExchangeType.IKE_AUTH, ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL})
_CLOSE_REASON_OF_NOTIFY: dict[int, CloseReason] = {
    NotifyType.AUTHENTICATION_FAILED: CloseReason.AUTHENTICATION_FAILED,
    NotifyType.NO_PROPOSAL_CHOSEN: CloseReason.NO_PROPOSAL_CHOSEN,
    NotifyType.INVALID_KE_PAYLOAD: CloseReason.INVALID_KE,
}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One IKE message to send: `data` (no non-ESP marker, no framing) to `remote`.

    `remote` is None when the session does not know the peer's address (a stream: send
    on the connection the SA uses).
    """

    data: bytes
    remote: Address | None


@dataclass(frozen=True, slots=True)
class SessionTimes:
    """When things happen next, for a status display (read-only, on the session's clock).

    `child_rekey_at` maps each installed Child SA's inbound SPI to its rekey time;
    `last_heard` is the last authenticated message (or reported ESP) from the peer;
    `outstanding` is the kind of our request in flight on the current IKE SA
    ("liveness check" while a DPD runs, RFC 7296 §2.4).
    """

    ike_rekey_at: float | None
    ike_expire_at: float | None
    child_rekey_at: tuple[tuple[bytes, float | None], ...]
    last_heard: float
    dpd_due: float | None
    outstanding: str | None


class _NotNarrowed(NoProposalChosen):
    """A Child SA answer whose selectors are not a narrowing of ours (RFC 7296 §2.9)."""

    notify = NotifyType.TS_UNACCEPTABLE


class _ChildRefused(Exception):
    """A Child SA request answered with an error notify (the IKE SA stays up)."""

    def __init__(self, notify: NotifyType, data: bytes = b"", detail: str = "") -> None:
        super().__init__(detail or notify.name)
        self.notify = notify
        self.data = data


@dataclass(slots=True)
class _ChildAnswer:
    payloads: list[Payload] = field(default_factory=list)
    child: ChildSa | None = None


def _error_notify(payloads: Sequence[Payload]) -> Notify | None:
    for p in payloads:
        if isinstance(p, Notify) and p.is_error:
            return p
    return None


def invalid_major_version_reply(header: IkeHeader) -> bytes | None:
    """RFC 7296 §2.5: the unauthenticated answer to a request of a higher major version:
    INVALID_MAJOR_VERSION in a version 2 header (None for a response: never answered)."""
    if header.is_response:
        return None
    flags = HeaderFlag.RESPONSE | (HeaderFlag.NONE if header.is_initiator else HeaderFlag.INITIATOR)
    notify = Notify(NotifyType.INVALID_MAJOR_VERSION)
    return Message(header.spi_i, header.spi_r, header.exchange, flags, header.message_id, (notify,)).encode()


def _name(notify: NotifyType | int) -> str:
    return notify.name if isinstance(notify, NotifyType) else str(notify)


class IkeSession:
    """One IKE SA (and its successors after rekeys) with its Child SAs. See the module doc."""

    def __init__(
        self,
        policy: SessionPolicy,
        *,
        initiator: bool,
        rng: RandomBytes,
        stream: bool = False,
        local_addr: Address | None = None,
        remote_addr: Address | None = None,
    ) -> None:
        self.policy = policy
        self._initiator = initiator  # the session's role: original initiator of the first SA
        self._rng = rng
        self._stream = stream
        self._local = local_addr
        self._remote = remote_addr
        self._sa: IkeSa | None = None  # the current IKE SA
        self._sas: dict[bytes, IkeSa] = {}  # by our SPI; old and redundant SAs during rekeys
        self._children: dict[bytes, ChildSa] = {}  # by our inbound SPI
        self._out: list[Outgoing] = []
        self._events: deque[Event] = deque()
        self._closed = False
        # IKE_SA_INIT
        self._dh_key: DhPrivateKey | None = None
        self._cookie = b""
        self._cookie_tries = 0
        self._ke_retried = False
        self._init_sent = b""  # our IKE_SA_INIT message as sent last (AUTH signs it)
        self._init_received = b""  # the peer's, as received
        self._init_error: Notify | None = None
        self._offered_ike: list[Proposal] = []
        # negotiated
        self._peer_id: Identity | None = None
        self._peer_hashes: tuple[HashAlgorithm | int, ...] = ()
        self._peer_certreq: tuple[bytes, ...] = ()
        self._peer_frag = False
        self._peer_mobike = False
        self._mobike = False
        self._nat_local = False
        self._nat_remote = False
        self._lease: AddressLease | None = None
        self._virtual: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
        self._last_heard = 0.0
        self._mobike_redo = False
        self._after_response: list[tuple[str, object]] = []
        self._closing = False
        self._close_reason: tuple[CloseReason, NotifyType | int | None, str] | None = None
        self.dropped = 0  # messages dropped (bad, unauthenticated, out of window)

    # =================================================================== properties

    @property
    def state(self) -> IkeState:
        """The current IKE SA's state (CLOSED once the session ended)."""
        if self._closed:
            return IkeState.CLOSED
        return self._sa.fsm.state if self._sa is not None else IkeState.IDLE

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def sa_initiator(self) -> bool:
        """Whether this side initiated the current IKE SA: after the peer rekeyed it, the
        peer is its initiator (RFC 7296 §2.18), while the session's role stays."""
        return self._sa.initiator if self._sa is not None else self._initiator

    @property
    def established(self) -> bool:
        return not self._closed and self._sa is not None and self._sa.fsm.state in LIVE_STATES

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def spi_i(self) -> bytes:
        return self._sa.spi_i if self._sa else ZERO_SPI

    @property
    def spi_r(self) -> bytes:
        return self._sa.spi_r if self._sa else ZERO_SPI

    def local_spis(self) -> frozenset[bytes]:
        """Our IKE SPIs of every SA this session holds (for a front door's lookup)."""
        return frozenset(self._sas)

    @property
    def peer_id(self) -> Identity | None:
        return self._peer_id

    @property
    def stream(self) -> bool:
        return self._stream

    @property
    def local_addr(self) -> Address | None:
        return self._local

    @property
    def remote_addr(self) -> Address | None:
        return self._remote

    @property
    def nat_local(self) -> bool:
        return self._nat_local

    @property
    def nat_remote(self) -> bool:
        return self._nat_remote

    @property
    def mobike(self) -> bool:
        return self._mobike

    @property
    def fragmentation(self) -> bool:
        return self._sa is not None and self._sa.fragmentation

    @property
    def algorithms(self) -> IkeAlgorithms | None:
        return self._sa.algorithms if self._sa else None

    @property
    def lease(self) -> AddressLease | None:
        """Server: the addresses leased to the peer."""
        return self._lease

    @property
    def virtual_addresses(self) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
        """Client: the addresses the server assigned to us."""
        return self._virtual

    def child_sas(self) -> list[ChildSaInfo]:
        """The installed Child SAs (not those being deleted)."""
        return [
            c.info(self._udp_encap())
            for c in self._children.values()
            if c.state in (ChildState.INSTALLED, ChildState.REKEYING)
        ]

    def times(self) -> SessionTimes:
        """Rekey times, liveness and the request in flight (a read-only snapshot)."""
        sa = None if self._closed else self._sa
        return SessionTimes(
            ike_rekey_at=sa.rekey_at if sa else None,
            ike_expire_at=sa.expire_at if sa else None,
            child_rekey_at=tuple((c.spi_in, c.rekey_at) for c in self._children.values()
                                 if c.state in (ChildState.INSTALLED, ChildState.REKEYING)),
            last_heard=self._last_heard,
            dpd_due=self._dpd_due(),
            outstanding=sa.outstanding.kind if sa and sa.outstanding else None,
        )

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        tag = self._sa.tag() if self._sa else "-"
        return f"<IkeSession {role} {tag} {self.state.value}>"

    # =================================================================== outputs

    def messages_to_send(self) -> list[Outgoing]:
        """Messages produced since the last call, in sending order."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        """The next event (events.py), or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `handle_timer` must be called next, or None."""
        if self._closed:
            return None
        times: list[float] = []
        for sa in self._sas.values():
            if sa.outstanding is not None:
                times.append(sa.outstanding.deadline)
            for t in (sa.rekey_at, sa.expire_at, sa.half_open_deadline):
                if t is not None:
                    times.append(t)
            times += [r.started + REASSEMBLY_TIMEOUT_SECONDS for r in sa.reassembly.values()]
            if sa.outstanding is None:
                times += [t.not_before for t in sa.queue if t.not_before]
        for child in self._children.values():
            for t in (child.rekey_at, child.expire_at):
                if t is not None:
                    times.append(t)
        dpd = self._dpd_due()
        if dpd is not None:
            times.append(dpd)
        return min(times) if times else None

    # =================================================================== inputs

    def initiate(self, now: float) -> None:
        """Start IKE_SA_INIT (initiator only, once)."""
        if not self._initiator or self._sa is not None:
            raise LocalProtocolError("initiate() is for a new initiator session")
        sa = IkeSa(self._new_ike_spi(), ZERO_SPI, initiator=True)
        sa.created = now
        self._adopt(sa)
        sa.fsm.apply(IkeInput.INITIATE)
        sa.ni = self._rng(NONCE_BYTES)
        self._offered_ike = ike_proposals(self.policy.ike_proposals)
        self._dh_key = dh_group(self._first_group()).generate(self._rng)
        self._send_init_request(now)

    def receive_message(
        self,
        data: bytes,
        now: float,
        remote_addr: Address | None = None,
        *,
        local_addr: Address | None = None,
    ) -> None:
        """One received IKE message (no non-ESP marker). Never raises for bad input."""
        if self._closed:
            return
        if local_addr is not None:
            self._local = local_addr
        try:
            header = peek_header(data)
        except InvalidMajorVersion as exc:
            self._answer_invalid_major_version(exc.header, remote_addr)
            return
        except MalformedMessage:
            self._drop("malformed header")
            return
        try:
            self._receive(header, bytes(data), now, remote_addr)
        except RemoteProtocolError as exc:
            self._drop(f"{type(exc).__name__}: {exc}")
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        """Run everything due at `now`: retransmissions, timeouts, rekeys, DPD."""
        if self._closed:
            return
        for sa in list(self._sas.values()):
            if self._closed:
                return
            self._sa_timers(sa, now)
        if self._closed:
            return
        for child in list(self._children.values()):
            self._child_timers(child, now)
        dpd = self._dpd_due()
        if dpd is not None and dpd <= now:
            self._queue(Task(TaskKind.DPD), now)
        self._pump(now)

    def transport_changed(
        self, now: float, *, stream: bool, local: Address | None = None, remote: Address | None = None
    ) -> None:
        """The SA now travels on a new connection or transport (RFC 9329 §6.2, §7.1).

        Any outstanding request is resent at once, the same bytes with the same message
        ID, and its timeout restarts for the new transport. With no request outstanding,
        an established client announces the new path: UPDATE_SA_ADDRESSES with MOBIKE,
        else an empty INFORMATIONAL on a stream (RFC 9329 §6.1). After an
        UPDATE_SA_ADDRESSES that was resent this way completes, a new one follows with
        NAT detection for the new path (RFC 9329 §7.1).
        """
        if self._closed:
            return
        changed_path = (
            stream != self._stream or local not in (None, self._local) or remote not in (None, self._remote)
        )
        # RFC 9329 §6.2: from one connection to the next the initiator "keeps waiting": the
        # response timeout runs on, so a server that lost the SA (and closes each new
        # connection) cannot keep us waiting forever by being reconnected to.
        keep_waiting = stream and self._stream
        self._stream = stream
        if local is not None:
            self._local = local
        if remote is not None:
            self._remote = remote
        resent = False
        for sa in self._sas.values():
            req = sa.outstanding
            if req is None:
                continue
            req.remote = self._remote
            if req.kind == TaskKind.MOBIKE_UPDATE.value and changed_path:
                self._mobike_redo = True
            self._resend(sa, req, now, restart=True, keep_deadline=keep_waiting)
            resent = True
        if not resent and self._initiator and self.state is IkeState.ESTABLISHED:
            if self._mobike:
                self._queue(Task(TaskKind.MOBIKE_UPDATE), now)
            elif stream:
                self._queue(Task(TaskKind.KEEPALIVE), now)
        self._pump(now)

    def peer_activity(self, now: float) -> None:
        """Authenticated traffic from the peer (e.g. ESP): postpones the next DPD."""
        self._last_heard = max(self._last_heard, now)

    # =================================================================== commands

    def create_child(
        self,
        now: float,
        *,
        local_ts: Sequence[TrafficSelector] | None = None,
        remote_ts: Sequence[TrafficSelector] | None = None,
    ) -> None:
        """Create another Child SA with CREATE_CHILD_SA (RFC 7296 §1.3.1)."""
        self._require_live()
        task = Task(
            TaskKind.CREATE_CHILD,
            ts_local=tuple(local_ts) if local_ts else self._default_local_ts(),
            ts_remote=tuple(remote_ts) if remote_ts else self.policy.child.remote_ts,
        )
        self._queue(task, now)
        self._pump(now)

    def rekey_child(self, now: float, spi_in: bytes) -> None:
        """Rekey the Child SA with this inbound SPI (soft lifetime, or the dataplane's
        soft packet/byte limit). Ignored if it is already being rekeyed or deleted."""
        self._require_live()
        child = self._children.get(spi_in)
        if child is None:
            raise LocalProtocolError(f"no Child SA with inbound SPI {spi_in.hex()}")
        self._queue_child_rekey(child, now)
        self._pump(now)

    def delete_child(self, now: float, spi_in: bytes) -> None:
        """Delete one Child SA pair (RFC 7296 §1.4.1)."""
        self._require_live()
        child = self._children.get(spi_in)
        if child is None:
            raise LocalProtocolError(f"no Child SA with inbound SPI {spi_in.hex()}")
        self._delete_children((child,), ChildCloseReason.DELETED_LOCALLY, now)
        self._pump(now)

    def rekey_ike(self, now: float) -> None:
        """Rekey the IKE SA (RFC 7296 §2.18). Ignored while a rekey is under way."""
        self._require_live()
        if self.state is IkeState.ESTABLISHED:
            self._queue_ike_rekey(now)
        self._pump(now)

    def close(self, now: float) -> None:
        """Delete the IKE SA and its Child SAs (RFC 7296 §1.4.1); idempotent.

        Before authentication the session just ends. After, Delete(IKE) is sent once the
        window allows and the session ends with its response (or its timeout).
        """
        if self._closed:
            return
        sa = self._sa
        if sa is None or sa.fsm.state not in LIVE_STATES:
            if sa is not None:
                sa.fsm.apply(IkeInput.CLOSE)
            self._finish(CloseReason.DELETED_LOCALLY)
            return
        if any(t.kind == TaskKind.DELETE_IKE for t in sa.queue):
            return
        if sa.fsm.state is IkeState.DELETING:
            return
        self._closing = True
        self._report_children_gone(ChildCloseReason.IKE_SA_CLOSED)
        sa.queue.appendleft(Task(TaskKind.DELETE_IKE))
        self._pump(now)

    def update_addresses(
        self, now: float, *, local: Address | None = None, remote: Address | None = None
    ) -> None:
        """MOBIKE (RFC 4555 §3.5): this client's addresses changed; tell the server.

        An outstanding request is resent to the new address at once; the
        UPDATE_SA_ADDRESSES exchange (with NAT detection for the new path) follows.
        """
        self._require_live()
        if not self._initiator or not self._mobike:
            raise LocalProtocolError("only the original initiator of a MOBIKE SA updates addresses")
        if local is not None:
            self._local = local
        if remote is not None:
            self._remote = remote
        updating = False
        for sa in self._sas.values():
            req = sa.outstanding
            if req is not None:
                req.remote = self._remote
                if req.kind == TaskKind.MOBIKE_UPDATE.value:
                    updating = self._mobike_redo = True  # redone when it completes
                self._resend(sa, req, now, restart=True)
        queued = self._sa is not None and any(t.kind is TaskKind.MOBIKE_UPDATE for t in self._sa.queue)
        if not updating and not queued:
            self._queue(Task(TaskKind.MOBIKE_UPDATE), now)
        self._pump(now)

    def report_invalid_spi(self, now: float, spi: bytes) -> None:
        """Tell the peer an ESP packet came with an SPI we do not know (RFC 7296 §1.5,
        §3.10.1 INVALID_SPI). Rate-limit the calls: each one is an exchange."""
        self._require_live()
        self._queue(Task(TaskKind.INVALID_SPI, spis=(bytes(spi),)), now)
        self._pump(now)

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL now (RFC 7296 §2.4); no answer: PEER_DEAD."""
        self._require_live()
        self._queue(Task(TaskKind.DPD), now)
        self._pump(now)

    # =================================================================== receive path

    def _receive(self, header: IkeHeader, data: bytes, now: float, remote: Address | None) -> None:
        if header.exchange == ExchangeType.IKE_SA_INIT:
            if header.is_request:
                self._on_init_request(header, data, now, remote)
            else:
                self._on_init_response(header, data, now, remote)
            return
        local_spi = header.spi_r if header.is_initiator else header.spi_i
        sa = self._sas.get(local_spi)
        if sa is None or sa.keys is None:
            self._drop("unknown IKE SPI")
            return
        if header.is_initiator == sa.initiator:
            self._drop("I flag names us as the sender")
            return
        msg = Message.decode(data)
        if msg.encrypted is None:
            self._drop("cleartext message after IKE_SA_INIT")
            return
        if msg.is_request:
            self._on_request(sa, msg, data, now, remote)
        else:
            self._on_response(sa, msg, now, remote)

    def _on_request(self, sa: IkeSa, msg: Message, data: bytes, now: float, remote: Address | None) -> None:
        mid = msg.message_id
        if mid == sa.last_response_id and sa.last_response:
            # RFC 7296 §2.1: a retransmitted request gets the cached response again; for
            # fragments only when fragment 1 arrives (RFC 7383 §2.6.1).
            sealed = msg.encrypted
            first = getattr(sealed, "number", 1) == 1
            if first and (digest(data) == sa.last_request_digest or sa.authenticates(msg)):
                for packet in sa.last_response:
                    self._out.append(Outgoing(packet, remote or self._remote))
            return
        if mid != sa.peer_message_id:
            self._drop(f"request message ID {mid}, expected {sa.peer_message_id}")
            return
        if msg.exchange not in _SK_EXCHANGES:
            self._drop(f"unsupported exchange {msg.exchange}")
            return
        try:
            payloads, _ = sa.open(msg, now, self.policy.max_reassembly_bytes)
        except IntegrityError:
            self._drop("integrity check failed")
            return
        except UnsupportedCriticalPayload as exc:
            self._respond(
                sa,
                msg,
                data,
                [Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([exc.payload_type]))],
                remote,
            )
            return
        except MalformedMessage as exc:
            # RFC 7296 §2.21.3: INVALID_SYNTAX in an authenticated request is fatal.
            self._respond(sa, msg, data, [Notify(NotifyType.INVALID_SYNTAX)], remote)
            self._fatal(sa, CloseReason.PROTOCOL_ERROR, NotifyType.INVALID_SYNTAX, str(exc))
            return
        if payloads is None:
            return
        self._heard(sa, now, remote)
        exchange = msg.exchange
        if exchange == ExchangeType.IKE_AUTH:
            if sa.fsm.state is not IkeState.INIT_ANSWERED:
                self._drop("IKE_AUTH request outside IKE_AUTH")
                return
            self._on_auth_request(sa, msg, data, payloads, now, remote)
            return
        if sa.fsm.state not in LIVE_STATES:
            self._drop(f"{exchange} request before authentication")
            return
        if exchange == ExchangeType.CREATE_CHILD_SA:
            answer = self._on_create_child_request(sa, payloads, now)
        else:
            answer = self._on_informational_request(sa, payloads, now, remote)
        self._respond(sa, msg, data, answer, remote)
        self._run_after_response(now)

    def _on_response(self, sa: IkeSa, msg: Message, now: float, remote: Address | None) -> None:
        req = sa.outstanding
        if req is None or msg.message_id != req.message_id:
            self._drop(f"response {msg.message_id} matches no request")
            return
        try:
            payloads, _ = sa.open(msg, now, self.policy.max_reassembly_bytes)
        except IntegrityError:
            self._drop("integrity check failed")
            return
        except (MalformedMessage, UnsupportedCriticalPayload) as exc:
            sa.outstanding = None
            self._fatal(sa, CloseReason.PROTOCOL_ERROR, NotifyType.INVALID_SYNTAX, f"bad response: {exc}")
            return
        if payloads is None:
            return
        sa.outstanding = None
        self._heard(sa, now, remote)
        if notify_of(payloads, NotifyType.INVALID_SYNTAX) is not None and sa.fsm.state in LIVE_STATES:
            # RFC 7296 §2.21.3: INVALID_SYNTAX in an authenticated answer is fatal.
            self._fatal(
                sa, CloseReason.PROTOCOL_ERROR, NotifyType.INVALID_SYNTAX, f"peer refused our {req.kind}"
            )
            return
        req.handler(sa, payloads, now)

    def _heard(self, sa: IkeSa, now: float, remote: Address | None) -> None:
        """An authenticated, in-window message arrived (RFC 7296 §2.4 liveness, §2.23)."""
        self._last_heard = now
        if remote is None or remote == self._remote or sa is not self._sa:
            return
        if self._remote is None:
            self._remote = remote
            return
        # RFC 7296 §2.23 dynamic update: only if not behind a NAT, and not with MOBIKE
        # (RFC 4555 §3.8), and never from a stream (the daemon knows the connection).
        if self._mobike or self._nat_local or self._stream or not self.established:
            return
        old, self._remote = self._remote, remote
        self._events.append(PeerAddressChanged(old, remote, self._local, self._nat_local, self._nat_remote))

    def _respond(
        self, sa: IkeSa, msg: Message, data: bytes, payloads: list[Payload], remote: Address | None
    ) -> None:
        packets = sa.seal(msg.exchange, msg.message_id, True, payloads, self._rng, self._fragment_size(sa))
        sa.remember_response(data, msg.message_id, packets)
        sa.peer_message_id = msg.message_id + 1
        dest = remote or self._remote
        self._out += [Outgoing(p, dest) for p in packets]

    def _run_after_response(self, now: float) -> None:
        actions, self._after_response = self._after_response, []
        for action, arg in actions:
            if action == "close":
                assert isinstance(arg, tuple)
                self._finish(*arg)
            elif action == "drop-sa":
                assert isinstance(arg, IkeSa)
                self._drop_sa(arg)

    # =================================================================== IKE_SA_INIT

    def _first_group(self) -> DhId:
        for prop in self._offered_ike:
            for t in prop.transforms_of(TransformType.DH):
                return DhId(t.id)
        raise LocalProtocolError("no usable Diffie-Hellman group configured")

    def _offered_groups(self) -> list[DhId]:
        return [DhId(t.id) for p in self._offered_ike for t in p.transforms_of(TransformType.DH)]

    def _natd(self, spi_i: bytes, spi_r: bytes, addr: Address | None) -> bytes | None:
        if addr is None:
            return None
        return nat_detection_hash(spi_i, spi_r, addr[0], addr[1])

    def _natd_notifies(self, spi_i: bytes, spi_r: bytes) -> list[Payload]:
        """NAT_DETECTION_SOURCE_IP / _DESTINATION_IP for our addresses (RFC 7296 §2.23).

        Forcing UDP encapsulation needs no local address (a server on a wildcard socket
        does not know it): the source hash is random and never matches, so the peer
        sees us behind a NAT. Without these notifies a peer assumes no NAT-T support and
        never encapsulates ESP (strongSwan's kernel-libipsec then cannot install it)."""
        dst = self._natd(spi_i, spi_r, self._remote)
        src: bytes | None = self._natd(spi_i, spi_r, self._local)
        if self.policy.force_udp_encapsulation:
            src = self._rng(NATD_HASH_BYTES)
        if src is None or dst is None:
            return []
        return [
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP, src),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, dst),
        ]

    def _check_natd(
        self, payloads: Sequence[Payload], spi_i: bytes, spi_r: bytes, source: Address | None
    ) -> None:
        """Set nat_local / nat_remote from the peer's NAT detection notifies."""
        srcs = notifies_of(payloads, NotifyType.NAT_DETECTION_SOURCE_IP)
        dst = notify_of(payloads, NotifyType.NAT_DETECTION_DESTINATION_IP)
        peer = source or self._remote
        if srcs and peer is not None:
            expected = self._natd(spi_i, spi_r, peer)
            self._nat_remote = not any(n.data == expected for n in srcs)
        if dst is not None and self._local is not None:
            self._nat_local = dst.data != self._natd(spi_i, spi_r, self._local)
        if self.policy.force_udp_encapsulation and srcs:
            self._nat_local = True

    def _send_init_request(self, now: float) -> None:
        sa = self._sa
        assert sa is not None and self._dh_key is not None
        payloads: list[Payload] = []
        if self._cookie:
            payloads.append(Notify(NotifyType.COOKIE, self._cookie))  # RFC 7296 §2.6: first
        payloads += [
            SecurityAssociation(tuple(self._offered_ike)),
            KeyExchange(self._dh_key.group.id, self._dh_key.public_value),
            Nonce(sa.ni),
        ]
        payloads += self._natd_notifies(sa.spi_i, ZERO_SPI)
        if self.policy.fragmentation:
            payloads.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        payloads.append(Notify.signature_hash_algorithms(SIGNATURE_HASHES))
        data = Message(
            sa.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, tuple(payloads)
        ).encode()
        self._init_sent = data
        sa.outstanding = Request(
            0,
            ExchangeType.IKE_SA_INIT,
            [data],
            self._no_handler,
            "IKE_SA_INIT",
            self._remote,
            self._deadline(now, 0),
        )
        self._out.append(Outgoing(data, self._remote))

    @staticmethod
    def _no_handler(sa: IkeSa, payloads: list[Payload], now: float) -> None:
        raise AssertionError("IKE_SA_INIT responses are handled by _on_init_response")

    def _on_init_response(self, header: IkeHeader, data: bytes, now: float, remote: Address | None) -> None:
        sa = self._sa
        if (
            not self._initiator
            or sa is None
            or sa.fsm.state is not IkeState.INIT_SENT
            or header.spi_i != sa.spi_i
            or header.message_id != 0
            or header.is_initiator
        ):
            self._drop("unexpected IKE_SA_INIT response")
            return
        req = sa.outstanding
        assert req is not None
        msg = Message.decode(data)
        payloads = list(msg.payloads)
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            if not 1 <= len(cookie.data) <= 64 or self._cookie_tries >= self.policy.max_cookie_retries:
                self._drop("bad or too many COOKIE requests")
                return
            self._cookie_tries += 1
            self._cookie = cookie.data
            sa.fsm.apply(IkeInput.RECV_INIT_RETRY)
            self._send_init_request(now)
            return
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            try:
                group = invalid_ke.accepted_group()
            except MalformedMessage:
                group = DhId.NONE
            assert self._dh_key is not None
            # RFC 7296 §1.2: retry once, and only with a group we offered.
            if not self._ke_retried and group in self._offered_groups() and group != self._dh_key.group.id:
                self._ke_retried = True
                self._dh_key = dh_group(group).generate(self._rng)
                sa.fsm.apply(IkeInput.RECV_INIT_RETRY)
                self._send_init_request(now)
                return
            self._init_error = invalid_ke
            self._init_failed(sa, req, now)
            return
        error = _error_notify(payloads)
        if error is not None:
            self._init_error = error
            self._init_failed(sa, req, now)
            return
        sa_payload = msg.get(SecurityAssociation)
        ke = msg.get(KeyExchange)
        nonce = msg.get(Nonce)
        if sa_payload is None or ke is None or nonce is None or header.spi_r == ZERO_SPI:
            self._drop("IKE_SA_INIT response lacks SA, KE, Nonce or SPI")
            return
        assert self._dh_key is not None
        try:
            selection = accept_ike_response(self._offered_ike, sa_payload)
            if selection.algorithms.dh != ke.group or ke.group != self._dh_key.group.id:
                raise NoProposalChosen("KE group differs from the chosen one")
            g_ir = self._dh_key.shared_secret(ke.data)
        except (NoProposalChosen, InvalidKePayload) as exc:
            self._drop(f"unusable IKE_SA_INIT response: {exc}")  # perhaps forged: keep waiting
            return
        sa.spi_r = header.spi_r
        sa.nr = nonce.data
        alg = selection.algorithms
        suite = IkeSuite.from_ids(alg.encr, alg.key_bits, alg.prf, alg.integ)
        sa.set_keys(IkeSaKeys.derive(suite, g_ir, sa.ni, sa.nr, sa.spi_i, sa.spi_r), alg)
        self._dh_key = None
        self._init_received = data
        if remote is not None:
            self._remote = remote
        self._check_natd(payloads, sa.spi_i, sa.spi_r, remote)
        self._move_to_natt_port()
        self._peer_frag = msg.has_notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)
        sa.fragmentation = self._peer_frag and self.policy.fragmentation
        self._read_hashes(msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS))
        self._peer_certreq = self._certreq_hashes(payloads)
        sa.outstanding = None
        sa.next_message_id = 1
        sa.fsm.apply(IkeInput.RECV_INIT_RESPONSE)
        self._last_heard = now
        self._send_auth_request(sa, now)

    def _move_to_natt_port(self) -> None:
        """RFC 7296 §2.23: with a NAT detected (or faked: ESP always in UDP), the
        initiator sends IKE_AUTH and all later messages of the SA to port 4500, with
        the non-ESP marker; port 500 never carries UDP-encapsulated ESP (RFC 3948)."""
        remote = self._remote
        if not self._stream and remote is not None and remote[1] == IKE_UDP_PORT and self._udp_encap():
            self._remote = (remote[0], IKE_NATT_PORT)

    def _init_failed(self, sa: IkeSa, req: Request, now: float) -> None:
        """An unauthenticated error in IKE_SA_INIT (RFC 7296 §2.21.1): over UDP wait one
        more interval for a genuine answer (it may be forged); over TCP give up now
        (RFC 9329 §6.4)."""
        if self._stream:
            self._give_up_init(sa)
            return
        if not req.error_seen:
            req.error_seen = True
            req.deadline = min(req.deadline, now + self.policy.retransmit.timeout)

    def _give_up_init(self, sa: IkeSa) -> None:
        error = self._init_error
        if error is None:
            self._fatal(sa, CloseReason.TIMEOUT, None, "no IKE_SA_INIT response")
            return
        reason = _CLOSE_REASON_OF_NOTIFY.get(int(error.type), CloseReason.PROTOCOL_ERROR)
        self._fatal(sa, reason, error.type, f"IKE_SA_INIT refused: {_name(error.type)}")

    def _on_init_request(self, header: IkeHeader, data: bytes, now: float, remote: Address | None) -> None:
        sa = self._sa
        if (
            self._initiator
            or header.is_initiator is False
            or header.spi_r != ZERO_SPI
            or header.message_id != 0
        ):
            self._drop("unexpected IKE_SA_INIT request")
            return
        if sa is not None:
            # A retransmission gets the cached response (RFC 7296 §2.1); anything else
            # with this SPI is dropped.
            if (
                header.spi_i == sa.spi_i
                and sa.last_response_id == 0
                and digest(data) == sa.last_request_digest
            ):
                for packet in sa.last_response:
                    self._out.append(Outgoing(packet, remote or self._remote))
            else:
                self._drop("second IKE_SA_INIT for this session")
            return
        if remote is not None:
            self._remote = remote
        try:
            msg = Message.decode(data)
        except UnsupportedCriticalPayload as exc:
            self._answer_init_error(
                header, Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([exc.payload_type])), remote
            )
            self._finish(CloseReason.PROTOCOL_ERROR, NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, str(exc))
            return
        except MalformedMessage as exc:
            self._drop(f"malformed IKE_SA_INIT: {exc}")
            self._finish(CloseReason.PROTOCOL_ERROR, None, str(exc))
            return
        sa_payload = msg.get(SecurityAssociation)
        ke = msg.get(KeyExchange)
        nonce = msg.get(Nonce)
        if sa_payload is None or ke is None or nonce is None or header.spi_i == ZERO_SPI:
            self._answer_init_error(header, Notify(NotifyType.INVALID_SYNTAX), remote)
            self._finish(
                CloseReason.PROTOCOL_ERROR, NotifyType.INVALID_SYNTAX, "IKE_SA_INIT lacks SA, KE or Nonce"
            )
            return
        try:
            selection = select_ike(sa_payload, self.policy.ike_proposals, ke.group)
        except InvalidKeGroup as exc:
            # RFC 7296 §1.2: stateless, the initiator retries with the group we name.
            self._answer_init_error(header, Notify.invalid_ke_payload(exc.group), remote)
            self._finish(CloseReason.INVALID_KE, NotifyType.INVALID_KE_PAYLOAD, str(exc))
            return
        except NoProposalChosen as exc:
            self._answer_init_error(header, Notify(NotifyType.NO_PROPOSAL_CHOSEN), remote)
            self._finish(CloseReason.NO_PROPOSAL_CHOSEN, NotifyType.NO_PROPOSAL_CHOSEN, str(exc))
            return
        alg = selection.algorithms
        key = dh_group(alg.dh).generate(self._rng)
        try:
            g_ir = key.shared_secret(ke.data)
        except InvalidKePayload as exc:
            self._answer_init_error(header, Notify(NotifyType.INVALID_SYNTAX), remote)
            self._finish(CloseReason.PROTOCOL_ERROR, NotifyType.INVALID_SYNTAX, str(exc))
            return
        sa = IkeSa(header.spi_i, self._new_ike_spi(), initiator=False)
        sa.created = now
        self._adopt(sa)
        sa.fsm.apply(IkeInput.RECV_INIT_REQUEST)
        sa.ni = nonce.data
        sa.nr = self._rng(NONCE_BYTES)
        suite = IkeSuite.from_ids(alg.encr, alg.key_bits, alg.prf, alg.integ)
        sa.set_keys(IkeSaKeys.derive(suite, g_ir, sa.ni, sa.nr, sa.spi_i, sa.spi_r), alg)
        self._check_natd(msg.payloads, sa.spi_i, ZERO_SPI, remote)
        self._peer_frag = msg.has_notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)
        sa.fragmentation = self._peer_frag and self.policy.fragmentation
        self._read_hashes(msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS))
        self._peer_certreq = self._certreq_hashes(msg.payloads)
        answer: list[Payload] = [
            SecurityAssociation((selection.proposal,)),
            KeyExchange(alg.dh, key.public_value),
            Nonce(sa.nr),
        ]
        certreq = self.policy.authenticator.certificate_request()
        if certreq:
            answer.append(CertificateRequest(CertEncoding.X509_CERT_SIGNATURE, certreq))
        answer += self._natd_notifies(sa.spi_i, sa.spi_r)
        if sa.fragmentation:
            answer.append(Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        answer.append(Notify.signature_hash_algorithms(SIGNATURE_HASHES))
        response = Message(
            sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, tuple(answer)
        ).encode()
        self._init_received = data
        self._init_sent = response
        sa.remember_response(data, 0, [response])
        sa.peer_message_id = 1
        sa.half_open_deadline = now + self.policy.half_open_timeout
        self._last_heard = now
        self._out.append(Outgoing(response, remote or self._remote))

    def _answer_init_error(self, header: IkeHeader, notify: Notify, remote: Address | None) -> None:
        """An unauthenticated IKE_SA_INIT error response (RFC 7296 §2.21.1); responder SPI
        zero because no SA is created (§2.6)."""
        msg = Message(header.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, (notify,))
        self._out.append(Outgoing(msg.encode(), remote or self._remote))

    def _answer_invalid_major_version(self, header: IkeHeader, remote: Address | None) -> None:
        """RFC 7296 §2.5: answer a request from a higher major version, unauthenticated,
        with INVALID_MAJOR_VERSION in a version 2 header."""
        reply = invalid_major_version_reply(header)
        if reply is not None:
            self._out.append(Outgoing(reply, remote or self._remote))
        self.dropped += 1

    def _read_hashes(self, notify: Notify | None) -> None:
        if notify is None:
            return
        try:
            self._peer_hashes = notify.hash_algorithms()
        except MalformedMessage:
            self._peer_hashes = ()

    @staticmethod
    def _peer_certificates(payloads: Sequence[Payload]) -> list[bytes]:
        """DER X.509 certificates from CERT payloads (RFC 7296 §3.6, encoding 4), in order."""
        return [
            c.data
            for c in payloads
            if isinstance(c, Certificate) and c.encoding == CertEncoding.X509_CERT_SIGNATURE
        ]

    @staticmethod
    def _certreq_hashes(payloads: Sequence[Payload]) -> tuple[bytes, ...]:
        out: list[bytes] = []
        for req in (p for p in payloads if isinstance(p, CertificateRequest)):
            try:
                out += req.authorities()
            except MalformedMessage:
                continue
        return tuple(out)

    # =================================================================== IKE_AUTH

    def _auth_context(self, sa: IkeSa, now: float) -> AuthContext:
        assert sa.keys is not None
        return AuthContext(
            prf=sa.keys.suite.prf,
            local_id=self.policy.local_id,
            peer_id=self._peer_id or self.policy.remote_id,
            peer_hashes=self._peer_hashes,
            certreq=self._peer_certreq,
            now=now,
        )

    def _octets(self, sa: IkeSa, *, ours: bool, id_body: bytes) -> bytes:
        """The signed octets (RFC 7296 §2.15): our (or the peer's) IKE_SA_INIT message,
        the other side's nonce, prf(SK_p of the signer, RestOfIDPayload)."""
        assert sa.keys is not None
        prf = sa.keys.suite.prf
        signer_is_initiator = sa.initiator if ours else not sa.initiator
        message = self._init_sent if ours else self._init_received
        nonce = sa.nr if signer_is_initiator else sa.ni
        sk_p = sa.keys.sk_pi if signer_is_initiator else sa.keys.sk_pr
        return message + nonce + prf(sk_p, id_body)

    def _send_auth_request(self, sa: IkeSa, now: float) -> None:
        policy = self.policy
        ctx = self._auth_context(sa, now)
        idi = policy.local_id.as_idi()
        method, auth = policy.authenticator.build_auth(
            self._octets(sa, ours=True, id_body=idi.encode_body()), ctx
        )
        payloads: list[Payload] = [idi]
        payloads += [
            Certificate(CertEncoding.X509_CERT_SIGNATURE, c)
            for c in policy.authenticator.local_certificates(ctx)
        ]
        if policy.initial_contact:
            payloads.append(Notify(NotifyType.INITIAL_CONTACT))
        certreq = policy.authenticator.certificate_request()
        if certreq:
            payloads.append(CertificateRequest(CertEncoding.X509_CERT_SIGNATURE, certreq))
        if policy.remote_id is not None:
            payloads.append(policy.remote_id.as_idr())
        payloads.append(Authentication(method, auth))
        if policy.virtual_ip is not None:
            payloads.append(self._cfg_request())
        payloads.append(Notify(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED))
        if policy.fragmentation:
            payloads.append(Notify(NotifyType.NON_FIRST_FRAGMENTS_ALSO))
        spi_in = self._new_child_spi()
        offered = esp_proposals(policy.child.proposals, spi_in, with_dh=False)
        ts_local = policy.child.local_ts
        ts_remote = policy.child.remote_ts
        payloads += [SecurityAssociation(tuple(offered)), TsInitiator(ts_local), TsResponder(ts_remote)]
        if policy.child.transport_mode:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        if policy.mobike:
            payloads.append(Notify(NotifyType.MOBIKE_SUPPORTED))

        def handler(sa: IkeSa, answer: list[Payload], now: float) -> None:
            self._on_auth_response(sa, answer, now, spi_in, offered, ts_local, ts_remote)

        self._send_request(sa, ExchangeType.IKE_AUTH, payloads, handler, "IKE_AUTH", now)

    def _cfg_request(self) -> Configuration:
        want = self.policy.virtual_ip
        assert want is not None
        attrs = []
        if want.ipv4:
            attrs.append(ConfigAttribute(CfgAttr.INTERNAL_IP4_ADDRESS))
            if want.dns:
                attrs.append(ConfigAttribute(CfgAttr.INTERNAL_IP4_DNS))
        if want.ipv6:
            attrs.append(ConfigAttribute(CfgAttr.INTERNAL_IP6_ADDRESS))
            if want.dns:
                attrs.append(ConfigAttribute(CfgAttr.INTERNAL_IP6_DNS))
        return Configuration(CfgType.CFG_REQUEST, tuple(attrs))

    def _on_auth_response(
        self,
        sa: IkeSa,
        payloads: list[Payload],
        now: float,
        spi_in: bytes,
        offered: list[Proposal],
        ts_local: tuple[TrafficSelector, ...],
        ts_remote: tuple[TrafficSelector, ...],
    ) -> None:
        idr = first_of(payloads, IdResponder)
        auth = first_of(payloads, Authentication)
        if idr is None or auth is None:
            error = _error_notify(payloads)
            notify = error.type if error is not None else NotifyType.AUTHENTICATION_FAILED
            reason = (
                CloseReason.AUTHENTICATION_FAILED
                if notify == NotifyType.AUTHENTICATION_FAILED
                else CloseReason.PROTOCOL_ERROR
            )
            sa.fsm.apply(IkeInput.AUTH_FAILED)
            self._finish(reason, notify, f"IKE_AUTH refused: {_name(notify)}")
            return
        peer_id = Identity(idr.id_type, idr.data)
        try:
            if self.policy.remote_id is not None and peer_id != self.policy.remote_id:
                raise AuthenticationFailed(f"peer identity {peer_id} is not {self.policy.remote_id}")
            self._peer_id = peer_id
            certs = self._peer_certificates(payloads)
            octets = self._octets(sa, ours=False, id_body=idr.encode_body())
            self.policy.authenticator.verify(
                auth.method, auth.data, octets, peer_id, certs, self._auth_context(sa, now)
            )
        except AuthenticationFailed as exc:
            # RFC 7296 §2.21.2: tell the responder, then delete the IKE SA.
            log.warning("%s: responder authentication failed: %s", sa.tag(), exc)
            packets = sa.seal(
                ExchangeType.INFORMATIONAL,
                sa.next_message_id,
                False,
                [Notify(NotifyType.AUTHENTICATION_FAILED)],
                self._rng,
                self._fragment_size(sa),
            )
            self._out += [Outgoing(p, self._remote) for p in packets]
            sa.fsm.apply(IkeInput.AUTH_FAILED)
            self._finish(CloseReason.AUTHENTICATION_FAILED, NotifyType.AUTHENTICATION_FAILED, str(exc))
            return
        self._peer_mobike = notify_of(payloads, NotifyType.MOBIKE_SUPPORTED) is not None
        self._mobike = self._peer_mobike and self.policy.mobike
        sa.fsm.apply(IkeInput.RECV_AUTH_RESPONSE)
        self._established(sa, now)
        # the first Child SA (RFC 7296 §1.2): its failure leaves the IKE SA up
        error = _error_notify(payloads)
        sa_payload = first_of(payloads, SecurityAssociation)
        tsi = first_of(payloads, TsInitiator)
        tsr = first_of(payloads, TsResponder)
        if error is not None or sa_payload is None or tsi is None or tsr is None:
            child_error = error.type if error is not None else None
            self._first_child_failed(sa, child_error, "the responder created no Child SA", now)
            return
        cp = first_of(payloads, Configuration)
        if self.policy.virtual_ip is not None:
            assigned = self._read_cfg_reply(cp)
            if self.policy.virtual_ip.required and not assigned:
                self._initiator_child_unusable(sa, spi_in, None, "no virtual address assigned", now)
                return
        try:
            child = self._accept_child(
                sa, payloads, offered, spi_in, sa.ni, sa.nr, None, ts_local, ts_remote, now
            )
        except (NoProposalChosen, InvalidKePayload) as exc:
            self._initiator_child_unusable(sa, spi_in, exc.notify, str(exc), now)
            return
        self._events.append(ChildSaEstablished(child.info(self._udp_encap())))

    def _accept_child(
        self,
        sa: IkeSa,
        payloads: list[Payload],
        offered: list[Proposal],
        spi_in: bytes,
        ni: bytes,
        nr: bytes,
        key: DhPrivateKey | None,
        ts_local: tuple[TrafficSelector, ...],
        ts_remote: tuple[TrafficSelector, ...],
        now: float,
    ) -> ChildSa:
        """Install the Child SA of a response we initiated (IKE_AUTH, CREATE_CHILD_SA).

        Raises NoProposalChosen or InvalidKePayload when it is unusable: not a proposal
        we offered, PFS not as asked, or selectors that are not a narrowing of ours.
        """
        sa_payload = first_of(payloads, SecurityAssociation)
        tsi = first_of(payloads, TsInitiator)
        tsr = first_of(payloads, TsResponder)
        if sa_payload is None or tsi is None or tsr is None:
            raise NoProposalChosen("the Child SA response lacks SA, TSi or TSr")
        selection = accept_esp_response(offered, sa_payload)
        g_ir = None
        if selection.algorithms.dh != DhId.NONE:
            ke = first_of(payloads, KeyExchange)
            if key is None or ke is None or ke.group != selection.algorithms.dh or key.group.id != ke.group:
                raise NoProposalChosen("PFS group and KE payload disagree")
            g_ir = key.shared_secret(ke.data)
        if not self._ts_acceptable(tsi.selectors, ts_local) or not within(tsr.selectors, ts_remote):
            raise _NotNarrowed("traffic selectors not a narrowing of ours")
        transport = (
            self.policy.child.transport_mode
            and notify_of(payloads, NotifyType.USE_TRANSPORT_MODE) is not None
        )
        return self._install_child(
            sa,
            selection.algorithms,
            spi_in,
            selection.spi,
            ni,
            nr,
            g_ir,
            True,
            tsi.selectors,
            tsr.selectors,
            transport,
            now,
        )

    def _ts_acceptable(self, got: Sequence[TrafficSelector], offered: Sequence[TrafficSelector]) -> bool:
        """TSi in a response: a narrowing of ours, or our virtual addresses (§2.19)."""
        ours = {iface.ip for iface in self._virtual}
        return bool(got) and all(
            within((ts,), offered) or (ts.start == ts.end and ts.start in ours) for ts in got
        )

    def _read_cfg_reply(self, cp: Configuration | None) -> bool:
        if cp is None or cp.cfg_type != CfgType.CFG_REPLY:
            return False
        addresses = []
        dns = []
        subnets = []
        for attr in cp.attributes:
            if attr.type in (CfgAttr.INTERNAL_IP4_ADDRESS, CfgAttr.INTERNAL_IP6_ADDRESS):
                iface = attr.ip_interface()
                if iface is not None:
                    addresses.append(iface)
            elif attr.type in (CfgAttr.INTERNAL_IP4_DNS, CfgAttr.INTERNAL_IP6_DNS):
                addr = attr.ip_address()
                if addr is not None:
                    dns.append(addr)
            elif attr.type in (CfgAttr.INTERNAL_IP4_SUBNET, CfgAttr.INTERNAL_IP6_SUBNET):
                net = attr.ip_network()
                if net is not None:
                    subnets.append(net)
        if not addresses:
            return False
        self._virtual = tuple(addresses)
        self._events.append(
            VirtualAddressAssigned(tuple(addresses), tuple(dns), tuple(subnets), False, self._peer_id)
        )
        return True

    def _initiator_child_unusable(
        self, sa: IkeSa, spi_in: bytes, notify: NotifyType | None, detail: str, now: float
    ) -> None:
        """The responder created a Child SA we cannot use: delete it (RFC 7296 §2.9)."""
        if not self.policy.close_ike_on_child_failure:
            # the peer installed it; we did not: ask it to remove its side (§1.4.1)
            self._queue(Task(TaskKind.DELETE_CHILD, spis=(spi_in,)), now)
        self._first_child_failed(sa, notify, detail, now)

    def _first_child_failed(
        self, sa: IkeSa, notify: NotifyType | int | None, detail: str, now: float
    ) -> None:
        self._events.append(ChildSaFailed(notify, detail, in_ike_auth=True))
        if self.policy.close_ike_on_child_failure and self._initiator:
            self._close_reason = (CloseReason.CHILD_SA_FAILED, notify, detail)
            self.close(now)

    def _on_auth_request(
        self,
        sa: IkeSa,
        msg: Message,
        data: bytes,
        payloads: list[Payload],
        now: float,
        remote: Address | None,
    ) -> None:
        policy = self.policy
        idi = first_of(payloads, IdInitiator)
        auth = first_of(payloads, Authentication)
        try:
            if idi is None:
                raise AuthenticationFailed("IKE_AUTH without IDi")
            if auth is None:
                raise AuthenticationFailed("no AUTH payload (EAP is not supported)")
            peer_id = Identity(idi.id_type, idi.data)
            if policy.remote_id is not None and peer_id != policy.remote_id:
                raise AuthenticationFailed(f"identity {peer_id} is not {policy.remote_id}")
            self._peer_id = peer_id
            certs = self._peer_certificates(payloads)
            self._peer_certreq = self._peer_certreq + self._certreq_hashes(payloads)
            octets = self._octets(sa, ours=False, id_body=idi.encode_body())
            ctx = self._auth_context(sa, now)
            policy.authenticator.verify(auth.method, auth.data, octets, peer_id, certs, ctx)
            idr = policy.local_id.as_idr()
            method, our_auth = policy.authenticator.build_auth(
                self._octets(sa, ours=True, id_body=idr.encode_body()), ctx
            )
            our_certs = policy.authenticator.local_certificates(ctx)
        except (AuthenticationFailed, LocalProtocolError) as exc:
            log.info("%s: IKE_AUTH from %s failed: %s", sa.tag(), remote, exc)
            self._respond(sa, msg, data, [Notify(NotifyType.AUTHENTICATION_FAILED)], remote)
            sa.fsm.apply(IkeInput.AUTH_FAILED)
            self._finish(CloseReason.AUTHENTICATION_FAILED, NotifyType.AUTHENTICATION_FAILED, str(exc))
            return
        answer: list[Payload] = [idr]
        answer += [Certificate(CertEncoding.X509_CERT_SIGNATURE, c) for c in our_certs]
        answer.append(Authentication(method, our_auth))
        self._peer_mobike = notify_of(payloads, NotifyType.MOBIKE_SUPPORTED) is not None
        self._mobike = self._peer_mobike and policy.mobike
        sa.half_open_deadline = None
        sa.fsm.apply(IkeInput.RECV_AUTH_REQUEST)
        self._established(sa, now)
        if notify_of(payloads, NotifyType.INITIAL_CONTACT) is not None:
            self._events.append(InitialContactReceived(peer_id, sa.spi_i, sa.spi_r))
        child_part = self._respond_first_child(sa, payloads, now)
        answer += child_part.payloads
        if self._mobike:
            answer.append(Notify(NotifyType.MOBIKE_SUPPORTED))
        self._respond(sa, msg, data, answer, remote)
        if child_part.child is not None:
            self._events.append(ChildSaEstablished(child_part.child.info(self._udp_encap())))

    def _respond_first_child(self, sa: IkeSa, payloads: list[Payload], now: float) -> _ChildAnswer:
        """CP and the first Child SA of IKE_AUTH; failures become a notify (§1.2)."""
        policy = self.policy
        if first_of(payloads, SecurityAssociation) is None:
            return _ChildAnswer()  # childless IKE_AUTH
        out = _ChildAnswer()
        try:
            cp = first_of(payloads, Configuration)
            if cp is not None and cp.cfg_type == CfgType.CFG_REQUEST and policy.allocator is not None:
                out.payloads.append(self._lease_addresses(cp))
            elif policy.require_virtual_ip and self._lease is None:
                raise _ChildRefused(NotifyType.FAILED_CP_REQUIRED, detail="no CFG_REQUEST")
            answer = self._respond_child(
                sa, payloads, now, in_ike_auth=True, ni=sa.ni, nr=sa.nr, rekey_of=None
            )
        except _ChildRefused as exc:
            self._events.append(ChildSaFailed(exc.notify, str(exc), in_ike_auth=True))
            return _ChildAnswer([Notify(exc.notify, exc.data)])
        out.payloads += answer.payloads
        out.child = answer.child
        return out

    def _lease_addresses(self, cp: Configuration) -> Configuration:
        """CFG_REPLY for a CFG_REQUEST, from the injected allocator (RFC 7296 §2.19)."""
        allocator = self.policy.allocator
        assert allocator is not None and self._peer_id is not None
        want4 = bool(cp.values_of(CfgAttr.INTERNAL_IP4_ADDRESS))
        want6 = bool(cp.values_of(CfgAttr.INTERNAL_IP6_ADDRESS))
        requested = []
        for attr in (
            *cp.values_of(CfgAttr.INTERNAL_IP4_ADDRESS),
            *cp.values_of(CfgAttr.INTERNAL_IP6_ADDRESS),
        ):
            addr = attr.ip_address() if attr.value else None
            if addr is not None and not addr.is_unspecified:
                requested.append(addr)
        if not want4 and not want6:
            raise _ChildRefused(NotifyType.FAILED_CP_REQUIRED, detail="CFG_REQUEST asks for no address")
        lease = allocator.allocate(self._peer_id, ipv4=want4, ipv6=want6, requested=requested)
        if lease is None or not lease.addresses:
            # RFC 7296 §3.15.4: the IKE SA stays, the Child SA fails
            raise _ChildRefused(NotifyType.INTERNAL_ADDRESS_FAILURE, detail="address pool exhausted")
        self._lease = lease
        attrs = [ConfigAttribute.address(a) for a in lease.addresses]
        attrs += [ConfigAttribute.dns(d) for d in lease.dns]
        attrs += [ConfigAttribute.subnet(s) for s in lease.subnets]
        self._events.append(
            VirtualAddressAssigned(lease.addresses, lease.dns, lease.subnets, True, self._peer_id)
        )
        return Configuration(CfgType.CFG_REPLY, tuple(attrs))

    def _established(self, sa: IkeSa, now: float) -> None:
        self._last_heard = now
        self._set_ike_lifetimes(sa, now)
        assert sa.algorithms is not None and self._peer_id is not None
        self._events.append(
            IkeSaEstablished(
                sa.spi_i,
                sa.spi_r,
                self._initiator,
                self.policy.local_id,
                self._peer_id,
                sa.algorithms,
                self._mobike,
                sa.fragmentation,
                self._nat_local,
                self._nat_remote,
                self._local,
                self._remote,
            )
        )
        log.info("%s: IKE SA established with %s (%s)", sa.tag(), self._peer_id, sa.algorithms)

    # =================================================================== Child SAs

    def _respond_child(
        self,
        sa: IkeSa,
        payloads: list[Payload],
        now: float,
        *,
        in_ike_auth: bool,
        ni: bytes,
        nr: bytes,
        rekey_of: ChildSa | None,
    ) -> _ChildAnswer:
        """Answer the Child SA part of IKE_AUTH or CREATE_CHILD_SA; raises _ChildRefused."""
        policy = self.policy.child
        sa_payload = first_of(payloads, SecurityAssociation)
        tsi = first_of(payloads, TsInitiator)
        tsr = first_of(payloads, TsResponder)
        if sa_payload is None or tsi is None or tsr is None:
            raise _ChildRefused(NotifyType.INVALID_SYNTAX, detail="Child SA request lacks SA, TSi or TSr")
        ke = None if in_ike_auth else first_of(payloads, KeyExchange)
        spi_in = self._new_child_spi()
        try:
            selection = select_esp(
                sa_payload,
                policy.proposals,
                ke.group if ke is not None else None,
                spi=spi_in,
                in_ike_auth=in_ike_auth,
                require_pfs=policy.require_pfs,
            )
        except InvalidKeGroup as exc:
            raise _ChildRefused(
                NotifyType.INVALID_KE_PAYLOAD, exc.group.to_bytes(2, "big"), str(exc)
            ) from None
        except NoProposalChosen as exc:
            raise _ChildRefused(NotifyType.NO_PROPOSAL_CHOSEN, detail=str(exc)) from None
        if self._lease is not None:
            ts_i = self._leased_selectors(tsi.selectors)
        else:
            ts_i = narrow(tsi.selectors, policy.remote_ts)
        ts_r = narrow(tsr.selectors, policy.local_ts)
        if not ts_i or not ts_r:
            raise _ChildRefused(NotifyType.TS_UNACCEPTABLE, detail="no traffic selector in common")
        g_ir = None
        ke_answer: list[Payload] = []
        if selection.algorithms.dh != DhId.NONE:
            assert ke is not None
            key = dh_group(selection.algorithms.dh).generate(self._rng)
            try:
                g_ir = key.shared_secret(ke.data)
            except InvalidKePayload as exc:
                raise _ChildRefused(NotifyType.INVALID_SYNTAX, detail=str(exc)) from None
            ke_answer = [KeyExchange(selection.algorithms.dh, key.public_value)]
        transport = policy.transport_mode and notify_of(payloads, NotifyType.USE_TRANSPORT_MODE) is not None
        child = self._install_child(
            sa, selection.algorithms, spi_in, selection.spi, ni, nr, g_ir, False, ts_r, ts_i, transport, now
        )
        answer: list[Payload] = [SecurityAssociation((selection.proposal,))]
        if not in_ike_auth:
            answer.append(Nonce(nr))
        answer += ke_answer
        answer += [TsInitiator(ts_i), TsResponder(ts_r)]
        if transport:
            answer.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        return _ChildAnswer(answer, child)

    def _leased_selectors(self, requested: Sequence[TrafficSelector]) -> tuple[TrafficSelector, ...]:
        """TSi for a client with leased addresses: the addresses themselves, per family
        the client asked for, keeping its protocol and ports (RFC 7296 §2.19). Clients
        differ in what they put in TSi next to a CFG_REQUEST (strongSwan 0.0.0.0/0,
        Libreswan its outer address), so the lease replaces it rather than narrowing it.
        """
        assert self._lease is not None
        out: list[TrafficSelector] = []
        for ts in requested:
            for iface in self._lease.addresses:
                if iface.version == ts.start.version:
                    host = TrafficSelector(iface.ip, iface.ip, ts.protocol, ts.start_port, ts.end_port)
                    if host not in out:
                        out.append(host)
        return tuple(out)

    def _install_child(
        self,
        sa: IkeSa,
        algorithms: EspAlgorithms,
        spi_in: bytes,
        spi_out: bytes,
        ni: bytes,
        nr: bytes,
        g_ir: bytes | None,
        we_initiated: bool,
        ts_local: tuple[TrafficSelector, ...],
        ts_remote: tuple[TrafficSelector, ...],
        transport: bool,
        now: float,
    ) -> ChildSa:
        assert sa.keys is not None
        suite = EspSuite.from_ids(algorithms.encr, algorithms.key_bits, algorithms.integ)
        keys = sa.keys.child_sa_keys(suite, ni, nr, g_ir)
        # RFC 7296 §2.17: i2r protects what the exchange initiator sends.
        keys_out, keys_in = (keys.i2r, keys.r2i) if we_initiated else (keys.r2i, keys.i2r)
        child = ChildSa(
            spi_in=spi_in,
            spi_out=spi_out,
            algorithms=algorithms,
            keys_in=keys_in,
            keys_out=keys_out,
            ts_local=ts_local,
            ts_remote=ts_remote,
            transport_mode=transport,
            created=now,
        )
        lt = self.policy.lifetimes
        if lt.child_rekey_seconds > 0:
            child.rekey_at = now + self._jittered(lt.child_rekey_seconds)
        if lt.child_lifetime_seconds > 0:
            child.expire_at = now + lt.child_lifetime_seconds
        self._children[spi_in] = child
        return child

    def _find_child_by_out(self, spi_out: bytes) -> ChildSa | None:
        for child in self._children.values():
            if child.spi_out == spi_out:
                return child
        return None

    def _default_local_ts(self) -> tuple[TrafficSelector, ...]:
        if self._virtual:
            return tuple(TrafficSelector.from_address(a.ip) for a in self._virtual)
        return self.policy.child.local_ts

    def _queue_child_rekey(self, child: ChildSa, now: float) -> None:
        if child.state is not ChildState.INSTALLED:
            return
        if any(t.child is child for sa in self._sas.values() for t in sa.queue):
            return
        self._queue(Task(TaskKind.REKEY_CHILD, child=child), now)

    def _build_child_request(self, sa: IkeSa, task: Task, now: float) -> tuple[list[Payload], Handler] | None:
        """CREATE_CHILD_SA for a new Child SA or a Child SA rekey (RFC 7296 §1.3.1, §1.3.3)."""
        policy = self.policy.child
        rekey = task.child
        if rekey is not None:
            if rekey.state is not ChildState.INSTALLED or rekey.spi_in not in self._children:
                return None
            ts_local, ts_remote = rekey.ts_local, rekey.ts_remote
        else:
            ts_local, ts_remote = task.ts_local, task.ts_remote
        spi_in = self._new_child_spi()
        ni = self._rng(NONCE_BYTES)
        pfs_groups = [g for p in policy.proposals for g in p.dh]
        group = task.dh if task.dh is not None else (pfs_groups[0] if pfs_groups else None)
        offered = esp_proposals(policy.proposals, spi_in, with_dh=group is not None, dh=group)
        key = dh_group(group).generate(self._rng) if group is not None else None
        payloads: list[Payload] = []
        if rekey is not None:
            payloads.append(Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP, spi=rekey.spi_in))
            rekey.state = ChildState.REKEYING
        if policy.transport_mode:
            payloads.append(Notify(NotifyType.USE_TRANSPORT_MODE))
        payloads += [SecurityAssociation(tuple(offered)), Nonce(ni)]
        if key is not None:
            payloads.append(KeyExchange(key.group.id, key.public_value))
        payloads += [TsInitiator(ts_local), TsResponder(ts_remote)]

        def handler(sa: IkeSa, answer: list[Payload], now: float) -> None:
            self._on_child_response(sa, answer, now, task, spi_in, ni, key, offered, ts_local, ts_remote)

        return payloads, handler

    def _on_child_response(
        self,
        sa: IkeSa,
        payloads: list[Payload],
        now: float,
        task: Task,
        spi_in: bytes,
        ni: bytes,
        key: DhPrivateKey | None,
        offered: list[Proposal],
        ts_local: tuple[TrafficSelector, ...],
        ts_remote: tuple[TrafficSelector, ...],
    ) -> None:
        old = task.child
        if old is not None and old.state is ChildState.REKEYING:
            old.state = ChildState.INSTALLED
        gone = old is not None and old.spi_in not in self._children
        if gone:
            old = None  # deleted while our rekey was under way (a collision, §2.8.1)
        error = _error_notify(payloads)
        if error is not None:
            if not gone:  # §2.8.1: an error about an SA already replaced is ignored
                self._child_request_failed(sa, task, error, now)
            return
        sa_payload = first_of(payloads, SecurityAssociation)
        nonce = first_of(payloads, Nonce)
        try:
            if nonce is None:
                raise NoProposalChosen("CREATE_CHILD_SA response lacks a Nonce")
            child = self._accept_child(
                sa, payloads, offered, spi_in, ni, nonce.data, key, ts_local, ts_remote, now
            )
        except (NoProposalChosen, InvalidKePayload) as exc:
            # The responder installed an SA we will not use: delete it (RFC 7296 §2.9).
            log.warning("%s: unusable CREATE_CHILD_SA response: %s", sa.tag(), exc)
            self._events.append(ChildSaFailed(exc.notify, str(exc), rekey_of=old.spi_in if old else None))
            if sa_payload is not None:
                self._queue(Task(TaskKind.DELETE_CHILD, spis=(spi_in,)), now)
            return
        if old is None:
            self._events.append(ChildSaEstablished(child.info(self._udp_encap())))
            return
        self._events.append(ChildSaRekeyed(old.spi_in, old.spi_out, child.info(self._udp_encap())))
        if old.collision is not None:
            # RFC 7296 §2.8.1: the SA created with the lowest of the four nonces is
            # redundant and closed by its creator; the creator of the survivor deletes
            # the replaced SA.
            theirs, their_ni, their_nr = old.collision
            old.collision = None
            if min(ni, nonce.data) < min(their_ni, their_nr):
                old.state, old.doomed = ChildState.REKEYED, ChildCloseReason.REKEYED  # the peer deletes it
                self._delete_children((child,), ChildCloseReason.REDUNDANT, now)
                return
            theirs.state, theirs.doomed = (
                ChildState.REKEYED,
                ChildCloseReason.REDUNDANT,
            )  # the peer deletes it
        self._delete_children((old,), ChildCloseReason.REKEYED, now)

    def _child_request_failed(self, sa: IkeSa, task: Task, error: Notify, now: float) -> None:
        old = task.child
        notify = error.type
        if old is not None and old.spi_in not in self._children:
            return  # already gone (the peer deleted it meanwhile)
        if notify == NotifyType.INVALID_KE_PAYLOAD and task.dh is None:
            try:
                group = error.accepted_group()
            except MalformedMessage:
                group = DhId.NONE
            pfs = [g for p in self.policy.child.proposals for g in p.dh]
            if group in pfs:  # RFC 7296 §1.3: retry once with the group asked for
                retry = Task(
                    task.kind, child=old, ts_local=task.ts_local, ts_remote=task.ts_remote, dh=DhId(group)
                )
                self._queue(retry, now, front=True)
                return
        if old is not None and (old.collision is not None or old.state is not ChildState.INSTALLED):
            # RFC 7296 §2.8.1: our rekey lost a collision; the peer's replacement stands.
            old.collision = None
            return
        if notify == NotifyType.TEMPORARY_FAILURE and task.retries < TEMPORARY_FAILURE_MAX_RETRIES:
            # RFC 7296 §2.25: wait, then try again.
            retry = Task(
                task.kind,
                child=old,
                ts_local=task.ts_local,
                ts_remote=task.ts_remote,
                retries=task.retries + 1,
            )
            retry.not_before = now + TEMPORARY_FAILURE_RETRY_SECONDS * (1 + self._unit())
            self._queue(retry, now)
            return
        if notify == NotifyType.CHILD_SA_NOT_FOUND and old is not None:
            # RFC 7296 §2.25: delete it silently and create a new one from scratch.
            self._forget_child(old, ChildCloseReason.DELETED_BY_PEER)
            self._queue(Task(TaskKind.CREATE_CHILD, ts_local=old.ts_local, ts_remote=old.ts_remote), now)
            return
        self._events.append(
            ChildSaFailed(
                notify, f"CREATE_CHILD_SA refused: {_name(notify)}", rekey_of=old.spi_in if old else None
            )
        )

    def _on_create_child_request(self, sa: IkeSa, payloads: list[Payload], now: float) -> list[Payload]:
        sa_payload = first_of(payloads, SecurityAssociation)
        nonce = first_of(payloads, Nonce)
        if sa_payload is None or nonce is None:
            return [Notify(NotifyType.INVALID_SYNTAX)]
        if any(p.protocol == ProtocolId.IKE for p in sa_payload.proposals):
            return self._on_ike_rekey_request(sa, payloads, sa_payload, nonce, now)
        state = sa.fsm.state
        sa.fsm.apply(IkeInput.RECV_CHILD_REQUEST)
        if state is not IkeState.ESTABLISHED or sa is not self._sa:
            return [Notify(NotifyType.TEMPORARY_FAILURE)]  # §2.25.2: rekeying or closing
        rekey = notify_of(payloads, NotifyType.REKEY_SA)
        old = None
        if rekey is not None:
            old = self._find_child_by_out(rekey.spi)
            if old is None:
                return [Notify(NotifyType.CHILD_SA_NOT_FOUND, protocol=rekey.protocol, spi=rekey.spi)]
            if old.state in (ChildState.REKEYED, ChildState.DELETING):
                return [Notify(NotifyType.TEMPORARY_FAILURE)]  # §2.25.1
        nr = self._rng(NONCE_BYTES)
        try:
            answer = self._respond_child(
                sa, payloads, now, in_ike_auth=False, ni=nonce.data, nr=nr, rekey_of=old
            )
        except _ChildRefused as exc:
            self._events.append(ChildSaFailed(exc.notify, str(exc), rekey_of=old.spi_in if old else None))
            return [Notify(exc.notify, exc.data)]
        child = answer.child
        assert child is not None
        if old is None:
            self._events.append(ChildSaEstablished(child.info(self._udp_encap())))
        else:
            self._events.append(ChildSaRekeyed(old.spi_in, old.spi_out, child.info(self._udp_encap())))
            if old.state is ChildState.REKEYING:
                old.collision = (child, nonce.data, nr)  # §2.8.1, resolved on our response
            else:
                old.state, old.doomed = ChildState.REKEYED, ChildCloseReason.REKEYED  # the peer deletes it
        return answer.payloads

    # =================================================================== IKE SA rekey

    def _queue_ike_rekey(self, now: float) -> None:
        sa = self._sa
        if sa is None or any(t.kind == TaskKind.REKEY_IKE for t in sa.queue):
            return
        self._queue(Task(TaskKind.REKEY_IKE), now)

    def _build_ike_rekey(self, sa: IkeSa, task: Task, now: float) -> tuple[list[Payload], Handler] | None:
        if sa.fsm.state is not IkeState.ESTABLISHED or sa is not self._sa or sa.redundant:
            return None
        if any(c.state is ChildState.REKEYING for c in self._children.values()):
            task.not_before = now + IKE_REKEY_WAIT_SECONDS  # §2.25.1: let the Child exchanges end
            return None
        assert sa.algorithms is not None
        spi = self._new_ike_spi()
        ni = self._rng(NONCE_BYTES)
        group = task.dh if task.dh is not None else sa.algorithms.dh
        offered = ike_proposals(self.policy.ike_proposals, spi)
        offered = [Proposal(p.num, p.protocol, spi, self._group_first(p, group)) for p in offered]
        key = dh_group(group).generate(self._rng)
        payloads: list[Payload] = [
            SecurityAssociation(tuple(offered)),
            Nonce(ni),
            KeyExchange(group, key.public_value),
        ]
        sa.fsm.apply(IkeInput.START_IKE_REKEY)

        def handler(sa: IkeSa, answer: list[Payload], now: float) -> None:
            self._on_ike_rekey_response(sa, answer, now, task, spi, ni, key, offered)

        return payloads, handler

    @staticmethod
    def _group_first(p: Proposal, group: DhId) -> tuple[Transform, ...]:
        dh = [t for t in p.transforms if t.type == TransformType.DH]
        first = [t for t in dh if t.id == group]
        rest = [t for t in p.transforms if t.type != TransformType.DH]
        return (*rest, *first, *(t for t in dh if t.id != group))

    def _on_ike_rekey_response(
        self,
        sa: IkeSa,
        payloads: list[Payload],
        now: float,
        task: Task,
        spi: bytes,
        ni: bytes,
        key: DhPrivateKey,
        offered: list[Proposal],
    ) -> None:
        if sa.fsm.state is not IkeState.REKEYING:
            return  # overtaken (deleted, or the peer's rekey won and we moved on)
        error = _error_notify(payloads)
        if error is not None and sa.collision is not None:
            # §2.8.2: our rekey failed but the peer's colliding one stands.
            theirs = sa.collision[0]
            sa.collision = None
            sa.fsm.apply(IkeInput.IKE_REKEY_DONE)
            self._switch_to(sa, theirs, now)
            return
        if error is not None:
            sa.fsm.apply(IkeInput.IKE_REKEY_FAILED)
            if error.type == NotifyType.INVALID_KE_PAYLOAD and task.dh is None:
                try:
                    group = DhId(error.accepted_group())
                except (MalformedMessage, ValueError):
                    group = DhId.NONE
                if group in [DhId(t.id) for p in offered for t in p.transforms_of(TransformType.DH)]:
                    self._queue(Task(TaskKind.REKEY_IKE, dh=group), now, front=True)
                    return
            if error.type == NotifyType.TEMPORARY_FAILURE and task.retries < TEMPORARY_FAILURE_MAX_RETRIES:
                retry = Task(TaskKind.REKEY_IKE, retries=task.retries + 1)
                retry.not_before = now + TEMPORARY_FAILURE_RETRY_SECONDS * (1 + self._unit())
                self._queue(retry, now)
                return
            log.warning("%s: IKE rekey refused: %s", sa.tag(), _name(error.type))
            sa.rekey_at = now + IKE_REKEY_RETRY_SECONDS
            return
        sa_payload = first_of(payloads, SecurityAssociation)
        nonce = first_of(payloads, Nonce)
        ke = first_of(payloads, KeyExchange)
        try:
            if sa_payload is None or nonce is None or ke is None:
                raise NoProposalChosen("IKE rekey response lacks SA, Nonce or KE")
            selection = accept_ike_response(offered, sa_payload, rekey=True)
            if selection.algorithms.dh != ke.group or ke.group != key.group.id:
                raise NoProposalChosen("KE group differs from the chosen one")
            g_ir = key.shared_secret(ke.data)
        except (NoProposalChosen, InvalidKePayload) as exc:
            sa.fsm.apply(IkeInput.FATAL_ERROR)
            self._finish(CloseReason.PROTOCOL_ERROR, None, f"bad IKE rekey response: {exc}")
            return
        new = self._make_rekeyed_sa(
            sa, selection.algorithms, g_ir, ni, nonce.data, spi, selection.spi, True, now
        )
        if sa.collision is not None:
            theirs, their_ni, their_nr = sa.collision
            sa.collision = None
            # RFC 7296 §2.8.2: the new SA with the lowest nonce is deleted by its creator.
            if min(ni, nonce.data) < min(their_ni, their_nr):
                new.redundant = True
                new.queue.append(Task(TaskKind.DELETE_IKE))
                sa.fsm.apply(IkeInput.IKE_REKEY_DONE)  # the peer deletes the old SA
                self._switch_to(sa, theirs, now)
                return
            theirs.redundant = True  # the peer deletes it; forget it if that never comes
            theirs.half_open_deadline = now + self.policy.retransmit.total()
        sa.fsm.apply(IkeInput.IKE_REKEY_DONE)
        self._switch_to(sa, new, now)
        sa.queue.append(Task(TaskKind.DELETE_IKE))  # §2.8: the last request on the old SA

    def _make_rekeyed_sa(
        self,
        old: IkeSa,
        algorithms: IkeAlgorithms,
        g_ir: bytes,
        ni: bytes,
        nr: bytes,
        spi_i: bytes,
        spi_r: bytes,
        we_initiated: bool,
        now: float,
    ) -> IkeSa:
        """The IKE SA that replaces `old` (RFC 7296 §2.18); SPIi and Ni are the rekey
        initiator's, and that side sets the I flag from now on (§3.1)."""
        assert old.keys is not None
        suite = IkeSuite.from_ids(algorithms.encr, algorithms.key_bits, algorithms.prf, algorithms.integ)
        new = IkeSa(spi_i, spi_r, initiator=we_initiated)
        new.set_keys(old.keys.rekeyed(suite, g_ir, ni, nr, spi_i, spi_r), algorithms)
        new.ni, new.nr = ni, nr
        new.fragmentation = old.fragmentation
        new.created = now
        new.fsm.state = IkeState.ESTABLISHED
        self._set_ike_lifetimes(new, now)
        self._sas[new.local_spi] = new
        return new

    def _switch_to(self, old: IkeSa, new: IkeSa, now: float) -> None:
        """Make `new` the current IKE SA; Child SAs and waiting requests move to it."""
        if self._sa is new:
            return
        self._sa = new
        old.rekey_at = old.expire_at = None
        # the old SA waits for its Delete; forget it if that never completes
        old.half_open_deadline = now + self.policy.retransmit.total()
        if self._closing:
            new.queue.appendleft(Task(TaskKind.DELETE_IKE))
        keep = deque(t for t in old.queue if t.kind == TaskKind.DELETE_IKE)
        moved = [t for t in old.queue if not (t.kind == TaskKind.DELETE_IKE)]
        old.queue = keep
        new.queue.extend(moved)
        assert new.algorithms is not None
        self._events.append(IkeSaRekeyed(old.spi_i, old.spi_r, new.spi_i, new.spi_r, new.algorithms))
        log.info("%s: IKE SA rekeyed to %s", old.tag(), new.tag())

    def _on_ike_rekey_request(
        self, sa: IkeSa, payloads: list[Payload], sa_payload: SecurityAssociation, nonce: Nonce, now: float
    ) -> list[Payload]:
        state = sa.fsm.state
        if state is not IkeState.ESTABLISHED:
            sa.fsm.apply(IkeInput.RECV_IKE_REKEY_REQUEST)  # stays: collision or TEMPORARY_FAILURE
        if state in (IkeState.REKEYED, IkeState.DELETING) or sa is not self._sa or sa.redundant:
            return [Notify(NotifyType.TEMPORARY_FAILURE)]  # §2.8.2, §2.25.2
        req = sa.outstanding
        if req is not None and req.kind in (
            TaskKind.CREATE_CHILD.value,
            TaskKind.REKEY_CHILD.value,
            TaskKind.DELETE_CHILD.value,
        ):
            return [Notify(NotifyType.TEMPORARY_FAILURE)]  # §2.25.1
        ke = first_of(payloads, KeyExchange)
        spi = self._new_ike_spi()
        try:
            selection = select_ike(
                sa_payload, self.policy.ike_proposals, ke.group if ke else None, spi=spi, rekey=True
            )
            if ke is None:
                raise NoProposalChosen("IKE rekey without KE")
        except InvalidKeGroup as exc:
            return [Notify.invalid_ke_payload(exc.group)]
        except NoProposalChosen:
            return [Notify(NotifyType.NO_PROPOSAL_CHOSEN)]
        alg = selection.algorithms
        key = dh_group(alg.dh).generate(self._rng)
        try:
            g_ir = key.shared_secret(ke.data)
        except InvalidKePayload:
            return [Notify(NotifyType.INVALID_SYNTAX)]
        nr = self._rng(NONCE_BYTES)
        new = self._make_rekeyed_sa(sa, alg, g_ir, nonce.data, nr, selection.spi, spi, False, now)
        if state is IkeState.REKEYING:
            sa.collision = (new, nonce.data, nr)  # resolved when our own response arrives
        else:
            sa.fsm.apply(IkeInput.RECV_IKE_REKEY_REQUEST)  # -> REKEYED; the peer deletes us
            self._switch_to(sa, new, now)
        return [SecurityAssociation((selection.proposal,)), Nonce(nr), KeyExchange(alg.dh, key.public_value)]

    # =================================================================== INFORMATIONAL

    def _on_informational_request(
        self, sa: IkeSa, payloads: list[Payload], now: float, remote: Address | None
    ) -> list[Payload]:
        sa.fsm.apply(IkeInput.RECV_INFORMATIONAL)
        answer: list[Payload] = []
        deletes = [p for p in payloads if isinstance(p, Delete)]
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._on_delete_ike(sa)
            return []
        for d in deletes:
            if d.protocol != ProtocolId.ESP:
                continue
            ours = []
            for spi in d.spis:
                child = self._find_child_by_out(spi)
                if child is None:
                    continue  # unknown: answer without it (§2.25.1)
                if child.state is ChildState.DELETING:
                    self._forget_child(child, ChildCloseReason.DELETED_LOCALLY)  # crossing deletes
                    continue
                ours.append(child.spi_in)
                self._forget_child(child, child.doomed or ChildCloseReason.DELETED_BY_PEER)
            if ours:
                answer.append(Delete(ProtocolId.ESP, tuple(ours)))
        for invalid in notifies_of(payloads, NotifyType.INVALID_SPI):
            # The peer has no SA for an SPI we send on: that SA is useless (§3.10.1).
            child = self._find_child_by_out(invalid.data) if len(invalid.data) == ESP_SPI_BYTES else None
            if child is not None and child.state is not ChildState.DELETING:
                self._delete_children((child,), ChildCloseReason.DELETED_BY_PEER, now)
        if any(isinstance(p, Notify) and p.type == NotifyType.AUTHENTICATION_FAILED for p in payloads):
            self._after_response.append(
                (
                    "close",
                    (
                        CloseReason.AUTHENTICATION_FAILED,
                        NotifyType.AUTHENTICATION_FAILED,
                        "peer refused our AUTH",
                    ),
                )
            )
        update = notify_of(payloads, NotifyType.UPDATE_SA_ADDRESSES)
        if update is not None or notify_of(payloads, NotifyType.NAT_DETECTION_SOURCE_IP) is not None:
            answer += self._on_mobike_request(sa, payloads, remote, update is not None)
        cookie2 = notify_of(payloads, NotifyType.COOKIE2)
        if cookie2 is not None and 8 <= len(cookie2.data) <= 64:
            answer.append(Notify(NotifyType.COOKIE2, cookie2.data))  # RFC 4555 §3.7: echo
        return answer

    def _on_delete_ike(self, sa: IkeSa) -> None:
        """Delete(IKE) from the peer (RFC 7296 §1.4.1): answer empty, then drop the SA."""
        if sa is self._sa and sa.collision is not None:
            # §2.8.2: the peer did not notice our colliding rekey; its new SA survives.
            theirs = sa.collision[0]
            sa.collision = None
            self._switch_to(sa, theirs, self._last_heard)
        if sa is not self._sa:
            self._after_response.append(("drop-sa", sa))
            return
        sa.fsm.apply(IkeInput.RECV_DELETE_IKE)
        self._after_response.append(("close", (CloseReason.DELETED_BY_PEER, None, "")))

    def _on_mobike_request(
        self, sa: IkeSa, payloads: list[Payload], remote: Address | None, update: bool
    ) -> list[Payload]:
        """NAT detection in INFORMATIONAL and UPDATE_SA_ADDRESSES (RFC 4555 §3.5, §3.8)."""
        if not self._mobike:
            return []
        if update and self._initiator:
            return []  # only the original initiator may move the SA (RFC 4555 §3.4)
        self._check_natd(payloads, sa.spi_i, sa.spi_r, remote)
        answer = self._natd_notifies_for(sa, remote)
        if update and remote is not None:
            # RFC 4555 §3.5: after an authenticated update the SA moves to its source
            # (the same address on another transport counts: the daemon knows which).
            old, self._remote = self._remote, remote
            self._events.append(
                PeerAddressChanged(old, remote, self._local, self._nat_local, self._nat_remote)
            )
        return answer

    def _natd_notifies_for(self, sa: IkeSa, remote: Address | None) -> list[Payload]:
        saved = self._remote
        if remote is not None:
            self._remote = remote
        try:
            return self._natd_notifies(sa.spi_i, sa.spi_r)
        finally:
            self._remote = saved

    def _build_informational(self, sa: IkeSa, task: Task, now: float) -> tuple[list[Payload], Handler] | None:
        kind = task.kind
        if kind is TaskKind.DELETE_IKE:
            if sa.fsm.state not in LIVE_STATES or sa.fsm.state is IkeState.DELETING:
                return None
            sa.fsm.apply(IkeInput.CLOSE)
            return [Delete(ProtocolId.IKE)], self._on_delete_ike_response
        if kind is TaskKind.DELETE_CHILD:
            # not those a crossing Delete from the peer removed meanwhile (§1.4.1)
            children = [c for c in task.children if c.spi_in in self._children]
            spis = tuple(c.spi_in for c in children) + task.spis
            if not spis:
                return None

            def on_deleted(sa: IkeSa, answer: list[Payload], now: float) -> None:
                for c in children:
                    self._children.pop(c.spi_in, None)

            return [Delete(ProtocolId.ESP, spis)], on_deleted
        if kind is TaskKind.INVALID_SPI:
            return [Notify(NotifyType.INVALID_SPI, task.spis[0])], self._on_empty_response
        if kind is TaskKind.MOBIKE_UPDATE:
            if not self._mobike:
                return None
            self._mobike_redo = False
            payloads: list[Payload] = [Notify(NotifyType.UPDATE_SA_ADDRESSES)]
            payloads += self._natd_notifies(sa.spi_i, sa.spi_r)
            path = (self._local, self._remote, self._stream)

            def on_updated(sa: IkeSa, answer: list[Payload], now: float) -> None:
                self._check_natd(answer, sa.spi_i, sa.spi_r, self._remote)
                if self._mobike_redo or path != (self._local, self._remote, self._stream):
                    # RFC 9329 §7.1: the NAT detection was for another path; do it again.
                    self._queue(Task(TaskKind.MOBIKE_UPDATE), now, front=True)
                    return
                self._events.append(
                    AddressesUpdated(
                        self._local, self._remote, self._nat_local, self._nat_remote, self._stream
                    )
                )

            return payloads, on_updated
        # DPD and keepalives: an empty INFORMATIONAL (RFC 7296 §2.4)
        return [], self._on_empty_response

    def _on_empty_response(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        pass

    def _on_delete_ike_response(self, sa: IkeSa, payloads: list[Payload], now: float) -> None:
        if sa is self._sa:
            sa.fsm.apply(IkeInput.DELETE_DONE)
            reason = self._close_reason or (CloseReason.DELETED_LOCALLY, None, "")
            self._finish(*reason)
        else:
            self._drop_sa(sa)

    def _delete_children(self, children: Sequence[ChildSa], reason: ChildCloseReason, now: float) -> None:
        todo = []
        for child in children:
            if child.state is ChildState.DELETING:
                continue
            child.state = ChildState.DELETING
            self._report_child_gone(child, reason)
            todo.append(child)
        if todo:
            self._queue(Task(TaskKind.DELETE_CHILD, children=tuple(todo), reason=reason), now)

    def _forget_child(self, child: ChildSa, reason: ChildCloseReason) -> None:
        self._children.pop(child.spi_in, None)
        self._report_child_gone(child, reason)

    def _report_child_gone(self, child: ChildSa, reason: ChildCloseReason) -> None:
        if not child.reported:
            child.reported = True
            self._events.append(ChildSaDeleted(child.spi_in, child.spi_out, reason))

    def _report_children_gone(self, reason: ChildCloseReason) -> None:
        for child in self._children.values():
            self._report_child_gone(child, reason)

    # =================================================================== sending

    def _fragment_size(self, sa: IkeSa) -> int | None:
        # RFC 7383 §2.3 (both announced it) and RFC 9329 §7.5 (never over a stream).
        return self.policy.fragment_size if sa.fragmentation and not self._stream else None

    def _deadline(self, now: float, attempt: int) -> float:
        rt = self.policy.retransmit
        return now + (rt.stream_timeout() if self._stream else rt.interval(attempt))

    def _send_request(
        self,
        sa: IkeSa,
        exchange: ExchangeType,
        payloads: list[Payload],
        handler: Handler,
        kind: str,
        now: float,
    ) -> None:
        mid = sa.next_message_id
        sa.next_message_id += 1
        packets = sa.seal(exchange, mid, False, payloads, self._rng, self._fragment_size(sa))
        sa.outstanding = Request(mid, exchange, packets, handler, kind, self._remote, self._deadline(now, 0))
        self._out += [Outgoing(p, self._remote) for p in packets]

    def _resend(self, sa: IkeSa, req: Request, now: float, *, restart: bool, keep_deadline: bool = False) -> None:
        if keep_deadline:
            pass
        elif restart:
            req.deadline = self._deadline(now, 0)
        else:
            req.attempts += 1
            req.deadline = self._deadline(now, req.attempts)
        self._out += [Outgoing(p, req.remote) for p in req.packets]
        self._events.append(
            RequestRetransmitted(
                req.exchange, req.message_id, req.attempts if not restart else req.attempts + 1
            )
        )

    def _queue(self, task: Task, now: float, *, front: bool = False) -> None:
        sa = self._sa
        if sa is None or self._closed:
            return
        if front:
            sa.queue.appendleft(task)
        else:
            sa.queue.append(task)

    def _pump(self, now: float) -> None:
        """Start waiting requests wherever the window is free (RFC 7296 §2.3)."""
        if self._closed:
            return
        for sa in list(self._sas.values()):
            while sa.outstanding is None and sa.queue and not self._closed:
                task = self._next_ready(sa, now)
                if task is None:
                    break
                self._start(sa, task, now)

    @staticmethod
    def _next_ready(sa: IkeSa, now: float) -> Task | None:
        for task in list(sa.queue):
            assert isinstance(task, Task)
            if task.not_before <= now:
                sa.queue.remove(task)
                return task
        return None

    def _start(self, sa: IkeSa, task: Task, now: float) -> None:
        state = sa.fsm.state
        if state not in LIVE_STATES:
            return
        if state is not IkeState.ESTABLISHED and task.kind is not TaskKind.DELETE_IKE:
            if state is IkeState.REKEYING:
                sa.queue.appendleft(task)  # wait for the rekey to finish (§2.25.2)
                return
            if task.kind is not TaskKind.DELETE_CHILD:
                return
        if sa.redundant and task.kind is not TaskKind.DELETE_IKE:
            return
        if task.kind in (TaskKind.CREATE_CHILD, TaskKind.REKEY_CHILD):
            built = self._build_child_request(sa, task, now)
            exchange = ExchangeType.CREATE_CHILD_SA
        elif task.kind is TaskKind.REKEY_IKE:
            built = self._build_ike_rekey(sa, task, now)
            if built is None and task.not_before > now:
                sa.queue.append(task)
                return
            exchange = ExchangeType.CREATE_CHILD_SA
        else:
            built = self._build_informational(sa, task, now)
            exchange = ExchangeType.INFORMATIONAL
        if built is None:
            return
        payloads, handler = built
        self._send_request(sa, exchange, payloads, handler, task.kind.value, now)

    # =================================================================== timers

    def _sa_timers(self, sa: IkeSa, now: float) -> None:
        req = sa.outstanding
        if req is not None and req.deadline <= now:
            if req.exchange == ExchangeType.IKE_SA_INIT and req.error_seen:
                self._give_up_init(sa)
                return
            if self._stream or req.attempts >= self.policy.retransmit.tries:
                self._request_timed_out(sa, req, now)
                if self._closed:
                    return
            else:
                self._resend(sa, req, now, restart=False)
        for key, pending in list(sa.reassembly.items()):
            if pending.started + REASSEMBLY_TIMEOUT_SECONDS <= now:
                del sa.reassembly[key]
        if sa.half_open_deadline is not None and sa.half_open_deadline <= now:
            self._fatal(sa, CloseReason.HALF_OPEN_TIMEOUT, None, "no IKE_AUTH in time")
            return
        if sa.expire_at is not None and sa.expire_at <= now and sa is self._sa:
            log.info("%s: IKE SA lifetime expired", sa.tag())
            sa.expire_at = None
            self._close_reason = (CloseReason.EXPIRED, None, "hard lifetime")
            self.close(now)
            return
        if sa.rekey_at is not None and sa.rekey_at <= now and sa is self._sa:
            sa.rekey_at = None
            if sa.fsm.state is IkeState.ESTABLISHED:
                self._queue_ike_rekey(now)

    def _child_timers(self, child: ChildSa, now: float) -> None:
        if child.expire_at is not None and child.expire_at <= now:
            child.expire_at = child.rekey_at = None
            if child.spi_in in self._children and child.state is not ChildState.DELETING and self.established:
                self._delete_children((child,), ChildCloseReason.EXPIRED, now)
            return
        if child.rekey_at is not None and child.rekey_at <= now:
            child.rekey_at = None
            if self.established:
                self._queue_child_rekey(child, now)

    def _request_timed_out(self, sa: IkeSa, req: Request, now: float) -> None:
        sa.outstanding = None
        if sa is not self._sa or sa.redundant:
            self._drop_sa(sa)  # an old or redundant SA: nothing more to do with it
            return
        if req.kind == TaskKind.DELETE_IKE.value:
            why = self._close_reason or (CloseReason.DELETED_LOCALLY, None, "")
            self._fatal(sa, why[0], why[1], why[2] or "Delete unanswered")
            return
        reason = CloseReason.PEER_DEAD if req.kind == TaskKind.DPD.value else CloseReason.TIMEOUT
        log.info("%s: %s request unanswered, closing", sa.tag(), req.kind)
        self._fatal(sa, reason, None, f"{req.kind} unanswered")

    def _dpd_due(self) -> float | None:
        interval = self.policy.dpd.interval
        sa = self._sa
        if interval <= 0 or sa is None or sa.fsm.state is not IkeState.ESTABLISHED or self._closed:
            return None
        if sa.outstanding is not None or sa.queue:
            return None
        return self._last_heard + interval

    def _set_ike_lifetimes(self, sa: IkeSa, now: float) -> None:
        lt = self.policy.lifetimes
        sa.rekey_at = now + self._jittered(lt.ike_rekey_seconds) if lt.ike_rekey_seconds > 0 else None
        sa.expire_at = now + lt.ike_lifetime_seconds if lt.ike_lifetime_seconds > 0 else None

    def _unit(self) -> float:
        return int.from_bytes(self._rng(4), "big") / 2**32

    def _jittered(self, seconds: float) -> float:
        """RFC 7296 §2.8.1: rekey a random amount earlier than the soft lifetime."""
        return seconds - seconds * self.policy.lifetimes.jitter_fraction * self._unit()

    # =================================================================== closing

    def _require_live(self) -> None:
        if not self.established:
            raise LocalProtocolError(f"the IKE SA is not established ({self.state.value})")

    def _fatal(self, sa: IkeSa, reason: CloseReason, notify: NotifyType | int | None, detail: str) -> None:
        if sa is not self._sa:
            self._drop_sa(sa)
            return
        if sa.fsm.allows(IkeInput.FATAL_ERROR):
            sa.fsm.apply(IkeInput.FATAL_ERROR)
        self._finish(reason, notify, detail)

    def _finish(self, reason: CloseReason, notify: NotifyType | int | None = None, detail: str = "") -> None:
        """End the session: every Child SA reported deleted, then IkeSaClosed."""
        if self._closed:
            return
        self._report_children_gone(ChildCloseReason.IKE_SA_CLOSED)
        self._children.clear()
        if self._lease is not None and self.policy.allocator is not None and self._peer_id is not None:
            self.policy.allocator.release(self._peer_id, self._lease)
        self._closed = True
        for sa in self._sas.values():
            sa.fsm.state = IkeState.CLOSED
            sa.outstanding = None
            sa.queue.clear()
            sa.reassembly.clear()
        spi_i, spi_r = self.spi_i, self.spi_r
        self._events.append(IkeSaClosed(spi_i, spi_r, reason, notify, detail))
        log.info("%s_i %s_r: IKE SA closed: %s %s", spi_i.hex(), spi_r.hex(), reason.value, detail)

    def _drop_sa(self, sa: IkeSa) -> None:
        """Forget an old or redundant IKE SA after a rekey (not the session)."""
        sa.fsm.state = IkeState.CLOSED
        sa.outstanding = None
        sa.queue.clear()
        self._sas.pop(sa.local_spi, None)

    # =================================================================== helpers

    def _adopt(self, sa: IkeSa) -> None:
        self._sa = sa
        self._sas[sa.local_spi] = sa

    def _new_ike_spi(self) -> bytes:
        while True:
            spi = self._rng(IKE_SPI_BYTES)
            if spi != ZERO_SPI and spi not in self._sas:  # RFC 7296 §3.1: never zero
                return spi

    def _new_child_spi(self) -> bytes:
        while True:
            spi = self._rng(ESP_SPI_BYTES)
            if int.from_bytes(spi, "big") >= ESP_SPI_MIN and spi not in self._children:
                return spi

    def _udp_encap(self) -> bool:
        return self._nat_local or self._nat_remote or self.policy.force_udp_encapsulation

    def _drop(self, why: str) -> None:
        self.dropped += 1
        log.debug("%s: dropped: %s", self._sa.tag() if self._sa else "-", why)


__all__ = ["IkeSession", "Outgoing", "SessionTimes", "invalid_major_version_reply"]
