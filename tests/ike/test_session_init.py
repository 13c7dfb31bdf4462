"""IKE_SA_INIT retries and refusals through the server's front door (responder.py):
COOKIE (RFC 7296 §2.6, RFC 9329 §6.3), INVALID_KE_PAYLOAD (§1.2, §2.6.1), error notifies
(INVALID_MAJOR_VERSION, UNSUPPORTED_CRITICAL_PAYLOAD, INVALID_SYNTAX) and integrity drops.
"""

from __future__ import annotations

import pytest

from tests.ike.roundtrip import (
    CLIENT_ADDR,
    SERVER_ADDR,
    Network,
    ResponderEndpoint,
    client_policy,
    connect,
    make_rng,
    server_policy,
)
from vpn.ike.constants import DhId, EncrId, ExchangeType, HeaderFlag, NotifyType, PayloadType, PrfId
from vpn.ike.events import CloseReason, IkeSaClosed, IkeSaEstablished
from vpn.ike.message import KeyExchange, Message, Nonce, Notify, UnknownPayload, encode_payloads
from vpn.ike.policy import IkeProposal, SessionPolicy
from vpn.ike.responder import CookiePolicy, IkeResponder
from vpn.ike.session import IkeSession


def the(events: list[object], cls: type) -> object:
    found = [e for e in events if isinstance(e, cls)]
    assert len(found) == 1, (cls.__name__, events)
    return found[0]


def front_door(
    client: SessionPolicy | None = None,
    server: SessionPolicy | None = None,
    *,
    cookies: CookiePolicy | None = None,
    stream: bool = False,
) -> tuple[Network, ResponderEndpoint]:
    door = IkeResponder(
        server or server_policy(), rng=make_rng(7), local_addr=SERVER_ADDR, cookies=cookies or CookiePolicy()
    )
    endpoint = ResponderEndpoint(door, SERVER_ADDR, stream=stream)
    session = IkeSession(
        client or client_policy(),
        initiator=True,
        rng=make_rng(3),
        stream=stream,
        local_addr=CLIENT_ADDR,
        remote_addr=SERVER_ADDR,
    )
    return Network(session, endpoint), endpoint


def inits(net: Network, src: str) -> list[Message]:
    return [
        Message.decode(s.data)
        for s in net.sent_by(src)
        if Message.decode(s.data).exchange == ExchangeType.IKE_SA_INIT
    ]


ONLY_ECP256 = (IkeProposal(((EncrId.AES_GCM_16, 256),), (PrfId.HMAC_SHA2_256,), (DhId.ECP256,)),)


# --------------------------------------------------------------------------- INVALID_KE


def test_invalid_ke_retry_with_the_group_asked_for() -> None:
    net, door = front_door(server=server_policy(ike_proposals=ONLY_ECP256))
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert net.client.session.established
    up = the(net.client.events, IkeSaEstablished)
    assert up.algorithms.dh == DhId.ECP256
    first, second = inits(net, "client")
    assert first.spi_i == second.spi_i and first.get(Nonce) == second.get(Nonce)  # §2.6.1
    assert first.get(KeyExchange).group == DhId.CURVE25519
    assert second.get(KeyExchange).group == DhId.ECP256
    refusal = inits(net, "server")[0]
    assert refusal.notify(NotifyType.INVALID_KE_PAYLOAD).accepted_group() == DhId.ECP256
    assert refusal.spi_r == bytes(8)  # no state for the refused attempt (§2.6)
    # two sessions were created, the first ended at once (stateless refusal)
    assert door.responder.stats.sessions_created == 2
    assert [type(e) for e in door.events if isinstance(e, IkeSaClosed)] == [IkeSaClosed]
    # AUTH covered the IKE_SA_INIT actually sent last, or nothing would be established
    assert the(door.events, IkeSaEstablished).peer_id == up.local_id


def test_no_invalid_ke_when_the_selected_proposal_allows_the_group() -> None:
    net, _ = front_door(
        client_policy(
            ike_proposals=(
                IkeProposal(
                    ((EncrId.AES_GCM_16, 128),), (PrfId.HMAC_SHA2_256,), (DhId.ECP256, DhId.CURVE25519)
                ),
            )
        )
    )
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert len(inits(net, "client")) == 1
    assert the(net.client.events, IkeSaEstablished).algorithms.dh == DhId.ECP256


