"""Drive one sans-IO IkeSession from the event loop, and install its SAs in C.

1. Every input (a received message, the timer, a command) is followed by `pump()`:
   events first (so a Child SA is installed in the dataplane before the message that
   completes it leaves), then the messages to send, then one timer is armed for
   `get_timer()`.
2. Events go to the owner (client.py / server.py); `ChildInstaller` turns Child SA
   events into C SAs, SPI bindings and the peer's outbound SA.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from vpn import fastpath as fp
from vpn.esp.sa import SaFlags, SaParams
from vpn.ike.constants import EncrId
from vpn.ike.events import ChildSaInfo, Event
from vpn.ike.payloads import TrafficSelector
from vpn.ike.session import IkeSession, Outgoing

log = logging.getLogger("vpn.ike")

MAX_PUMP_ROUNDS = 64  # an event handler may issue commands; bound the ping-pong
# Without ESN the 32-bit counter must not cycle (RFC 4303 §3.3.3): rekey 2^24 packets
# before its end, which leaves tens of seconds at any rate the dataplane reaches.
SEQ32_REKEY_AT = (1 << 32) - (1 << 24)


class IkeEndpoint:
    """An IkeSession plus its transmit function, one timer and an event sink."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: IkeSession,
                 send: Callable[[Outgoing], None], on_event: Callable[[IkeEndpoint, Event], None],
                 clock: Callable[[], float] = time.monotonic,
                 after_pump: Callable[[IkeEndpoint], None] | None = None) -> None:
        self.loop = loop
        self.after_pump = after_pump
        self.session = session
        self.send = send
        self.on_event = on_event
        self.clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.closed = False

    def now(self) -> float:
        return self.clock()

    def receive(self, data: bytes, remote: tuple[str, int] | None = None,
                local: tuple[str, int] | None = None) -> None:
        self.session.receive_message(data, self.now(), remote, local_addr=local)
        self.pump()

    def command(self, fn: Callable[..., None], *args: Any, **kw: Any) -> None:
        """Run a session command (`rekey_child`, `close`, ...) and pump its output."""
        fn(self.now(), *args, **kw)
        self.pump()

    def pump(self) -> None:
        for _ in range(MAX_PUMP_ROUNDS):
            progressed = False
            while (ev := self.session.next_event()) is not None:
                progressed = True
                self.on_event(self, ev)
            for out in self.session.messages_to_send():
                progressed = True
                self.send(out)
            if not progressed:
                break
        self._arm()
        if self.after_pump is not None:
            self.after_pump(self)

    def _arm(self) -> None:
        at = None if self.closed else self.session.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            delay = max(0.0, at - self.now())
            self._timer = self.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.closed:
            return
        self.session.handle_timer(self.now())
        self.pump()

    def stop(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _ts_ranges(selectors: tuple[TrafficSelector, ...]) -> list[tuple[Any, Any]]:
    return [(ipaddress.ip_address(t.start), ipaddress.ip_address(t.end)) for t in selectors]


class ChildInstaller:
    """Child SA events -> C SAs for one peer (RFC 7296 §2.8: accept on the old inbound SA
    until it is deleted, send on the new one at once)."""

    def __init__(self, dp: fp.Dataplane, peer: fp.DpPeer, *, replay_window: int = 1024,
                 soft_bytes: int = 0) -> None:
        self.dp = dp
        self.peer = peer
        self.replay_window = replay_window
        self.soft_bytes = soft_bytes  # per direction: the dataplane flags the SA for a rekey
        self.children: dict[int, ChildSaInfo] = {}  # inbound SPI -> info
        self.outbound: dict[int, fp.FastSa] = {}  # inbound SPI -> its outbound partner

    def install(self, child: ChildSaInfo) -> None:
        alg = child.algorithms
        if alg.encr != EncrId.AES_GCM_16:
            raise ValueError(f"the dataplane does AES-GCM-16 only, not {alg}")
        spi_in = int.from_bytes(child.spi_in, "big")
        spi_out = int.from_bytes(child.spi_out, "big")
        inb = fp.FastSa(SaParams(spi=spi_in, key=child.keys_in.encr_key, salt=child.keys_in.salt,
                                 esn=alg.esn, replay_window=self.replay_window,
                                 soft_bytes=self.soft_bytes), outbound=False)
        out = fp.FastSa(SaParams(spi=spi_out, key=child.keys_out.encr_key, salt=child.keys_out.salt,
                                 esn=alg.esn, soft_bytes=self.soft_bytes), outbound=True)
        self.dp.install_inbound(inb)
        # RFC 4301 §5.2: what arrives on this SA must come from the peer's selectors and
        # go to ours (a client may reach only the server's subnets, the server may send
        # a client only its own addresses)
        self.dp.bind_spi(spi_in, self.peer, _ts_ranges(child.ts_remote), _ts_ranges(child.ts_local))
        self.peer.set_sa(out)
        self.children[spi_in] = child
        self.outbound[spi_in] = out

    def remove(self, spi_in_bytes: bytes) -> None:
        spi_in = int.from_bytes(spi_in_bytes, "big")
        self.dp.remove_inbound(spi_in)
        self.children.pop(spi_in, None)
        out = self.outbound.pop(spi_in, None)
        if out is not None and self.peer.sa is out:
            # the current outbound SA went away: fall back to the newest one left, if any
            self.peer.set_sa(next(reversed(self.outbound.values()), None))

    def remove_all(self) -> None:
        for spi in list(self.children):
            self.remove(spi.to_bytes(4, "big"))

    def soft_expired(self) -> list[bytes]:
        """Inbound SPIs whose SA (either direction) reached a soft lifetime limit, or
        whose sequence numbers near their end (RFC 4303 §3.3.3: rekey before a wrap)."""
        out = []
        for spi_in, sa_out in self.outbound.items():
            sa_in = self.dp.inbound(spi_in)
            so = sa_out.stats()
            si = sa_in.stats() if sa_in else None
            flags = so.flags | (si.flags if si else 0)
            child = self.children.get(spi_in)
            seq_near_end = child is not None and not child.algorithms.esn and (
                so.seq >= SEQ32_REKEY_AT or (si is not None and si.seq >= SEQ32_REKEY_AT))
            if flags & (SaFlags.SOFT_EXPIRED | SaFlags.SEQ_EXHAUSTED) or seq_near_end:
                out.append(spi_in.to_bytes(4, "big"))
        return out

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for spi_in, child in self.children.items():
            sa_in = self.dp.inbound(spi_in)
            sa_out = self.outbound.get(spi_in)
            si = sa_in.stats() if sa_in else None
            so = sa_out.stats() if sa_out else None
            rows.append({
                "spi_in": child.spi_in.hex(), "spi_out": child.spi_out.hex(),
                "algorithms": str(child.algorithms),
                "ts_local": [f"{t.start}-{t.end}" for t in child.ts_local],
                "ts_remote": [f"{t.start}-{t.end}" for t in child.ts_remote],
                "in_packets": si.packets if si else 0, "in_bytes": si.bytes if si else 0,
                "out_packets": so.packets if so else 0, "out_bytes": so.bytes if so else 0,
                "replay_drops": si.replay if si else 0, "icv_drops": si.icv if si else 0,
            })
        return rows
