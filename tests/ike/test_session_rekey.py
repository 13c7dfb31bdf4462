"""CREATE_CHILD_SA: new Child SAs, Child and IKE SA rekeys, their collisions and lifetimes
(RFC 7296 §1.3, §2.8, §2.8.1, §2.8.2, §2.18, §2.25)."""

from __future__ import annotations

import pytest

from tests.ike.roundtrip import SERVER_ADDR, Network, client_policy, connect, server_policy
from vpn.ike.constants import DhId, EncrId, ExchangeType, HeaderFlag, NotifyType, PrfId
from vpn.ike.events import (
    ChildCloseReason,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaInfo,
    ChildSaRekeyed,
    CloseReason,
    IkeSaClosed,
    IkeSaRekeyed,
)
from vpn.ike.message import Message, TsResponder, peek_header
from vpn.ike.payloads import TrafficSelector
from vpn.ike.policy import ChildPolicy, EspProposal, IkeProposal, Lifetimes
from vpn.ike.state import IkeState


def only(events: list[object], cls: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, cls)]


def installed(events: list[object]) -> dict[bytes, ChildSaInfo]:
    """Child SAs alive after the events: installed minus deleted, by inbound SPI."""
    alive: dict[bytes, ChildSaInfo] = {}
    for e in events:
        if isinstance(e, ChildSaEstablished | ChildSaRekeyed):
            assert e.child.spi_in not in alive
            alive[e.child.spi_in] = e.child
        elif isinstance(e, ChildSaDeleted):
            del alive[e.spi_in]  # every SA deleted exactly once, and only once installed
    return alive


def assert_in_sync(net: Network, count: int = 1) -> list[ChildSaInfo]:
    """Both sides hold the same `count` Child SA pairs with matching keys."""
    c_alive = installed(net.client.events)
    s_alive = installed(net.server.events)
    assert len(c_alive) == len(s_alive) == count, (c_alive, s_alive)
    for child in c_alive.values():
        peer = s_alive[child.spi_out]
        assert peer.spi_out == child.spi_in
        assert peer.keys_in == child.keys_out and peer.keys_out == child.keys_in
    assert {c.spi_in for c in net.client.session.child_sas()} == set(c_alive)
    assert {c.spi_in for c in net.server_session.child_sas()} == set(s_alive)
    return list(c_alive.values())


NO_REKEY = Lifetimes(
    ike_rekey_seconds=0, ike_lifetime_seconds=0, child_rekey_seconds=0, child_lifetime_seconds=0
)


def quiet(**kw: object) -> dict[str, object]:
    return {"lifetimes": NO_REKEY, **kw}


# --------------------------------------------------------------------------- Child SAs


def test_create_additional_child_sa() -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    net.client.session.create_child(net.now, remote_ts=[TrafficSelector.from_network("10.1.0.0/16")])
    net.run(seconds=2)
    children = assert_in_sync(net, 2)
    new = [c for c in children if c.ts_remote == (TrafficSelector.from_network("10.1.0.0/16"),)]
    assert len(new) == 1
    assert new[0].ts_local == (TrafficSelector.from_address("10.9.0.2"),)  # the virtual address
    assert peek_header(net.sent_by("client")[-1].data).message_id == 2


def test_child_rekey_replaces_and_deletes_the_old_sa() -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    (old,) = assert_in_sync(net)
    net.client.session.rekey_child(net.now, old.spi_in)
    net.run(seconds=2)
    (new,) = assert_in_sync(net)
    assert new.spi_in != old.spi_in and new.keys_in != old.keys_in
    assert new.ts_local == old.ts_local and new.ts_remote == old.ts_remote  # §2.8
    rekeyed = only(net.client.events, ChildSaRekeyed)
    assert [(r.old_spi_in, r.child.spi_in) for r in rekeyed] == [(old.spi_in, new.spi_in)]
    assert only(net.client.events, ChildSaDeleted)[0].reason is ChildCloseReason.REKEYED
    assert only(net.server.events, ChildSaDeleted)[0].reason is ChildCloseReason.REKEYED
    # the server sees the REKEY_SA exchange then the Delete: message IDs 2 and 3
    assert [peek_header(s.data).message_id for s in net.sent_by("client")[2:]] == [2, 3]


