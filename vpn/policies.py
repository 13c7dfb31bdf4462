"""Validated configuration -> the sans-IO IKE policy objects (vpn/ike/policy.py).

Reads the certificate and key files named in the config (so it lives outside vpn/ike,
which does no I/O). The defaults interoperate with strongSwan, Libreswan and Apple
clients (CHECKLIST §2.1); the dataplane does AES-GCM-16 only, so Child SAs are
AES-GCM-16 (256 preferred, 128), with or without ESN. `ike_proposals` / `esp_proposals`
in the config restrict both (RFC 7296 §3.3); ESP proposals that all name a DH group make
PFS mandatory on CREATE_CHILD_SA.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from cryptography import x509

from vpn import config
from vpn.ike.certauth import CertAuthenticator
from vpn.ike.certs import PrivateKey, TrustStore, load_certificates, load_private_key
from vpn.ike.credentials import Authenticator, PskAuthenticator, PskSource
from vpn.ike.payloads import TrafficSelector
from vpn.ike.policy import (
    ALL_V4,
    ALL_V6,
    ChildPolicy,
    DpdPolicy,
    EspProposal,
    Identity,
    Lifetimes,
    PoolAllocator,
    RetransmitPolicy,
    SessionPolicy,
    VirtualIpRequest,
)
from vpn.proposals import requires_pfs

RETRANSMIT_FIRST_S = 4.0  # RFC 7296 §2.4 / strongSwan: 4 s, then x1.8 per resend
RETRANSMIT_BASE = 1.8
MAX_RESENDS = 20


def retransmit_policy(total_s: float) -> RetransmitPolicy:
    """Resends with exponential backoff (RFC 7296 §2.1) that give up after about
    `total_s`: the time a dead peer (DPD, RFC 7296 §2.4) takes to be noticed. Over TCP
    there are no resends; the request times out after `total_s` (RFC 9329 §6.2)."""
    first = min(RETRANSMIT_FIRST_S, total_s / (1 + RETRANSMIT_BASE + RETRANSMIT_BASE**2))
    tries = 0
    while tries < MAX_RESENDS and RetransmitPolicy(timeout=first, base=RETRANSMIT_BASE,
                                                   tries=tries + 1).total() <= total_s * 1.01:
        tries += 1
    return RetransmitPolicy(timeout=first, base=RETRANSMIT_BASE, tries=tries, tcp_timeout=total_s)


class PolicyError(Exception):
    """A credential file could not be used; the message names the file."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None


def _wall_clock(now: float) -> float:
    """Certificate validity needs wall time; sessions run on the monotonic clock."""
    return time.time()


def _cert_authenticator(creds: config.Credentials, *, peer_psk: PskSource | None = None) -> CertAuthenticator:
    cert: x509.Certificate | None = None
    key: PrivateKey | None = None
    chain: list[x509.Certificate] = []
    if creds.cert is not None and creds.key is not None:
        certs = load_certificates(_read(creds.cert))
        if not certs:
            raise PolicyError(f"{creds.cert}: no certificate in it")
        cert, chain = certs[0], certs[1:]
        try:
            key = load_private_key(_read(creds.key))
        except ValueError as exc:
            raise PolicyError(f"{creds.key}: not a usable private key ({exc})") from None
    trust = TrustStore.from_pem(_read(creds.ca)) if creds.ca is not None else None
    return CertAuthenticator(certificate=cert, private_key=key, chain=chain, trust=trust, peer_psk=peer_psk,
                             own_psk=creds.psk if cert is None else None, wall_clock=_wall_clock)


def _child(proposals: tuple[EspProposal, ...], local_ts: tuple[TrafficSelector, ...] = (ALL_V4, ALL_V6)
           ) -> ChildPolicy:
    """Child SA policy with the configured ESP proposals; a DH group in every proposal
    means PFS is required when the peer creates or rekeys a Child SA (strongSwan does the
    same: a rekey without KE then matches no proposal, RFC 7296 §1.3.1)."""
    return ChildPolicy(proposals=proposals, require_pfs=requires_pfs(proposals), local_ts=local_ts)