def _ike_sa_init_answer(request: Message, notify: Notify) -> bytes:
    return Message(
        request.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, (notify,)
    ).encode()


def test_invalid_ke_for_a_group_we_did_not_offer_closes() -> None:
    net, _ = front_door()
    client = net.client.session
    client.initiate(net.now)
    request = Message.decode(client.messages_to_send()[0].data)
    client.receive_message(
        _ike_sa_init_answer(request, Notify.invalid_ke_payload(DhId.MODP4096)), net.now, SERVER_ADDR
    )
    assert client.messages_to_send() == []  # no retry with a group we never offered
    client.handle_timer(net.now + 10)
    assert the(net.client.of(IkeSaClosed), IkeSaClosed).reason is CloseReason.INVALID_KE


def test_initiator_retries_invalid_ke_only_once() -> None:
    net, _ = front_door()
    client = net.client.session
    client.initiate(net.now)
    request = Message.decode(client.messages_to_send()[0].data)
    client.receive_message(
        _ike_sa_init_answer(request, Notify.invalid_ke_payload(DhId.ECP256)), net.now, SERVER_ADDR
    )
    retry = Message.decode(client.messages_to_send()[0].data)
    assert retry.get(KeyExchange).group == DhId.ECP256
    client.receive_message(
        _ike_sa_init_answer(request, Notify.invalid_ke_payload(DhId.ECP384)), net.now, SERVER_ADDR
    )
    assert client.messages_to_send() == []
    client.handle_timer(net.now + 10)
    assert the(net.client.of(IkeSaClosed), IkeSaClosed).reason is CloseReason.INVALID_KE


# --------------------------------------------------------------------------- COOKIE


def test_cookie_round_trip() -> None:
    net, door = front_door(cookies=CookiePolicy(threshold=0))
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert net.client.session.established
    first, second = inits(net, "client")
    cookie = inits(net, "server")[0].notify(NotifyType.COOKIE)
    assert cookie is not None and 1 <= len(cookie.data) <= 64
    assert second.payloads[0] == Notify(NotifyType.COOKIE, cookie.data)  # §2.6: first payload
    assert second.payloads[1:] == first.payloads and second.spi_i == first.spi_i
    assert door.responder.stats.cookies_sent == 1 and door.responder.stats.cookies_accepted == 1
    assert door.responder.stats.sessions_created == 1  # no state before the cookie came back


def test_cookie_then_invalid_ke_keeps_the_cookie() -> None:
    net, door = front_door(server=server_policy(ike_proposals=ONLY_ECP256), cookies=CookiePolicy(threshold=0))
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert net.client.session.established
    requests = inits(net, "client")
    assert len(requests) == 3  # the §2.6.1 shorter exchange: the cookie stays in the retry
    assert requests[2].payloads[0].type == NotifyType.COOKIE
    assert requests[2].get(KeyExchange).group == DhId.ECP256
    assert door.responder.stats.cookies_sent == 1


def test_wrong_cookie_gets_a_new_one() -> None:
    net, door = front_door(cookies=CookiePolicy(threshold=0))
    client = net.client.session
    client.initiate(net.now)
    request = client.messages_to_send()[0].data
    msg = Message.decode(request)
    forged = Message(
        msg.spi_i,
        msg.spi_r,
        msg.exchange,
        msg.flags,
        0,
        (Notify(NotifyType.COOKIE, b"\x00" * 33), *msg.payloads),
    ).encode()
    d = door.responder.receive(forged, net.now, remote_addr=CLIENT_ADDR)
    assert d.session is None and d.replies
    assert Message.decode(d.replies[0].data).notify(NotifyType.COOKIE).data != b"\x00" * 33


def test_cookie_over_tcp_has_no_port_and_asks_to_close() -> None:
    net, door = front_door(cookies=CookiePolicy(threshold=0, over_tcp=True), stream=True)
    net.client.session.initiate(net.now)
    net.run(seconds=0.005)  # the first request is in flight
    net.step(net.now + 1)
    assert door.dispatches[0].close_connection_after == pytest.approx(net.now + 10.0, abs=0.1)
    door.source_override = (CLIENT_ADDR[0], 61000)  # the retry comes on a new connection
    net.run(seconds=5)
    assert net.client.session.established  # RFC 9329 §6.3: the port is not in the cookie


