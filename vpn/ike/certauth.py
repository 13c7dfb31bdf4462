"""Certificate authentication for the session's `Authenticator` seam (credentials.py),
on top of auth.py (AUTH signatures, RFC 7427 / RFC 4754) and certs.py (X.509 path
validation and identity binding).

    auth = CertAuthenticator(
        certificate=load_certificate(pem), private_key=load_private_key(key_pem),
        trust=TrustStore.from_pem(ca_pem),
    )
    policy = SessionPolicy(local_id=auth.identity(), authenticator=auth, ...)

- Our AUTH: signed with the key, scheme chosen from the peer's SIGNATURE_HASH_ALGORITHMS
  (method 14), or methods 1 / 9-11 for peers that announce none (auth.choose_scheme).
- The peer's AUTH: its first CERT must chain to `trust`, be valid at the wall-clock
  time, carry the peer's ID (SAN or subject DN), and verify the signature.
- Mixed setups (CHECKLIST K08): `peer_psk` lets a certificate server accept clients
  that authenticate with a pre-shared key (method 2), and a PSK-only side may omit the
  key and certificate.

Sans-IO: validity is checked at `wall_clock(now)`, `now` being the session's clock
(default: the session's clock is already POSIX time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509

from vpn.ike import auth as ike_auth
from vpn.ike.certs import (
    PrivateKey,
    TrustStore,
    certificate_der,
    certificate_public_key,
    identity_of,
    match_identity,
)
from vpn.ike.constants import AuthMethod, CertEncoding
from vpn.ike.credentials import AuthContext, PskSource, psk_auth_data, verify_psk_auth
from vpn.ike.errors import AuthenticationFailed, LocalProtocolError
from vpn.ike.policy import Identity


class CertAuthenticator:
    """Signature AUTH with an X.509 certificate; see the module docstring."""

    def __init__(
        self,
        *,
        certificate: x509.Certificate | None = None,
        private_key: PrivateKey | None = None,
        chain: Sequence[x509.Certificate] = (),
        trust: TrustStore | None = None,
        peer_psk: PskSource | None = None,
        own_psk: bytes | None = None,
        rsa_pss: bool = False,
        send_certreq: bool = True,
        wall_clock: Callable[[float], float] = lambda now: now,
    ) -> None:
        if (certificate is None) != (private_key is None):
            raise LocalProtocolError("a certificate needs its private key and vice versa")
        if certificate is None and own_psk is None:
            raise LocalProtocolError("nothing to authenticate with: no certificate and no PSK")
        self._cert = certificate
        self._key = private_key
        self._chain = tuple(chain)
        self._trust = trust
        self._peer_psk = peer_psk
        self._own_psk = own_psk
        self._rsa_pss = rsa_pss
        self._send_certreq = send_certreq
        self._wall_clock = wall_clock

    def identity(self) -> Identity:
        """Our default ID: the certificate's subject DN (as strongSwan does)."""
        if self._cert is None:
            raise LocalProtocolError("no certificate")
        id_type, data = identity_of(self._cert)
        return Identity(id_type, data)

    # ---- the Authenticator protocol

    def local_certificates(self, ctx: AuthContext) -> Sequence[bytes]:
        if self._cert is None:
            return ()
        return (certificate_der(self._cert), *(certificate_der(c) for c in self._chain))

    def certificate_request(self) -> bytes | None:
        if self._trust is None or not self._send_certreq:
            return None
        return self._trust.certreq_data() or None

    def build_auth(self, octets: bytes, ctx: AuthContext) -> tuple[AuthMethod | int, bytes]:
        if self._key is None:
            assert self._own_psk is not None
            return AuthMethod.SHARED_KEY_MIC, psk_auth_data(ctx.prf, self._own_psk, octets)
        scheme = ike_auth.choose_scheme(self._key, [int(h) for h in ctx.peer_hashes], rsa_pss=self._rsa_pss)
        return scheme.method, ike_auth.sign(self._key, scheme, octets)

    def verify(
        self,
        method: AuthMethod | int,
        data: bytes,
        octets: bytes,
        peer_id: Identity,
        certs: Sequence[bytes],
        ctx: AuthContext,
    ) -> None:
        if method == AuthMethod.SHARED_KEY_MIC:
            key = self._peer_psk(peer_id) if callable(self._peer_psk) else self._peer_psk
            if not key:
                raise AuthenticationFailed(f"no pre-shared key accepted for {peer_id}")
            verify_psk_auth(ctx.prf, key, octets, data)
            return
        if self._trust is None:
            raise AuthenticationFailed("no trusted CA configured for certificate peers")
        payloads = [(int(CertEncoding.X509_CERT_SIGNATURE), c) for c in certs]
        end_entity = self._trust.validate(payloads, self._wall_clock(ctx.now))
        match_identity(end_entity, int(peer_id.id_type), peer_id.data)
        ike_auth.verify_signature(certificate_public_key(end_entity), int(method), data, octets)

    def __repr__(self) -> str:
        subject = self._cert.subject.rfc4514_string() if self._cert is not None else "none"
        return f"CertAuthenticator(certificate={subject!r}, key hidden)"
