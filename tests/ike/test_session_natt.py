"""NAT traversal in IKE_SA_INIT (RFC 7296 §2.23), two bugs found against strongSwan:

- The initiator moves to UDP port 4500 after IKE_SA_INIT when a NAT is detected or
  faked, and stays on port 500 when neither is the case. Our client kept sending
  IKE_AUTH to port 500, so charon kept the SA there and sent its UDP-encapsulated ESP
  from port 500 (RFC 3948 forbids it), which our client's port-500 socket drops.
- A responder that forces UDP encapsulation sends NAT detection notifies even when it
  does not know its own address (our server's wildcard UDP socket). It sent none, so a
  strongSwan client assumed no NAT-T and kernel-libipsec refused the Child SA ("only UDP
  encapsulation is supported").
"""

from __future__ import annotations

import pytest

from tests.ike.roundtrip import client_policy, make_rng, server_policy
from vpn.ike.constants import IKE_NATT_PORT, IKE_UDP_PORT, ExchangeType, NotifyType
from vpn.ike.message import Message, peek_header
from vpn.ike.policy import Address
from vpn.ike.session import IkeSession, Outgoing

CLIENT_IP, SERVER_IP = "192.0.2.10", "198.51.100.1"
CLIENT_500 = (CLIENT_IP, 41000)  # the client's ephemeral source port for port 500


def handshake(
    *, force: bool, nat: bool, server_force: bool = False, server_local: Address | None = (SERVER_IP, IKE_UDP_PORT)
) -> tuple[list[Outgoing], IkeSession, Message]:
    """IKE_SA_INIT over port 500; returns what the client sends next (IKE_AUTH), the
    client and the decoded IKE_SA_INIT response."""
    client = IkeSession(
        client_policy(force_udp_encapsulation=force),
        initiator=True,
        rng=make_rng(5),
        local_addr=CLIENT_500,
        remote_addr=(SERVER_IP, IKE_UDP_PORT),
    )
    server = IkeSession(
        server_policy(force_udp_encapsulation=server_force), initiator=False, rng=make_rng(6), local_addr=server_local
    )
    client.initiate(1000.0)
    (init,) = client.messages_to_send()
    assert init.remote == (SERVER_IP, IKE_UDP_PORT)
    seen_from = ("203.0.113.5", 50000) if nat else CLIENT_500
    server.receive_message(init.data, 1000.0, seen_from)
    (resp,) = server.messages_to_send()
    client.receive_message(resp.data, 1000.1, (SERVER_IP, IKE_UDP_PORT))
    return client.messages_to_send(), client, Message.decode(resp.data)


@pytest.mark.parametrize(("force", "nat"), [(True, False), (False, True), (True, True)])
def test_ike_auth_goes_to_4500_with_a_nat(force: bool, nat: bool) -> None:
    auth, client, _ = handshake(force=force, nat=nat)
    assert auth and all(peek_header(o.data).exchange == ExchangeType.IKE_AUTH for o in auth)
    assert {o.remote for o in auth} == {(SERVER_IP, IKE_NATT_PORT)}
    assert client.remote_addr == (SERVER_IP, IKE_NATT_PORT)


def test_ike_auth_stays_on_500_without_a_nat() -> None:
    auth, client, _ = handshake(force=False, nat=False)
    assert not client.nat_local and not client.nat_remote
    assert {o.remote for o in auth} == {(SERVER_IP, IKE_UDP_PORT)}


def test_forcing_responder_without_local_address_sends_nat_detection() -> None:
    """Our server does not know its address (wildcard socket) and forces encapsulation:
    its response still carries both notifies, the client sees it behind a NAT and moves
    to port 4500 (it does not fake anything itself here)."""
    auth, client, resp = handshake(force=False, nat=False, server_force=True, server_local=None)
    assert resp.has_notify(NotifyType.NAT_DETECTION_SOURCE_IP)
    assert resp.has_notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    assert client.nat_remote and not client.nat_local
    assert {o.remote for o in auth} == {(SERVER_IP, IKE_NATT_PORT)}


def test_responder_without_local_address_and_no_forcing_sends_none() -> None:
    """Without forcing, the source hash needs our address: none is sent rather than a
    wrong one (which would claim a NAT that is not there)."""
    auth, client, resp = handshake(force=False, nat=False, server_force=False, server_local=None)
    assert not resp.has_notify(NotifyType.NAT_DETECTION_SOURCE_IP)
    assert not client.nat_remote
    assert {o.remote for o in auth} == {(SERVER_IP, IKE_UDP_PORT)}
