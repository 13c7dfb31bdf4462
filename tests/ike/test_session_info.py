"""INFORMATIONAL exchanges: Delete (RFC 7296 §1.4.1, §2.25.1), liveness checks (§2.4),
INVALID_SPI (§3.10.1) and MOBIKE (RFC 4555; RFC 9329 §7.1 UDP -> TCP fallback)."""

from __future__ import annotations

import pytest

from tests.ike.roundtrip import CLIENT_ADDR, SERVER_ADDR, Network, client_policy, connect, server_policy
from vpn.ike.constants import ExchangeType, NotifyType, ProtocolId
from vpn.ike.errors import LocalProtocolError
from vpn.ike.events import (
    AddressesUpdated,
    ChildCloseReason,
    ChildSaDeleted,
    CloseReason,
    IkeSaClosed,
    PeerAddressChanged,
    RequestRetransmitted,
)
from vpn.ike.message import Delete, Message, Notify, peek_header
from vpn.ike.policy import DpdPolicy, Lifetimes
from vpn.ike.session import IkeSession

NO_REKEY = Lifetimes(
    ike_rekey_seconds=0, ike_lifetime_seconds=0, child_rekey_seconds=0, child_lifetime_seconds=0
)
NEW_ADDR = ("192.0.2.77", 4500)


def only(events: list[object], cls: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, cls)]


def quiet_pair(**kw: object) -> Network:
    return connect(
        client_policy(lifetimes=NO_REKEY, dpd=DpdPolicy(0), **kw),
        server_policy(lifetimes=NO_REKEY, dpd=DpdPolicy(0), **kw),
    )


def inner(session: IkeSession, data: bytes) -> list[object]:
    sa = session._sas[peek_header(data).spi_r if peek_header(data).is_initiator else peek_header(data).spi_i]
    payloads, _ = sa.open(Message.decode(data), 0.0, 65535)
    assert payloads is not None
    return payloads


# --------------------------------------------------------------------------- Delete


@pytest.mark.parametrize("side", ["client", "server"])
def test_delete_child_from_either_side(side: str) -> None:
    net = quiet_pair()
    (c_child,) = net.client.session.child_sas()
    deleter = net.client.session if side == "client" else net.server_session
    spi = c_child.spi_in if side == "client" else c_child.spi_out
    deleter.delete_child(net.now, spi)
    net.run(seconds=2)
    for ep, mine in ((net.client, side == "client"), (net.server, side == "server")):
        (deleted,) = only(ep.events, ChildSaDeleted)
        assert deleted.reason is (
            ChildCloseReason.DELETED_LOCALLY if mine else ChildCloseReason.DELETED_BY_PEER
        )
    assert net.client.session.child_sas() == [] and net.server_session.child_sas() == []
    # the answer names the answering side's inbound SPI (§1.4.1: SAs deleted in pairs)
    request, response = net.log[-2], net.log[-1]
    asker = net.client.session if side == "client" else net.server_session
    answer = inner(asker, response.data)
    assert answer == [Delete(ProtocolId.ESP, (c_child.spi_out if side == "client" else c_child.spi_in,))]
    assert inner(net.server_session if side == "client" else net.client.session, request.data) == [
        Delete(ProtocolId.ESP, (spi,))
    ]
    assert net.client.session.established and net.server_session.established


def test_crossing_child_deletes() -> None:
    net = quiet_pair()
    (child,) = net.client.session.child_sas()
    net.client.session.delete_child(net.now, child.spi_in)
    net.server_session.delete_child(net.now, child.spi_out)
    net.run(seconds=2)
    for ep in (net.client, net.server):
        (deleted,) = only(ep.events, ChildSaDeleted)  # reported once
        assert deleted.reason is ChildCloseReason.DELETED_LOCALLY
    # §2.25.1: each answers the other's Delete without a Delete payload
    responses = [s for s in net.log[4:] if peek_header(s.data).is_response]
    assert len(responses) == 2
    for s in responses:
        receiver = net.server_session if s.src == "client" else net.client.session
        assert inner(receiver, s.data) == []


def test_crossing_ike_deletes() -> None:
    net = quiet_pair()
    net.client.session.close(net.now)
    net.server_session.close(net.now)
    net.run(seconds=5)
    for ep in (net.client, net.server):
        (closed,) = only(ep.events, IkeSaClosed)
        assert closed.reason in (CloseReason.DELETED_BY_PEER, CloseReason.DELETED_LOCALLY)
        assert closed is ep.events[-1]
    assert net.client.session.closed and net.server_session.closed


def test_close_waits_for_the_outstanding_request() -> None:
    net = quiet_pair()
    net.client.session.check_liveness(net.now)
    net.client.session.close(net.now)
    net.run(seconds=2)
    kinds = [peek_header(s.data).message_id for s in net.sent_by("client")[2:]]
    assert kinds == [2, 3]  # window size 1: the Delete follows the liveness check
    assert only(net.server.events, IkeSaClosed)[0].reason is CloseReason.DELETED_BY_PEER


