"""`vpn up` with `mode = "ike"`: the IKEv2 client (initiator, TCP Originator).

1. Resolve the server before anything changes (DNS may change later), open the TUN.
2. Pick the transport: `udp` (IKE on 500, then everything on UDP 4500 with the Non-ESP
   marker; ESP always in UDP, RFC 3948), `tcp` (RFC 9329, TCP 4500), `tls` (the same
   stream inside TLS, port 443) or `auto`: UDP first, and when UDP gets no answer within
   `fallback_after` seconds a fresh IKE_SA_INIT over TCP or TLS (new SPIs, NAT detection
   recomputed: RFC 9329 §5.1). Status and log say that it fell back, and why.
3. Drive one IkeSession (endpoint.py). Child SAs go into the C dataplane; the virtual
   address goes on the TUN; routes: a full tunnel with policy routing so the outer
   connection never enters the tunnel (fwmark on our sockets and a table of our own,
   as wg-quick does), or split routes.
4. A broken TCP/TLS connection is re-established by us (the TCP Originator, RFC 9329
   §6.1), the TLS session resumed, and the session told (`transport_changed`): the
   outstanding request is resent on the new connection, the IKE SA continues.
5. When the IKE SA ends (peer dead, deleted, expired), a new one is made with backoff.
   Before the first IKE SA, a failed attempt fails `vpn up` at once, with the reason
   (unreachable, authentication failed, no proposal chosen, ...).
6. DNS (vpn/io/dns.py) and the kill switch (vpn/io/killswitch.py) are journaled in the
   run directory like the routes; `stop()` undoes them all, and so do the next start
   and `vpn down` without a daemon (`undo_leftovers`) after a crash. The kill switch
   goes in before the tunnel and stays through a crash until `vpn down`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from vpn import config
from vpn.ike import events as ev
from vpn.ike.message import is_response
from vpn.ike.policy import SessionPolicy
from vpn.ike.sa import TaskKind
from vpn.ike.session import IkeSession, Outgoing
from vpn.io import dns, paths
from vpn.io.endpoint import ChildInstaller, IkeEndpoint
from vpn.io.host import StartupError, TunnelHost, resolve
from vpn.io.killswitch import KillSwitch, KillSwitchError
from vpn.io.netconf import NetConf
from vpn.io.pathwatch import PathWatcher
from vpn.io.stream import Backoff, StreamLink, new_flow_label, open_connection
from vpn.io.tls import TlsClientSettings, TlsLink, client_context
from vpn.io.udp import UdpLink, udp_socket
from vpn.manual import wireshark_esp_sa_line
from vpn.policies import PolicyError, client_policy, retransmit_policy

FWMARK = 0x5650  # our outer sockets carry it; policy routing keeps them out of the tunnel
ROUTE_TABLE = 0x5650
RULE_PRIORITY = 5650
UP_WAIT_S = 45.0
NATT_KEEPALIVE_S = 20.0  # RFC 3948 §4
HOUSEKEEPING_S = 1.0
IKE_UDP_PORT = 500
NATT_PORT = 4500
STABLE_LINK_S = 5.0  # a connection that died sooner than this is retried only after a backoff
DPD_KIND = TaskKind.DPD.value
PROBE_RETRY_S = 1.0  # a UDP probe waits this long for an exchange in flight to finish


def dns_journal_path(name: str) -> Path:
    return paths.run_dir() / f"{name}.dns.json"


def kill_switch_state_path(name: str) -> Path:
    return paths.run_dir() / f"{name}.killswitch.json"


def leftover_names() -> list[str]:
    """Names of instances that left changes behind in this namespace."""
    d = paths.run_dir()
    names = {p.name.removesuffix(suffix) for suffix in (".journal", ".dns.json", ".killswitch.json")
             for p in d.glob(f"*{suffix}")}
    return sorted(names)


def undo_leftovers(name: str, *, keep_kill_switch: bool = False) -> list[str]:
    """Undo what instance `name` left in this namespace when it did not stop cleanly:
    addresses, routes and rules (the netconf journal), DNS and, unless kept (a start
    replaces it atomically instead), the kill switch. Returns what was undone."""
    done = []
    journal = paths.journal_path(name)
    if journal.exists():
        count = NetConf.undo_journal(journal)
        done.append(f"{count} route/rule/address change{'s' if count != 1 else ''}")
    if dns.undo_journal(dns_journal_path(name)):
        done.append("DNS")
    if not keep_kill_switch and KillSwitch(name, kill_switch_state_path(name)).remove():
        done.append("kill switch")
    return done


class _ConnectFailed(OSError):
    """A connection to the server failed; the message is for the user."""


class IkeClient(TunnelHost):
    """See the module docstring."""

    def __init__(self, cfg: config.Config, *, export_keys: Path | None = None) -> None:
        super().__init__(cfg)
        assert cfg.ike is not None and cfg.net is not None
        self.ike = cfg.ike
        self.net = cfg.net
        self.export_keys = export_keys
        try:
            policy = client_policy(cfg)
        except PolicyError as exc:
            raise StartupError(str(exc)) from None
        self.policy: SessionPolicy = dataclasses.replace(policy, retransmit=retransmit_policy(self.ike.peer_timeout_s))
        self.server_addr: str = ""
        self.endpoint: IkeEndpoint | None = None
        self.installer: ChildInstaller | None = None
        self.transport = cfg.transport.protocol if cfg.transport.protocol != "auto" else "udp"
        self.fallback_reason: str | None = None
        self.link: StreamLink | None = None
        self.udp4500: UdpLink | None = None
        self.sock500: socket.socket | None = None
        self.up_event = asyncio.Event()
        self.failure: str | None = None
        self.setup_error: str | None = None  # routes or DNS could not be set up
        self.ike_up = False
        self.addresses: list[str] = []
        self.dns_servers: list[str] = []  # applied to this machine
        self.dns_pushed: list[str] = []  # what the server offered (INTERNAL_IP4/6_DNS)
        self.dns: dns.DnsConfig | None = None
        self.dns_refused: str | None = None  # why DNS cannot be changed here
        self.kill_switch: KillSwitch | None = None
        self.routes_done = False
        self.sessions_started = 0
        self.established_at: float | None = None  # wall clock, for status
        self.next_attempt_at: float | None = None  # monotonic
        self.last_dpd_sent: float | None = None  # wall clock
        self.last_dpd_answered: float | None = None
        self._dpd_outstanding = False
        self._backoff = Backoff(first=1.0, maximum=60.0)
        self._got_udp_answer = False
        self._last_keepalive = 0.0
        self._rekeying: set[bytes] = set()
        self._in_packets = 0
        self._session_done: asyncio.Future[None] | None = None
        # MOBIKE (RFC 4555, RFC 9329 §7.1): where IKE goes may differ from where ESP goes
        # while UDP is being probed; every move is recorded for `vpn status`
        self._ike_path: str | None = None
        self._local_ip: str | None = None
        self._update_pending = False  # an UPDATE_SA_ADDRESSES for a new local address
        self._probing = False  # an UPDATE_SA_ADDRESSES sent over UDP while ESP stays on TCP
        self._move_token = 0
        self._probe_gen = 0  # only the latest scheduled UDP probe runs
        self.moves: list[dict[str, Any]] = []
        self._pending_move: tuple[str, str, str] | None = None
        self._reconnect_backoff = Backoff()
        self._standby: StreamLink | None = None
        self.pathwatch: PathWatcher | None = None
        self._last_reconnect = 0.0
        self.tls_session: ssl.SSLSession | None = None
        self.flow_label = new_flow_label()  # IPv6: one label for all our connections (T38)
        tls = cfg.transport.tls
        self.tls_settings = TlsClientSettings(
            server_name=tls.server_name if tls else cfg.transport.remote,
            cafile=str(tls.cafile) if tls and tls.cafile else None,
            pin_sha256=tls.pin_sha256 if tls else None)
        wants_tls = cfg.transport.protocol == "tls" or (cfg.transport.protocol in ("auto", "udp")
                                                         and cfg.ike.fallback == "tls")
        self.tls_context = client_context(self.tls_settings) if wants_tls else None

    # -- bring-up ---------------------------------------------------------------------
    async def start(self) -> None:
        cfg, tr = self.cfg, self.cfg.transport
        assert tr.remote is not None
        # a crashed instance's routes and DNS go first; its kill switch stays until ours
        # replaces it (no moment without one)
        undone = await self.netconf_call(undo_leftovers, cfg.name, keep_kill_switch=True)
        if undone:
            self.event("undid the changes of an earlier instance that did not stop cleanly: " + ", ".join(undone))
        if self.net.dns:
            try:
                self.dns = dns.DnsConfig(cfg.name, dns_journal_path(cfg.name))
            except dns.DnsError as exc:
                self.dns_refused = f"DNS: {exc}"  # an error only if the server pushes DNS servers
        ks = KillSwitch(cfg.name, kill_switch_state_path(cfg.name))
        try:
            # the server's name is looked up before DNS changes (and before a kill switch)
            self.server_addr = await resolve(tr.remote, tr.port)
        except StartupError as exc:
            if ks.recorded:
                raise StartupError(f"{exc} (the kill switch of an earlier run blocks the lookup: put the "
                                   f"server's address in [transport] remote, or run `vpn down {cfg.name}`)") from None
            raise
        try:
            if self.net.kill_switch:
                await self.netconf_call(ks.apply, cfg.tunnel.device, FWMARK)
                self.kill_switch = ks
                self.event(f"kill switch on (nftables table inet {ks.table})")
            else:
                await self.netconf_call(ks.remove)
        except KillSwitchError as exc:
            raise StartupError(str(exc)) from None
        await self.open_tun()
        self.peer = self.dp.peer(1)
        self.dp.set_default_peer(self.peer)
        self.installer = ChildInstaller(self.dp, self.peer)
        self.state = "connecting"
        self.pathwatch = PathWatcher(self.loop, self._path_may_have_changed)
        self.spawn(self._run_sessions())
        self.call_later(HOUSEKEEPING_S, self._housekeeping)
        try:
            await asyncio.wait_for(self.up_event.wait(), UP_WAIT_S)
        except TimeoutError:
            raise StartupError(f"no IKE SA with {tr.remote} after {UP_WAIT_S:.0f} s: "
                               f"{self.failure or self._no_answer()}") from None
        if self.setup_error or not self.ike_up:
            raise StartupError(self.setup_error or self.failure or self._no_answer())
        if self.export_keys:
            self._write_export_keys(self.export_keys)

    def _server_text(self) -> str:
        remote = self.cfg.transport.remote
        return f"{remote} ({self.server_addr})" if self.server_addr and self.server_addr != remote else str(remote)

    def _no_answer(self) -> str:
        return f"no answer from {self._server_text()} over {self.transport.upper()}"

    async def _run_sessions(self) -> None:
        """One IKE SA after another: a new one (with backoff) whenever the last ended.
        Before the first one is up, a failed attempt ends `vpn up` with its reason."""
        while not self._stopping:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._session_done = done
            self.next_attempt_at = None
            try:
                await self._start_session()
            except OSError as exc:
                self._attempt_failed(str(exc))
            await done
            if self._stopping:
                return
            if not self.up_event.is_set():
                self.up_event.set()  # `vpn up` fails now, with the reason
                return
            self.state = "reconnecting"
            delay = self._backoff.next()
            self.next_attempt_at = time.monotonic() + delay
            self.event(f"starting a new IKE SA in {delay:.0f} s")
            await asyncio.sleep(delay)

    def _fail(self, why: str) -> None:
        self.failure = why
        self.event(why)

    def _attempt_failed(self, why: str) -> None:
        """This attempt is over before it had an IKE SA (e.g. the server is unreachable)."""
        self._fail(why)
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
        fut = self._session_done
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _start_session(self) -> None:
        self.sessions_started += 1
        self._got_udp_answer = False
        if self.transport == "udp":
            await self._start_udp()
        else:
            await self._start_stream()

    def _new_session(self, *, stream: bool, local: tuple[str, int], remote: tuple[str, int]) -> None:
        session = IkeSession(self.policy, initiator=True, rng=os.urandom, stream=stream,
                             local_addr=local, remote_addr=remote)
        self.endpoint = IkeEndpoint(self.loop, session, self._send, self._on_event, after_pump=self._after_pump)
        self.endpoint.command(session.initiate)

    # -- UDP --------------------------------------------------------------------------
    def _udp_sockets(self) -> tuple[socket.socket, UdpLink]:
        """Our UDP sockets: port 500 for bare IKE, 4500 (dataplane) for IKE behind the
        Non-ESP marker and ESP; both marked so they never enter the tunnel."""
        family = socket.AF_INET6 if ":" in self.server_addr else socket.AF_INET
        if self.sock500 is None:
            self.sock500 = udp_socket(None, 0, family=family, mark=FWMARK)
            self.loop.add_reader(self.sock500.fileno(), self._udp500_readable)
        if self.udp4500 is None:
            self.udp4500 = UdpLink(self.loop, self.dp, udp_socket(None, 0, family=family, mark=FWMARK),
                                   self._udp4500_ike)
            self.udp_links.append(self.udp4500)
        return self.sock500, self.udp4500

    async def _start_udp(self) -> None:
        self._udp_sockets()
        assert self.sock500 is not None and self.udp4500 is not None
        self.peer.set_conn(self.udp4500.conn)
        self.peer.set_addr(self.server_addr, NATT_PORT)
        local = self.sock500.getsockname()[:2]
        self._new_session(stream=False, local=(str(local[0]), int(local[1])),
                          remote=(self.server_addr, IKE_UDP_PORT))
        if self.cfg.transport.protocol == "auto":
            self.call_later(self.cfg.transport.fallback_after_s, self._maybe_fall_back)

    def _udp500_readable(self) -> None:
        assert self.sock500 is not None
        for _ in range(16):
            try:
                data, addr = self.sock500.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self.endpoint is not None and addr[0] == self.server_addr:
                self._got_udp_answer = True
                self.endpoint.receive(data, (str(addr[0]), int(addr[1])))

    def _udp4500_ike(self, msg: bytes, addr: tuple[str, int]) -> None:
        if self.endpoint is not None and addr[0] == self.server_addr:
            self._got_udp_answer = True
            assert self.udp4500 is not None
            local = self.udp4500.sock.getsockname()
            self.endpoint.receive(msg, addr, (str(local[0]), int(local[1])))

    def _maybe_fall_back(self) -> None:
        """RFC 9329 §5.1: no UDP answer -> a fresh IKE_SA_INIT over TCP (or TLS)."""
        if self._got_udp_answer or self.transport != "udp" or self.endpoint is None or self._stopping:
            return
        wait = self.cfg.transport.fallback_after_s
        self.fallback_reason = f"no answer over UDP within {wait:g} s"
        target = self.ike.fallback
        self.event(f"falling back from UDP to {target.upper()}: {self.fallback_reason}")
        old = self.endpoint
        old.stop()  # abandoned silently: it never got an answer, there is no SA to delete
        self.endpoint = None
        self.transport = target
        self.spawn(self._fall_back())

    async def _fall_back(self) -> None:
        try:
            await self._start_stream()
        except OSError as exc:
            self._attempt_failed(str(exc))

    # -- TCP / TLS ----------------------------------------------------------------------
    async def _start_stream(self) -> None:
        link = await self._connect()
        local, remote = _sockname(link.sock), (self.server_addr, self._stream_port())
        self._new_session(stream=True, local=local, remote=remote)

    def _stream_port(self, kind: str | None = None) -> int:
        tr = self.cfg.transport
        kind = kind or self.transport
        if tr.protocol in ("auto", "udp"):  # a fallback: the standard ports (RFC 9329 §2, App. A)
            return 443 if kind == "tls" else 4500
        return tr.port

    async def _connect(self, *, standby: bool = False) -> StreamLink:
        """A stream to the server (TLS handshaken). `standby`: opened ahead of a possible
        move; neither IKE nor ESP uses it until the move happens."""
        port = self._stream_port(self.ike.fallback if standby else None)
        where = f"{self._server_text()} port {port} over {self.transport.upper()}"
        try:
            sock = await open_connection(self.server_addr, port, mark=FWMARK, local=self.cfg.transport.local,
                                         flow_label=self.flow_label)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
            raise _ConnectFailed(f"cannot reach {where}: {why}") from None
        kind = self.ike.fallback if standby else self.transport
        tls = self.tls_context if kind == "tls" else None
        link = self.new_link(sock, originator=True, tls_context=tls, tls_settings=self.tls_settings,
                             tls_session=self.tls_session)
        if not standby:
            self.link = link
            self.peer.set_conn(link.conn)
        self.event(f"connected to {self.server_addr}:{port} over {kind.upper()}" + (" (standby)" if standby else ""))
        if tls is not None:
            done = await _wait_handshake(link)
            if not done:
                why = link.closed.result() if link.closed.done() else "?"
                raise _ConnectFailed(f"TLS handshake with {where} failed: {why}")
        return link

    def on_tls_session(self, session: ssl.SSLSession) -> None:
        self.tls_session = session  # offered on the next connection (RFC 9329 App. B.3)

    def on_tls_handshake(self, link: TlsLink) -> None:
        self.event(f"TLS {link.tls_version} established" + (" (session resumed)" if link.session_reused else ""))

    def on_stream_ike(self, link: StreamLink, msg: bytes) -> None:
        if self.endpoint is not None and link is self.link:
            self.endpoint.receive(msg, None, _sockname(link.sock))

    def on_link_closed(self, link: StreamLink, reason: str) -> None:
        if link is not self.link or self._stopping or self.transport == "udp":
            return
        self.link = None
        self.peer.set_conn(None)
        self.event(f"connection lost: {reason}")
        if self.endpoint is not None and not self.endpoint.closed:
            self.spawn(self._reconnect(self.endpoint))

    async def _reconnect(self, endpoint: IkeEndpoint) -> None:
        """RFC 9329 §6.1: only the Originator reconnects; the IKE SA continues on the new
        connection and the outstanding request is resent there (§6.2). Ends when that
        IKE SA does (DPD or the request timeout declares the server dead)."""
        backoff = self._reconnect_backoff
        if time.monotonic() - self._last_reconnect < STABLE_LINK_S:
            # the last connection died at once (a middlebox, a server refusing it): wait
            await asyncio.sleep(backoff.next())
        else:
            backoff.reset()
        self._last_reconnect = time.monotonic()
        while not self._stopping and self.endpoint is endpoint and not endpoint.closed:
            try:
                link = await self._connect()
            except OSError as exc:
                self.event(f"reconnect failed: {exc}")
                await asyncio.sleep(backoff.next())
                continue
            if self.endpoint is not endpoint or endpoint.closed:
                link.close("IKE SA gone")
                return
            endpoint.command(endpoint.session.transport_changed, stream=True,
                             local=_sockname(link.sock), remote=(self.server_addr, self._stream_port()))
            return

    # -- session output and events --------------------------------------------------------
    def _send(self, out: Outgoing) -> None:
        path = self._ike_path or self.transport
        if self._probing and is_response(out.data) and self.link is not None and self.link.is_open:
            path = self.transport  # a probe carries our UPDATE only; answers stay on the stream
        if path == "udp":
            remote = out.remote or (self.server_addr, NATT_PORT)
            if remote[1] == IKE_UDP_PORT:
                assert self.sock500 is not None
                try:
                    self.sock500.sendto(out.data, remote)
                except OSError as exc:
                    self.event(f"UDP send failed: {exc.strerror}")
            else:
                assert self.udp4500 is not None
                self.udp4500.send_ike(out.data, remote)
        elif self.link is not None and self.link.is_open:
            self.link.send_ike(out.data)
        # else: not connected; transport_changed() resends the request on the new link

    def _after_pump(self, endpoint: IkeEndpoint) -> None:
        """Notice liveness checks (RFC 7296 §2.4) going out and being answered."""
        if endpoint is not self.endpoint:
            return
        dpd_now = endpoint.session.times().outstanding == DPD_KIND
        if dpd_now and not self._dpd_outstanding:
            self.last_dpd_sent = time.time()
        elif self._dpd_outstanding and not dpd_now and endpoint.session.established:
            self.last_dpd_answered = time.time()
        self._dpd_outstanding = dpd_now

    def _on_event(self, endpoint: IkeEndpoint, e: ev.Event) -> None:
        if endpoint is not self.endpoint:
            return
        assert self.installer is not None
        if isinstance(e, ev.IkeSaEstablished):
            self._local_ip = self._route_source()  # the path this IKE SA was made on
            self.ike_up = True
            self.state = "up"
            self.established_at = time.time()
            self._backoff.reset()
            self.event(f"IKE SA established with {e.peer_id} ({e.algorithms}) over {self.transport.upper()}"
                       + (", MOBIKE" if e.mobike else ""))
            if e.mobike and self.transport != "udp" and self.cfg.transport.protocol == "auto":
                self._schedule_probe()  # fell back to a stream: move to UDP once it works
        elif isinstance(e, ev.ChildSaEstablished):
            self.installer.install(e.child)
            self.event(f"Child SA installed: in {e.child.spi_in.hex()} out {e.child.spi_out.hex()} "
                       f"({e.child.algorithms})")
        elif isinstance(e, ev.ChildSaRekeyed):
            self.installer.install(e.child)
            self._rekeying.discard(e.old_spi_in)
            self.event(f"Child SA rekeyed: {e.old_spi_in.hex()} -> {e.child.spi_in.hex()}")
        elif isinstance(e, ev.ChildSaDeleted):
            self.installer.remove(e.spi_in)
            self._rekeying.discard(e.spi_in)
        elif isinstance(e, ev.ChildSaFailed):
            self._fail(f"Child SA failed: {e.detail or e.notify}")
        elif isinstance(e, ev.VirtualAddressAssigned):
            self.spawn(self._apply_addresses(e))
        elif isinstance(e, ev.IkeSaRekeyed):
            self.event(f"IKE SA rekeyed ({e.algorithms})")
        elif isinstance(e, ev.AddressesUpdated):
            self._on_addresses_updated(e)
        elif isinstance(e, ev.PeerAddressChanged):
            self.event(f"server address now {e.new[0]}:{e.new[1]}")
        elif isinstance(e, ev.IkeSaClosed):
            self._on_closed(e)

    def _on_closed(self, e: ev.IkeSaClosed) -> None:
        assert self.installer is not None and self.endpoint is not None
        why = e.reason.value + (f" ({e.detail})" if e.detail else "")
        if e.reason is ev.CloseReason.TIMEOUT and not self.ike_up:
            self._fail(f"{self._no_answer()} (IKE SA closed: {why})")
        else:
            self._fail(f"IKE SA closed: {why}")
        self.ike_up = False
        self.established_at = None
        self._dpd_outstanding = False
        if not self._stopping and self.up_event.is_set():
            self.state = "reconnecting"
        self.installer.remove_all()
        self.endpoint.stop()
        self.endpoint = None
        if self.link is not None:
            link, self.link = self.link, None
            link.close("IKE SA closed")  # RFC 9329 §6.1 (T33): the Originator closes it
        if self.cfg.transport.protocol == "auto":
            self.transport = "udp"  # a new SA tries UDP first again (RFC 9329 §7.2 spirit)
        fut = self._session_done
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _apply_addresses(self, e: ev.VirtualAddressAssigned) -> None:
        """The virtual address on the TUN, then the routes (once), then DNS, then `vpn up`
        returns. A later IKE SA that gets other addresses replaces ours."""
        try:
            await self._configure(e)
        except StartupError as exc:
            self._fail(str(exc))
            self.setup_error = self.failure
        except Exception as exc:  # noqa: BLE001 - reported to `vpn up`, never swallowed
            self._fail(f"cannot configure the tunnel: {exc}")
            self.setup_error = self.failure
        self.up_event.set()

    async def _configure(self, e: ev.VirtualAddressAssigned) -> None:
        assert self.tun is not None and self.netconf is not None
        wanted = [str(a.ip) + ("/32" if a.version == 4 else "/128") for a in e.addresses]
        for addr in wanted:
            if addr not in self.addresses:
                await self.netconf_call(self.netconf.add_address, self.tun.name, addr)
                self.addresses.append(addr)
        for addr in [a for a in self.addresses if a not in wanted]:
            ip, plen = addr.split("/")
            await self.netconf_call(self.netconf.undo_one, "addr", ifname=self.tun.name, address=ip,
                                    prefixlen=int(plen))
            self.addresses.remove(addr)
        servers = [str(d) for d in e.dns]
        self.dns_pushed = servers
        self.event("virtual address " + ", ".join(wanted) + (f", DNS {', '.join(servers)}" if servers else ""))
        if not self.routes_done:
            await self.netconf_call(self._install_routes, list(e.subnets))
            self.routes_done = True
        if self.dns_refused and servers:
            raise StartupError(self.dns_refused)
        if self.dns is not None and servers and servers != self.dns_servers:
            await self.netconf_call(self.dns.apply, self.tun.name, servers, route_all=self.net.full_tunnel)
            self.dns_servers = servers
            self.event(f"DNS set to {', '.join(servers)} ({self.dns.method})")

    def _install_routes(self, subnets: list[Any]) -> None:
        """Full tunnel: everything into the tunnel from table ROUTE_TABLE, except packets
        of our own outer sockets (fwmark), and the main table's specific routes still win
        (suppress_prefixlength 0): the wg-quick scheme. Split: only the listed prefixes."""
        assert self.tun is not None and self.netconf is not None
        nc, dev = self.netconf, self.tun.name
        if self.net.full_tunnel:
            for family, default in ((4, "0.0.0.0/0"), (6, "::/0")):
                nc.add_route(default, ifname=dev, table=ROUTE_TABLE)
                nc.add_rule(family=family, priority=RULE_PRIORITY, table=ROUTE_TABLE, fwmark=FWMARK, invert=True)
                nc.add_rule(family=family, priority=RULE_PRIORITY - 1, table=254, suppress_prefixlength=0)
            return
        for net in subnets:  # the configured routes went in with the TUN (host.py)
            if net not in self.cfg.tunnel.routes:
                nc.add_route(str(net), ifname=dev)


    # -- mobility (RFC 4555 MOBIKE, RFC 9329 §7.1) ------------------------------------------
    def _route_source(self) -> str | None:
        """The local address our marked sockets would use towards the server now."""
        family = socket.AF_INET6 if ":" in self.server_addr else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, FWMARK)
                s.connect((self.server_addr, NATT_PORT))
                return str(s.getsockname()[0])
        except OSError:
            return None  # no route at the moment (a link went down)

    def _path_may_have_changed(self) -> None:
        ep = self.endpoint
        if ep is not None and not ep.closed and ep.session.established:
            self._watch_path(ep)

    def _watch_path(self, ep: IkeEndpoint) -> None:
        """Notice a new local address (another network, a new NAT mapping behind it)."""
        ip = self._route_source()
        if ip is None or ip == self._local_ip:
            return
        old, self._local_ip = self._local_ip, ip
        if old is None:
            return  # the first reading
        self._on_local_address_changed(ep, old, ip)

    def _record_move(self, frm: str, to: str, reason: str) -> None:
        self.moves.append({"time": time.strftime("%H:%M:%S"), "at": round(time.time(), 3),
                           "from": frm, "to": to, "reason": reason})
        del self.moves[:-20]
        self.event(f"moved from {frm.upper()} to {to.upper()}: {reason}")

    def _on_local_address_changed(self, ep: IkeEndpoint, old: str, new: str) -> None:
        session = ep.session
        if not session.mobike:
            self.event(f"local address changed ({old} -> {new}); the server did not negotiate MOBIKE: "
                       "re-establishing at the connection level")
            if self.link is not None:
                self.link.close("local address changed")
            return
        self.event(f"local address changed ({old} -> {new}): UPDATE_SA_ADDRESSES over {self.transport.upper()}")
        if self.transport == "udp":
            assert self.udp4500 is not None
            port = int(self.udp4500.sock.getsockname()[1])
            self._update_pending = True
            self._move_token += 1
            token = self._move_token
            ep.command(session.update_addresses, local=(new, port), remote=(self.server_addr, NATT_PORT))
            self.call_later(self.cfg.transport.mobike_wait_s, lambda: self._udp_update_unanswered(token))
            # open the fallback stream now, in case UDP stays silent: when the wait is over
            # only the resent request's round trip is left (RFC 9329 §7.1)
            self.spawn(self._open_standby(token))
        elif self.link is not None:
            # the stream was bound to the old address: reconnect; the session resends or
            # sends UPDATE_SA_ADDRESSES on the new connection (RFC 9329 §6.1, §7.1)
            self._update_pending = True
            self.link.close("local address changed")
            if self.cfg.transport.protocol in ("auto", "udp"):
                # RFC 9329 §7.1 (T72): UDP is tried on the new network as soon as the
                # stream's exchange is done, not only at the next periodic probe
                self._schedule_probe(PROBE_RETRY_S)

    def _udp_update_unanswered(self, token: int) -> None:
        """RFC 9329 §7.1: no answer over UDP -> the same request over TCP (or TLS)."""
        if token != self._move_token or not self._update_pending or self.transport != "udp":
            return
        ep = self.endpoint
        if ep is None or ep.closed:
            return
        wait = self.cfg.transport.mobike_wait_s
        self.spawn(self._move_to_stream(ep, f"no answer over UDP within {wait:g} s after the address change"))

    async def _open_standby(self, token: int) -> None:
        """A connected (and for TLS, handshaken) stream, not used until the move."""
        self._drop_standby()
        try:
            link = await self._connect(standby=True)
        except OSError as exc:
            self.event(f"standby {self.ike.fallback.upper()} connection failed: {exc}")
            return
        if token != self._move_token or not self._update_pending or self.transport != "udp":
            link.close("not needed: UDP answered")
            return
        self._standby = link

    def _drop_standby(self) -> None:
        link, self._standby = self._standby, None
        if link is not None:
            link.close("not needed: UDP answered")

    async def _move_to_stream(self, ep: IkeEndpoint, reason: str) -> None:
        frm, target = self.transport, self.ike.fallback
        self.transport = target
        self._pending_move = (frm, target, reason)
        standby, self._standby = self._standby, None
        try:
            if standby is not None and standby.is_open:
                link = standby
                self.link = link
                self.peer.set_conn(link.conn)  # ESP goes over the stream at once
            else:
                link = await self._connect()
        except OSError as exc:
            self.event(f"cannot move to {target.upper()}: {exc}")
            self.transport = frm
            return
        if self.endpoint is not ep or ep.closed:
            link.close("IKE SA gone")
            return
        # the outstanding UPDATE_SA_ADDRESSES goes again, same message ID and bytes
        ep.command(ep.session.transport_changed, stream=True, local=_sockname(link.sock),
                   remote=(self.server_addr, self._stream_port()))
        self._schedule_probe()

    def _schedule_probe(self, delay: float | None = None) -> None:
        if self.cfg.transport.udp_probe_s > 0:
            self._probe_gen += 1
            gen = self._probe_gen
            self.call_later(self.cfg.transport.udp_probe_s if delay is None else delay,
                            lambda: self._probe_udp(gen))

    def _probe_udp(self, gen: int) -> None:
        """On TCP/TLS after a move or a fallback: try UDP again (RFC 9329 §9: UDP is
        preferred) with UPDATE_SA_ADDRESSES over UDP."""
        ep = self.endpoint
        if (gen != self._probe_gen or ep is None or ep.closed or not ep.session.established
                or not ep.session.mobike or self.transport == "udp" or self._probing or self._stopping):
            return
        if ep.session.times().outstanding is not None:
            self._schedule_probe(PROBE_RETRY_S)  # the probe must carry an UPDATE, not another request
            return
        _sock500, udp = self._udp_sockets()
        ip = self._route_source()
        if ip is None:
            self._schedule_probe()
            return
        self._probing = True
        self._ike_path = "udp"
        self._move_token += 1
        token = self._move_token
        ep.command(ep.session.transport_changed, stream=False, local=(ip, int(udp.sock.getsockname()[1])),
                   remote=(self.server_addr, NATT_PORT))
        self.call_later(self.cfg.transport.mobike_wait_s, lambda: self._probe_unanswered(token))

    def _probe_unanswered(self, token: int) -> None:
        if token != self._move_token or not self._probing:
            return
        self._probing = False
        self._ike_path = None
        ep, link = self.endpoint, self.link
        if ep is not None and not ep.closed and link is not None and link.is_open:
            # back to the stream with the same request (RFC 9329 §7.1: no new exchange)
            ep.command(ep.session.transport_changed, stream=True, local=_sockname(link.sock),
                       remote=(self.server_addr, self._stream_port()))
        self._schedule_probe()

    def _on_addresses_updated(self, e: ev.AddressesUpdated) -> None:
        """UPDATE_SA_ADDRESSES completed on a new path: ESP follows IKE there."""
        if not e.stream and self._probing:
            frm = self.transport
            self._probing = False
            self._ike_path = None
            assert self.udp4500 is not None
            self.transport = "udp"
            self.peer.set_conn(self.udp4500.conn)
            self.peer.set_addr(self.server_addr, NATT_PORT)
            link, self.link = self.link, None
            if link is not None:
                link.close("moved back to UDP")  # RFC 9329 §7.1 (T76): close the old stream
            self._record_move(frm, "udp", "UDP answers again")
        elif e.stream and self._pending_move is not None:
            frm, to, reason = self._pending_move
            self._pending_move = None
            self._record_move(frm, to, reason)
        elif self._update_pending:
            self._record_move(self.transport, self.transport, f"local address now {e.local[0] if e.local else '?'}")
        self._update_pending = False
        if self.transport == "udp":
            self._drop_standby()

    # -- housekeeping -----------------------------------------------------------------------
    def _housekeeping(self) -> None:
        ep, inst = self.endpoint, self.installer
        if ep is not None and not ep.closed and ep.session.established:
            self._watch_path(ep)
        if ep is not None and inst is not None and not ep.closed and ep.session.established:
            # ESP from the peer postpones DPD (RFC 7296 §2.4: only when nothing came)
            packets = sum(r["in_packets"] for r in inst.status())
            if packets != self._in_packets:
                self._in_packets = packets
                ep.session.peer_activity(ep.now())
            for spi in inst.soft_expired():  # the dataplane's soft lifetime: rekey now
                if spi not in self._rekeying:
                    self._rekeying.add(spi)
                    try:
                        ep.command(ep.session.rekey_child, spi)
                    except Exception as exc:  # noqa: BLE001 - a refused command must not kill the loop
                        self.event(f"rekey of {spi.hex()} not started: {exc}")
            if self.transport == "udp" and self.udp4500 is not None and ep.session.nat_local:
                if time.monotonic() - self._last_keepalive > NATT_KEEPALIVE_S:
                    self._last_keepalive = time.monotonic()
                    self.udp4500.send_keepalive((self.server_addr, NATT_PORT))
        self.call_later(HOUSEKEEPING_S, self._housekeeping)

    # -- status, stop -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.base_status()
        tr = self.cfg.transport
        ep = self.endpoint
        session = ep.session if ep is not None and not ep.closed else None
        mono, wall = time.monotonic(), time.time()
        port = self._stream_port() if self.transport != "udp" else NATT_PORT
        st.update({
            "role": "client",
            "server": self._server_text(),
            "server_address": f"{self.server_addr}:{port}" if self.server_addr else None,
            "transport": self.transport,
            "connected": None if self.transport == "udp" else bool(self.link is not None and self.link.is_open),
            "configured_transport": tr.protocol,
            "fell_back": self.fallback_reason is not None,
            "fallback_reason": self.fallback_reason,
            "mobike": bool(session is not None and session.mobike),
            "moves": self.moves,
            "probing_udp": self._probing,
            "virtual_ip": self.addresses,
            "dns": self.dns_servers,
            "dns_pushed": self.dns_pushed,
            "dns_method": self.dns.method if self.dns is not None and self.dns_servers else None,
            "full_tunnel": self.net.full_tunnel,
            "kill_switch": None if self.kill_switch is None else {
                "table": f"inet {self.kill_switch.table}", "blocked_packets": self.kill_switch.blocked()},
            "ike_sa": _ike_status(session, mono, wall, self) if session is not None and session.established
            else None,
            "child_sas": self._child_status(session, mono),
            "sessions_started": self.sessions_started,
            "last_failure": self.failure,
            "next_attempt_in_s": round(max(0.0, self.next_attempt_at - mono), 1)
            if self.next_attempt_at is not None and self.state == "reconnecting" else None,
        })
        return st

    def _child_status(self, session: IkeSession | None, mono: float) -> list[dict[str, Any]]:
        if self.installer is None:
            return []
        rekey = dict(session.times().child_rekey_at) if session is not None else {}
        rows = self.installer.status()
        for row in rows:
            at = rekey.get(bytes.fromhex(row["spi_in"]))
            row["rekey_in_s"] = round(at - mono, 1) if at is not None else None
        return rows

    def _write_export_keys(self, path: Path) -> None:
        """The Child SAs as Wireshark esp_sa lines (the live keys: mode 0600)."""
        assert self.installer is not None
        lines = []
        for child in self.installer.children.values():
            for spi, keys in ((child.spi_in, child.keys_in), (child.spi_out, child.keys_out)):
                for family in ("IPv4", "IPv6"):
                    lines.append(wireshark_esp_sa_line(int.from_bytes(spi, "big"), keys.encr_key + keys.salt, family))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    async def before_stop(self) -> None:
        """Delete the IKE SA (RFC 9329 §6.1 T32) and give the answer a moment."""
        ep = self.endpoint
        if ep is None or ep.closed or not ep.session.established:
            return
        try:
            ep.command(ep.session.close)
        except Exception:  # noqa: BLE001 - best effort on the way out
            return
        for _ in range(20):
            if ep.closed or ep.session.closed:
                break
            await asyncio.sleep(0.05)

    async def after_links_closed(self) -> None:
        if self.pathwatch is not None:
            self.pathwatch.close()
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.sock500 is not None:
            self.loop.remove_reader(self.sock500.fileno())
            self.sock500.close()

    async def stop(self) -> None:
        """Everything `TunnelHost.stop` undoes, then DNS, then (last) the kill switch."""
        if self._stopping:
            return
        try:
            await super().stop()
        finally:
            if self.dns is not None:
                await self.netconf_call(self.dns.restore)
            if self.kill_switch is not None:
                await self.netconf_call(self.kill_switch.remove)


def _ike_status(session: IkeSession, mono: float, wall: float, client: IkeClient) -> dict[str, Any]:
    times = session.times()

    def until(at: float | None) -> float | None:
        return round(at - mono, 1) if at is not None else None

    def ago(at: float | None) -> float | None:
        return round(wall - at, 1) if at is not None else None

    return {
        "spi_i": session.spi_i.hex(), "spi_r": session.spi_r.hex(),
        "initiator": session.sa_initiator,  # of the current IKE SA: a rekey by the server swaps it
        "peer": str(session.peer_id), "algorithms": str(session.algorithms),
        "established_s_ago": ago(client.established_at),
        "rekey_in_s": until(times.ike_rekey_at), "expires_in_s": until(times.ike_expire_at),
        "mobike": session.mobike, "nat_local": session.nat_local, "nat_remote": session.nat_remote,
        "last_heard_s_ago": round(mono - times.last_heard, 1) if times.last_heard else None,
        "dpd": {
            "interval_s": client.ike.dpd_s,
            "peer_timeout_s": client.ike.peer_timeout_s,
            "next_in_s": until(times.dpd_due),
            "in_progress": times.outstanding == DPD_KIND,
            "waiting_for": times.outstanding,  # any request in flight also proves liveness
            "last_sent_s_ago": ago(client.last_dpd_sent),
            "last_answered_s_ago": ago(client.last_dpd_answered),
        },
    }


def _sockname(sock: socket.socket) -> tuple[str, int]:
    try:
        addr = sock.getsockname()
        return str(addr[0]), int(addr[1])
    except OSError:
        return ("0.0.0.0", 0)


async def _wait_handshake(link: TlsLink | StreamLink, timeout: float = 15.0) -> bool:
    assert isinstance(link, TlsLink)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if link.tls_version is not None:
            return True
        if link.closed.done():
            return False
        await asyncio.sleep(0.02)
    link.close("TLS handshake timed out")
    return False