def test_cookie_depends_on_the_address() -> None:
    net, door = front_door(cookies=CookiePolicy(threshold=0))
    net.client.session.initiate(net.now)
    net.run(seconds=0.005)
    net.step(net.now + 1)
    door.source_override = ("192.0.2.99", CLIENT_ADDR[1])  # a NAT changed the address
    net.run(seconds=5)
    # the cookie made for the first address is refused; a new one for the new address works
    assert door.responder.stats.cookies_sent == 2 and door.responder.stats.cookies_accepted == 1
    cookies = [m.notify(NotifyType.COOKIE).data for m in inits(net, "server")[:2]]
    assert cookies[0] != cookies[1]
    assert net.client.session.established


def test_no_cookie_over_tcp_by_default() -> None:
    net, door = front_door(cookies=CookiePolicy(threshold=0), stream=True)
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert net.client.session.established and door.responder.stats.cookies_sent == 0


def test_half_open_limit_drops_new_requests() -> None:
    net, door = front_door(cookies=CookiePolicy(threshold=100, max_half_open=1))
    net.drop = lambda sent: sent.src == "client" and sent.index > 0  # first client never authenticates
    net.client.session.initiate(net.now)
    net.run(seconds=1)
    assert door.responder.half_open == 1
    other = IkeSession(
        client_policy(),
        initiator=True,
        rng=make_rng(99),
        local_addr=("192.0.2.11", 4500),
        remote_addr=SERVER_ADDR,
    )
    other.initiate(net.now)
    d = door.responder.receive(other.messages_to_send()[0].data, net.now, remote_addr=("192.0.2.11", 4500))
    assert d.session is None and d.replies == () and door.responder.stats.dropped == 1


def test_ike_sa_init_retransmission_reaches_the_same_session() -> None:
    net, door = front_door()
    net.duplicate = lambda sent: sent.src == "client"
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert net.client.session.established
    assert door.responder.stats.sessions_created == 1
    server_inits = inits(net, "server")
    assert len(server_inits) == 2 and server_inits[0] == server_inits[1]
    assert door.responder.session_for(net.client.session.spi_r) is not None


# --------------------------------------------------------------------------- error notifies


def test_invalid_major_version_is_answered_and_responses_are_not() -> None:
    door = IkeResponder(server_policy(), rng=make_rng(1))
    msg = Message(b"\x01" * 8, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, (), version=0x30)
    d = door.receive(msg.encode(), 0.0, remote_addr=CLIENT_ADDR)
    reply = Message.decode(d.replies[0].data)
    assert reply.version == 0x20 and reply.is_response and reply.spi_i == b"\x01" * 8
    assert reply.has_notify(NotifyType.INVALID_MAJOR_VERSION)
    response = Message(
        b"\x01" * 8, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, (), version=0x30
    )
    assert door.receive(response.encode(), 0.0, remote_addr=CLIENT_ADDR).replies == ()


def test_unsupported_critical_payload_in_ike_sa_init() -> None:
    client = IkeSession(
        client_policy(), initiator=True, rng=make_rng(1), local_addr=CLIENT_ADDR, remote_addr=SERVER_ADDR
    )
    client.initiate(0.0)
    msg = Message.decode(client.messages_to_send()[0].data)
    odd = Message(
        msg.spi_i,
        msg.spi_r,
        msg.exchange,
        msg.flags,
        0,
        (*msg.payloads, UnknownPayload(60, b"x", is_critical=True)),
    )
    door = IkeResponder(server_policy(), rng=make_rng(2))
    d = door.receive(odd.encode(), 0.0, remote_addr=CLIENT_ADDR)
    reply = Message.decode(d.session.messages_to_send()[0].data)
    assert reply.notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD).data == bytes([60])
    assert d.session.closed and not door.sessions()