def test_delete_of_unknown_spi_is_answered_empty() -> None:
    net = quiet_pair()
    sa = net.client.session._sa
    assert sa is not None
    packets = sa.seal(
        ExchangeType.INFORMATIONAL,
        sa.next_message_id,
        False,
        [Delete(ProtocolId.ESP, (b"\x01\x02\x03\x04",))],
        lambda n: b"\x00" * n,
        None,
    )
    net.server_session.receive_message(packets[0], net.now, CLIENT_ADDR)
    (out,) = net.server_session.messages_to_send()
    assert inner(net.client.session, out.data) == []
    assert len(net.server_session.child_sas()) == 1


# --------------------------------------------------------------------------- liveness


def test_liveness_check_is_answered() -> None:
    net = quiet_pair()
    net.client.session.check_liveness(net.now)
    net.run(seconds=2)
    request = net.sent_by("client")[-1]
    assert peek_header(request.data).exchange == ExchangeType.INFORMATIONAL
    assert inner(net.server_session, request.data) == []
    assert net.client.session.established


def test_dpd_declares_the_peer_dead_only_after_retransmissions() -> None:
    net = connect(
        client_policy(lifetimes=NO_REKEY, dpd=DpdPolicy(30)),
        server_policy(lifetimes=NO_REKEY, dpd=DpdPolicy(0)),
    )
    established_at = net.now
    net.drop = lambda sent: sent.src == "server"  # the server vanishes
    net.run(seconds=20)
    net.client.session.peer_activity(net.now)  # ESP still arrives for a while
    net.run(seconds=400)
    sent = [s for s in net.sent_by("client")[2:]]
    assert sent[0].at == pytest.approx(established_at + 20 + 30, abs=0.5)  # DPD postponed
    assert len(sent) == 6 and len({s.data for s in sent}) == 1  # one request, 5 resends
    (closed,) = only(net.client.events, IkeSaClosed)
    assert closed.reason is CloseReason.PEER_DEAD
    assert len(only(net.client.events, RequestRetransmitted)) == 5
    assert closed.spi_i == net.client.session.spi_i


def test_dpd_over_tcp_times_out_without_resends() -> None:
    from vpn.ike.policy import RetransmitPolicy

    net = connect(
        client_policy(lifetimes=NO_REKEY, dpd=DpdPolicy(10), retransmit=RetransmitPolicy(tcp_timeout=30)),
        server_policy(lifetimes=NO_REKEY, dpd=DpdPolicy(0)),
        stream=True,
    )
    net.drop = lambda sent: sent.src == "server"
    net.run(seconds=100)
    assert len(net.sent_by("client")) == 3
    assert only(net.client.events, IkeSaClosed)[0].reason is CloseReason.PEER_DEAD


def test_invalid_spi_notify_deletes_the_useless_sa() -> None:
    net = quiet_pair()
    (child,) = net.client.session.child_sas()
    # the server lost its inbound SA: ESP from the client (to spi_out) is unknown to it
    net.server_session.report_invalid_spi(net.now, child.spi_out)
    net.run(seconds=2)
    assert [d.spi_in for d in only(net.client.events, ChildSaDeleted)] == [child.spi_in]
    assert net.client.session.child_sas() == []


# --------------------------------------------------------------------------- MOBIKE


def test_mobike_update_moves_the_sa() -> None:
    net = quiet_pair()
    net.client.addr = NEW_ADDR
    net.client.session.update_addresses(net.now, local=NEW_ADDR)
    net.run(seconds=2)
    request = net.sent_by("client")[-1]
    payloads = inner(net.server_session, request.data)
    assert Notify(NotifyType.UPDATE_SA_ADDRESSES) in payloads
    assert any(isinstance(p, Notify) and p.type == NotifyType.NAT_DETECTION_SOURCE_IP for p in payloads)
    (moved,) = only(net.server.events, PeerAddressChanged)
    assert (moved.old, moved.new) == (CLIENT_ADDR, NEW_ADDR) and not moved.nat_remote
    assert net.server_session.remote_addr == NEW_ADDR
    (updated,) = only(net.client.events, AddressesUpdated)
    assert updated.local == NEW_ADDR and not updated.nat_local
    # the server now answers and sends to the new address
    net.server_session.check_liveness(net.now)
    assert net.server_session.messages_to_send()[0].remote == NEW_ADDR


def test_mobike_update_behind_a_new_nat() -> None:
    net = quiet_pair()
    net.nat = ("203.0.113.9", 3333)
    net.client.session.update_addresses(net.now, local=("10.0.0.5", 4500))
    net.run(seconds=2)
    (moved,) = only(net.server.events, PeerAddressChanged)
    assert moved.new == ("203.0.113.9", 3333) and moved.nat_remote
    (updated,) = only(net.client.events, AddressesUpdated)
    assert updated.nat_local


