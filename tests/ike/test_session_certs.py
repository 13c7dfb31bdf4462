"""Certificate authentication in the session (certauth.py over auth.py and certs.py):
ECDSA and RSA certificates, a PSK client against a certificate server (CHECKLIST K08),
untrusted or expired certificates and identities not bound to the certificate."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.ike.roundtrip import PSK, connect, pair, policy
from vpn.ike.certauth import CertAuthenticator
from vpn.ike.certs import TrustStore, certificate_der
from vpn.ike.constants import AuthMethod, CertEncoding, ExchangeType
from vpn.ike.errors import LocalProtocolError
from vpn.ike.events import CloseReason, IkeSaClosed, IkeSaEstablished
from vpn.ike.message import Authentication, Certificate, CertificateRequest, Message
from vpn.ike.policy import Identity, PoolAllocator, VirtualIpRequest

WALL = dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()  # the harness clock starts at 1000


def wall_clock(now: float) -> float:
    return WALL + now


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: x509.GeneralName | None = None,
    not_after: dt.datetime = dt.datetime(2040, 1, 1, tzinfo=dt.UTC),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", ca_key, None, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("Other CA", other_key, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("vpn.example.org", server_key, (ca, ca_key), san=x509.DNSName("vpn.example.org"))
    client_key = rsa.generate_private_key(65537, 2048)
    client = _cert("alice", client_key, (ca, ca_key), san=x509.RFC822Name("alice@example.org"))
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _cert("vpn.example.org", rogue_key, (other_ca, other_key), san=x509.DNSName("vpn.example.org"))
    old = _cert(
        "vpn.example.org",
        server_key,
        (ca, ca_key),
        san=x509.DNSName("vpn.example.org"),
        not_after=dt.datetime(2029, 1, 1, tzinfo=dt.UTC),
    )
    return {
        "trust": TrustStore((ca,)),
        "server": (server, server_key),
        "client": (client, client_key),
        "rogue": (rogue, rogue_key),
        "expired": (old, server_key),
    }


SERVER_FQDN = Identity.fqdn("vpn.example.org")
ALICE = Identity.email("alice@example.org")


def cert_auth(pki: dict[str, object], which: str, **kw: object) -> CertAuthenticator:
    cert, key = pki[which]  # type: ignore[misc]
    return CertAuthenticator(
        certificate=cert, private_key=key, trust=pki["trust"], wall_clock=wall_clock, **kw
    )  # type: ignore[arg-type]


def policies(
    client_auth: object, server_auth: object, *, server_id: Identity = SERVER_FQDN
) -> tuple[object, object]:
    client = policy(
        local_id=ALICE, authenticator=client_auth, remote_id=SERVER_FQDN, virtual_ip=VirtualIpRequest()
    )
    server = policy(local_id=server_id, authenticator=server_auth, allocator=PoolAllocator("10.9.0.0/24"))
    return client, server


def auth_messages(net: object) -> dict[str, list[object]]:
    """The decrypted IKE_AUTH request and response payloads."""
    out: dict[str, list[object]] = {}
    for sent in net.log:  # type: ignore[attr-defined]
        msg = Message.decode(sent.data)
        if msg.exchange != ExchangeType.IKE_AUTH:
            continue
        receiver = net.server_session if sent.src == "client" else net.client.session  # type: ignore[attr-defined]
        sa = receiver._sa
        payloads, _ = sa.open(msg, 0.0, 65535)
        if payloads is not None:
            out[sent.src] = payloads
    return out


def test_ecdsa_server_rsa_client(pki: dict[str, object]) -> None:
    net = connect(*policies(cert_auth(pki, "client"), cert_auth(pki, "server")))  # type: ignore[arg-type]
    c_up = [e for e in net.client.events if isinstance(e, IkeSaEstablished)][0]
    assert c_up.peer_id == SERVER_FQDN
    msgs = auth_messages(net)
    client_auth = [p for p in msgs["client"] if isinstance(p, Authentication)][0]
    server_auth = [p for p in msgs["server"] if isinstance(p, Authentication)][0]
    # both announced SIGNATURE_HASH_ALGORITHMS: RFC 7427 method 14 both ways
    assert client_auth.method == server_auth.method == AuthMethod.DIGITAL_SIGNATURE
    server_cert = [p for p in msgs["server"] if isinstance(p, Certificate)]
    assert server_cert == [Certificate(CertEncoding.X509_CERT_SIGNATURE, certificate_der(pki["server"][0]))]  # type: ignore[index]
    assert any(isinstance(p, CertificateRequest) for p in msgs["client"])  # CERTREQ in IKE_AUTH
    init_response = Message.decode(net.sent_by("server")[0].data)
    assert init_response.get(CertificateRequest) is not None  # and in IKE_SA_INIT (§3.7)


def test_psk_client_against_a_certificate_server(pki: dict[str, object]) -> None:
    client_auth = CertAuthenticator(own_psk=PSK, trust=pki["trust"], wall_clock=wall_clock)  # type: ignore[arg-type]
    server_auth = cert_auth(pki, "server", peer_psk=lambda peer: PSK if peer == ALICE else None)
    net = connect(*policies(client_auth, server_auth))  # type: ignore[arg-type]
    msgs = auth_messages(net)
    assert [p.method for p in msgs["client"] if isinstance(p, Authentication)] == [AuthMethod.SHARED_KEY_MIC]
    assert not [p for p in msgs["client"] if isinstance(p, Certificate)]


@pytest.mark.parametrize(
    ("server_cert", "server_id", "reason"),
    [
        ("rogue", SERVER_FQDN, "untrusted CA"),
        ("expired", SERVER_FQDN, "expired"),
        ("server", Identity.fqdn("other.example.org"), "ID not in the certificate"),
    ],
)
def test_initiator_refuses_a_bad_server_certificate(
    pki: dict[str, object], server_cert: str, server_id: Identity, reason: str
) -> None:
    client, server = policies(cert_auth(pki, "client"), cert_auth(pki, server_cert), server_id=server_id)
    if server_id != SERVER_FQDN:
        client = policy(local_id=ALICE, authenticator=cert_auth(pki, "client"), remote_id=server_id)
    net = pair(client, server)  # type: ignore[arg-type]
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    closed = [e for e in net.client.events if isinstance(e, IkeSaClosed)]
    assert [c.reason for c in closed] == [CloseReason.AUTHENTICATION_FAILED], reason
    assert [e.reason for e in net.server.events if isinstance(e, IkeSaClosed)] == [
        CloseReason.AUTHENTICATION_FAILED
    ]


def test_responder_refuses_an_untrusted_client(pki: dict[str, object]) -> None:
    rogue_client = CertAuthenticator(
        certificate=pki["rogue"][0], private_key=pki["rogue"][1], trust=pki["trust"], wall_clock=wall_clock
    )  # type: ignore[index]
    client, server = policies(rogue_client, cert_auth(pki, "server"))
    net = pair(client, server)  # type: ignore[arg-type]
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert [e.reason for e in net.server.events if isinstance(e, IkeSaClosed)] == [
        CloseReason.AUTHENTICATION_FAILED
    ]
    assert not [e for e in net.server.events if isinstance(e, IkeSaEstablished)]


def test_psk_refused_without_peer_psk(pki: dict[str, object]) -> None:
    client_auth = CertAuthenticator(own_psk=PSK, trust=pki["trust"], wall_clock=wall_clock)  # type: ignore[arg-type]
    net = pair(*policies(client_auth, cert_auth(pki, "server")))  # type: ignore[arg-type]
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert [e.reason for e in net.server.events if isinstance(e, IkeSaClosed)] == [
        CloseReason.AUTHENTICATION_FAILED
    ]


def test_identity_and_misuse(pki: dict[str, object]) -> None:
    auth = cert_auth(pki, "server")
    assert auth.identity().id_type == 9  # ID_DER_ASN1_DN
    assert "key hidden" in repr(auth)
    with pytest.raises(LocalProtocolError):
        CertAuthenticator(certificate=pki["server"][0])  # type: ignore[index]
    with pytest.raises(LocalProtocolError):
        CertAuthenticator()