@pytest.mark.parametrize("pfs", [(), (DhId.CURVE25519,), (DhId.MODP2048,)])
def test_child_rekey_with_and_without_pfs(pfs: tuple[DhId, ...]) -> None:
    esp = ChildPolicy(proposals=(EspProposal(dh=pfs),))
    net = connect(client_policy(child=esp, **quiet()), server_policy(**quiet()))
    (old,) = assert_in_sync(net)
    net.client.session.rekey_child(net.now, old.spi_in)
    net.run(seconds=2)
    (new,) = assert_in_sync(net)
    assert new.algorithms.dh == (pfs[0] if pfs else DhId.NONE)


def test_server_requiring_pfs_refuses_a_rekey_without_ke() -> None:
    net = connect(client_policy(**quiet()), server_policy(child=ChildPolicy(require_pfs=True), **quiet()))
    (old,) = assert_in_sync(net)
    net.client.session.rekey_child(net.now, old.spi_in)
    net.run(seconds=2)
    failed = only(net.client.events, ChildSaFailed)
    assert [(f.notify, f.rekey_of) for f in failed] == [(NotifyType.NO_PROPOSAL_CHOSEN, old.spi_in)]
    assert assert_in_sync(net) == [old]  # the old SA stays until its lifetime ends


def test_invalid_ke_in_create_child_sa_is_retried_with_the_group_asked_for() -> None:
    client_esp = ChildPolicy(proposals=(EspProposal(dh=(DhId.ECP256, DhId.CURVE25519)),))
    server_esp = ChildPolicy(proposals=(EspProposal(dh=(DhId.CURVE25519,)),))
    net = connect(client_policy(child=client_esp, **quiet()), server_policy(child=server_esp, **quiet()))
    (old,) = assert_in_sync(net)
    net.client.session.rekey_child(net.now, old.spi_in)
    net.run(seconds=2)
    (new,) = assert_in_sync(net)
    assert new.algorithms.dh == DhId.CURVE25519
    assert [f.notify for f in only(net.server.events, ChildSaFailed)] == [NotifyType.INVALID_KE_PAYLOAD]


def test_rekey_of_an_unknown_child_gets_child_sa_not_found() -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    (old,) = assert_in_sync(net)
    # The server lost the SA without a Delete (state out of sync, e.g. after a crash of
    # its dataplane): remove it behind the session's back.
    del net.server_session._children[old.spi_out]
    net.client.session.rekey_child(net.now, old.spi_in)
    net.run(seconds=5)
    replies = [Message.decode(s.data) for s in net.sent_by("server")]
    assert replies[2].exchange == ExchangeType.CREATE_CHILD_SA  # answered CHILD_SA_NOT_FOUND
    # RFC 7296 §2.25: CHILD_SA_NOT_FOUND -> forget it and create a new one from scratch
    events = net.client.events
    deleted = only(events, ChildSaDeleted)
    assert [d.spi_in for d in deleted] == [old.spi_in]
    assert len(only(events, ChildSaEstablished)) == 2
    assert len(net.client.session.child_sas()) == 1
    (child,) = net.client.session.child_sas()
    assert [c.spi_in for c in net.server_session.child_sas()] == [child.spi_out]


def test_soft_lifetime_rekeys_with_jitter_and_hard_lifetime_deletes() -> None:
    lt = Lifetimes(
        ike_rekey_seconds=0, ike_lifetime_seconds=0, child_rekey_seconds=100, child_lifetime_seconds=120
    )
    net = connect(client_policy(lifetimes=lt), server_policy(**quiet()))
    start = net.sent_by("server")[1].at + net.latency  # the IKE_AUTH response arrived
    net.run(seconds=101)
    (rekey,) = only(net.client.events, ChildSaRekeyed)
    creates = [
        s for s in net.sent_by("client") if peek_header(s.data).exchange == ExchangeType.CREATE_CHILD_SA
    ]
    at = creates[0].at - start
    assert 90 <= at <= 100  # RFC 7296 §2.8.1: soft lifetime minus up to 10 % jitter
    assert_in_sync(net)
    # now the server stops answering: the hard lifetime removes the SA anyway
    net.drop = lambda sent: sent.src == "server"
    net.run(seconds=130)
    deleted = [d for d in only(net.client.events, ChildSaDeleted) if d.spi_in == rekey.child.spi_in]
    assert [d.reason for d in deleted] == [ChildCloseReason.EXPIRED]


# --------------------------------------------------------------------------- collisions


