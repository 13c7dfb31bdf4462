"""Sans-IO configuration of an IKE session: identities, proposals, lifetimes, timers.

Plain frozen dataclasses with defaults that interoperate with strongSwan 5.9, Libreswan
4.x, Apple and (with custom policy) Windows clients (CHECKLIST Part 2 §2.1). config.py
turns TOML into these; tests build them directly.

    policy = SessionPolicy(
        local_id=Identity.fqdn("client.example"),
        authenticator=PskAuthenticator(b"secret"),
        remote_id=Identity.fqdn("vpn.example"),
        virtual_ip=VirtualIpRequest(ipv4=True, ipv6=True),
    )

The server passes an `AddressAllocator` (`PoolAllocator` is a simple one) so that
virtual addresses come from its pools, the same address for the same identity.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vpn.ike.constants import DhId, EncrId, EsnId, IdType, IntegId, PrfId, ProtocolId, TransformType
from vpn.ike.errors import LocalProtocolError
from vpn.ike.payloads import IdInitiator, IdResponder, Proposal, TrafficSelector, Transform

if TYPE_CHECKING:
    from vpn.ike.credentials import Authenticator

Address = tuple[str, int]
"""An (IP address, port) pair as the daemon's sockets give it."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity (RFC 7296 §3.5): ID type and identification data.

    `Identity.parse("vpn.example")` guesses the type like strongSwan: an IP address,
    `user@host` (RFC822), `keyid:hex`, otherwise an FQDN (a leading `@` is dropped).
    """

    id_type: IdType | int
    data: bytes

    @classmethod
    def fqdn(cls, name: str) -> Identity:
        return cls(IdType.ID_FQDN, name.encode("ascii"))

    @classmethod
    def email(cls, address: str) -> Identity:
        return cls(IdType.ID_RFC822_ADDR, address.encode("ascii"))

    @classmethod
    def address(cls, address: IPAddress | str) -> Identity:
        ip = ipaddress.ip_address(address)
        kind = IdType.ID_IPV4_ADDR if ip.version == 4 else IdType.ID_IPV6_ADDR
        return cls(kind, ip.packed)

    @classmethod
    def key_id(cls, data: bytes) -> Identity:
        return cls(IdType.ID_KEY_ID, data)

    @classmethod
    def parse(cls, text: str) -> Identity:
        try:
            return cls.address(text)
        except ValueError:
            pass
        if text.startswith("keyid:"):
            return cls.key_id(bytes.fromhex(text[6:]))
        if "@" in text.lstrip("@"):
            return cls.email(text)
        return cls.fqdn(text.lstrip("@"))

    def as_idi(self) -> IdInitiator:
        return IdInitiator(self.id_type, self.data)

    def as_idr(self) -> IdResponder:
        return IdResponder(self.id_type, self.data)

    def __str__(self) -> str:
        if self.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                pass
        if self.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return self.data.decode("ascii", "replace")
        if self.id_type == IdType.ID_KEY_ID:
            return "keyid:" + self.data.hex()
        return f"id{int(self.id_type)}:{self.data.hex()}"


# --------------------------------------------------------------------------- proposals


@dataclass(frozen=True, slots=True)
class IkeProposal:
    """One IKE SA proposal: alternatives per transform type, most preferred first.

    `encr` pairs an ENCR ID with its key length in bits (RFC 7296 §3.3.5). An AEAD
    proposal (AES-GCM-16) has no `integ` (RFC 5282 §8).
    """

    encr: tuple[tuple[EncrId, int], ...]
    prf: tuple[PrfId, ...]
    dh: tuple[DhId, ...]
    integ: tuple[IntegId, ...] = ()

    def to_proposal(self, num: int, spi: bytes = b"", *, dh: DhId | None = None) -> Proposal:
        """The SA payload proposal; `dh` moves that group to the front of the list."""
        groups = self.dh if dh is None else (dh, *(g for g in self.dh if g != dh))
        transforms = [Transform(TransformType.ENCR, e, bits) for e, bits in self.encr]
        transforms += [Transform(TransformType.PRF, p) for p in self.prf]
        transforms += [Transform(TransformType.INTEG, i) for i in self.integ]
        transforms += [Transform(TransformType.DH, g) for g in groups]
        return Proposal(num, ProtocolId.IKE, spi, tuple(transforms))


@dataclass(frozen=True, slots=True)
class EspProposal:
    """One ESP (Child SA) proposal. `dh` lists PFS groups offered when this side creates
    or rekeys a Child SA with CREATE_CHILD_SA (empty: no PFS); as a responder, any
    supported group (or none) is accepted unless `ChildPolicy.require_pfs`."""

    encr: tuple[tuple[EncrId, int], ...] = ((EncrId.AES_GCM_16, 256), (EncrId.AES_GCM_16, 128))
    integ: tuple[IntegId, ...] = ()
    dh: tuple[DhId, ...] = ()
    esn: tuple[EsnId, ...] = (EsnId.NO_ESN, EsnId.ESN)

    def to_proposal(self, num: int, spi: bytes, *, with_dh: bool, dh: DhId | None = None) -> Proposal:
        """The SA payload proposal. `with_dh` false leaves out the DH transforms (IKE_AUTH,
        RFC 7296 §1.2, or a rekey without PFS); `dh` puts that group first."""
        transforms = [Transform(TransformType.ENCR, e, bits) for e, bits in self.encr]
        transforms += [Transform(TransformType.INTEG, i) for i in self.integ]
        if with_dh and self.dh:
            groups = self.dh if dh is None else (dh, *(g for g in self.dh if g != dh))
            transforms += [Transform(TransformType.DH, g) for g in groups]
        transforms += [Transform(TransformType.ESN, e) for e in self.esn]
        return Proposal(num, ProtocolId.ESP, spi, tuple(transforms))


# strongSwan/Libreswan/Apple interop set (CHECKLIST §2.1 "Server proposal set").
DEFAULT_DH_GROUPS = (DhId.CURVE25519, DhId.ECP256, DhId.ECP384, DhId.MODP2048)
DEFAULT_IKE_PROPOSALS: tuple[IkeProposal, ...] = (
    IkeProposal(
        encr=((EncrId.AES_GCM_16, 256), (EncrId.AES_GCM_16, 128)),
        prf=(PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512),
        dh=DEFAULT_DH_GROUPS,
    ),
    IkeProposal(
        encr=((EncrId.AES_CBC, 256), (EncrId.AES_CBC, 128)),
        prf=(PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512, PrfId.HMAC_SHA1),
        integ=(
            IntegId.HMAC_SHA2_256_128,
            IntegId.HMAC_SHA2_384_192,
            IntegId.HMAC_SHA2_512_256,
            IntegId.HMAC_SHA1_96,
        ),
        dh=DEFAULT_DH_GROUPS,
    ),
)
DEFAULT_ESP_PROPOSALS: tuple[EspProposal, ...] = (EspProposal(),)

ALL_V4 = TrafficSelector.from_network("0.0.0.0/0")
ALL_V6 = TrafficSelector.from_network("::/0")


@dataclass(frozen=True, slots=True)
class ChildPolicy:
    """What a Child SA may carry and how it is protected.

    Initiator: `local_ts`/`remote_ts` are offered as TSi/TSr (a client asking for a
    virtual address offers everything and the server narrows TSi to the address).
    Responder: the peer's TSi is narrowed to `remote_ts` (or to the leased virtual
    addresses when an allocator assigned any) and its TSr to `local_ts` (RFC 7296 §2.9).
    """

    local_ts: tuple[TrafficSelector, ...] = (ALL_V4, ALL_V6)
    remote_ts: tuple[TrafficSelector, ...] = (ALL_V4, ALL_V6)
    proposals: tuple[EspProposal, ...] = DEFAULT_ESP_PROPOSALS
    transport_mode: bool = False
    # Refuse CREATE_CHILD_SA without KE. Off by default: macOS rekeys without KE (X1).
    require_pfs: bool = False


# --------------------------------------------------------------------------- timers


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """SA lifetimes in seconds (RFC 7296 §2.8: each end enforces its own).

    A rekey starts at `*_rekey_seconds` minus a random jitter of up to `jitter_fraction`
    of it (RFC 7296 §2.8.1: jitter against simultaneous rekeys); at `*_lifetime_seconds`
    an SA that was not rekeyed is deleted. 0 disables rekeying (resp. expiry).
    """

    ike_rekey_seconds: float = 4 * 3600.0  # strongSwan's rekey_time default
    ike_lifetime_seconds: float = 4.4 * 3600.0
    child_rekey_seconds: float = 3600.0
    child_lifetime_seconds: float = 1.1 * 3600.0
    jitter_fraction: float = 0.1


@dataclass(frozen=True, slots=True)
class RetransmitPolicy:
    """RFC 7296 §2.1/§2.4 retransmission over UDP, and the TCP response timeout.

    UDP: resend after `timeout`, `timeout*base`, ... (`tries` resends), then wait one
    more interval and give up (strongSwan's defaults: about 165 s in all). TCP (RFC 9329
    §6.2): no resends on a live connection; give up after `tcp_timeout` (default the same
    total as UDP).
    """

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5
    max_interval: float = 120.0
    tcp_timeout: float | None = None

    def interval(self, attempt: int) -> float:
        """Seconds to wait after sending attempt `attempt` (0 = the first send)."""
        return float(min(self.timeout * self.base**attempt, self.max_interval))

    def total(self) -> float:
        return sum(self.interval(k) for k in range(self.tries + 1))

    def stream_timeout(self) -> float:
        return self.tcp_timeout if self.tcp_timeout is not None else self.total()


@dataclass(frozen=True, slots=True)
class DpdPolicy:
    """Liveness checks (RFC 7296 §2.4): an empty INFORMATIONAL when nothing authenticated
    came from the peer for `interval` seconds (`peer_activity()` reports ESP traffic).
    The peer is declared dead only when that request times out per RetransmitPolicy.
    0 disables automatic checks (`check_liveness()` still works)."""

    interval: float = 30.0


# --------------------------------------------------------------------------- virtual IPs


@dataclass(frozen=True, slots=True)
class VirtualIpRequest:
    """What a client asks for in CP(CFG_REQUEST) in IKE_AUTH (RFC 7296 §2.19)."""

    ipv4: bool = True
    ipv6: bool = False
    dns: bool = True
    required: bool = True  # no address in the reply fails the Child SA


@dataclass(frozen=True, slots=True)
class AddressLease:
    """Addresses a server assigns to one client, with DNS servers and split subnets."""

    addresses: tuple[IPInterface, ...]
    dns: tuple[IPAddress, ...] = ()
    subnets: tuple[IPNetwork, ...] = ()


class AddressAllocator(Protocol):
    """The server's address pools, injected into the responder's policy."""

    def allocate(
        self, peer_id: Identity, *, ipv4: bool, ipv6: bool, requested: Sequence[IPAddress]
    ) -> AddressLease | None:
        """A lease for the families asked for (`requested`: addresses the client would
        like back). None or no addresses: INTERNAL_ADDRESS_FAILURE (RFC 7296 §3.15.4)."""
        ...

    def release(self, peer_id: Identity, lease: AddressLease) -> None:
        """The IKE SA that held the lease is gone."""
        ...


class PoolAllocator:
    """Addresses from one IPv4 and/or one IPv6 pool, stable per identity while leased
    and remembered afterwards (the same client gets the same address back).

    The pools' network and broadcast addresses, the DNS servers and `exclude` (say the
    server's own tunnel address) are never handed out.
    """

    def __init__(
        self,
        ipv4_pool: IPv4NetworkLike | None = None,
        ipv6_pool: IPv6NetworkLike | None = None,
        *,
        dns: Sequence[IPAddress | str] = (),
        subnets: Sequence[IPNetwork | str] = (),
        exclude: Sequence[IPAddress | str] = (),
    ) -> None:
        self._v4 = ipaddress.IPv4Network(ipv4_pool) if ipv4_pool is not None else None
        self._v6 = ipaddress.IPv6Network(ipv6_pool) if ipv6_pool is not None else None
        self._dns = tuple(ipaddress.ip_address(d) for d in dns)
        self._subnets = tuple(ipaddress.ip_network(s) for s in subnets)
        self._by_id: dict[tuple[Identity, int], IPAddress] = {}  # sticky: last address
        self._owner: dict[IPAddress, Identity] = {}  # who an address is remembered for
        self._in_use: dict[IPAddress, Identity] = {}
        # Leases held on each address in use: a client's new IKE SA may get its address
        # while the old SA still holds it; the old one's release must not free it.
        self._holds: dict[IPAddress, int] = {}
        self._reserved = frozenset(ipaddress.ip_address(a) for a in exclude) | frozenset(self._dns)
        self._next: dict[int, int] = {4: 1, 6: 1}

    def _pick(self, peer_id: Identity, version: int) -> IPInterface | None:
        pool = self._v4 if version == 4 else self._v6
        if pool is None:
            return None
        prefix = 32 if version == 4 else 128
        known = self._by_id.get((peer_id, version))
        if known is not None and self._in_use.get(known, peer_id) == peer_id:
            self._in_use[known] = peer_id
            self._holds[known] = self._holds.get(known, 0) + 1
            return ipaddress.ip_interface(f"{known}/{prefix}")
        size = pool.num_addresses
        # Offsets 1 .. size-2 skip the network and broadcast addresses. First pass: an
        # address nobody held; second: one remembered for someone else (pool is full).
        for steal in (False, True):
            for _ in range(min(max(size - 2, 0), 1 << 16)):
                offset = self._next[version]
                self._next[version] = offset + 1 if offset + 1 < size - 1 else 1
                candidate = pool.network_address + offset
                if candidate in self._in_use or candidate in self._reserved:
                    continue
                if not steal and self._owner.get(candidate, peer_id) != peer_id:
                    continue
                self._by_id[(peer_id, version)] = candidate
                self._owner[candidate] = peer_id
                self._in_use[candidate] = peer_id
                self._holds[candidate] = 1
                return ipaddress.ip_interface(f"{candidate}/{prefix}")
        return None

    def allocate(
        self, peer_id: Identity, *, ipv4: bool, ipv6: bool, requested: Sequence[IPAddress]
    ) -> AddressLease | None:
        addresses = []
        if ipv4 and (a := self._pick(peer_id, 4)) is not None:
            addresses.append(a)
        if ipv6 and (b := self._pick(peer_id, 6)) is not None:
            addresses.append(b)
        if not addresses:
            return None
        families = {a.version for a in addresses}
        return AddressLease(
            tuple(addresses),
            tuple(d for d in self._dns if d.version in families),
            tuple(s for s in self._subnets if s.version in families),
        )

    def release(self, peer_id: Identity, lease: AddressLease) -> None:
        """Give back one lease; an address is free once every lease on it is back."""
        for iface in lease.addresses:
            if self._in_use.get(iface.ip) != peer_id:
                continue
            left = self._holds.get(iface.ip, 1) - 1
            if left > 0:
                self._holds[iface.ip] = left
            else:
                self._holds.pop(iface.ip, None)
                del self._in_use[iface.ip]

    def in_use(self) -> dict[IPAddress, Identity]:
        return dict(self._in_use)


IPv4NetworkLike = ipaddress.IPv4Network | str
IPv6NetworkLike = ipaddress.IPv6Network | str


# --------------------------------------------------------------------------- the session


# RFC 7383 §2.5.1: 1280-byte IPv6 datagrams minus IPv6 (40), UDP (8), non-ESP marker (4).
DEFAULT_FRAGMENT_BYTES = 1228
MIN_FRAGMENT_BYTES = 256  # below this the per-fragment overhead dominates; refuse


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """Everything one IKE session needs to know, for either role.

    - `local_id` is sent as IDi/IDr; `remote_id` is sent as IDr by an initiator (omit to
      let the server pick) and, if set, the only identity a peer may authenticate as.
    - `authenticator` builds and checks AUTH (see credentials.py).
    - `virtual_ip` (client) asks for addresses; `allocator` (server) hands them out;
      `require_virtual_ip` (server) answers FAILED_CP_REQUIRED to clients without CP.
    - `fragmentation`: announce IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383) and fragment
      messages above `fragment_size` bytes on UDP when the peer announced it too.
    - `force_udp_encapsulation`: send a NAT_DETECTION_SOURCE_IP that cannot match, so
      both sides use UDP encapsulation (strongSwan's `encap = yes`, RFC 7296 §2.23).
    - `close_ike_on_child_failure`: an initiator deletes the IKE SA when the Child SA of
      IKE_AUTH fails (a VPN client has no use for an IKE SA without it).
    """

    local_id: Identity
    authenticator: Authenticator
    remote_id: Identity | None = None
    ike_proposals: tuple[IkeProposal, ...] = DEFAULT_IKE_PROPOSALS
    child: ChildPolicy = field(default_factory=ChildPolicy)
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    retransmit: RetransmitPolicy = field(default_factory=RetransmitPolicy)
    dpd: DpdPolicy = field(default_factory=DpdPolicy)
    fragmentation: bool = True
    fragment_size: int = DEFAULT_FRAGMENT_BYTES
    mobike: bool = True
    initial_contact: bool = True
    virtual_ip: VirtualIpRequest | None = None
    allocator: AddressAllocator | None = None
    require_virtual_ip: bool = False
    force_udp_encapsulation: bool = False
    half_open_timeout: float = 30.0  # responder: IKE_AUTH must follow IKE_SA_INIT in time
    close_ike_on_child_failure: bool = True
    max_cookie_retries: int = 3  # RFC 7296 §2.6: limit cookie exchanges before giving up
    max_reassembly_bytes: int = 65535  # RFC 7383 §5: bound the memory of one reassembly

    def __post_init__(self) -> None:
        if not self.ike_proposals:
            raise LocalProtocolError("at least one IKE proposal is needed")
        for p in self.ike_proposals:
            if not p.encr or not p.prf or not p.dh:
                raise LocalProtocolError("an IKE proposal needs ENCR, PRF and DH transforms")
        if not self.child.proposals:
            raise LocalProtocolError("at least one ESP proposal is needed")
        if self.fragment_size < MIN_FRAGMENT_BYTES:
            raise LocalProtocolError(f"fragment_size must be at least {MIN_FRAGMENT_BYTES}")
