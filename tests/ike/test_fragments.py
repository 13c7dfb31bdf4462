"""IKE fragmentation (RFC 7383): splitting, reassembly rules, and sessions exchanging
fragmented IKE_AUTH messages over a lossy UDP link (and receiving them over TCP)."""

from __future__ import annotations

import pytest

from tests.ike.roundtrip import client_policy, connect, pair, server_policy
from vpn.ike.constants import EncrId, ExchangeType, HeaderFlag, IntegId, PayloadType
from vpn.ike.crypto import EspSuite, IkeSuite, SkCipher, encr_algorithm
from vpn.ike.errors import LocalProtocolError
from vpn.ike.events import ChildSaEstablished, IkeSaEstablished
from vpn.ike.fragments import MAX_FRAGMENTS, Reassembly, seal_fragments
from vpn.ike.message import EncryptedFragment, Message, decode_payloads, encode_payloads, peek_header
from vpn.ike.payloads import Notify, TrafficSelector, VendorId
from vpn.ike.policy import ChildPolicy

SKF = PayloadType.SKF


def _cipher(encr: EncrId = EncrId.AES_GCM_16, integ: IntegId = IntegId.NONE) -> SkCipher:
    suite = IkeSuite.from_ids(encr, 128, 5, integ)
    key = bytes(range(suite.encr.keymat_bytes))
    return SkCipher(suite.encr, suite.integ, key, bytes(32) if suite.integ else b"")