@pytest.mark.parametrize("seed", range(1, 9))
def test_simultaneous_child_rekey(seed: int) -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()), seed=seed)
    (old,) = assert_in_sync(net)
    net.client.session.rekey_child(net.now, old.spi_in)
    net.server_session.rekey_child(net.now, old.spi_out)
    net.run(seconds=5)
    (new,) = assert_in_sync(net)  # RFC 7296 §2.8.1: one pair survives, the same on both
    assert new.spi_in != old.spi_in
    reasons = sorted(d.reason.name for d in only(net.client.events, ChildSaDeleted))
    assert reasons == ["REDUNDANT", "REKEYED"]
    assert len(only(net.client.events, ChildSaRekeyed)) == 2
    assert net.client.session.established and net.server_session.established


def test_simultaneous_child_rekey_with_lost_request() -> None:
    # RFC 7296 §2.8.1, second sequence: the client's req1 is lost, the server completes
    # its rekey and deletes the old SA; the late req1 gets CHILD_SA_NOT_FOUND, ignored.
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    (old,) = assert_in_sync(net)
    first = len(net.sent_by("client"))
    net.drop = lambda sent: sent.src == "client" and sent.index == first
    net.client.session.rekey_child(net.now, old.spi_in)
    net.server_session.rekey_child(net.now, old.spi_out)
    net.run(seconds=30)
    (new,) = assert_in_sync(net)
    assert not only(net.client.events, ChildSaFailed)
    replies = [Message.decode(s.data) for s in net.sent_by("server")]
    assert all(m.exchange != ExchangeType.IKE_AUTH for m in replies[2:])


# --------------------------------------------------------------------------- IKE SA rekey


def test_ike_rekey_moves_children_and_resets_message_ids() -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    (child,) = assert_in_sync(net)
    old_spis = (net.client.session.spi_i, net.client.session.spi_r)
    net.client.session.rekey_ike(net.now)
    net.run(seconds=2)
    c_re = only(net.client.events, IkeSaRekeyed)
    s_re = only(net.server.events, IkeSaRekeyed)
    assert len(c_re) == len(s_re) == 1
    assert (c_re[0].old_spi_i, c_re[0].old_spi_r) == old_spis
    assert (
        (c_re[0].spi_i, c_re[0].spi_r)
        == (s_re[0].spi_i, s_re[0].spi_r)
        == (net.client.session.spi_i, net.client.session.spi_r)
    )
    assert old_spis[0] != c_re[0].spi_i
    assert net.client.session.local_spis() == {c_re[0].spi_i}  # old SA deleted
    assert net.server_session.local_spis() == {c_re[0].spi_r}
    assert assert_in_sync(net) == [child]  # §2.8: the Child SAs are inherited
    # new SA: message IDs start at 0; child keys now come from the new SK_d
    net.client.session.rekey_child(net.now, child.spi_in)
    net.run(seconds=2)
    (new,) = assert_in_sync(net)
    last = [peek_header(s.data) for s in net.sent_by("client")[-2:]]
    assert [h.message_id for h in last] == [0, 1] and last[0].spi_i == c_re[0].spi_i


def test_ike_rekey_by_the_responder_flips_the_initiator_flag() -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    net.server_session.rekey_ike(net.now)
    net.run(seconds=2)
    re = only(net.server.events, IkeSaRekeyed)[0]
    net.server_session.check_liveness(net.now)
    net.run(seconds=2)
    dpd = Message.decode(net.sent_by("server")[-1].data)
    assert dpd.is_request and dpd.flags & HeaderFlag.INITIATOR  # RFC 7296 §2.18, §3.1
    assert dpd.spi_i == re.spi_i and dpd.spi_r == re.spi_r
    assert net.client.session.established and net.server_session.established
    assert_in_sync(net)


@pytest.mark.parametrize("seed", range(1, 9))
def test_simultaneous_ike_rekey(seed: int) -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()), seed=seed)
    (child,) = assert_in_sync(net)
    net.client.session.rekey_ike(net.now)
    net.server_session.rekey_ike(net.now)
    net.run(seconds=5)
    c, s = net.client.session, net.server_session
    assert c.established and s.established
    assert (c.spi_i, c.spi_r) == (s.spi_i, s.spi_r)  # §2.8.2: both kept the same survivor
    assert len(c.local_spis()) == len(s.local_spis()) == 1  # old and redundant SAs deleted
    assert assert_in_sync(net) == [child]
    # the survivor works: a liveness check is answered
    c.check_liveness(net.now)
    net.run(seconds=2)
    assert c.established and not only(net.client.events, IkeSaClosed)


