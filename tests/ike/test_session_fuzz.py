"""Hostile input into the responder's entry points (hypothesis).

Any bytes into `IkeResponder.receive` or `IkeSession.receive_message` end in a clean
drop or a valid reply: no exception escapes, every reply decodes (and, inside an IKE
SA, decrypts and parses), and memory stays bounded (half-open sessions, fragment
reassembly). Inputs are raw bytes, mutated real messages, and well-formed messages
carrying random payloads, both cleartext (IKE_SA_INIT) and sealed with the right keys
and message ID, so that the handlers behind the integrity check are fuzzed too.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ike.roundtrip import CLIENT_ADDR, SERVER_ADDR, client_policy, connect, make_rng, server_policy
from tests.ike.test_message_fuzz import cleartext_payload
from vpn.ike.constants import ExchangeType, HeaderFlag, NotifyType
from vpn.ike.fragments import MAX_FRAGMENTS
from vpn.ike.message import (
    EncryptedFragment,
    Message,
    Nonce,
    Payload,
    SecurityAssociation,
    UnknownPayload,
    encode_payloads,
)
from vpn.ike.negotiate import ike_proposals
from vpn.ike.policy import DEFAULT_IKE_PROPOSALS
from vpn.ike.responder import CookiePolicy, IkeResponder
from vpn.ike.session import IkeSession

FUZZ = settings(max_examples=300, deadline=3000, suppress_health_check=[HealthCheck.too_slow])


def door(**kw: object) -> IkeResponder:
    return IkeResponder(server_policy(), rng=make_rng(5), local_addr=SERVER_ADDR, **kw)  # type: ignore[arg-type]


def client_init() -> bytes:
    client = IkeSession(
        client_policy(), initiator=True, rng=make_rng(9), local_addr=CLIENT_ADDR, remote_addr=SERVER_ADDR
    )
    client.initiate(0.0)
    return client.messages_to_send()[0].data


INIT = client_init()


def check_replies(replies: list[bytes]) -> None:
    for data in replies:
        msg = Message.decode(data)  # a reply is always a valid message
        assert msg.is_response


def feed_door(d: IkeResponder, data: bytes, stream: bool = False) -> None:
    dispatch = d.receive(data, 1.0, remote_addr=CLIENT_ADDR, stream=stream)
    out = [r.data for r in dispatch.replies]
    if dispatch.session is not None:
        out += [o.data for o in dispatch.session.messages_to_send()]
        dispatch.session.handle_timer(100.0)  # and whatever timers it armed
        out += [o.data for o in dispatch.session.messages_to_send()]
    check_replies(out)


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_front_door_any_bytes(data: bytes, stream: bool) -> None:
    feed_door(door(), data, stream)


@FUZZ
@given(st.data())
def test_front_door_mutated_ike_sa_init(data: st.DataObject) -> None:
    raw = bytearray(INIT)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        pos = data.draw(st.integers(0, len(raw) - 1)) if raw else 0
        if op == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 40))]
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=20))
        elif raw:
            raw[pos] = data.draw(st.integers(0, 255))
    # keep the IKE length consistent half of the time so that payload parsing is reached
    if len(raw) >= 28 and data.draw(st.booleans()):
        raw[24:28] = len(raw).to_bytes(4, "big")
    feed_door(door(cookies=CookiePolicy(threshold=data.draw(st.sampled_from([0, 64])))), bytes(raw))


@FUZZ
@given(st.lists(cleartext_payload, max_size=8), st.booleans(), st.binary(min_size=8, max_size=8))
def test_ike_sa_init_with_random_payloads(payloads: list[Payload], with_offer: bool, spi: bytes) -> None:
    head: list[Payload] = []
    if with_offer:  # a plausible SA and Nonce, so that selection and DH are reached
        head = [SecurityAssociation(tuple(ike_proposals(DEFAULT_IKE_PROPOSALS))), Nonce(b"\x01" * 32)]
    msg = Message(spi, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, tuple(head + payloads))
    try:
        data = msg.encode()
    except Exception:  # noqa: BLE001 - the generator can build unencodable values
        return
    feed_door(door(), data)


# --------------------------------------------------------------------------- inside the SA


def sealed_request(
    net: object, exchange: int, payloads: list[Payload], *, fragment: tuple[int, int] | None = None
) -> bytes:
    """A request from the client with the server's expected message ID, sealed with the
    client's keys (as a fragment `(number, total)` when asked)."""
    client = net.client.session  # type: ignore[attr-defined]
    server = net.server_session  # type: ignore[attr-defined]
    sa = client._sa
    mid = server._sa.peer_message_id
    cipher = sa._out
    first, plain = encode_payloads(payloads)
    shell = Message(sa.spi_i, sa.spi_r, exchange, sa.flags(False), mid)
    iv = make_rng(len(plain))(cipher.iv_bytes)
    if fragment is None:
        aad = shell.sk_aad(first, cipher.body_length(len(plain)))
        return shell.encode_with_sk(first, cipher.seal(aad, plain, iv))
    number, total = fragment
    first = first if number == 1 else 0
    aad = shell.skf_aad(number, total, first, cipher.body_length(len(plain)))
    return shell.encode_with_skf(number, total, first, cipher.seal(aad, plain, iv))