def test_mobike_tcp_fallback_resends_the_same_update_then_a_new_one() -> None:
    net = quiet_pair()
    net.drop = lambda sent: sent.src == "client"  # UDP is blocked on the new network
    net.client.session.update_addresses(net.now, local=NEW_ADDR)
    net.run(seconds=15)
    udp_tries = [s for s in net.sent_by("client")[2:]]
    assert len(udp_tries) >= 3 and len({s.data for s in udp_tries}) == 1
    # RFC 9329 §7.1: switch this same exchange to TCP (same message ID and bytes) ...
    net.drop = lambda sent: False
    net.client.addr = ("192.0.2.77", 40001)
    net.client.session.transport_changed(net.now, stream=True, local=("192.0.2.77", 40001))
    net.run(seconds=5)
    after = net.sent_by("client")[2 + len(udp_tries) :]
    assert after[0].data == udp_tries[0].data
    # ... then a new INFORMATIONAL with UPDATE_SA_ADDRESSES and NAT-D for the new path
    second = after[1]
    assert peek_header(second.data).message_id == peek_header(after[0].data).message_id + 1
    assert Notify(NotifyType.UPDATE_SA_ADDRESSES) in inner(net.server_session, second.data)
    (updated,) = only(net.client.events, AddressesUpdated)
    assert updated.stream and updated.local == ("192.0.2.77", 40001)
    assert len(only(net.server.events, PeerAddressChanged)) == 2
    assert net.client.session.established


def test_only_the_original_initiator_updates_addresses() -> None:
    net = quiet_pair()
    with pytest.raises(LocalProtocolError):
        net.server_session.update_addresses(net.now, local=("198.51.100.2", 4500))
    sa = net.server_session._sa
    assert sa is not None
    packets = sa.seal(
        ExchangeType.INFORMATIONAL,
        sa.next_message_id,
        False,
        [Notify(NotifyType.UPDATE_SA_ADDRESSES)],
        lambda n: b"\x00" * n,
        None,
    )
    net.client.session.receive_message(packets[0], net.now, ("198.51.100.2", 4500))
    net.client._collect()
    assert not only(net.client.events, PeerAddressChanged)
    assert net.client.session.remote_addr == SERVER_ADDR


def test_cookie2_is_echoed() -> None:
    net = quiet_pair()
    sa = net.client.session._sa
    assert sa is not None
    cookie2 = Notify(NotifyType.COOKIE2, b"\x42" * 16)
    packets = sa.seal(
        ExchangeType.INFORMATIONAL, sa.next_message_id, False, [cookie2], lambda n: b"\x00" * n, None
    )
    net.server_session.receive_message(packets[0], net.now, CLIENT_ADDR)
    (out,) = net.server_session.messages_to_send()
    assert cookie2 in inner(net.client.session, out.data)


def test_dynamic_address_update_without_mobike() -> None:
    net = quiet_pair(mobike=False)
    net.client.addr = NEW_ADDR  # e.g. a NAT mapping changed
    net.client.session.check_liveness(net.now)
    net.run(seconds=2)
    (moved,) = only(net.server.events, PeerAddressChanged)
    assert moved.new == NEW_ADDR and net.server_session.remote_addr == NEW_ADDR


def test_no_dynamic_update_with_mobike() -> None:
    net = quiet_pair()
    net.client.addr = NEW_ADDR
    net.client.session.check_liveness(net.now)
    net.run(seconds=2)
    assert not only(net.server.events, PeerAddressChanged)  # RFC 4555 §3.8
    assert net.server_session.remote_addr == CLIENT_ADDR
    assert net.sent_by("server")[-1].data  # answered (to the request's source)


# --------------------------------------------------------------------------- new paths


def test_new_tcp_connection_with_nothing_outstanding_announces_the_path() -> None:
    # RFC 9329 §6.1: on a new connection the client sends UPDATE_SA_ADDRESSES (MOBIKE) or
    # an empty INFORMATIONAL, so that the server learns the connection.
    net = quiet_pair()
    net.client.session.transport_changed(net.now, stream=True, local=("192.0.2.10", 50000))
    net.run(seconds=2)
    assert Notify(NotifyType.UPDATE_SA_ADDRESSES) in inner(net.server_session, net.sent_by("client")[-1].data)
    (updated,) = only(net.client.events, AddressesUpdated)
    assert updated.stream
    plain = quiet_pair(mobike=False)
    plain.client.session.transport_changed(plain.now, stream=True)
    plain.run(seconds=2)
    assert inner(plain.server_session, plain.sent_by("client")[-1].data) == []
    assert plain.client.session.established


def test_invalid_syntax_in_a_response_is_fatal() -> None:
    net = quiet_pair()
    client = net.client.session
    client.check_liveness(net.now)
    request = Message.decode(client.messages_to_send()[0].data)
    sa = net.server_session._sa
    assert sa is not None
    answer = sa.seal(
        request.exchange,
        request.message_id,
        True,
        [Notify(NotifyType.INVALID_SYNTAX)],
        lambda n: b"\0" * n,
        None,
    )
    client.receive_message(answer[0], net.now, SERVER_ADDR)
    net.client._collect()
    (closed,) = only(net.client.events, IkeSaClosed)
    assert closed.reason is CloseReason.PROTOCOL_ERROR and closed.notify == NotifyType.INVALID_SYNTAX
