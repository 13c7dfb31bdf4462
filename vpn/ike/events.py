"""Events an `IkeSession` reports to its driver (the daemon), pulled with `next_event()`.

Frozen dataclasses with past-tense names (the aioquic habit). The daemon acts on them:

- `IkeSaEstablished`: the IKE SA is authenticated; note the peer and NAT state.
- `ChildSaEstablished` / `ChildSaRekeyed`: install the Child SA in the dataplane (both
  directions; for a rekey keep the old inbound SA until its `ChildSaDeleted`).
- `ChildSaDeleted`: remove that SA pair. `ChildSaFailed`: a Child SA was refused.
- `VirtualAddressAssigned`: client: configure the TUN device and DNS; server: route the
  addresses to this client.
- `PeerAddressChanged` / `AddressesUpdated`: send IKE and ESP to the new address.
- `InitialContactReceived`: server: delete this identity's older IKE SAs (RFC 7296 §2.4).
- `IkeSaRekeyed`: the IKE SA has new SPIs (update SPI lookups); Child SAs are unchanged.
- `IkeSaClosed`: the session is over; every Child SA was reported deleted before it.
- `RequestRetransmitted`: a request went unanswered once more (UDP -> TCP fallback hint).

Invariants the daemon may rely on: every Child SA appears in exactly one
`ChildSaEstablished` or `ChildSaRekeyed` (as `child`) and later in exactly one
`ChildSaDeleted`; `IkeSaClosed` is the last event of a session. No event's repr shows
key bytes (`EspKeys` hides them).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum

from vpn.ike.constants import DhId, EncrId, ExchangeType, IntegId, NotifyType, PrfId
from vpn.ike.crypto import EspKeys
from vpn.ike.payloads import TrafficSelector
from vpn.ike.policy import Address, Identity

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CloseReason(Enum):
    """Why an IKE SA ended (`IkeSaClosed.reason`)."""

    DELETED_LOCALLY = "deleted locally"  # close() / delete of the IKE SA completed
    DELETED_BY_PEER = "deleted by peer"  # the peer sent Delete(IKE)
    TIMEOUT = "no response"  # retransmissions exhausted (UDP) or response timeout (TCP)
    PEER_DEAD = "peer dead"  # a liveness check went unanswered (RFC 7296 §2.4)
    HALF_OPEN_TIMEOUT = "half-open timeout"  # responder: no IKE_AUTH in time
    AUTHENTICATION_FAILED = "authentication failed"
    NO_PROPOSAL_CHOSEN = "no proposal chosen"
    INVALID_KE = "no acceptable Diffie-Hellman group"
    PROTOCOL_ERROR = "protocol error"  # INVALID_SYNTAX and other fatal notifies
    EXPIRED = "lifetime expired"  # hard lifetime reached without a rekey
    CHILD_SA_FAILED = "first Child SA failed"  # initiator policy: no IKE SA without it


class ChildCloseReason(Enum):
    """Why a Child SA ended (`ChildSaDeleted.reason`)."""

    DELETED_LOCALLY = "deleted locally"
    DELETED_BY_PEER = "deleted by peer"
    REKEYED = "replaced by a rekeyed SA"
    REDUNDANT = "redundant after a rekey collision"  # RFC 7296 §2.8.1
    EXPIRED = "hard lifetime expired"
    IKE_SA_CLOSED = "IKE SA closed"
    REFUSED = "traffic selectors or proposal refused"  # initiator deletes an unusable SA


@dataclass(frozen=True, slots=True)
class IkeAlgorithms:
    """The transforms negotiated for an IKE SA. `integ` is NONE for AES-GCM."""

    encr: EncrId
    key_bits: int
    prf: PrfId
    integ: IntegId
    dh: DhId

    def __str__(self) -> str:
        integ = "" if self.integ == IntegId.NONE else f"/{self.integ.name}"
        return f"{self.encr.name}_{self.key_bits}{integ}/{self.prf.name}/{self.dh.name}"


@dataclass(frozen=True, slots=True)
class EspAlgorithms:
    """The transforms negotiated for a Child SA. `dh` is NONE without PFS."""

    encr: EncrId
    key_bits: int
    integ: IntegId
    esn: bool
    dh: DhId = DhId.NONE

    def __str__(self) -> str:
        integ = "" if self.integ == IntegId.NONE else f"/{self.integ.name}"
        pfs = "" if self.dh == DhId.NONE else f"/{self.dh.name}"
        return f"{self.encr.name}_{self.key_bits}{integ}{pfs}{'/ESN' if self.esn else ''}"


@dataclass(frozen=True, slots=True)
class ChildSaInfo:
    """One installed Child SA pair, everything the dataplane needs.

    `spi_in` is the SPI this side chose (peers send to it), `spi_out` the peer's. Keys:
    `keys_in` opens inbound packets, `keys_out` seals outbound ones (AES-GCM: `encr_key`
    and the 4-byte `salt`, RFC 4106 §8.1). `ts_local`/`ts_remote` are the negotiated
    traffic selectors from this side's point of view. `udp_encapsulation` is true when a
    NAT was detected (or forced): over UDP, ESP goes in UDP 4500 (RFC 3948).
    """

    spi_in: bytes
    spi_out: bytes
    algorithms: EspAlgorithms
    keys_in: EspKeys = field(repr=False)
    keys_out: EspKeys = field(repr=False)
    ts_local: tuple[TrafficSelector, ...]
    ts_remote: tuple[TrafficSelector, ...]
    transport_mode: bool = False
    udp_encapsulation: bool = False

    def __repr__(self) -> str:
        return (
            f"ChildSaInfo(spi_in={self.spi_in.hex()}, spi_out={self.spi_out.hex()}, "
            f"{self.algorithms}, ts_local={_ts(self.ts_local)}, ts_remote={_ts(self.ts_remote)}, "
            f"keys hidden)"
        )


def _ts(selectors: tuple[TrafficSelector, ...]) -> str:
    return "[" + ", ".join(f"{t.start}-{t.end}" for t in selectors) + "]"


class Event:
    """Base class of every session event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class IkeSaEstablished(Event):
    """IKE_AUTH completed: the peer is authenticated (RFC 7296 §1.2).

    `nat_local`: this side is behind a NAT; `nat_remote`: the peer is (RFC 7296 §2.23).
    `mobike` and `fragmentation` say whether both sides announced the extension.
    """

    spi_i: bytes
    spi_r: bytes
    initiator: bool
    local_id: Identity
    peer_id: Identity
    algorithms: IkeAlgorithms
    mobike: bool
    fragmentation: bool
    nat_local: bool
    nat_remote: bool
    local_addr: Address | None
    remote_addr: Address | None


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed(Event):
    """The IKE SA was replaced by a new one (RFC 7296 §2.18); Child SAs moved to it.

    Messages for the old SPIs may still arrive until the old SA's Delete completes.
    """

    old_spi_i: bytes
    old_spi_r: bytes
    spi_i: bytes
    spi_r: bytes
    algorithms: IkeAlgorithms


