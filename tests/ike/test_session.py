"""IKE_SA_INIT + IKE_AUTH between two in-memory sessions (tests/ike/roundtrip.py).

Covers the PSK handshake with CP and narrowing for each DH group and cipher, the keys
both sides derive, UDP retransmission and the responder's cache, the TCP mode, and the
failures that close or keep the IKE SA (RFC 7296 §1.2, §2.1, §2.21; RFC 9329 §6.2).
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.ike.roundtrip import (
    CLIENT_ID,
    NAT_ADDR,
    PSK,
    SERVER_ADDR,
    SERVER_ID,
    client_policy,
    connect,
    pair,
    server_policy,
)
from vpn.ike.constants import DhId, EncrId, ExchangeType, IntegId, NotifyType, PrfId
from vpn.ike.credentials import PskAuthenticator
from vpn.ike.errors import LocalProtocolError
from vpn.ike.events import (
    ChildCloseReason,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    CloseReason,
    IkeSaClosed,
    IkeSaEstablished,
    InitialContactReceived,
    RequestRetransmitted,
    VirtualAddressAssigned,
)
from vpn.ike.message import Message, peek_header
from vpn.ike.payloads import TrafficSelector
from vpn.ike.policy import (
    ChildPolicy,
    EspProposal,
    Identity,
    IkeProposal,
    PoolAllocator,
    RetransmitPolicy,
    VirtualIpRequest,
)
from vpn.ike.state import IkeState


def only(events: list[object], cls: type) -> list[object]:
    return [e for e in events if isinstance(e, cls)]


def the(events: list[object], cls: type) -> object:
    found = only(events, cls)
    assert len(found) == 1, (cls.__name__, events)
    return found[0]


# --------------------------------------------------------------------------- handshake


def test_psk_handshake_with_cp_and_narrowing() -> None:
    net = connect()
    c_ev, s_ev = net.client.events, net.server.events
    c_up = the(c_ev, IkeSaEstablished)
    s_up = the(s_ev, IkeSaEstablished)
    assert (c_up.spi_i, c_up.spi_r) == (s_up.spi_i, s_up.spi_r)
    assert c_up.peer_id == SERVER_ID and s_up.peer_id == CLIENT_ID
    assert c_up.initiator and not s_up.initiator
    assert c_up.mobike and s_up.mobike and c_up.fragmentation
    assert not (c_up.nat_local or c_up.nat_remote or s_up.nat_local or s_up.nat_remote)
    assert c_up.algorithms == s_up.algorithms
    assert c_up.algorithms.dh == DhId.CURVE25519 and c_up.algorithms.encr == EncrId.AES_GCM_16

    assert the(s_ev, InitialContactReceived).peer_id == CLIENT_ID
    c_vip = the(c_ev, VirtualAddressAssigned)
    s_vip = the(s_ev, VirtualAddressAssigned)
    assert c_vip.addresses == s_vip.addresses == (ipaddress.ip_interface("10.9.0.2/32"),)
    assert c_vip.dns == (ipaddress.ip_address("10.9.0.1"),)  # only the family asked for
    assert not c_vip.assigned_to_peer and s_vip.assigned_to_peer and s_vip.peer_id == CLIENT_ID

    c_child = the(c_ev, ChildSaEstablished).child
    s_child = the(s_ev, ChildSaEstablished).child
    # one SA pair: each side's inbound SPI is the other's outbound, with the same keys
    assert (c_child.spi_in, c_child.spi_out) == (s_child.spi_out, s_child.spi_in)
    assert c_child.keys_out == s_child.keys_in and c_child.keys_in == s_child.keys_out
    assert c_child.keys_in != c_child.keys_out
    assert len(c_child.keys_out.encr_key) == 32 and len(c_child.keys_out.salt) == 4
    # the full-tunnel TSi was narrowed to the leased address (RFC 7296 §2.9)
    host = (TrafficSelector.from_address("10.9.0.2"),)
    assert c_child.ts_local == s_child.ts_remote == host
    assert c_child.ts_remote == s_child.ts_local
    assert c_child.algorithms.encr == EncrId.AES_GCM_16 and not c_child.algorithms.esn
    assert "keys hidden" in repr(c_child) and c_child.keys_in.encr_key.hex() not in repr(c_child)
    # message IDs: IKE_SA_INIT 0, IKE_AUTH 1, nothing else
    ids = [peek_header(s.data).message_id for s in net.log]
    assert ids == [0, 0, 1, 1]
    assert net.client.session.child_sas() == [c_child]
    assert net.server_session.lease is not None


@pytest.mark.parametrize("group", [DhId.CURVE25519, DhId.ECP256, DhId.MODP2048])
@pytest.mark.parametrize(
    ("encr", "bits", "integ"),
    [
        (EncrId.AES_GCM_16, 128, ()),
        (EncrId.AES_GCM_16, 256, ()),
        (EncrId.AES_CBC, 256, (IntegId.HMAC_SHA2_256_128,)),
    ],
)
def test_groups_and_ciphers(group: DhId, encr: EncrId, bits: int, integ: tuple[IntegId, ...]) -> None:
    ike = (IkeProposal(((encr, bits),), (PrfId.HMAC_SHA2_384,), (group,), integ),)
    esp = ChildPolicy(proposals=(EspProposal(encr=((EncrId.AES_GCM_16, bits),)),))
    net = connect(client_policy(ike_proposals=ike, child=esp), server_policy(child=esp))
    up = the(net.client.events, IkeSaEstablished)
    assert (up.algorithms.dh, up.algorithms.encr, up.algorithms.key_bits) == (group, encr, bits)
    assert up.algorithms.integ == (integ[0] if integ else IntegId.NONE)
    child = the(net.client.events, ChildSaEstablished).child
    assert child.algorithms.key_bits == bits and len(child.keys_in.encr_key) == bits // 8


def test_ipv6_and_dual_stack_virtual_addresses() -> None:
    net = connect(client_policy(virtual_ip=VirtualIpRequest(ipv4=True, ipv6=True)))
    vip = the(net.client.events, VirtualAddressAssigned)
    assert {a.version for a in vip.addresses} == {4, 6}
    assert ipaddress.ip_address("fd00:9::1") in vip.dns
    child = the(net.client.events, ChildSaEstablished).child
    assert {ts.start.version for ts in child.ts_local} == {4, 6}


def test_same_identity_gets_the_same_address_back() -> None:
    pool = PoolAllocator("10.9.0.0/24", dns=["10.9.0.1"])
    first = connect(server=server_policy(allocator=pool))
    addr = the(first.client.events, VirtualAddressAssigned).addresses
    first.client.session.close(first.now)
    first.run(seconds=2)
    assert first.server_session.closed
    again = connect(server=server_policy(allocator=pool))
    assert the(again.client.events, VirtualAddressAssigned).addresses == addr
    other = connect(client_policy(local_id=Identity.email("bob@example.org")), server_policy(allocator=pool))
    assert the(other.client.events, VirtualAddressAssigned).addresses != addr


def test_split_tunnel_narrowing() -> None:
    subnets = (TrafficSelector.from_network("10.1.0.0/16"), TrafficSelector.from_network("10.2.0.0/16"))
    net = connect(server=server_policy(child=ChildPolicy(local_ts=subnets)))
    child = the(net.client.events, ChildSaEstablished).child
    assert child.ts_remote == subnets


def test_nat_detection_and_forced_encapsulation() -> None:
    net = connect(nat=NAT_ADDR)
    c_up = the(net.client.events, IkeSaEstablished)
    s_up = the(net.server.events, IkeSaEstablished)
    assert c_up.nat_local and not c_up.nat_remote
    assert s_up.nat_remote and not s_up.nat_local
    assert s_up.remote_addr == NAT_ADDR
    assert the(net.client.events, ChildSaEstablished).child.udp_encapsulation
    forced = connect(client_policy(force_udp_encapsulation=True))
    assert the(forced.server.events, IkeSaEstablished).nat_remote
    assert the(forced.client.events, IkeSaEstablished).nat_local


def test_no_virtual_ip_without_cp_and_childless_policy() -> None:
    net = connect(
        client_policy(
            virtual_ip=None, child=ChildPolicy(local_ts=(TrafficSelector.from_address("192.0.2.10"),))
        )
    )
    assert not only(net.client.events, VirtualAddressAssigned)
    child = the(net.server.events, ChildSaEstablished).child
    assert child.ts_remote == (TrafficSelector.from_address("192.0.2.10"),)
    assert net.server_session.lease is None


def test_api_misuse_raises() -> None:
    net = pair()
    with pytest.raises(LocalProtocolError):
        net.server_session.initiate(net.now)
    with pytest.raises(LocalProtocolError):
        net.client.session.rekey_ike(net.now)
    net.client.session.initiate(net.now)
    with pytest.raises(LocalProtocolError):
        net.client.session.initiate(net.now)


# --------------------------------------------------------------------------- UDP loss


def test_lost_ike_auth_request_is_retransmitted_byte_for_byte() -> None:
    net = pair()
    net.drop = lambda sent: sent.src == "client" and sent.index == 1  # the first IKE_AUTH
    net.client.session.initiate(net.now)
    net.run(seconds=10)
    assert net.client.session.established and net.server_session.established
    client_sent = net.sent_by("client")
    assert client_sent[1].dropped and client_sent[2].data == client_sent[1].data
    assert client_sent[2].at - client_sent[1].at == pytest.approx(4.0)  # RetransmitPolicy.timeout
    assert the(net.client.events, RequestRetransmitted).exchange == ExchangeType.IKE_AUTH


def test_lost_response_is_answered_from_the_responder_cache() -> None:
    net = pair()
    net.drop = lambda sent: sent.src == "server" and sent.index == 1  # the IKE_AUTH response
    net.client.session.initiate(net.now)
    net.run(seconds=10)
    assert net.client.session.established
    server_sent = net.sent_by("server")
    assert server_sent[2].data == server_sent[1].data  # RFC 7296 §2.1: the cached response
    # one IKE_AUTH processed: the responder emitted its events once
    assert len(only(net.server.events, IkeSaEstablished)) == 1
    assert len(only(net.server.events, ChildSaEstablished)) == 1


def test_duplicated_messages_change_nothing() -> None:
    net = pair()
    net.duplicate = lambda sent: True
    net.client.session.initiate(net.now)
    net.run(seconds=10)
    assert len(only(net.client.events, IkeSaEstablished)) == 1
    assert len(only(net.server.events, ChildSaEstablished)) == 1
    assert len(only(net.client.events, ChildSaEstablished)) == 1
    # the duplicate IKE_SA_INIT and IKE_AUTH requests were answered from the cache
    server_sent = net.sent_by("server")
    assert [s.data for s in server_sent] == [server_sent[0].data] * 2 + [server_sent[2].data] * 2


def test_retransmissions_back_off_exponentially_then_time_out() -> None:
    net = pair()
    net.drop = lambda sent: sent.src == "server"
    net.client.session.initiate(net.now)
    net.run(seconds=400)
    times = [s.at for s in net.sent_by("client")]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps == pytest.approx([4.0 * 1.8**k for k in range(5)])
    closed = the(net.client.events, IkeSaClosed)
    assert closed.reason is CloseReason.TIMEOUT
    assert len(only(net.client.events, RequestRetransmitted)) == 5
    assert net.client.session.get_timer() is None


def test_reordered_responses_before_requests_are_dropped() -> None:
    net = pair()
    net.client.session.initiate(net.now)
    net.run(seconds=2)
    stale = net.sent_by("server")[0].data  # the IKE_SA_INIT response again
    net.client.session.receive_message(stale, net.now, SERVER_ADDR)
    assert net.client.session.established and net.client.session.dropped == 1


# --------------------------------------------------------------------------- TCP mode


def test_tcp_mode_no_retransmission_then_deletion_after_timeout() -> None:
    rt = RetransmitPolicy(tcp_timeout=20.0)
    net = pair(client_policy(retransmit=rt), stream=True)
    net.drop = lambda sent: sent.src == "server"
    net.client.session.initiate(net.now)
    net.run(seconds=100)
    assert len(net.sent_by("client")) == 1  # RFC 9329 §6.2: no retransmission
    closed = the(net.client.events, IkeSaClosed)
    assert closed.reason is CloseReason.TIMEOUT
    assert net.client.events.index(closed) == len(net.client.events) - 1


def test_tcp_handshake_and_no_fragments_on_streams() -> None:
    net = connect(client_policy(fragment_size=256), server_policy(fragment_size=256), stream=True)
    assert net.client.session.fragmentation  # negotiated (RFC 9329 §7.5, T83) ...
    assert all(peek_header(s.data).next_payload != 53 for s in net.log)  # ... never used


def test_transport_changed_resends_the_same_bytes() -> None:
    net = pair(stream=True)
    net.drop = lambda sent: sent.src == "client" and sent.index == 1  # IKE_AUTH lost with its connection
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert not net.client.session.established
    net.drop = lambda sent: False
    net.client.session.transport_changed(net.now, stream=True, local=("192.0.2.10", 50123))
    net.run(seconds=5)
    assert net.client.session.established
    sent = net.sent_by("client")
    assert sent[2].data == sent[1].data  # RFC 9329 §6.2 MUST: the same request again
    assert peek_header(sent[2].data).message_id == 1


def test_reconnecting_does_not_extend_the_response_timeout() -> None:
    """RFC 9329 §6.2: the initiator keeps waiting across new connections. A server that
    lost the SA closes every new connection; reconnecting must not postpone the end."""
    rt = RetransmitPolicy(tcp_timeout=20.0)
    net = pair(client_policy(retransmit=rt), stream=True)
    net.drop = lambda sent: sent.src == "server"  # the answer never comes
    net.client.session.initiate(net.now)
    for _ in range(5):  # a new connection every 5 s, each gets the request again
        net.run(seconds=5)
        if net.client.session.closed:
            break
        net.client.session.transport_changed(net.now, stream=True, local=("192.0.2.10", 50000 + _))
    closed = the(net.client.events, IkeSaClosed)
    assert closed.reason is CloseReason.TIMEOUT
    assert len(net.sent_by("client")) >= 4  # it was resent on every new connection


# --------------------------------------------------------------------------- failures


def test_wrong_psk_fails_on_the_responder() -> None:
    server = server_policy(
        authenticator=PskAuthenticator(lambda peer: b"another key" if peer == CLIENT_ID else None)
    )
    net = pair(server=server)
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    s_closed = the(net.server.events, IkeSaClosed)
    c_closed = the(net.client.events, IkeSaClosed)
    assert s_closed.reason is c_closed.reason is CloseReason.AUTHENTICATION_FAILED
    assert c_closed.notify == NotifyType.AUTHENTICATION_FAILED
    assert not only(net.server.events, IkeSaEstablished) and not only(net.client.events, IkeSaEstablished)
    assert net.server_session.lease is None


def test_unknown_identity_fails() -> None:
    server = server_policy(authenticator=PskAuthenticator(PSK, peers=[Identity.email("bob@example.org")]))
    net = pair(server=server)
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert the(net.client.events, IkeSaClosed).reason is CloseReason.AUTHENTICATION_FAILED


def test_responder_identity_mismatch_fails_on_the_initiator() -> None:
    net = pair(client_policy(remote_id=Identity.fqdn("other.example.org")))
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    c_closed = the(net.client.events, IkeSaClosed)
    assert c_closed.reason is CloseReason.AUTHENTICATION_FAILED
    # RFC 7296 §2.21.2: the initiator tells the responder, which closes too
    s_closed = the(net.server.events, IkeSaClosed)
    assert s_closed.reason is CloseReason.AUTHENTICATION_FAILED
    assert only(net.server.events, ChildSaDeleted)  # its Child SA went with it


def test_no_proposal_chosen_in_ike_sa_init() -> None:
    cbc = (
        IkeProposal(((EncrId.AES_CBC, 128),), (PrfId.HMAC_SHA1,), (DhId.MODP2048,), (IntegId.HMAC_SHA1_96,)),
    )
    gcm = (IkeProposal(((EncrId.AES_GCM_16, 256),), (PrfId.HMAC_SHA2_256,), (DhId.MODP2048,)),)
    net = pair(client_policy(ike_proposals=cbc), server_policy(ike_proposals=gcm))
    net.client.session.initiate(net.now)
    net.run(seconds=30)
    c_closed = the(net.client.events, IkeSaClosed)
    assert c_closed.reason is CloseReason.NO_PROPOSAL_CHOSEN
    # RFC 7296 §2.21.1: over UDP the initiator waits a little for a genuine answer
    assert c_closed is net.client.events[-1]
    assert the(net.server.events, IkeSaClosed).reason is CloseReason.NO_PROPOSAL_CHOSEN
    reply = Message.decode(net.sent_by("server")[0].data)
    assert reply.spi_r == bytes(8) and reply.has_notify(NotifyType.NO_PROPOSAL_CHOSEN)


def test_no_proposal_chosen_over_tcp_closes_at_once() -> None:
    cbc = (
        IkeProposal(((EncrId.AES_CBC, 128),), (PrfId.HMAC_SHA1,), (DhId.MODP2048,), (IntegId.HMAC_SHA1_96,)),
    )
    net = pair(
        client_policy(ike_proposals=cbc),
        server_policy(
            ike_proposals=(
                IkeProposal(((EncrId.AES_GCM_16, 256),), (PrfId.HMAC_SHA2_256,), (DhId.MODP2048,)),
            )
        ),
        stream=True,
    )
    net.client.session.initiate(net.now)
    start = net.now
    net.run(seconds=30)
    assert the(net.client.events, IkeSaClosed).reason is CloseReason.NO_PROPOSAL_CHOSEN
    assert net.client.session.closed and net.sent_by("server")[0].at - start < 1  # RFC 9329 §6.4


def test_child_no_proposal_keeps_the_ike_sa_on_the_responder() -> None:
    cbc_esp = ChildPolicy(
        proposals=(EspProposal(encr=((EncrId.AES_CBC, 256),), integ=(IntegId.HMAC_SHA2_256_128,)),)
    )
    net = pair(client_policy(child=cbc_esp, close_ike_on_child_failure=False))
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    failed = the(net.client.events, ChildSaFailed)
    assert failed.notify == NotifyType.NO_PROPOSAL_CHOSEN and failed.in_ike_auth
    assert net.client.session.established and net.server_session.established  # RFC 7296 §1.2
    assert the(net.server.events, ChildSaFailed).notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_ts_unacceptable_initiator_deletes_the_ike_sa() -> None:
    client = client_policy(
        virtual_ip=None, child=ChildPolicy(remote_ts=(TrafficSelector.from_network("192.168.0.0/16"),))
    )
    server = server_policy(child=ChildPolicy(local_ts=(TrafficSelector.from_network("10.0.0.0/8"),)))
    net = pair(client, server)
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    failed = the(net.client.events, ChildSaFailed)
    assert failed.notify == NotifyType.TS_UNACCEPTABLE and failed.in_ike_auth
    closed = the(net.client.events, IkeSaClosed)
    assert closed.reason is CloseReason.CHILD_SA_FAILED and closed.notify == NotifyType.TS_UNACCEPTABLE
    assert the(net.server.events, IkeSaClosed).reason is CloseReason.DELETED_BY_PEER


def test_internal_address_failure_when_the_pool_is_empty() -> None:
    tiny = PoolAllocator("10.9.0.0/30", exclude=["10.9.0.1", "10.9.0.2"])  # no usable address
    net = pair(server=server_policy(allocator=tiny))
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert the(net.server.events, ChildSaFailed).notify == NotifyType.INTERNAL_ADDRESS_FAILURE
    assert the(net.client.events, ChildSaFailed).notify == NotifyType.INTERNAL_ADDRESS_FAILURE
    assert the(net.client.events, IkeSaClosed).reason is CloseReason.CHILD_SA_FAILED


def test_failed_cp_required() -> None:
    net = pair(client_policy(virtual_ip=None), server_policy(require_virtual_ip=True))
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert the(net.client.events, ChildSaFailed).notify == NotifyType.FAILED_CP_REQUIRED


def test_half_open_responder_times_out() -> None:
    net = pair()
    net.drop = lambda sent: sent.src == "client" and sent.index > 0  # no IKE_AUTH arrives
    net.client.session.initiate(net.now)
    net.run(seconds=40)
    assert the(net.server.events, IkeSaClosed).reason is CloseReason.HALF_OPEN_TIMEOUT


def test_close_before_established_ends_quietly() -> None:
    net = pair()
    net.client.session.initiate(net.now)
    net.client.session.close(net.now)
    net.run(seconds=1)
    assert the(net.client.events, IkeSaClosed).reason is CloseReason.DELETED_LOCALLY
    assert net.client.session.state is IkeState.CLOSED
    assert net.client.session.get_timer() is None


def test_local_close_deletes_both_sides() -> None:
    pool = PoolAllocator("10.9.0.0/24")
    net = connect(server=server_policy(allocator=pool))
    assert list(pool.in_use()) == [ipaddress.ip_address("10.9.0.1")]
    net.client.session.close(net.now)
    net.run(seconds=2)
    for ep in (net.client, net.server):
        events = ep.events
        deleted = the(events, ChildSaDeleted)
        closed = the(events, IkeSaClosed)
        assert events.index(deleted) < events.index(closed)
    assert the(net.client.events, ChildSaDeleted).reason is ChildCloseReason.IKE_SA_CLOSED
    assert the(net.client.events, IkeSaClosed).reason is CloseReason.DELETED_LOCALLY
    assert the(net.server.events, IkeSaClosed).reason is CloseReason.DELETED_BY_PEER
    assert pool.in_use() == {}  # the lease went back to the pool


def test_virtual_address_replaces_a_libreswan_style_tsi() -> None:
    # Libreswan sends its outer address as TSi next to CFG_REQUEST; the answer carries the
    # leased address instead (RFC 7296 §2.19), and the client accepts it.
    outer = (TrafficSelector.from_address("192.0.2.10"),)
    net = connect(client_policy(child=ChildPolicy(local_ts=outer)))
    c_child = the(net.client.events, ChildSaEstablished).child
    assert c_child.ts_local == (TrafficSelector.from_address("10.9.0.2"),)
    assert the(net.server.events, ChildSaEstablished).child.ts_remote == c_child.ts_local
