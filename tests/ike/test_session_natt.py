"""The initiator moves to UDP port 4500 after IKE_SA_INIT when a NAT is detected or
faked (RFC 7296 §2.23), and stays on port 500 when neither is the case.

Found against strongSwan: our client kept sending IKE_AUTH to port 500, so charon kept
the SA on 500 and sent its UDP-encapsulated ESP from port 500 (RFC 3948 forbids it),
which our client's port-500 socket drops.
"""

from __future__ import annotations

import pytest

from tests.ike.roundtrip import client_policy, make_rng, server_policy
from vpn.ike.constants import IKE_NATT_PORT, IKE_UDP_PORT, ExchangeType
from vpn.ike.message import peek_header
from vpn.ike.session import IkeSession, Outgoing

CLIENT_IP, SERVER_IP = "192.0.2.10", "198.51.100.1"
CLIENT_500 = (CLIENT_IP, 41000)  # the client's ephemeral source port for port 500


def handshake(*, force: bool, nat: bool) -> tuple[list[Outgoing], IkeSession]:
    """IKE_SA_INIT over port 500; returns what the client sends next (IKE_AUTH)."""
    client = IkeSession(client_policy(force_udp_encapsulation=force), initiator=True, rng=make_rng(5),
                        local_addr=CLIENT_500, remote_addr=(SERVER_IP, IKE_UDP_PORT))
    server = IkeSession(server_policy(), initiator=False, rng=make_rng(6),
                        local_addr=(SERVER_IP, IKE_UDP_PORT))
    client.initiate(1000.0)
    (init,) = client.messages_to_send()
    assert init.remote == (SERVER_IP, IKE_UDP_PORT)
    seen_from = ("203.0.113.5", 50000) if nat else CLIENT_500
    server.receive_message(init.data, 1000.0, seen_from)
    (resp,) = server.messages_to_send()
    client.receive_message(resp.data, 1000.1, (SERVER_IP, IKE_UDP_PORT))
    return client.messages_to_send(), client


@pytest.mark.parametrize(("force", "nat"), [(True, False), (False, True), (True, True)])
def test_ike_auth_goes_to_4500_with_a_nat(force: bool, nat: bool) -> None:
    auth, client = handshake(force=force, nat=nat)
    assert auth and all(peek_header(o.data).exchange == ExchangeType.IKE_AUTH for o in auth)
    assert {o.remote for o in auth} == {(SERVER_IP, IKE_NATT_PORT)}
    assert client.remote_addr == (SERVER_IP, IKE_NATT_PORT)


def test_ike_auth_stays_on_500_without_a_nat() -> None:
    auth, client = handshake(force=False, nat=False)
    assert not client.nat_local and not client.nat_remote
    assert {o.remote for o in auth} == {(SERVER_IP, IKE_UDP_PORT)}
