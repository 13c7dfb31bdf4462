"""Per-SA bookkeeping for session.py: one IKE SA (keys, message IDs, the outstanding
request, the cached response, fragment reassembly) and one Child SA.

Internal to the session; nothing here makes decisions about the protocol flow. The
SK/SKF seam of message.py is used as documented there: `seal` builds the bytes of one
message (or its fragments), `open` authenticates and decrypts a received one.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from vpn.ike.constants import DhId, ExchangeType, HeaderFlag, PayloadType
from vpn.ike.crypto import EspKeys, IkeSaKeys, RandomBytes, SkCipher
from vpn.ike.errors import IntegrityError, MalformedMessage
from vpn.ike.events import ChildCloseReason, ChildSaInfo, EspAlgorithms, IkeAlgorithms
from vpn.ike.fragments import MAX_FRAGMENTS, Reassembly, seal_fragments
from vpn.ike.message import Encrypted, EncryptedFragment, Message, Payload, decode_payloads, encode_payloads
from vpn.ike.payloads import TrafficSelector
from vpn.ike.policy import Address
from vpn.ike.state import IkeSaState

GCM_COUNTER_LIMIT = 1 << 64  # RFC 5282 §3.1: an 8-byte IV never repeats under one key


class ChildState(Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our rekey request for it is outstanding
    REKEYED = "rekeyed"  # replaced; waiting for the Delete exchange
    DELETING = "deleting"  # our Delete for it is outstanding or sent


@dataclass(eq=False, slots=True)
class ChildSa:
    """One Child SA pair. `spi_in` is ours (the peer sends to it), `spi_out` the peer's."""

    spi_in: bytes
    spi_out: bytes
    algorithms: EspAlgorithms
    keys_in: EspKeys = field(repr=False)
    keys_out: EspKeys = field(repr=False)
    ts_local: tuple[TrafficSelector, ...]
    ts_remote: tuple[TrafficSelector, ...]
    transport_mode: bool
    created: float
    rekey_at: float | None = None
    expire_at: float | None = None
    state: ChildState = ChildState.INSTALLED
    # RFC 7296 §2.8.1: the SA the peer created by rekeying this one while our own rekey
    # was outstanding, with that exchange's (Ni, Nr); resolved when our response arrives.
    collision: tuple[ChildSa, bytes, bytes] | None = None
    # Set when the peer is expected to delete this SA (replaced, or a collision loser).
    doomed: ChildCloseReason | None = None
    reported: bool = False  # a ChildSaDeleted has been emitted

    def info(self, udp_encapsulation: bool) -> ChildSaInfo:
        return ChildSaInfo(
            self.spi_in,
            self.spi_out,
            self.algorithms,
            self.keys_in,
            self.keys_out,
            self.ts_local,
            self.ts_remote,
            self.transport_mode,
            udp_encapsulation,
        )


class TaskKind(Enum):
    CREATE_CHILD = "create child"
    REKEY_CHILD = "rekey child"
    DELETE_CHILD = "delete child"
    REKEY_IKE = "rekey IKE"
    DELETE_IKE = "delete IKE"
    DPD = "liveness check"
    MOBIKE_UPDATE = "update addresses"
    KEEPALIVE = "empty informational"
    INVALID_SPI = "report an invalid SPI"


@dataclass(eq=False, slots=True)
class Task:
    """A request of ours waiting for the window (RFC 7296 §2.3: one at a time)."""

    kind: TaskKind
    child: ChildSa | None = None
    children: tuple[ChildSa, ...] = ()
    ts_local: tuple[TrafficSelector, ...] = ()
    ts_remote: tuple[TrafficSelector, ...] = ()
    dh: DhId | None = None  # INVALID_KE retry group
    not_before: float = 0.0
    retries: int = 0
    reason: ChildCloseReason = ChildCloseReason.DELETED_LOCALLY
    spis: tuple[bytes, ...] = ()  # inbound SPIs of SAs only the peer installed


Handler = Callable[["IkeSa", list[Payload], float], None]


@dataclass(eq=False, slots=True)
class Request:
    """Our outstanding request on one IKE SA (window size 1, RFC 7296 §2.3)."""

    message_id: int
    exchange: ExchangeType
    packets: list[bytes]
    handler: Handler
    kind: str
    remote: Address | None
    deadline: float
    attempts: int = 0  # retransmissions so far
    error_seen: bool = False  # IKE_SA_INIT: an unauthenticated error arrived (§2.21.1)


