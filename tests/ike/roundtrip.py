"""In-memory harness for IKE sessions (aioquic's `roundtrip` habit).

Two endpoints, a link that can drop, duplicate, reorder and delay messages, an optional
NAT that rewrites the client's source address, and a fake clock. Time only moves when
nothing else can happen: the network delivers the next message or fires the next timer,
whichever is due first.

    net = Network(client_session, server_session)
    net.client.session.initiate(net.now)
    net.run(until=net.now + 10)
    assert any(isinstance(e, IkeSaEstablished) for e in net.client.events)
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vpn.ike.events import Event
from vpn.ike.policy import Address, Identity, SessionPolicy
from vpn.ike.responder import Dispatch, IkeResponder
from vpn.ike.session import IkeSession, Outgoing

CLIENT_ADDR: Address = ("192.0.2.10", 4500)
SERVER_ADDR: Address = ("198.51.100.1", 4500)
NAT_ADDR: Address = ("203.0.113.5", 40123)
START = 1000.0


def make_rng(seed: int) -> Callable[[int], bytes]:
    """A deterministic rng (tests only): same seed, same SPIs, nonces and keys."""
    return random.Random(seed).randbytes


class Endpoint(Protocol):
    addr: Address
    events: list[Event]

    def receive(self, data: bytes, now: float, source: Address) -> None: ...
    def outputs(self) -> list[Outgoing]: ...
    def timer(self) -> float | None: ...
    def on_timer(self, now: float) -> None: ...


class SessionEndpoint:
    """One IkeSession at an address; collects its events."""

    def __init__(self, session: IkeSession, addr: Address) -> None:
        self.session = session
        self.addr = addr
        self.events: list[Event] = []
        self.received = 0

    def receive(self, data: bytes, now: float, source: Address) -> None:
        self.received += 1
        self.session.receive_message(data, now, source)
        self._collect()

    def outputs(self) -> list[Outgoing]:
        self._collect()
        return self.session.messages_to_send()

    def timer(self) -> float | None:
        return self.session.get_timer()

    def on_timer(self, now: float) -> None:
        self.session.handle_timer(now)
        self._collect()

    def _collect(self) -> None:
        while (event := self.session.next_event()) is not None:
            self.events.append(event)

    def of(self, cls: type[Event]) -> list[Event]:
        self._collect()
        return [e for e in self.events if isinstance(e, cls)]


class ResponderEndpoint:
    """A server front door (vpn/ike/responder.py) and every session it created."""

    def __init__(self, responder: IkeResponder, addr: Address, *, stream: bool = False) -> None:
        self.responder = responder
        self.addr = addr
        self.stream = stream
        self.events: list[Event] = []
        self.dispatches: list[Dispatch] = []
        self._replies: list[Outgoing] = []
        self.all_sessions: list[IkeSession] = []
        self.source_override: Address | None = None  # pretend messages come from here

    def receive(self, data: bytes, now: float, source: Address) -> None:
        d = self.responder.receive(data, now, remote_addr=self.source_override or source, stream=self.stream)
        self.dispatches.append(d)
        self._replies += d.replies
        if d.created and d.session is not None:
            self.all_sessions.append(d.session)
        self._collect()

    def outputs(self) -> list[Outgoing]:
        self._collect()
        out, self._replies = self._replies, []
        for session in self.all_sessions:
            out += session.messages_to_send()
        return out

    def timer(self) -> float | None:
        times = [t for s in self.all_sessions if (t := s.get_timer()) is not None]
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        for session in self.all_sessions:
            t = session.get_timer()
            if t is not None and t <= now:
                session.handle_timer(now)
                self.responder.refresh(session)
        self._collect()

    def _collect(self) -> None:
        for session in self.all_sessions:
            while (event := session.next_event()) is not None:
                self.events.append(event)


@dataclass(order=True)
class _InFlight:
    deliver_at: float
    seq: int
    src: str = field(compare=False)  # "client" or "server"
    data: bytes = field(compare=False)
    source_addr: Address = field(compare=False)


@dataclass
class Sent:
    """A record of every message put on the link (before faults)."""

    at: float
    src: str
    data: bytes
    index: int  # per-direction count, from 0
    dropped: bool = False


Fault = Callable[[Sent], bool]


class Network:
    """Client and server endpoints joined by one faulty link and a fake clock.

    `drop(sent)`, `duplicate(sent)` decide per message; `delay(sent)` gives its latency
    (reordering = a later message with a shorter delay). `nat` rewrites the client's
    source address as the server sees it.
    """

    def __init__(
        self,
        client: IkeSession | Endpoint,
        server: IkeSession | Endpoint,
        *,
        latency: float = 0.01,
        nat: Address | None = None,
    ) -> None:
        self.client: SessionEndpoint = (
            client if not isinstance(client, IkeSession) else SessionEndpoint(client, CLIENT_ADDR)
        )  # type: ignore[assignment]
        self.server: Endpoint = (
            server if not isinstance(server, IkeSession) else SessionEndpoint(server, SERVER_ADDR)
        )
        self.now = START
        self.latency = latency
        self.nat = nat
        self.drop: Fault = lambda sent: False
        self.duplicate: Fault = lambda sent: False
        self.delay: Callable[[Sent], float] = lambda sent: self.latency
        self.log: list[Sent] = []
        self._counts = {"client": 0, "server": 0}
        self._queue: list[_InFlight] = []
        self._seq = 0
        self.paused = False  # True: hold every message (a broken path)

    @property
    def server_session(self) -> IkeSession:
        assert isinstance(self.server, SessionEndpoint)
        return self.server.session

    def sent_by(self, src: str) -> list[Sent]:
        return [s for s in self.log if s.src == src]

    def _collect(self) -> None:
        for src, ep in (("client", self.client), ("server", self.server)):
            for out in ep.outputs():
                sent = Sent(self.now, src, out.data, self._counts[src])
                self._counts[src] += 1
                self.log.append(sent)
                if self.paused or self.drop(sent):
                    sent.dropped = True
                    continue
                copies = 2 if self.duplicate(sent) else 1
                source = ep.addr
                if src == "client" and self.nat is not None:
                    source = self.nat
                for _ in range(copies):
                    self._seq += 1
                    heapq.heappush(
                        self._queue, _InFlight(self.now + self.delay(sent), self._seq, src, out.data, source)
                    )

    def step(self, until: float) -> bool:
        """Do the next thing due before `until`; False when nothing is."""
        self._collect()
        candidates: list[tuple[float, int, str]] = []
        if self._queue:
            candidates.append((self._queue[0].deliver_at, 0, "deliver"))
        for i, ep in enumerate((self.client, self.server)):
            t = ep.timer()
            if t is not None:
                candidates.append((t, 1 + i, "timer"))
        if not candidates:
            return False
        at, which, kind = min(candidates)
        if at > until:
            return False
        self.now = max(self.now, at)
        if kind == "deliver":
            item = heapq.heappop(self._queue)
            dst = self.server if item.src == "client" else self.client
            dst.receive(item.data, self.now, item.source_addr)
        else:
            (self.client if which == 1 else self.server).on_timer(self.now)
        self._collect()
        return True

    def run(
        self, until: float | None = None, *, seconds: float | None = None, max_steps: int = 100_000
    ) -> None:
        """Run until quiet (or `until` / `seconds` from now). Bounded by `max_steps`."""
        if seconds is not None:
            until = self.now + seconds
        limit = until if until is not None else self.now + 60.0
        for _ in range(max_steps):
            if not self.step(limit):
                if until is not None:
                    self.now = max(self.now, until)
                return
        raise AssertionError("network did not settle")

    def settle(self, seconds: float = 5.0) -> None:
        """Deliver what is in flight and due within `seconds` (timers included)."""
        self.run(seconds=seconds)


PSK = b"correct horse battery staple"
CLIENT_ID = Identity.email("alice@example.org")
SERVER_ID = Identity.fqdn("vpn.example.org")


def policy(**overrides: object) -> SessionPolicy:
    """A session policy with a PSK and test identities; keywords override fields."""
    from vpn.ike.credentials import PskAuthenticator

    base: dict[str, object] = {"local_id": CLIENT_ID, "authenticator": PskAuthenticator(PSK)}
    base.update(overrides)
    return SessionPolicy(**base)  # type: ignore[arg-type]


def client_policy(**overrides: object) -> SessionPolicy:
    from vpn.ike.policy import VirtualIpRequest

    base: dict[str, object] = {"remote_id": SERVER_ID, "virtual_ip": VirtualIpRequest()}
    base.update(overrides)
    return policy(**base)


def server_policy(**overrides: object) -> SessionPolicy:
    from vpn.ike.policy import PoolAllocator

    base: dict[str, object] = {
        "local_id": SERVER_ID,
        "allocator": PoolAllocator("10.9.0.0/24", "fd00:9::/64", dns=["10.9.0.1", "fd00:9::1"]),
    }
    base.update(overrides)
    return policy(**base)


def pair(
    client: SessionPolicy | None = None,
    server: SessionPolicy | None = None,
    *,
    stream: bool = False,
    seed: int = 1,
    nat: Address | None = None,
) -> Network:
    """A client and a server session on a fresh network (nothing sent yet)."""
    c = IkeSession(
        client or client_policy(),
        initiator=True,
        rng=make_rng(seed),
        stream=stream,
        local_addr=CLIENT_ADDR,
        remote_addr=SERVER_ADDR,
    )
    s = IkeSession(
        server or server_policy(),
        initiator=False,
        rng=make_rng(seed + 1000),
        stream=stream,
        local_addr=SERVER_ADDR,
    )
    return Network(c, s, nat=nat)


def connect(
    client: SessionPolicy | None = None, server: SessionPolicy | None = None, **kw: object
) -> Network:
    """`pair` plus a completed handshake (asserted)."""
    net = pair(client, server, **kw)  # type: ignore[arg-type]
    net.client.session.initiate(net.now)
    net.run(seconds=2)
    assert net.client.session.established, net.client.events
    assert net.server_session.established, net.server.events
    return net