@dataclass(frozen=True, slots=True)
class IkeSaClosed(Event):
    """The session ended. `notify` is the error notify sent or received, if any."""

    spi_i: bytes
    spi_r: bytes
    reason: CloseReason
    notify: NotifyType | int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ChildSaEstablished(Event):
    """A new Child SA (IKE_AUTH or CREATE_CHILD_SA): install both directions."""

    child: ChildSaInfo


@dataclass(frozen=True, slots=True)
class ChildSaRekeyed(Event):
    """`child` replaces the SA whose inbound SPI is `old_spi_in` (RFC 7296 §2.8).

    Install `child`; send on it at once; keep accepting on the old SA until its
    `ChildSaDeleted` arrives (RFC 7296 §2.8: accept on both while both exist).
    """

    old_spi_in: bytes
    old_spi_out: bytes
    child: ChildSaInfo


@dataclass(frozen=True, slots=True)
class ChildSaDeleted(Event):
    """Remove the SA pair (inbound `spi_in`, outbound `spi_out`) from the dataplane."""

    spi_in: bytes
    spi_out: bytes
    reason: ChildCloseReason


@dataclass(frozen=True, slots=True)
class ChildSaFailed(Event):
    """A Child SA could not be created or rekeyed (nothing to install or remove).

    `notify` is the error (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, INTERNAL_ADDRESS_FAILURE,
    FAILED_CP_REQUIRED, ...); `in_ike_auth` is true for the first Child SA (RFC 7296 §1.2:
    the IKE SA stays up). `rekey_of` is the inbound SPI of the SA a failed rekey was for.
    """

    notify: NotifyType | int | None
    detail: str
    in_ike_auth: bool = False
    rekey_of: bytes | None = None


@dataclass(frozen=True, slots=True)
class VirtualAddressAssigned(Event):
    """Configuration payload results (RFC 7296 §2.19).

    Client (`assigned_to_peer` false): our addresses, DNS servers and split subnets.
    Server (`assigned_to_peer` true): what was leased to `peer_id`; route it to them.
    """

    addresses: tuple[IPInterface, ...]
    dns: tuple[IPAddress, ...]
    subnets: tuple[IPNetwork, ...]
    assigned_to_peer: bool
    peer_id: Identity | None = None


@dataclass(frozen=True, slots=True)
class PeerAddressChanged(Event):
    """Send IKE and ESP for this session to `new` from now on.

    Raised after an authenticated UPDATE_SA_ADDRESSES (MOBIKE, RFC 4555 §3.5), or, without
    MOBIKE, after an authenticated message from a new address when this side is not
    behind a NAT (RFC 7296 §2.23 dynamic update).
    """

    old: Address | None
    new: Address
    local: Address | None
    nat_local: bool
    nat_remote: bool


@dataclass(frozen=True, slots=True)
class AddressesUpdated(Event):
    """The MOBIKE initiator's UPDATE_SA_ADDRESSES completed on a new path (RFC 4555 §3.5)."""

    local: Address | None
    remote: Address | None
    nat_local: bool
    nat_remote: bool
    stream: bool


@dataclass(frozen=True, slots=True)
class InitialContactReceived(Event):
    """The peer sent INITIAL_CONTACT: it holds no other IKE SA with us (RFC 7296 §2.4).

    A server deletes the other IKE SAs of `peer_id` (not this one).
    """

    peer_id: Identity
    spi_i: bytes
    spi_r: bytes


@dataclass(frozen=True, slots=True)
class RequestRetransmitted(Event):
    """A request was sent again (UDP backoff, or a resend on a new TCP connection).

    `attempt` counts the retransmissions of this request (1 = first resend). A client
    may fall back to TCP after a few (RFC 9329 §5.1, §7.1).
    """

    exchange: ExchangeType | int
    message_id: int
    attempt: int
