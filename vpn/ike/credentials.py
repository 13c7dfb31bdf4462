"""The authentication seam of the session: who we are and how the peer proves who it is.

The session computes the signed octets (RFC 7296 §2.15) and hands them to an
`Authenticator`; the authenticator builds our AUTH payload and checks the peer's.

    method, data = auth.build_auth(octets, ctx)             # our AUTH payload
    auth.verify(method, data, octets, peer_id, certs, ctx)  # AuthenticationFailed if bad

`PskAuthenticator` is the pre-shared key method (2). Certificate authentication lives in
`vpn.ike.certauth` (it wraps auth.py and certs.py). Secrets never reach repr or errors.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vpn.ike.constants import AuthMethod, HashAlgorithm
from vpn.ike.errors import AuthenticationFailed, LocalProtocolError
from vpn.ike.policy import Identity

Prf = Callable[[bytes, bytes], bytes]

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15


@dataclass(frozen=True, slots=True)
class AuthContext:
    """What an authenticator may need besides the octets.

    `prf` is the IKE SA's negotiated PRF; `peer_hashes` the peer's
    SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4, empty if none); `certreq` the CA key hashes
    of the peer's CERTREQ payloads; `now` the session's clock (certificate validity).
    """

    prf: Prf
    local_id: Identity
    peer_id: Identity | None
    peer_hashes: tuple[HashAlgorithm | int, ...] = ()
    certreq: tuple[bytes, ...] = ()
    now: float = 0.0


class Authenticator(Protocol):
    """Builds our AUTH payload and verifies the peer's (RFC 7296 §2.15)."""

    def local_certificates(self, ctx: AuthContext) -> Sequence[bytes]:
        """DER certificates to send as CERT payloads (end entity first); empty for PSK."""
        ...

    def certificate_request(self) -> bytes | None:
        """CERTREQ data (20-byte SHA-1 hashes of trusted CA keys), or None to send none."""
        ...

    def build_auth(self, octets: bytes, ctx: AuthContext) -> tuple[AuthMethod | int, bytes]:
        """Our AUTH method and data over `octets` (RFC 7296 §2.15, RFC 7427 §3)."""
        ...

    def verify(
        self,
        method: AuthMethod | int,
        data: bytes,
        octets: bytes,
        peer_id: Identity,
        certs: Sequence[bytes],
        ctx: AuthContext,
    ) -> None:
        """Check the peer's AUTH payload; raise `AuthenticationFailed` when it does not hold."""
        ...


PskSource = bytes | Callable[[Identity], bytes | None]


def psk_auth_data(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <octets>) (RFC 7296 §2.15)."""
    return prf(prf(psk, KEY_PAD), octets)


def verify_psk_auth(prf: Prf, psk: bytes, octets: bytes, data: bytes) -> None:
    """Check a peer's method-2 AUTH data in constant time; AuthenticationFailed if not."""
    if not hmac.compare_digest(psk_auth_data(prf, psk, octets), data):
        raise AuthenticationFailed("AUTH payload does not match the pre-shared key")


class PskAuthenticator:
    """Pre-shared key authentication (method 2, RFC 7296 §2.15).

    `psk` is the key, or a lookup from the peer's identity to its key (a server with a key
    per client; None means unknown identity). Both sides' AUTH use the same key. `peers`,
    if given, restricts which identities may authenticate.
    """

    __slots__ = ("_psk", "_peers")

    def __init__(self, psk: PskSource, *, peers: Sequence[Identity] | None = None) -> None:
        if isinstance(psk, bytes | bytearray) and not psk:
            raise LocalProtocolError("empty pre-shared key")
        self._psk = psk
        self._peers = frozenset(peers) if peers is not None else None

    def _key(self, peer_id: Identity | None) -> bytes | None:
        if isinstance(self._psk, bytes | bytearray):
            return bytes(self._psk)
        if peer_id is None:
            return None
        return self._psk(peer_id)

    def local_certificates(self, ctx: AuthContext) -> Sequence[bytes]:
        return ()

    def certificate_request(self) -> bytes | None:
        return None

    def build_auth(self, octets: bytes, ctx: AuthContext) -> tuple[AuthMethod | int, bytes]:
        key = self._key(ctx.peer_id)
        if not key:
            raise LocalProtocolError("no pre-shared key for this peer")
        return AuthMethod.SHARED_KEY_MIC, psk_auth_data(ctx.prf, key, octets)

    def verify(
        self,
        method: AuthMethod | int,
        data: bytes,
        octets: bytes,
        peer_id: Identity,
        certs: Sequence[bytes],
        ctx: AuthContext,
    ) -> None:
        if method != AuthMethod.SHARED_KEY_MIC:
            raise AuthenticationFailed(f"peer used AUTH method {method}, expected a PSK")
        if self._peers is not None and peer_id not in self._peers:
            raise AuthenticationFailed(f"identity {peer_id} is not allowed")
        key = self._key(peer_id)
        if not key:
            raise AuthenticationFailed(f"no pre-shared key for {peer_id}")
        verify_psk_auth(ctx.prf, key, octets, data)

    def __repr__(self) -> str:
        return "PskAuthenticator(key hidden)"
