"""Every IKE SA state reached through real exchanges, fed every kind of input.

The rng is deterministic, so a session rebuilt with the same seeds and driven the same
way holds the same SPIs and keys as a reference run: messages recorded in that run
(each request and response of every exchange) authenticate when replayed into a session
in any state, and reach the real handlers out of order. For each (state, input):
nothing raises out of `receive_message` / `handle_timer`; the state that follows is one
the table in state.py allows (within the two moves one message can make, e.g. an
IKE_AUTH response whose Child SA fails: ESTABLISHED, then DELETING); and a local command
raises LocalProtocolError exactly when its state does not allow it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.ike.roundtrip import Network, SessionEndpoint, client_policy, connect, pair, server_policy
from vpn.ike.errors import LocalProtocolError
from vpn.ike.message import peek_header
from vpn.ike.policy import DpdPolicy, Lifetimes
from vpn.ike.session import IkeSession
from vpn.ike.state import TRANSITIONS, IkeState

LT = Lifetimes(ike_rekey_seconds=0, ike_lifetime_seconds=0, child_rekey_seconds=0, child_lifetime_seconds=0)


def fresh() -> Network:
    return pair(client_policy(lifetimes=LT, dpd=DpdPolicy(0)), server_policy(lifetimes=LT, dpd=DpdPolicy(0)))


def record() -> dict[str, bytes]:
    """One reference run: every kind of message, by name."""
    net = connect(
        client_policy(lifetimes=LT, dpd=DpdPolicy(0)), server_policy(lifetimes=LT, dpd=DpdPolicy(0))
    )
    c, s = net.client.session, net.server_session
    (child,) = c.child_sas()
    c.rekey_child(net.now, child.spi_in)
    net.run(seconds=1)
    c.check_liveness(net.now)
    net.run(seconds=1)
    s.rekey_ike(net.now)
    net.run(seconds=1)
    c.close(net.now)
    net.run(seconds=1)
    names = [
        "init_req", "init_resp", "auth_req", "auth_resp",
        "child_req", "child_resp", "child_delete_req", "child_delete_resp",
        "dpd_req", "dpd_resp",
        "ike_rekey_req", "ike_rekey_resp", "old_delete_req", "old_delete_resp",
        "delete_ike_req", "delete_ike_resp",
    ]  # fmt: skip
    messages = [sent.data for sent in net.log]
    assert len(messages) == len(names), [peek_header(m) for m in messages]
    return dict(zip(names, messages, strict=True))


MESSAGES = record()


def in_state(state: str) -> tuple[Network, IkeSession]:
    """A session in the named state, built like the reference run."""
    net = fresh()
    c, s = net.client.session, net.server_session
    if state == "client IDLE":
        return net, c
    if state == "server IDLE":
        return net, s
    c.initiate(net.now)
    if state == "client INIT_SENT":
        return net, c
    s.receive_message(MESSAGES["init_req"], net.now, ("192.0.2.10", 4500))
    if state == "server INIT_ANSWERED":
        return net, s
    c.receive_message(MESSAGES["init_resp"], net.now, ("198.51.100.1", 4500))
    if state == "client AUTH_SENT":
        return net, c
    net.client.outputs()
    net.server.outputs()
    s.receive_message(MESSAGES["auth_req"], net.now, ("192.0.2.10", 4500))
    c.receive_message(MESSAGES["auth_resp"], net.now, ("198.51.100.1", 4500))
    net.client.outputs()
    net.server.outputs()
    if state.endswith("ESTABLISHED"):
        return net, c if state.startswith("client") else s
    if state == "client REKEYING":
        c.rekey_ike(net.now)
        return net, c
    if state == "client DELETING":
        c.close(net.now)
        return net, c
    if state == "client CLOSED":
        c.close(net.now)
        net.run(seconds=1)
        return net, c
    raise AssertionError(state)


STATES = [
    "client IDLE", "server IDLE", "client INIT_SENT", "server INIT_ANSWERED", "client AUTH_SENT",
    "client ESTABLISHED", "server ESTABLISHED", "client REKEYING", "client DELETING", "client CLOSED",
]  # fmt: skip


def test_states_are_what_they_say() -> None:
    for name in STATES:
        _, session = in_state(name)
        assert session.state is IkeState[name.split()[1]], name


def reachable(state: IkeState, moves: int = 2) -> set[IkeState]:
    out = {state}
    for _ in range(moves):
        out |= {t for s in out for t in TRANSITIONS[s].values()}
    return out


@pytest.mark.parametrize("name", STATES)
@pytest.mark.parametrize("message", sorted(MESSAGES))
def test_every_message_in_every_state(name: str, message: str) -> None:
    net, session = in_state(name)
    before = session.state
    for source in (("192.0.2.10", 4500), ("198.51.100.1", 4500)):
        session.receive_message(MESSAGES[message], net.now, source)  # never raises
    assert session.state in reachable(before), (before, session.state)
    for out in session.messages_to_send():
        assert peek_header(out.data)  # anything sent is a well-formed message
    timer = session.get_timer()
    if timer is not None:
        session.handle_timer(timer)
        assert session.state in reachable(before, 3)
    while session.next_event() is not None:
        pass


COMMANDS: dict[str, Callable[[IkeSession, float], None]] = {
    "initiate": lambda s, now: s.initiate(now),
    "rekey_ike": lambda s, now: s.rekey_ike(now),
    "create_child": lambda s, now: s.create_child(now),
    "rekey_child": lambda s, now: s.rekey_child(
        now, s.child_sas()[0].spi_in if s.child_sas() else b"\0\0\1\0"
    ),
    "delete_child": lambda s, now: s.delete_child(
        now, s.child_sas()[0].spi_in if s.child_sas() else b"\0\0\1\0"
    ),
    "check_liveness": lambda s, now: s.check_liveness(now),
    "report_invalid_spi": lambda s, now: s.report_invalid_spi(now, b"\1\2\3\4"),
    "update_addresses": lambda s, now: s.update_addresses(now, local=("192.0.2.99", 4500)),
    "close": lambda s, now: s.close(now),
}


def allowed(name: str, command: str, session: IkeSession) -> bool:
    state = session.state
    if command == "initiate":
        return name == "client IDLE"
    if command == "close":
        return True  # idempotent: ends or deletes whatever there is
    live = state in (IkeState.ESTABLISHED, IkeState.REKEYING, IkeState.DELETING)
    if command == "update_addresses":
        return live and session.is_initiator and session.mobike
    if command in ("rekey_child", "delete_child"):
        return live and bool(session.child_sas())
    return live


@pytest.mark.parametrize("name", STATES)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_in_every_state(name: str, command: str) -> None:
    net, session = in_state(name)
    before = session.state
    if allowed(name, command, session):
        COMMANDS[command](session, net.now)
    else:
        with pytest.raises(LocalProtocolError):
            COMMANDS[command](session, net.now)
        assert session.state is before
    assert session.state in reachable(before)
    # whatever was started completes cleanly against the peer
    net.run(seconds=300)
    assert isinstance(net.client, SessionEndpoint)


def test_replayed_messages_reach_the_handlers() -> None:
    """The replay is meaningful: recorded messages authenticate in rebuilt sessions."""
    from vpn.ike.events import ChildSaRekeyed, IkeSaClosed

    net, server = in_state("server ESTABLISHED")
    server.receive_message(MESSAGES["child_req"], net.now, ("192.0.2.10", 4500))
    assert any(isinstance(e, ChildSaRekeyed) for e in iter(server.next_event, None))
    net, client = in_state("client AUTH_SENT")
    client.receive_message(MESSAGES["auth_resp"], net.now, ("198.51.100.1", 4500))
    assert client.state is IkeState.ESTABLISHED
    net, server = in_state("server ESTABLISHED")
    server.receive_message(MESSAGES["delete_ike_req"], net.now, ("192.0.2.10", 4500))
    assert server.state is IkeState.ESTABLISHED  # wrong message ID for this SA: dropped
    server.receive_message(MESSAGES["dpd_req"], net.now, ("192.0.2.10", 4500))
    assert server.messages_to_send() == [] and server.dropped == 2
    # the server's IKE rekey request meets the client's own rekey: a collision (§2.8.2)
    net, client = in_state("client REKEYING")
    client.messages_to_send()
    client.receive_message(MESSAGES["ike_rekey_req"], net.now, ("198.51.100.1", 4500))
    (answer,) = client.messages_to_send()
    assert peek_header(answer.data).is_response and client._sa is not None and client._sa.collision
    assert not any(isinstance(e, IkeSaClosed) for e in iter(client.next_event, None))
