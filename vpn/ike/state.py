"""IKE SA states and the one table of legal transitions (the h11 habit).

Every state change of an IKE SA in session.py goes through `IkeSaState.apply(input)`.
A pair missing from `TRANSITIONS` is illegal: for a local command that is the caller's
bug (`IllegalTransition`, a `LocalProtocolError`); for something the peer sent the
session checks `allows()` first and drops or refuses the message instead.

    IDLE --INITIATE--> INIT_SENT --RECV_INIT_RESPONSE--> AUTH_SENT --RECV_AUTH_RESPONSE--> ESTABLISHED
    IDLE --RECV_INIT_REQUEST--> INIT_ANSWERED --RECV_AUTH_REQUEST--> ESTABLISHED
    ESTABLISHED --START_IKE_REKEY--> REKEYING --IKE_REKEY_DONE--> REKEYED (then deleted)
    ESTABLISHED --CLOSE--> DELETING --DELETE_DONE--> CLOSED
    any open state --TIMEOUT / FATAL_ERROR / RECV_DELETE_IKE--> CLOSED

One IKE SA, not the session: during an IKE rekey the session holds the old SA (REKEYING,
then REKEYED) and the new one (ESTABLISHED) side by side.
"""

from __future__ import annotations

from enum import Enum

from vpn.ike.errors import LocalProtocolError


class IkeState(Enum):
    IDLE = "idle"  # created, nothing sent or received
    INIT_SENT = "init sent"  # initiator: IKE_SA_INIT request outstanding (also retries)
    AUTH_SENT = "auth sent"  # initiator: IKE_AUTH request outstanding
    INIT_ANSWERED = "init answered"  # responder: half-open, waiting for IKE_AUTH
    ESTABLISHED = "established"
    REKEYING = "rekeying"  # this side's IKE rekey request is outstanding
    REKEYED = "rekeyed"  # replaced by a new IKE SA; only its Delete remains
    DELETING = "deleting"  # this side's Delete(IKE) request is outstanding
    CLOSED = "closed"


class IkeInput(Enum):
    # local
    INITIATE = "initiate"
    CLOSE = "close"  # delete the IKE SA (or drop it if not yet authenticated)
    START_EXCHANGE = "start exchange"  # a CREATE_CHILD_SA / INFORMATIONAL request of ours
    START_IKE_REKEY = "start IKE rekey"
    # IKE_SA_INIT / IKE_AUTH
    RECV_INIT_REQUEST = "IKE_SA_INIT request"
    RECV_INIT_RETRY = "IKE_SA_INIT response asking for a retry"  # COOKIE, INVALID_KE
    RECV_INIT_RESPONSE = "IKE_SA_INIT response"
    RECV_AUTH_REQUEST = "IKE_AUTH request"
    RECV_AUTH_RESPONSE = "IKE_AUTH response"
    AUTH_FAILED = "authentication failed"
    # established
    RECV_CHILD_REQUEST = "CREATE_CHILD_SA request for a Child SA"
    RECV_IKE_REKEY_REQUEST = "CREATE_CHILD_SA request rekeying the IKE SA"
    RECV_INFORMATIONAL = "INFORMATIONAL request"  # DPD, Child deletes, MOBIKE
    RECV_RESPONSE = "response to a request of ours"
    IKE_REKEY_DONE = "IKE SA replaced"
    IKE_REKEY_FAILED = "IKE rekey failed"
    RECV_DELETE_IKE = "Delete of the IKE SA"
    DELETE_DONE = "Delete of the IKE SA answered"
    # anywhere
    TIMEOUT = "timeout"
    FATAL_ERROR = "fatal error"


S = IkeState
I = IkeInput  # noqa: E741

_OPEN = (S.IDLE, S.INIT_SENT, S.AUTH_SENT, S.INIT_ANSWERED, S.ESTABLISHED, S.REKEYING)
_LIVE = (S.ESTABLISHED, S.REKEYING, S.REKEYED, S.DELETING)