class IkeSa:
    """One IKE SA. `initiator` means this side sent the request that created it (it sets
    the I flag, RFC 7296 §3.1; after a rekey, whoever initiated the rekey, §2.18)."""

    def __init__(self, spi_i: bytes, spi_r: bytes, initiator: bool) -> None:
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.initiator = initiator
        self.fsm = IkeSaState()
        self.keys: IkeSaKeys | None = None
        self.algorithms: IkeAlgorithms | None = None
        self._out: SkCipher | None = None
        self._in: SkCipher | None = None
        self._iv_counter = 0
        self.ni = b""
        self.nr = b""
        self.next_message_id = 0  # our next request
        self.peer_message_id = 0  # the peer's next request
        self.outstanding: Request | None = None
        self.queue: deque[Task] = deque()  # session tasks waiting for the window
        # the peer's last request (digest of its bytes) and our cached response to it
        self.last_request_digest: bytes | None = None
        self.last_response: list[bytes] = []
        self.last_response_id = -1
        self.reassembly: dict[tuple[int, bool], Reassembly] = {}
        self.fragmentation = False  # both sent IKEV2_FRAGMENTATION_SUPPORTED
        self.created = 0.0
        self.rekey_at: float | None = None
        self.expire_at: float | None = None
        self.half_open_deadline: float | None = None
        # IKE rekey collision (RFC 7296 §2.8.2): the SA the peer created by rekeying this
        # one while our own rekey was outstanding, with that exchange's (Ni, Nr).
        self.collision: tuple[IkeSa, bytes, bytes] | None = None
        self.redundant = False  # a rekey-collision loser, to be deleted

    # ---- identity

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    def tag(self) -> str:
        return f"{self.spi_i.hex()}_i {self.spi_r.hex()}_r"

    def flags(self, response: bool) -> HeaderFlag:
        flags = HeaderFlag.INITIATOR if self.initiator else HeaderFlag.NONE
        return flags | HeaderFlag.RESPONSE if response else flags

    # ---- keys

    def set_keys(self, keys: IkeSaKeys, algorithms: IkeAlgorithms) -> None:
        self.keys = keys
        self.algorithms = algorithms
        self._out = keys.sk_cipher(from_initiator=self.initiator)
        self._in = keys.sk_cipher(from_initiator=not self.initiator)

    def _next_iv(self, rng: RandomBytes, cipher: SkCipher) -> bytes:
        if cipher.encr.aead:
            # A per-key counter: unique, and no rng draw per message.
            self._iv_counter += 1
            if self._iv_counter >= GCM_COUNTER_LIMIT:
                raise OverflowError("IKE SA exhausted its IV space; rekey it")
            return self._iv_counter.to_bytes(cipher.iv_bytes, "big")
        return rng(cipher.iv_bytes)  # CBC: unpredictable IV (RFC 3602 §2.1)

    def seal(
        self,
        exchange: ExchangeType | int,
        message_id: int,
        response: bool,
        payloads: list[Payload],
        rng: RandomBytes,
        fragment_size: int | None,
    ) -> list[bytes]:
        """The wire bytes of one SK message, or its SKF fragments when it is larger than
        `fragment_size` (None: never fragment)."""
        cipher = self._out
        assert cipher is not None, "no keys yet"
        shell = Message(self.spi_i, self.spi_r, exchange, self.flags(response), message_id)
        first, plaintext = encode_payloads(payloads)
        body_length = cipher.body_length(len(plaintext))
        if fragment_size is not None and len(shell.encode()) + 4 + body_length > fragment_size:
            return seal_fragments(
                shell, first, plaintext, cipher, lambda: self._next_iv(rng, cipher), fragment_size
            )
        aad = shell.sk_aad(first, body_length)
        return [shell.encode_with_sk(first, cipher.seal(aad, plaintext, self._next_iv(rng, cipher)))]

    def open(self, msg: Message, now: float, max_bytes: int) -> tuple[list[Payload], int] | tuple[None, int]:
        """Authenticate and decrypt; (inner payloads, fragment number or 0).

        Returns (None, n) for a fragment stored while others are missing, or dropped by
        the RFC 7383 §5 bounds (the collection is then discarded). Raises
        IntegrityError (drop silently, RFC 7296 §2.21.1), MalformedMessage or
        UnsupportedCriticalPayload (the inner payloads; answerable once authenticated).
        """
        cipher = self._in
        sealed = msg.encrypted
        if cipher is None or sealed is None:
            raise IntegrityError("no SK payload or no keys")
        plaintext = cipher.open(msg.received_aad, sealed.body)
        if isinstance(sealed, Encrypted):
            return decode_payloads(sealed.first_payload, plaintext), 0
        assert isinstance(sealed, EncryptedFragment)
        key = (msg.message_id, msg.is_response)
        if sealed.total > MAX_FRAGMENTS:
            # RFC 7383 §5: more than we are willing to hold; nothing is stored.
            self.reassembly.pop(key, None)
            return None, sealed.number
        pending = self.reassembly.get(key)
        if pending is None:
            pending = self.reassembly[key] = Reassembly(msg.message_id, sealed.total, now)
        try:
            done = pending.add(sealed.number, sealed.total, sealed.first_payload, plaintext, max_bytes)
        except OverflowError:
            del self.reassembly[key]  # the memory bound: give up on this message
            return None, sealed.number
        if done is None:
            return None, sealed.number
        del self.reassembly[key]
        first, whole = done
        if first == PayloadType.NONE:
            raise MalformedMessage("fragment 1 names no first payload")
        return decode_payloads(first, whole), sealed.number

    def authenticates(self, msg: Message) -> bool:
        """Whether a received SK/SKF message passes its integrity check (no state change)."""
        cipher = self._in
        sealed = msg.encrypted
        if cipher is None or sealed is None:
            return False
        try:
            cipher.open(msg.received_aad, sealed.body)
        except IntegrityError:
            return False
        return True

    # ---- responder cache (RFC 7296 §2.1)

    def remember_response(self, request: bytes, message_id: int, packets: list[bytes]) -> None:
        self.last_request_digest = digest(request)
        self.last_response_id = message_id
        self.last_response = packets

    def __repr__(self) -> str:
        return f"<IkeSa {self.tag()} {self.fsm.state.value}>"


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