def client_policy(cfg: config.Config) -> SessionPolicy:
    """The initiator's policy: ask for a virtual address (and DNS), offer everything as
    traffic selectors and let the server narrow (RFC 7296 §2.9)."""
    assert cfg.ike is not None
    ike = cfg.ike
    creds = ike.credentials
    auth: Authenticator
    if creds.ca is not None or creds.cert is not None:
        auth = _cert_authenticator(creds)
    else:
        assert creds.psk is not None
        auth = PskAuthenticator(creds.psk)
    return SessionPolicy(
        local_id=Identity.parse(ike.identity),
        authenticator=auth,
        remote_id=Identity.parse(ike.remote_identity) if ike.remote_identity else None,
        ike_proposals=ike.ike_proposals,
        child=_child(ike.esp_proposals),
        lifetimes=Lifetimes(child_rekey_seconds=ike.child_rekey_s, child_lifetime_seconds=ike.child_rekey_s * 1.1,
                            ike_rekey_seconds=ike.ike_rekey_s, ike_lifetime_seconds=ike.ike_rekey_s * 1.1),
        dpd=DpdPolicy(interval=ike.dpd_s),
        virtual_ip=VirtualIpRequest(ipv4=True, ipv6=ike.ipv6, dns=True, required=True),
        force_udp_encapsulation=True,  # ESP always in UDP: no raw ESP socket (RFC 3948)
        mobike=ike.mobike,
    )


def server_policy(cfg: config.Config) -> tuple[SessionPolicy, PoolAllocator]:
    """The responder's policy: per-client PSKs (or certificates via the CA), addresses
    from the pools, the configured subnets as TSr."""
    assert cfg.server is not None
    srv = cfg.server
    psks = {Identity.parse(c.identity): c.psk for c in srv.clients if c.psk is not None}
    known = [Identity.parse(c.identity) for c in srv.clients]

    def lookup(peer: Identity) -> bytes | None:
        return psks.get(peer)

    auth: Authenticator
    if srv.credentials.cert is not None:
        auth = _cert_authenticator(srv.credentials, peer_psk=lookup if psks else None)
    else:
        auth = PskAuthenticator(lookup, peers=known)
    exclude = [a.ip for a in cfg.tunnel.addresses]
    allocator = PoolAllocator(srv.pool4, srv.pool6, dns=srv.dns, exclude=exclude)
    local_ts = _server_selectors(srv.subnets, [*srv.dns, *exclude])
    policy = SessionPolicy(
        local_id=Identity.parse(srv.identity),
        authenticator=auth,
        ike_proposals=srv.ike_proposals,
        child=_child(srv.esp_proposals, local_ts=local_ts),
        lifetimes=Lifetimes(child_rekey_seconds=srv.child_rekey_s, child_lifetime_seconds=srv.child_rekey_s * 1.1),
        dpd=DpdPolicy(interval=srv.dpd_s),
        # RFC 4555 §3.11 (M06): a long wait before a silent client is declared dead, so
        # that a client moving between networks has time to come back
        retransmit=retransmit_policy(srv.peer_timeout_s),
        allocator=allocator,
        require_virtual_ip=False,
        force_udp_encapsulation=True,
    )
    return policy, allocator


def _server_selectors(subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                      own: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> tuple[TrafficSelector, ...]:
    """TSr: the subnets clients may reach, plus the server's own tunnel addresses and the
    DNS servers it pushes where no subnet covers them (the dataplane drops traffic to
    anything else, RFC 4301 §5.2, and a pushed DNS server must stay reachable)."""
    nets = list(subnets)
    for addr in own:
        if not any(addr in n for n in nets):
            nets.append(ipaddress.ip_network(addr))
    return tuple(TrafficSelector.from_network(str(n)) for n in nets)


def lease_networks(addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
                   ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Host routes for the addresses leased to one client."""
    return [ipaddress.ip_network(f"{a.ip}/{a.max_prefixlen}") for a in addresses]