def test_child_request_during_ike_rekey_gets_temporary_failure_then_succeeds() -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    (child,) = assert_in_sync(net)
    net.server_session.rekey_ike(net.now)
    net.client.session.rekey_child(net.now, child.spi_in)
    net.run(seconds=60)
    failures = [f.notify for f in only(net.server.events, ChildSaFailed)] + [
        f.notify for f in only(net.client.events, ChildSaFailed)
    ]
    assert failures == []  # TEMPORARY_FAILURE is retried, not reported (RFC 7296 §2.25)
    assert len(only(net.client.events, IkeSaRekeyed)) == 1
    assert len(only(net.client.events, ChildSaRekeyed)) == 1
    assert_in_sync(net)


def test_ike_rekey_with_invalid_ke() -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    only_ecp = (IkeProposal(((EncrId.AES_GCM_16, 256),), (PrfId.HMAC_SHA2_256,), (DhId.ECP256,)),)
    net.server_session.policy = server_policy(ike_proposals=only_ecp, **quiet())
    net.client.session.rekey_ike(net.now)
    net.run(seconds=2)
    assert net.client.session.algorithms is not None and net.client.session.algorithms.dh == DhId.ECP256
    assert len(only(net.client.events, IkeSaRekeyed)) == 1
    assert_in_sync(net)


def test_ike_soft_rekey_and_hard_expiry() -> None:
    lt = Lifetimes(
        ike_rekey_seconds=100, ike_lifetime_seconds=150, child_rekey_seconds=0, child_lifetime_seconds=0
    )
    net = connect(client_policy(lifetimes=lt), server_policy(**quiet()))
    net.run(seconds=101)
    assert len(only(net.client.events, IkeSaRekeyed)) == 1
    assert net.client.session.state is IkeState.ESTABLISHED
    # a client whose rekeys all fail reaches the hard lifetime and closes
    net2 = connect(client_policy(lifetimes=lt), server_policy(**quiet()))
    net2.drop = lambda sent: (
        sent.src == "server" and peek_header(sent.data).exchange == ExchangeType.CREATE_CHILD_SA
    )
    net2.run(seconds=400)
    closed = only(net2.client.events, IkeSaClosed)
    assert [c.reason for c in closed] in ([CloseReason.EXPIRED], [CloseReason.TIMEOUT])


def test_initiator_deletes_a_child_whose_selectors_were_widened() -> None:
    # RFC 7296 §2.9: the responder may only narrow. A (buggy) answer with wider
    # selectors is refused and the SA the responder installed is deleted.
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    client, server = net.client.session, net.server_session
    client.create_child(net.now, remote_ts=[TrafficSelector.from_network("10.1.0.0/16")])
    request = client.messages_to_send()[0]
    server.receive_message(request.data, net.now, net.client.addr)
    (answer,) = server.messages_to_send()
    ssa, csa = server._sa, client._sa
    assert ssa is not None and csa is not None
    msg = Message.decode(answer.data)
    payloads, _ = csa.open(msg, net.now, 65535)
    assert payloads is not None
    wide = [
        TsResponder((TrafficSelector.from_network("10.0.0.0/8"),)) if isinstance(p, TsResponder) else p
        for p in payloads
    ]
    ssa._iv_counter += 100  # a fresh IV for the forged answer
    forged = ssa.seal(msg.exchange, msg.message_id, True, wide, lambda n: b"\0" * n, None)
    client.receive_message(forged[0], net.now, SERVER_ADDR)
    net.client._collect()
    (failed,) = only(net.client.events, ChildSaFailed)
    assert "narrowing" in failed.detail
    (delete,) = client.messages_to_send()  # the Delete for the SA the server installed
    assert peek_header(delete.data).exchange == ExchangeType.INFORMATIONAL
    server.receive_message(delete.data, net.now, net.client.addr)
    assert len(server.child_sas()) == 1  # only the first Child SA is left


def test_ike_rekey_refused_keeps_the_sa_and_retries_later() -> None:
    net = connect(client_policy(**quiet()), server_policy(**quiet()))
    # nothing the client offers (its groups: Curve25519, P-256, P-384, MODP 2048)
    only_modp3072 = (IkeProposal(((EncrId.AES_GCM_16, 256),), (PrfId.HMAC_SHA2_256,), (DhId.MODP3072,)),)
    net.server_session.policy = server_policy(ike_proposals=only_modp3072, **quiet())
    net.client.session.rekey_ike(net.now)
    net.run(seconds=2)
    assert not only(net.client.events, IkeSaRekeyed)
    assert net.client.session.state is IkeState.ESTABLISHED
    assert net.client.session.get_timer() is not None  # a later attempt is scheduled
    assert_in_sync(net)