@pytest.mark.parametrize(
    ("encr", "integ"), [(EncrId.AES_GCM_16, IntegId.NONE), (EncrId.AES_CBC, IntegId.HMAC_SHA2_256_128)]
)
@pytest.mark.parametrize("size", [256, 300, 577, 1228])
def test_seal_fragments_fit_and_reassemble(encr: EncrId, integ: IntegId, size: int) -> None:
    cipher = _cipher(encr, integ)
    payloads = [VendorId(bytes([i]) * 100) for i in range(20)] + [Notify(16430)]
    first, plain = encode_payloads(payloads)
    shell = Message(b"\x01" * 8, b"\x02" * 8, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
    counter = iter(range(1, 10_000))

    def iv() -> bytes:
        return next(counter).to_bytes(cipher.iv_bytes, "big")

    messages = seal_fragments(shell, first, plain, cipher, iv, size)
    assert len(messages) > 1
    assert all(len(m) <= size for m in messages)
    assert len(messages[-2]) >= size - 16 - cipher.icv_bytes  # pieces are as large as fit
    pending = Reassembly(1, len(messages), 0.0)
    done = None
    for n, data in reversed(list(enumerate(messages, 1))):  # any order
        msg = Message.decode(data)
        frag = msg.encrypted
        assert isinstance(frag, EncryptedFragment) and (frag.number, frag.total) == (n, len(messages))
        assert frag.first_payload == (first if n == 1 else 0)  # RFC 7383 §2.5
        assert peek_header(data).next_payload == SKF
        done = pending.add(
            frag.number, frag.total, frag.first_payload, cipher.open(msg.received_aad, frag.body), 65535
        )
    assert done is not None
    assert decode_payloads(done[0], done[1]) == payloads


def test_fragment_size_too_small_is_refused() -> None:
    shell = Message(b"\x01" * 8, b"\x02" * 8, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
    with pytest.raises(LocalProtocolError):
        seal_fragments(shell, 43, b"x" * 100, _cipher(), lambda: bytes(8), 60)


def test_reassembly_rules() -> None:
    r = Reassembly(5, 3, 0.0)
    assert r.add(2, 3, 0, b"bb", 100) is None
    assert r.add(2, 3, 0, b"XX", 100) is None  # duplicate: the first copy stays
    assert r.add(1, 2, 43, b"aa", 100) is None  # smaller total: dropped (§2.6.2)
    assert r.pieces == {2: b"bb"}
    assert r.add(1, 4, 43, b"a", 100) is None  # larger total: start again
    assert r.pieces == {1: b"a"} and r.total == 4
    for n in (2, 3):
        assert r.add(n, 4, 0, bytes([n]), 100) is None
    assert r.add(4, 4, 0, b"z", 100) == (43, b"a\x02\x03z")
    bounded = Reassembly(1, 2, 0.0)
    with pytest.raises(OverflowError):
        bounded.add(1, 2, 43, b"x" * 60, 100) or bounded.add(2, 2, 0, b"y" * 60, 100)


def fragments_of(net: object, src: str) -> list[tuple[int, int, int]]:
    out = []
    for s in net.sent_by(src):  # type: ignore[attr-defined]
        msg = Message.decode(s.data)
        if isinstance(msg.encrypted, EncryptedFragment):
            out.append((msg.message_id, msg.encrypted.number, msg.encrypted.total))
    return out


SMALL = 300
# eight split-tunnel subnets make the server's IKE_AUTH response need fragments too
SUBNETS = tuple(TrafficSelector.from_network(f"10.{i}.0.0/16") for i in range(8))


def big_server(**kw: object) -> object:
    return server_policy(fragment_size=SMALL, child=ChildPolicy(local_ts=SUBNETS), **kw)


def test_fragmented_ike_auth_over_udp() -> None:
    net = connect(client_policy(fragment_size=SMALL), big_server())
    client_frags = fragments_of(net, "client")
    server_frags = fragments_of(net, "server")
    assert len(client_frags) >= 2 and len(server_frags) >= 2
    assert all(
        len(s.data) <= SMALL for s in net.log if peek_header(s.data).exchange != ExchangeType.IKE_SA_INIT
    )
    assert the_child_keys_match(net)


def the_child_keys_match(net: object) -> bool:
    c = [e for e in net.client.events if isinstance(e, ChildSaEstablished)][0].child  # type: ignore[attr-defined]
    s = [e for e in net.server.events if isinstance(e, ChildSaEstablished)][0].child  # type: ignore[attr-defined]
    return bool(c.keys_out == s.keys_in and c.keys_in == s.keys_out)


def test_lost_fragment_is_recovered_by_retransmission() -> None:
    net = pair(client_policy(fragment_size=SMALL), big_server())
    net.drop = lambda sent: sent.src == "client" and sent.index == 2  # fragment 2 of IKE_AUTH
    net.client.session.initiate(net.now)
    net.run(seconds=10)
    assert net.client.session.established and net.server_session.established
    frags = fragments_of(net, "client")
    total = frags[0][2]
    assert frags == [(1, n, total) for n in range(1, total + 1)] * 2  # all resent, same bytes
    assert the_child_keys_match(net)


def test_duplicated_fragments_are_ignored() -> None:
    net = pair(client_policy(fragment_size=SMALL), big_server())
    net.duplicate = lambda sent: True
    net.client.session.initiate(net.now)
    net.run(seconds=10)
    assert len([e for e in net.server.events if isinstance(e, IkeSaEstablished)]) == 1
    server_frags = fragments_of(net, "server")
    assert len(server_frags) == server_frags[0][2]  # the response went out once


def test_lost_fragmented_response_is_resent_once_per_retransmission() -> None:
    net = pair(client_policy(fragment_size=SMALL), big_server())
    net.drop = lambda sent: sent.src == "server" and sent.index in (1, 2)  # the whole response
    net.client.session.initiate(net.now)
    net.run(seconds=10)
    assert net.client.session.established
    server_frags = fragments_of(net, "server")
    total = server_frags[0][2]
    # RFC 7383 §2.6.1: the cached response is resent when fragment 1 of the retransmitted
    # request arrives, not once per fragment
    assert (
        len(server_frags) == 2 * total
        and len(fragments_of(net, "client")) == 2 * fragments_of(net, "client")[0][2]
    )


def test_reordered_fragments() -> None:
    net = pair(client_policy(fragment_size=SMALL), big_server())
    net.delay = lambda sent: 0.01 + (0.05 if sent.index % 2 else 0.0)  # odd ones overtaken
    net.client.session.initiate(net.now)
    net.run(seconds=10)
    assert net.client.session.established and the_child_keys_match(net)


def test_fragments_accepted_over_tcp_but_not_sent() -> None:
    # RFC 9329 §7.5: a TCP responder never fragments but reassembles what arrives.
    from tests.ike.roundtrip import CLIENT_ADDR, SERVER_ADDR, Network, make_rng
    from vpn.ike.session import IkeSession

    client = IkeSession(
        client_policy(fragment_size=SMALL),
        initiator=True,
        rng=make_rng(1),
        local_addr=CLIENT_ADDR,
        remote_addr=SERVER_ADDR,
    )
    server = IkeSession(big_server(), initiator=False, rng=make_rng(2), stream=True, local_addr=SERVER_ADDR)
    net = Network(client, server)
    client.initiate(net.now)
    net.run(seconds=5)
    assert client.established and server.established
    assert fragments_of(net, "client") and not fragments_of(net, "server")


def test_fragment_bound() -> None:
    assert MAX_FRAGMENTS * 256 >= 65535 / 4  # RFC 7383 §5: limits cover real messages
    encr_algorithm(EncrId.AES_GCM_16, 128)
    EspSuite.from_ids(EncrId.AES_GCM_16, 128)