def decrypt_replies(net: object, replies: list[bytes]) -> None:
    client_sa = net.client.session._sa  # type: ignore[attr-defined]
    for data in replies:
        msg = Message.decode(data)
        assert msg.is_response
        payloads, _ = client_sa.open(msg, 0.0, 65535)  # decrypts and parses
        assert payloads is not None


_NET = None


def established() -> object:
    return connect(client_policy(), server_policy())


critical_unknown = st.builds(
    UnknownPayload, st.integers(49, 255).filter(lambda t: t != 53), st.binary(max_size=20), st.booleans()
)
inner_payload = st.one_of(cleartext_payload, critical_unknown)


@FUZZ
@given(
    st.one_of(
        st.sampled_from([ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL, ExchangeType.IKE_AUTH]),
        st.integers(0, 255),
    ),
    st.lists(inner_payload, max_size=8),
)
def test_sealed_requests_with_random_payloads(exchange: int, payloads: list[Payload]) -> None:
    net = established()
    try:
        data = sealed_request(net, exchange, payloads)
    except Exception:  # noqa: BLE001 - unencodable generated values
        return
    server = net.server_session  # type: ignore[attr-defined]
    server.receive_message(data, net.now, CLIENT_ADDR)  # type: ignore[attr-defined]
    replies = [o.data for o in server.messages_to_send()]
    if not server.closed:
        decrypt_replies(net, replies)
    server.handle_timer(net.now + 60)  # type: ignore[attr-defined]
    while server.next_event() is not None:
        pass


@FUZZ
@given(st.lists(cleartext_payload, max_size=8), st.sampled_from(["rekey", "create", "dpd", "rekey_ike"]))
def test_forged_responses_with_random_payloads(payloads: list[Payload], command: str) -> None:
    """The initiator's response handlers get arbitrary (authenticated) payloads."""
    net = established()
    client = net.client.session  # type: ignore[attr-defined]
    (child,) = client.child_sas()
    {
        "rekey": lambda: client.rekey_child(net.now, child.spi_in),  # type: ignore[attr-defined]
        "create": lambda: client.create_child(net.now),  # type: ignore[attr-defined]
        "dpd": lambda: client.check_liveness(net.now),  # type: ignore[attr-defined]
        "rekey_ike": lambda: client.rekey_ike(net.now),  # type: ignore[attr-defined]
    }[command]()
    request = Message.decode(client.messages_to_send()[0].data)
    sa = net.server_session._sa  # type: ignore[attr-defined]
    try:
        packets = sa.seal(request.exchange, request.message_id, True, payloads, make_rng(1), None)
    except Exception:  # noqa: BLE001
        return
    client.receive_message(packets[0], net.now, SERVER_ADDR)  # type: ignore[attr-defined]
    client.messages_to_send()
    client.handle_timer(net.now + 300)  # type: ignore[attr-defined]
    while client.next_event() is not None:
        pass


def test_fragment_flood_stays_bounded() -> None:
    net = established()
    server = net.server_session  # type: ignore[attr-defined]
    sa = server._sa
    filler = [Notify(NotifyType.NAT_DETECTION_SOURCE_IP, b"\x00" * 1200)]
    limit = server.policy.max_reassembly_bytes
    # 1.2 KB fragments for the expected message ID: the byte bound ends the collection
    sizes = []
    for number in range(1, MAX_FRAGMENTS):
        data = sealed_request(net, ExchangeType.INFORMATIONAL, filler, fragment=(number, MAX_FRAGMENTS))
        server.receive_message(data, net.now, CLIENT_ADDR)
        sizes.append(sum(r.size for r in sa.reassembly.values()))
        assert sizes[-1] <= limit and len(sa.reassembly) <= 1
    assert max(sizes) > limit - 1300 and sizes[-1] < max(sizes)  # reached, then discarded
    # a total above the bound is refused before anything is stored
    frag = sealed_request(net, ExchangeType.INFORMATIONAL, filler, fragment=(1, MAX_FRAGMENTS + 1))
    assert isinstance(Message.decode(frag).encrypted, EncryptedFragment)
    server.receive_message(frag, net.now, CLIENT_ADDR)
    assert sa.reassembly == {}
    server.receive_message(
        sealed_request(net, ExchangeType.INFORMATIONAL, filler, fragment=(2, 3)), net.now, CLIENT_ADDR
    )
    assert sa.reassembly
    server.handle_timer(net.now + 60)
    assert sa.reassembly == {}  # timed out (RFC 7383 §2.6.2)
    assert server.established  # bounds drop fragments; they do not end the SA


def test_ike_sa_init_flood_is_bounded() -> None:
    d = door(cookies=CookiePolicy(threshold=1000, max_half_open=50))
    for i in range(200):
        client = IkeSession(
            client_policy(),
            initiator=True,
            rng=make_rng(10_000 + i),
            local_addr=CLIENT_ADDR,
            remote_addr=SERVER_ADDR,
        )
        client.initiate(0.0)
        d.receive(client.messages_to_send()[0].data, 1.0, remote_addr=CLIENT_ADDR)
    assert d.half_open == 50 and len(d.sessions()) == 50
    assert d.stats.dropped == 150


from vpn.ike.message import Notify  # noqa: E402  (kept near its only use)
