"""The IKE SA transition table (vpn/ike/state.py): every (state, input) pair.

Session-level walks of the same pairs (every state reached through real exchanges, every
kind of message fed) live in test_session_states.py.
"""

from __future__ import annotations

import itertools

import pytest

from vpn.ike.errors import LocalProtocolError
from vpn.ike.state import (
    HALF_OPEN_STATES,
    LIVE_STATES,
    TRANSITIONS,
    IkeInput,
    IkeSaState,
    IkeState,
    IllegalTransition,
    next_state,
)

PAIRS = list(itertools.product(IkeState, IkeInput))


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s.name}-{e.name}" for s, e in PAIRS])
def test_every_pair_is_a_table_move_or_illegal(state: IkeState, event: IkeInput) -> None:
    sa = IkeSaState(state)
    expected = TRANSITIONS[state].get(event)
    assert sa.allows(event) == (expected is not None)
    if expected is None:
        with pytest.raises(IllegalTransition) as exc:
            sa.apply(event)
        assert isinstance(exc.value, LocalProtocolError)
        assert sa.state is state  # an illegal input changes nothing
    else:
        assert sa.apply(event) is expected
        assert next_state(state, event) is expected


def test_closed_is_absorbing() -> None:
    assert TRANSITIONS[IkeState.CLOSED] == {}


def test_every_open_state_can_close_by_timeout_or_fatal_error() -> None:
    for state in IkeState:
        if state is IkeState.CLOSED:
            continue
        assert TRANSITIONS[state][IkeInput.TIMEOUT] is IkeState.CLOSED
        assert TRANSITIONS[state][IkeInput.FATAL_ERROR] is IkeState.CLOSED


def test_every_state_is_reachable_from_idle() -> None:
    seen = {IkeState.IDLE}
    frontier = [IkeState.IDLE]
    while frontier:
        state = frontier.pop()
        for target in TRANSITIONS[state].values():
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(IkeState)


def test_only_authenticated_states_take_sk_exchanges() -> None:
    for state in IkeState:
        takes = TRANSITIONS[state].keys() & {IkeInput.RECV_CHILD_REQUEST, IkeInput.RECV_INFORMATIONAL}
        assert bool(takes) == (state in LIVE_STATES)
    assert not LIVE_STATES & HALF_OPEN_STATES


def test_initiator_and_responder_paths() -> None:
    ini = IkeSaState()
    for event in (
        IkeInput.INITIATE,
        IkeInput.RECV_INIT_RETRY,
        IkeInput.RECV_INIT_RESPONSE,
        IkeInput.RECV_AUTH_RESPONSE,
    ):
        ini.apply(event)
    assert ini.state is IkeState.ESTABLISHED
    res = IkeSaState()
    res.apply(IkeInput.RECV_INIT_REQUEST)
    res.apply(IkeInput.RECV_AUTH_REQUEST)
    assert res.state is IkeState.ESTABLISHED
    res.apply(IkeInput.START_IKE_REKEY)
    res.apply(IkeInput.IKE_REKEY_DONE)
    res.apply(IkeInput.CLOSE)
    assert res.apply(IkeInput.DELETE_DONE) is IkeState.CLOSED
