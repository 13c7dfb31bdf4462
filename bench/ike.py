"""IKEv2 handshakes per second on one core, in memory, timing only the responder.

    python -m bench.ike [--json] [--seconds S] [--cases x25519+psk,ecp256+ecdsa]

Each handshake is a full IKE_SA_INIT + IKE_AUTH with a Child SA and a virtual address
(CP) between an `IkeSession` client and the server's front door (`IkeResponder`); only
the responder's calls are timed (`receive` and `messages_to_send` for both requests,
plus draining its events), the client's work is not. Randomness is os.urandom.

Cases:
  x25519+psk     Curve25519, AES-GCM-256, PSK both ways
  ecp256+ecdsa   NIST P-256 DH, AES-GCM-256, ECDSA P-256 certificates both ways (the
                 responder validates the client's certificate chain to the CA)
  modp2048+psk   for comparison: the MODP group that old clients need

Baseline in the same go (ratios only; the machine is shared): `dh_per_s`, the bare
key generation + shared secret of that group, which every responder handshake pays
once. --json prints one JSON object per case with name, handshakes_per_s, responder_us
(mean per handshake), dh_per_s and handshakes_over_dh. Goal (issue 4): >= 500
handshakes/s for x25519+psk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vpn.ike.certauth import CertAuthenticator
from vpn.ike.certs import TrustStore
from vpn.ike.constants import DhId, EncrId, PrfId
from vpn.ike.credentials import Authenticator, PskAuthenticator
from vpn.ike.crypto import dh_group
from vpn.ike.events import ChildSaEstablished, IkeSaEstablished
from vpn.ike.policy import (
    DpdPolicy,
    Identity,
    IkeProposal,
    PoolAllocator,
    SessionPolicy,
    VirtualIpRequest,
)
from vpn.ike.responder import IkeResponder
from vpn.ike.session import IkeSession

CLIENT = ("192.0.2.10", 4500)
SERVER = ("198.51.100.1", 4500)
PSK = os.urandom(32)


@dataclass(frozen=True)
class Case:
    name: str
    group: DhId
    client_auth: Callable[[], tuple[Identity, Authenticator]]
    server_auth: Callable[[], tuple[Identity, Authenticator]]


def _psk(identity: Identity) -> Callable[[], tuple[Identity, Authenticator]]:
    return lambda: (identity, PskAuthenticator(PSK))


_OFFSET = time.time() - time.monotonic()


def _wall(now: float) -> float:
    """The session clock here is time.monotonic(); certificates need wall time."""
    return now + _OFFSET


def _pki() -> dict[str, tuple[Identity, Authenticator]]:
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    start, end = dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bench CA"))
        .issuer_name(name("bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    trust = TrustStore((ca,))
    out: dict[str, tuple[Identity, Authenticator]] = {}
    for role, san in (
        ("server", x509.DNSName("vpn.example.org")),
        ("client", x509.RFC822Name("alice@example.org")),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(role))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(2 if role == "server" else 3)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        identity = (
            Identity.fqdn("vpn.example.org") if role == "server" else Identity.email("alice@example.org")
        )
        auth = CertAuthenticator(certificate=cert, private_key=key, trust=trust, wall_clock=_wall)
        out[role] = (identity, auth)
    return out


def cases() -> dict[str, Case]:
    alice, server = Identity.email("alice@example.org"), Identity.fqdn("vpn.example.org")
    pki = _pki()
    return {
        "x25519+psk": Case("x25519+psk", DhId.CURVE25519, _psk(alice), _psk(server)),
        "ecp256+ecdsa": Case("ecp256+ecdsa", DhId.ECP256, lambda: pki["client"], lambda: pki["server"]),
        "modp2048+psk": Case("modp2048+psk", DhId.MODP2048, _psk(alice), _psk(server)),
    }


def _policies(case: Case) -> tuple[SessionPolicy, SessionPolicy, PoolAllocator]:
    proposal = (IkeProposal(((EncrId.AES_GCM_16, 256),), (PrfId.HMAC_SHA2_256,), (case.group,)),)
    c_id, c_auth = case.client_auth()
    s_id, s_auth = case.server_auth()
    pool = PoolAllocator("10.64.0.0/12", dns=["10.64.0.1"])
    client = SessionPolicy(
        local_id=c_id, authenticator=c_auth, remote_id=s_id, ike_proposals=proposal,
        virtual_ip=VirtualIpRequest(), dpd=DpdPolicy(0),
    )  # fmt: skip
    server = SessionPolicy(
        local_id=s_id, authenticator=s_auth, ike_proposals=proposal, allocator=pool, dpd=DpdPolicy(0)
    )
    return client, server, pool


def run_case(case: Case, seconds: float) -> dict[str, object]:
    client_policy, server_policy, pool = _policies(case)
    door = IkeResponder(server_policy, rng=os.urandom, local_addr=SERVER)
    clock = time.perf_counter
    timed = 0.0
    count = 0
    deadline = clock() + seconds
    while count < 5 or clock() < deadline:
        now = time.monotonic()
        client = IkeSession(
            client_policy, initiator=True, rng=os.urandom, local_addr=CLIENT, remote_addr=SERVER
        )
        client.initiate(now)
        (init,) = client.messages_to_send()

        t0 = clock()
        d = door.receive(init.data, now, remote_addr=CLIENT)
        session = d.session
        assert session is not None
        (init_resp,) = session.messages_to_send()
        timed += clock() - t0

        client.receive_message(init_resp.data, now, SERVER)
        auth = client.messages_to_send()

        t0 = clock()
        for m in auth:
            door.receive(m.data, now, remote_addr=CLIENT)
        auth_resp = session.messages_to_send()
        events = list(iter(session.next_event, None))
        timed += clock() - t0

        for m in auth_resp:
            client.receive_message(m.data, now, SERVER)
        up = [
            e for e in iter(client.next_event, None) if isinstance(e, IkeSaEstablished | ChildSaEstablished)
        ]
        if len(up) != 2 or not any(isinstance(e, ChildSaEstablished) for e in events):
            raise RuntimeError(f"{case.name}: handshake did not complete")
        # untimed cleanup: the server forgets the session and its lease
        if session.lease is not None and session.peer_id is not None:
            pool.release(session.peer_id, session.lease)
        door.forget(session)
        count += 1
    return {
        "name": case.name,
        "handshakes_per_s": round(count / timed, 1),
        "responder_us": round(timed / count * 1e6, 1),
        "handshakes": count,
    }


def dh_rate(group: DhId, seconds: float) -> float:
    """Baseline: key generation + shared secret per second for one group."""
    g = dh_group(group)
    peer = g.generate(os.urandom).public_value
    done, start = 0, time.perf_counter()
    while done < 5 or time.perf_counter() - start < seconds:
        g.generate(os.urandom).shared_secret(peer)
        done += 1
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per case")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per case")
    ap.add_argument("--cases", default="x25519+psk,ecp256+ecdsa,modp2048+psk")
    a = ap.parse_args(argv)
    available = cases()
    for name in a.cases.split(","):
        case = available[name]
        result = run_case(case, a.seconds)
        dh = dh_rate(case.group, min(1.0, a.seconds))
        result["dh_per_s"] = round(dh, 1)
        result["handshakes_over_dh"] = round(float(result["handshakes_per_s"]) / dh, 3)  # type: ignore[arg-type]
        if a.json:
            print(json.dumps(result), flush=True)
        else:
            print(
                f"{name:14} {result['handshakes_per_s']:>9} handshakes/s  "
                f"({result['responder_us']} us each, {result['handshakes']} done; "
                f"DH alone {result['dh_per_s']}/s, ratio {result['handshakes_over_dh']})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