TRANSITIONS: dict[IkeState, dict[IkeInput, IkeState]] = {
    S.IDLE: {
        I.INITIATE: S.INIT_SENT,
        I.RECV_INIT_REQUEST: S.INIT_ANSWERED,
        I.CLOSE: S.CLOSED,
    },
    S.INIT_SENT: {
        I.RECV_INIT_RETRY: S.INIT_SENT,
        I.RECV_INIT_RESPONSE: S.AUTH_SENT,
        I.CLOSE: S.CLOSED,
    },
    S.AUTH_SENT: {
        I.RECV_AUTH_RESPONSE: S.ESTABLISHED,
        I.AUTH_FAILED: S.CLOSED,
        I.CLOSE: S.CLOSED,
    },
    S.INIT_ANSWERED: {
        I.RECV_AUTH_REQUEST: S.ESTABLISHED,
        I.AUTH_FAILED: S.CLOSED,
        I.CLOSE: S.CLOSED,
    },
    S.ESTABLISHED: {
        I.START_EXCHANGE: S.ESTABLISHED,
        I.START_IKE_REKEY: S.REKEYING,
        I.RECV_CHILD_REQUEST: S.ESTABLISHED,
        I.RECV_IKE_REKEY_REQUEST: S.REKEYED,  # answered: the peer's new SA replaces us
        I.RECV_INFORMATIONAL: S.ESTABLISHED,
        I.RECV_RESPONSE: S.ESTABLISHED,
        I.RECV_DELETE_IKE: S.CLOSED,
        I.CLOSE: S.DELETING,
    },
    S.REKEYING: {
        I.RECV_CHILD_REQUEST: S.REKEYING,  # answered TEMPORARY_FAILURE (§2.25.2)
        I.RECV_IKE_REKEY_REQUEST: S.REKEYING,  # collision, resolved by nonces (§2.8.2)
        I.RECV_INFORMATIONAL: S.REKEYING,
        I.RECV_RESPONSE: S.REKEYING,
        I.IKE_REKEY_DONE: S.REKEYED,
        I.IKE_REKEY_FAILED: S.ESTABLISHED,
        I.RECV_DELETE_IKE: S.CLOSED,
        I.CLOSE: S.DELETING,
    },
    S.REKEYED: {
        I.RECV_CHILD_REQUEST: S.REKEYED,  # TEMPORARY_FAILURE
        I.RECV_IKE_REKEY_REQUEST: S.REKEYED,  # TEMPORARY_FAILURE (§2.8.2 special case)
        I.RECV_INFORMATIONAL: S.REKEYED,
        I.RECV_RESPONSE: S.REKEYED,
        I.RECV_DELETE_IKE: S.CLOSED,
        I.CLOSE: S.DELETING,
    },
    S.DELETING: {
        I.RECV_CHILD_REQUEST: S.DELETING,  # TEMPORARY_FAILURE (§2.25.1)
        I.RECV_IKE_REKEY_REQUEST: S.DELETING,  # TEMPORARY_FAILURE (§2.25.2)
        I.RECV_INFORMATIONAL: S.DELETING,
        I.RECV_RESPONSE: S.DELETING,
        I.RECV_DELETE_IKE: S.CLOSED,  # crossing deletes (§2.25.2)
        I.DELETE_DONE: S.CLOSED,
    },
    S.CLOSED: {},
}
for _state in (*_OPEN, S.REKEYED, S.DELETING):
    TRANSITIONS[_state].setdefault(I.TIMEOUT, S.CLOSED)
    TRANSITIONS[_state].setdefault(I.FATAL_ERROR, S.CLOSED)
del _state

#: States in which the IKE SA is authenticated and can carry SK-protected exchanges.
LIVE_STATES = frozenset(_LIVE)
#: States of a responder or initiator before authentication (half-open).
HALF_OPEN_STATES = frozenset({S.INIT_SENT, S.AUTH_SENT, S.INIT_ANSWERED})


class IllegalTransition(LocalProtocolError):
    """An input that the state table does not allow in the current state."""

    def __init__(self, state: IkeState, event: IkeInput) -> None:
        super().__init__(f"{event.value!r} is not allowed in state {state.value!r}")
        self.state = state
        self.event = event


def next_state(state: IkeState, event: IkeInput) -> IkeState:
    """The state after `event`, or IllegalTransition."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


class IkeSaState:
    """The state of one IKE SA, changed only through the table."""

    __slots__ = ("state",)

    def __init__(self, state: IkeState = IkeState.IDLE) -> None:
        self.state = state

    def allows(self, event: IkeInput) -> bool:
        return event in TRANSITIONS[self.state]

    def apply(self, event: IkeInput) -> IkeState:
        self.state = next_state(self.state, event)
        return self.state

    def __repr__(self) -> str:
        return f"<IkeSaState {self.state.value}>"