def _seal_raw(
    session: IkeSession, exchange: ExchangeType, message_id: int, first: int, plaintext: bytes
) -> bytes:
    """An SK request from the client with arbitrary (possibly malformed) inner bytes."""
    sa = session._sa
    assert sa is not None
    cipher = sa._out
    assert cipher is not None
    shell = Message(sa.spi_i, sa.spi_r, exchange, sa.flags(False), message_id)
    aad = shell.sk_aad(first, cipher.body_length(len(plaintext)))
    return shell.encode_with_sk(first, cipher.seal(aad, plaintext, b"\xee" * cipher.iv_bytes))


def _open_reply(session: IkeSession, data: bytes) -> list[object]:
    sa = session._sa
    assert sa is not None
    payloads, _ = sa.open(Message.decode(data), 0.0, 65535)
    assert payloads is not None
    return payloads


def test_unsupported_critical_payload_inside_sk() -> None:
    net = connect()
    first, plain = encode_payloads([UnknownPayload(61, b"abc", is_critical=True)])
    net.server_session.receive_message(
        _seal_raw(net.client.session, ExchangeType.INFORMATIONAL, 2, first, plain), net.now, CLIENT_ADDR
    )
    (out,) = net.server_session.messages_to_send()
    (notify,) = _open_reply(net.client.session, out.data)
    assert notify == Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([61]))
    assert net.server_session.established


def test_invalid_syntax_inside_sk_is_answered_and_fatal() -> None:
    net = connect()
    garbage = b"\x00\x00\x00\x03"  # a payload header whose length is below 4
    net.server_session.receive_message(
        _seal_raw(net.client.session, ExchangeType.INFORMATIONAL, 2, PayloadType.NOTIFY, garbage),
        net.now,
        CLIENT_ADDR,
    )
    (out,) = net.server_session.messages_to_send()
    assert _open_reply(net.client.session, out.data) == [Notify(NotifyType.INVALID_SYNTAX)]
    net.server._collect()
    closed = the(net.server.events, IkeSaClosed)
    assert closed.reason is CloseReason.PROTOCOL_ERROR and closed.notify == NotifyType.INVALID_SYNTAX


def test_failed_integrity_is_dropped_silently() -> None:
    net = connect()
    data = bytearray(_seal_raw(net.client.session, ExchangeType.INFORMATIONAL, 2, 0, b""))
    data[-1] ^= 1
    before = net.server_session.dropped
    net.server_session.receive_message(bytes(data), net.now, CLIENT_ADDR)
    assert net.server_session.messages_to_send() == []
    assert net.server_session.dropped == before + 1 and net.server_session.established


def test_unknown_spi_and_garbage_are_dropped_by_the_front_door() -> None:
    door = IkeResponder(server_policy(), rng=make_rng(1))
    stray = Message(
        b"\x01" * 8, b"\x02" * 8, ExchangeType.INFORMATIONAL, HeaderFlag.INITIATOR, 5, ()
    ).encode()
    assert door.receive(stray, 0.0, remote_addr=CLIENT_ADDR) == door.receive(
        b"\x00" * 10, 0.0, remote_addr=CLIENT_ADDR
    )
    assert door.stats.dropped == 2


def test_late_ike_sa_init_retransmission_opens_no_new_sa() -> None:
    net, door = front_door()
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    assert net.client.session.established
    late = net.sent_by("client")[0].data  # the IKE_SA_INIT request, arriving again
    d = door.responder.receive(late, net.now, remote_addr=CLIENT_ADDR)
    assert d.session is door.all_sessions[0] and not d.created
    assert d.session.messages_to_send() == [] and door.responder.half_open == 0
    assert door.responder.stats.sessions_created == 1
    door.responder.forget(d.session)
    assert door.responder.sessions() == [] and door.responder._by_init == {} and door.responder._by_spi == {}


def test_forgetting_a_half_open_session_frees_its_slot() -> None:
    net, door = front_door(cookies=CookiePolicy(max_half_open=1))
    net.drop = lambda sent: sent.src == "client" and sent.index > 0
    net.client.session.initiate(net.now)
    net.run(seconds=1)
    assert door.responder.half_open == 1
    door.responder.forget(door.all_sessions[0])
    assert door.responder.half_open == 0 and door.responder._half_open == {}
