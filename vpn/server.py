"""`vpn serve`: the IKEv2 server (responder) for many clients over UDP, TCP and TLS.

1. Open the TUN with the server's own tunnel address, route the pools into it.
2. Listen: UDP 500 (bare IKE) and 4500 (Non-ESP marker + ESP, RFC 3948), TCP 4500
   (RFC 9329) and TLS 443 (Appendix A). The server never connects out.
3. Every IKE message goes through the stateless front door (vpn/ike/responder.py:
   cookies, half-open limits) to the session of its SPIs; each session gets a
   ClientState: an IkeEndpoint, a dataplane peer and its Child SAs.
4. Virtual addresses come from the pools, stable per identity: every configured
   [[client]] is given its address up front, in the order listed, so it gets the same
   one on every connection, also after a server restart. Each is routed (in C) to its
   client's peer, and each inbound SPI only carries that client's selectors, so no
   client can speak with another's address (RFC 4301 §5.2).
5. Return path (RFC 9329 §6.1, T44/T46; RFC 7296 §2.23): IKE responses go back where
   their request came from; everything else goes on the connection (or to the address)
   where the client's traffic last authenticated: an IKE message that decrypted, was
   in the window and was not a retransmission, or an ESP packet that opened and passed
   the replay check (the dataplane moves the peer itself then). A connection that
   only carried garbage or replays never becomes the return path.
6. The TCP listener defends itself (vpn/io/stream.py, ListenerLimits): prefix and first
   message in time, a cap on unauthenticated connections, stalled partial frames, and
   connections left without an IKE SA (T34) are closed.
7. Forwarding: sysctls and an nftables table (masquerade to the uplink, TCP MSS clamp),
   removed on stop and replaced after a crash (vpn/io/firewall.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vpn import config
from vpn import fastpath as fp
from vpn.ike import events as ev
from vpn.ike.constants import ExchangeType, HeaderFlag, NotifyType
from vpn.ike.errors import MalformedMessage
from vpn.ike.message import IkeHeader, Message, Notify, is_response, peek_header
from vpn.ike.policy import Identity, PoolAllocator
from vpn.ike.responder import CookiePolicy, IkeResponder
from vpn.ike.session import IkeSession, Outgoing
from vpn.io import firewall
from vpn.io.endpoint import ChildInstaller, IkeEndpoint
from vpn.io.host import StartupError, TunnelHost
from vpn.io.stream import StreamLink, StreamServer, listen
from vpn.io.tls import TlsLink, server_context
from vpn.io.udp import UdpLink, udp_socket
from vpn.policies import PolicyError, lease_networks, server_policy

log = logging.getLogger("vpn.server")

IKE_UDP_PORT = 500
NATT_PORT = 4500
HOUSEKEEPING_S = 1.0
LIFETIME_CHECK_S = 0.2  # with rekey_bytes: notice a soft-expired SA quickly
SUPERSEDED_IDLE_S = 30.0  # RFC 9329 §6.1 (T45): close an idle connection that was replaced


@dataclass(eq=False)
class ClientState:
    """One client: its session, dataplane peer, Child SAs, transport and addresses."""

    endpoint: IkeEndpoint
    peer: fp.DpPeer
    installer: ChildInstaller
    transport: str  # udp | tcp | tls
    link: StreamLink | None  # the return path over a stream (None: UDP, or not connected)
    udp_remote: tuple[str, int] | None
    created: float  # wall clock
    identity: Identity | None = None
    addresses: list[str] = field(default_factory=list)
    routes: list[Any] = field(default_factory=list)
    udp_local_port: int = NATT_PORT  # UDP: answer from the port the client used (500/4500)
    in_packets: int = 0
    rekeying: set[bytes] = field(default_factory=set)
    moves: list[dict[str, Any]] = field(default_factory=list)  # return-path moves, for status
    # highest request message ID that authenticated, per IKE SA (SPIi || SPIr): a request
    # at or below it is a retransmission and moves nothing (RFC 9329 §6.1, T44)
    request_ids: dict[bytes, int] = field(default_factory=dict)

    @property
    def session(self) -> IkeSession:
        return self.endpoint.session

    @property
    def stream(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True)
class _Reply:
    """Where the message being handled came from: its responses go back there."""

    session: IkeSession
    via: StreamLink | None
    remote: tuple[str, int]
    local_port: int


class IkeServer(TunnelHost):
    """See the module docstring."""

    def __init__(self, cfg: config.Config) -> None:
        super().__init__(cfg)
        assert cfg.server is not None
        self.srv = cfg.server
        try:
            self.policy, self.allocator = server_policy(cfg)
        except PolicyError as exc:
            raise StartupError(str(exc)) from None
        _assign_configured(self.allocator, self.srv)
        self.responder = IkeResponder(self.policy, rng=os.urandom, cookies=CookiePolicy())
        self.clients: dict[int, ClientState] = {}  # id(session) -> client
        self.link_owner: dict[StreamLink, ClientState] = {}  # connections an SA authenticated on
        self.route_owner: dict[Any, ClientState] = {}  # leased prefix -> client routed to it
        self.sock500: list[socket.socket] = []
        self.udp4500: UdpLink | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.firewall: firewall.Firewall | None = None
        self._next_peer_id = 1
        self._reply: _Reply | None = None
        self._esp_seen: dict[StreamLink, int] = {}
        self._invalid_spi_sent: set[StreamLink] = set()
        self.link_closes: dict[str, int] = {}  # connections the server closed, by rule
        self.link_drops: dict[str, int] = {}  # IKE messages dropped on a connection, by rule
        self.closed_clients = 0

    # -- bring-up ---------------------------------------------------------------------
    async def start(self) -> None:
        srv = self.srv
        await self.open_tun()
        await self.netconf_call(self._route_pools)
        self.firewall = firewall.Firewall(self.cfg.name)
        try:
            await self.netconf_call(self.firewall.apply, self._firewall_spec())
        except firewall.FirewallError as exc:
            raise StartupError(str(exc)) from None
        try:
            if srv.udp:
                s500 = udp_socket(srv.listen, IKE_UDP_PORT, family=socket.AF_INET6)
                self.loop.add_reader(s500.fileno(), self._udp500_readable, s500)
                self.sock500.append(s500)
                self.udp4500 = UdpLink(self.loop, self.dp, udp_socket(srv.listen, NATT_PORT), self._udp4500_ike)
                self.udp_links.append(self.udp4500)
            if srv.tcp_port:
                self.servers.append(StreamServer(self.loop, listen(srv.listen, srv.tcp_port), self._accept_tcp,
                                                 has_sa=self._link_has_sa))
            if srv.tls_port:
                assert srv.tls_cert is not None and srv.tls_key is not None
                self.tls_context = server_context(str(srv.tls_cert), str(srv.tls_key))
                self.servers.append(StreamServer(self.loop, listen(srv.listen, srv.tls_port), self._accept_tls,
                                                 has_sa=self._link_has_sa))
        except OSError as exc:
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from None
        self.call_later(HOUSEKEEPING_S, self._housekeeping)
        if srv.child_rekey_bytes:
            self.call_later(LIFETIME_CHECK_S, self._lifetime_tick)
        self.state = "up"
        listening = (["udp 500/4500"] if srv.udp else []) + ([f"tcp {srv.tcp_port}"] if srv.tcp_port else []) + (
            [f"tls {srv.tls_port}"] if srv.tls_port else [])
        self.event(f"serving as {srv.identity} on {', '.join(listening)}")

    def _route_pools(self) -> None:
        assert self.tun is not None and self.netconf is not None
        own = [a.network for a in self.cfg.tunnel.addresses]
        for pool in (self.srv.pool4, self.srv.pool6):
            if pool is not None and not any(pool.subnet_of(n) for n in own if n.version == pool.version):  # type: ignore[arg-type]
                self.netconf.add_route(str(pool), ifname=self.tun.name)

    def _firewall_spec(self) -> firewall.ForwardingSpec:
        assert self.tun is not None
        return firewall.ForwardingSpec(tun=self.tun.name, uplink=self.srv.uplink,
                                       pools=[p for p in (self.srv.pool4, self.srv.pool6) if p is not None],
                                       mss_clamp=self.srv.mss_clamp)

    # -- input -------------------------------------------------------------------------
    def _udp500_readable(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._dispatch(data, _addr(addr), via=None, local_port=IKE_UDP_PORT)

    def _udp4500_ike(self, msg: bytes, addr: tuple[str, int]) -> None:
        self._dispatch(msg, addr, via=None, local_port=NATT_PORT)

    def _accept_tcp(self, sock: socket.socket) -> StreamLink:
        return self.new_link(sock, originator=False)

    def _accept_tls(self, sock: socket.socket) -> StreamLink:
        return self.new_link(sock, originator=False, tls_context=self.tls_context)

    def on_stream_ike(self, link: StreamLink, msg: bytes) -> None:
        link.first_message = True
        self._dispatch(msg, _addr(link.peername or ("0.0.0.0", 0)), via=link, local_port=_local_port(link))

    def _dispatch(self, data: bytes, remote: tuple[str, int], *, via: StreamLink | None, local_port: int) -> None:
        now = time.monotonic()
        header = _peek(data)
        known = self.responder.session_of(header, remote[0]) if header is not None else None
        if via is not None and self._other_sa_on(via, known):
            # RFC 9329 §6.1 (T42): one connection carries one IKE SA (and its rekeyed
            # successor, which is the same session here); the other one's messages are
            # dropped and counted
            self.link_drops["other_ike_sa"] = self.link_drops.get("other_ike_sa", 0) + 1
            return
        dropped_before = known.dropped if known is not None else 0
        d = self.responder.receive(data, now, remote_addr=remote, local_addr=None, stream=via is not None)
        for reply in d.replies:
            self._send_raw(reply, via, local_port)
        if d.close_connection_after is not None and via is not None:
            # RFC 9329 §6.3.1: after a cookie, close unless the retry comes in time
            link = via
            self.loop.call_later(max(0.0, d.close_connection_after - now),
                                 lambda: None if link.authenticated else link.close("no retry after a cookie"))
        s = d.session
        if s is None:
            if via is not None and header is not None and not d.replies:
                self._invalid_ike_spi(via, header)
            return
        client = self.clients.get(id(s))
        if client is None:
            if not d.created:
                return
            client = self._new_client(s, via, remote, local_port)
        with self._replying(_Reply(s, via, remote, local_port)):
            client.endpoint.pump()
        if via is not None and not via.authenticated and known is s and s.dropped > dropped_before:
            # RFC 9329 §6.1 (T47): an IKE message that fails on a new connection
            self._close_link(via, "auth_failed", "an IKE message failed authentication (RFC 9329 §6.1)")
            return
        if (not d.created and known is s and header is not None and s.established
                and s.dropped == dropped_before and self._fresh(client, header)):
            self._authenticated_on(client, via, remote, local_port)

    def _invalid_ike_spi(self, link: StreamLink, header: IkeHeader) -> None:
        """RFC 7296 §2.21.4: a request for an IKE SA we do not know (say, from before a
        restart) may get an unprotected INVALID_IKE_SPI answer; once per connection,
        which the listener then closes (T34)."""
        if (header.is_response or header.exchange == ExchangeType.IKE_SA_INIT or link.authenticated
                or link in self._invalid_spi_sent):
            return
        self._invalid_spi_sent.add(link)
        flags = HeaderFlag.RESPONSE | (HeaderFlag.NONE if header.is_initiator else HeaderFlag.INITIATOR)
        reply = Message(header.spi_i, header.spi_r, header.exchange, flags, header.message_id,
                        (Notify(NotifyType.INVALID_IKE_SPI),))
        link.send_ike(reply.encode())

    def _other_sa_on(self, link: StreamLink, session: IkeSession | None) -> bool:
        """Does this connection already carry a live IKE SA other than `session`?"""
        owner = self.link_owner.get(link)
        return owner is not None and self.clients.get(id(owner.session)) is owner and session is not owner.session

    @staticmethod
    def _fresh(client: ClientState, header: IkeHeader) -> bool:
        """A response to our request, or a request never seen before: not a replay or a
        retransmission (RFC 9329 §6.1: those must not move the return path)."""
        if header.is_response:
            return True
        key = header.spi_i + header.spi_r
        if header.message_id <= client.request_ids.get(key, -1):
            return False
        client.request_ids[key] = header.message_id
        return True

    @contextlib.contextmanager
    def _replying(self, reply: _Reply) -> Iterator[None]:
        outer, self._reply = self._reply, reply
        try:
            yield
        finally:
            self._reply = outer

    def _new_client(self, s: IkeSession, via: StreamLink | None, remote: tuple[str, int],
                    local_port: int) -> ClientState:
        peer = self.dp.peer(self._next_peer_id)
        self._next_peer_id += 1
        peer.set_follow(True)  # RFC 9329 §6.1, RFC 7296 §2.23: the latest authenticated path
        endpoint = IkeEndpoint(self.loop, s, lambda out: None, self._on_event,
                               after_pump=lambda ep: self.responder.refresh(ep.session))
        client = ClientState(endpoint=endpoint, peer=peer,
                             installer=ChildInstaller(self.dp, peer, soft_bytes=self.srv.child_rekey_bytes),
                             transport=_kind(via), link=via, udp_remote=None if via is not None else remote,
                             udp_local_port=local_port, created=time.time())
        endpoint.send = lambda out, c=client: self._send(c, out)  # type: ignore[misc]
        if via is not None:
            peer.set_conn(via.conn)
            self.link_owner[via] = client
        elif self.udp4500 is not None:
            peer.set_conn(self.udp4500.conn)
        self.clients[id(s)] = client
        return client

    def _authenticated_on(self, client: ClientState, via: StreamLink | None, remote: tuple[str, int],
                          local_port: int) -> None:
        """A fresh message of this client authenticated: its return path is here."""
        if via is not None:
            via.authenticated = True
            self.link_owner[via] = client
            if client.link is not via:
                self._move_to(client, via, "IKE")
        elif local_port == NATT_PORT and self.udp4500 is not None and (
                client.udp_local_port != NATT_PORT or not client.session.mobike):
            # RFC 7296 §2.23: IKE floats to port 4500 after NAT detection, then follows
            # the latest authenticated address; with MOBIKE, after the float only
            # UPDATE_SA_ADDRESSES moves the IKE path (RFC 4555 §3.8, PeerAddressChanged)
            client.udp_local_port = NATT_PORT
            client.udp_remote = remote
            client.peer.set_addr(*self.udp4500.dest(*remote))  # ESP goes there too

    def _to_udp(self, client: ClientState, remote: tuple[str, int]) -> None:
        """MOBIKE moved the SA from a stream to UDP 4500 (RFC 9329 §7.1, RFC 4555 §3.5):
        IKE and ESP go there, and the session retransmits again (RFC 7296 §2.1)."""
        assert self.udp4500 is not None
        frm = client.transport
        client.udp_local_port, client.udp_remote = NATT_PORT, remote
        client.peer.set_addr(*self.udp4500.dest(*remote))
        client.link, client.transport = None, "udp"
        client.peer.set_conn(self.udp4500.conn)
        self._note_move(client, frm, "udp", f"UDP {_fmt(remote)}", "IKE")
        ep = client.endpoint
        if not ep.closed:
            ep.command(client.session.transport_changed, stream=False, remote=remote)

    def _move_to(self, client: ClientState, link: StreamLink, why: str) -> None:
        """RFC 9329 §6.1: send on `link` from now on; an outstanding request of ours is
        resent there (§6.2). The old connection stays until the client closes it."""
        frm = client.transport
        client.link = link
        client.transport = _kind(link)
        client.peer.set_conn(link.conn)
        self._note_move(client, frm, client.transport, str(_fmt(link.peername)), why)
        ep = client.endpoint
        if not ep.closed and client.session.established:
            ep.command(client.session.transport_changed, stream=True, remote=_addr(link.peername or ("", 0)))

    def _note_move(self, client: ClientState, frm: str, to: str, where: str, why: str) -> None:
        """One log line and one status entry per move of a client's return path."""
        client.moves.append({"time": time.strftime("%H:%M:%S"), "at": round(time.time(), 3),
                             "from": frm, "to": to, "reason": f"{why} authenticated on {where}"})
        del client.moves[:-20]
        self.event(f"{client.identity}: return path moved to {where} ({why} authenticated there; "
                   f"{frm.upper()} -> {to.upper()})")

    def on_link_rx(self, link: StreamLink) -> None:
        """ESP that opened on `link` may have moved a peer's return path in C."""
        if not link.is_open:
            return
        owner = self.link_owner.get(link)
        if owner is not None:
            if owner.link is not link and owner.peer.conn_handle() == link.conn.handle:
                self._move_to(owner, link, "ESP")
            return
        rx = link.conn.rx_counters()
        if not link.authenticated and (rx.icv or rx.replay):
            # RFC 9329 §6.1 (T47): ESP under a known SPI failed on a new connection
            self._close_link(link, "auth_failed", "ESP failed authentication (RFC 9329 §6.1)")
            return
        packets = rx.packets
        if packets == self._esp_seen.get(link, 0):
            return
        self._esp_seen[link] = packets
        for client in self.clients.values():  # once per batch of new ESP on an unknown link
            if client.peer.conn_handle() == link.conn.handle:  # (UDP -> TCP with MOBIKE too)
                link.first_message = link.authenticated = True
                self.link_owner[link] = client
                self._move_to(client, link, "ESP")
                return

    def _close_link(self, link: StreamLink, rule: str, reason: str) -> None:
        if link.is_open:
            self.link_closes[rule] = self.link_closes.get(rule, 0) + 1
            link.close(reason)

    def _link_has_sa(self, link: StreamLink) -> bool:
        """RFC 9329 §6.1: does this connection still carry a live IKE SA (T34), or, if it
        was replaced, is it still in use (T45)?"""
        owner = self.link_owner.get(link)
        if owner is None or self.clients.get(id(owner.session)) is not owner:
            return False
        return owner.link is link or time.monotonic() - link.last_rx_at < SUPERSEDED_IDLE_S

    # -- output ------------------------------------------------------------------------
    def _send(self, client: ClientState, out: Outgoing) -> None:
        r = self._reply
        if r is not None and r.session is client.session and is_response(out.data):
            # RFC 7296 §2.1, RFC 9329 §6.2: a response goes where its request came from
            self._send_raw(Outgoing(out.data, out.remote or r.remote), r.via, r.local_port)
            return
        if client.stream:
            link = client.link
            if link is not None and link.is_open:
                link.send_ike(out.data)
            # else: the client reconnects (RFC 9329 §6.1); transport_changed() resends
            return
        remote = self._udp_path(client) or out.remote
        if remote is not None:
            self._send_udp(out.data, remote, from_port=client.udp_local_port)

    def _udp_path(self, client: ClientState) -> tuple[str, int] | None:
        """Where a UDP client's traffic last authenticated: RFC 7296 §2.23, a host not
        behind a NAT sends everything to the address of the last valid packet, and C
        follows ESP (so it may know a newer address than the last IKE message)."""
        if client.udp_local_port == NATT_PORT:
            esp = client.peer.addr()
            if esp is not None:
                client.udp_remote = _addr(esp)
        return client.udp_remote

    def _send_raw(self, out: Outgoing, via: StreamLink | None, local_port: int) -> None:
        if via is not None:
            via.send_ike(out.data)
        elif out.remote is not None:
            self._send_udp(out.data, out.remote, from_port=local_port)

    def _send_udp(self, data: bytes, remote: tuple[str, int], from_port: int) -> None:
        if from_port == IKE_UDP_PORT and self.sock500:
            try:
                self.sock500[0].sendto(data, _v6(remote))
            except OSError as exc:
                log.debug("UDP 500 send to %s failed: %s", remote, exc.strerror)
        elif self.udp4500 is not None:
            self.udp4500.send_ike(data, remote)

    # -- events ------------------------------------------------------------------------
    def _on_event(self, endpoint: IkeEndpoint, e: ev.Event) -> None:
        client = self.clients.get(id(endpoint.session))
        if client is None:
            return
        if isinstance(e, ev.IkeSaEstablished):
            client.identity = e.peer_id
            where = _fmt(client.link.peername) if client.link else _fmt(self._reply.remote if self._reply else None)
            self.event(f"{e.peer_id}: IKE SA established over {client.transport.upper()} from {where} "
                       f"({e.algorithms})")
        elif isinstance(e, ev.VirtualAddressAssigned) and e.assigned_to_peer:
            for net in lease_networks(e.addresses):
                try:
                    self.dp.route_add(net, client.peer)
                except ValueError as exc:  # the dataplane's route table is full
                    self.event(f"{e.peer_id}: {exc}")
                    continue
                self.route_owner[net] = client
                client.routes.append(net)
            client.addresses = [str(a.ip) for a in e.addresses]
            self.event(f"{e.peer_id}: assigned {', '.join(client.addresses)}")
        elif isinstance(e, ev.ChildSaEstablished | ev.ChildSaRekeyed):
            try:
                client.installer.install(e.child)
            except ValueError as exc:
                self.event(f"{client.identity}: Child SA not installed: {exc}")
                endpoint.command(endpoint.session.delete_child, e.child.spi_in)
                return
            if isinstance(e, ev.ChildSaRekeyed):
                self.event(f"{client.identity}: Child SA rekeyed: in {e.old_spi_in.hex()} -> {e.child.spi_in.hex()}")
        elif isinstance(e, ev.ChildSaDeleted):
            client.installer.remove(e.spi_in)
            client.rekeying.discard(e.spi_in)
        elif isinstance(e, ev.PeerAddressChanged):
            # RFC 7296 §2.23, RFC 4555 §3.5 (over a stream the connection is the path)
            r = self._reply
            if not client.stream:
                client.udp_remote = e.new
                if self.udp4500 is not None:
                    client.peer.set_addr(*self.udp4500.dest(*e.new))
                self.event(f"{client.identity}: peer address now {_fmt(e.new)}")
            elif r is not None and r.session is client.session and r.via is None and r.local_port == NATT_PORT:
                self._to_udp(client, e.new)  # UPDATE_SA_ADDRESSES over UDP (RFC 9329 §7.1)
        elif isinstance(e, ev.InitialContactReceived):
            self._drop_older(client, e.peer_id)
        elif isinstance(e, ev.IkeSaClosed):
            self._remove_client(client, e.reason.value + (f" ({e.detail})" if e.detail else ""))

    def _drop_older(self, client: ClientState, identity: Identity) -> None:
        """INITIAL_CONTACT: the client holds no other SA with us; drop its old ones
        (RFC 7296 §2.4) so its address can be reused at once."""
        for other in list(self.clients.values()):
            if other is not client and other.identity == identity:
                self._remove_client(other, "replaced (INITIAL_CONTACT)")

    def _remove_client(self, client: ClientState, why: str) -> None:
        s = client.session
        if self.clients.pop(id(s), None) is None:
            return
        client.installer.remove_all()
        for net in client.routes:
            if self.route_owner.get(net) is client:  # a newer SA of the same identity may own it
                del self.route_owner[net]
                self.dp.route_del(net)
        client.endpoint.stop()
        if not s.closed:
            s.close(time.monotonic())  # releases the lease; nothing is sent for it now
        self.responder.forget(s)
        self.closed_clients += 1
        self.event(f"{client.identity or 'unauthenticated peer'}: IKE SA closed: {why}")
        # its connections are closed by the listener once they carry no SA (T34)

    def on_link_closed(self, link: StreamLink, reason: str) -> None:
        self.link_owner.pop(link, None)
        self._esp_seen.pop(link, None)
        self._invalid_spi_sent.discard(link)
        for client in self.clients.values():
            if client.link is link:
                client.link = None  # keep the SA: the client reconnects (RFC 9329 §6.1, T35)
                self.event(f"{client.identity}: connection from {_fmt(link.peername)} lost: {reason}")

    # -- housekeeping -------------------------------------------------------------------
    def _housekeeping(self) -> None:
        self.call_later(HOUSEKEEPING_S, self._housekeeping)
        for client in list(self.clients.values()):
            ep = client.endpoint
            if ep.closed or not ep.session.established:
                continue
            packets = client.peer.counters()["rx_packets"]
            if packets != client.in_packets:
                client.in_packets = packets  # ESP from the client postpones DPD (RFC 7296 §2.4)
                ep.session.peer_activity(ep.now())
        self._check_lifetimes()

    def _lifetime_tick(self) -> None:
        self.call_later(LIFETIME_CHECK_S, self._lifetime_tick)
        self._check_lifetimes()

    def _check_lifetimes(self) -> None:
        """Rekey every Child SA the dataplane flagged (soft byte or sequence limit)."""
        for client in list(self.clients.values()):
            ep = client.endpoint
            if ep.closed or not ep.session.established:
                continue
            for spi in client.installer.soft_expired():
                if spi not in client.rekeying:
                    client.rekeying.add(spi)  # until its deletion: rekeyed once
                    try:
                        ep.command(ep.session.rekey_child, spi)
                    except Exception as exc:  # noqa: BLE001 - keep serving the others
                        self.event(f"{client.identity}: rekey not started: {exc}")

    # -- status, stop ---------------------------------------------------------------------
    def client_status(self, c: ClientState) -> dict[str, Any]:
        s = c.session
        link = c.link if c.link is not None and c.link.is_open else None
        pc = c.peer.counters()
        if c.stream:
            remote = _fmt(link.peername) if link else None
        else:
            remote = _fmt(self._udp_path(c))
        return {
            "identity": str(c.identity) if c.identity else None,
            "state": s.state.name.lower(),
            "virtual_ip": c.addresses,
            "transport": c.transport,
            "connected": link is not None if c.stream else True,
            "remote": remote,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.created)),
            "since_s": round(time.time() - c.created, 1),
            "spi_i": s.spi_i.hex(), "spi_r": s.spi_r.hex(),
            "algorithms": str(s.algorithms) if s.algorithms else None,
            "child_sas": c.installer.status(),
            "path_moves": list(c.moves),
            "counters": {"packets_in": pc["rx_packets"], "bytes_in": pc["rx_bytes"],
                         "packets_out": pc["tx_packets"], "bytes_out": pc["tx_bytes"],
                         "ts_violation": pc["ts_violation"], "moves": pc["moves"]},
        }

    def status(self) -> dict[str, Any]:
        st = self.base_status()
        closed = dict(self.link_closes)
        for server in self.servers:
            for rule, n in server.closed_by_rule.items():
                closed[rule] = closed.get(rule, 0) + n
        st.update({
            "role": "server", "identity": self.srv.identity,
            "clients": [self.client_status(c) for c in self.clients.values()],
            "clients_closed": self.closed_clients, "half_open": self.responder.half_open,
            "listener": {"unauthenticated": sum(s.unauthenticated() for s in self.servers),
                         "closed": closed, "dropped": dict(self.link_drops)},
        })
        return st

    async def before_stop(self) -> None:
        """Delete every IKE SA (RFC 7296 §1.4.1) and give the answers a moment."""
        for client in list(self.clients.values()):
            if client.session.established:
                try:
                    client.endpoint.command(client.session.close)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        for _ in range(10):
            if not any(c.session.established for c in self.clients.values()):
                break
            await asyncio.sleep(0.05)

    async def after_links_closed(self) -> None:
        for client in list(self.clients.values()):
            client.endpoint.stop()
        for s in self.sock500:
            self.loop.remove_reader(s.fileno())
            s.close()
        if self.firewall is not None:
            await self.netconf_call(self.firewall.remove)


def _assign_configured(allocator: PoolAllocator, srv: config.ServerConfig) -> None:
    """Give every configured client its address now, in the order listed: the same
    client gets the same address whatever the order of connections, and after a
    restart of the server (the allocator remembers them; nothing is leased yet)."""
    for entry in srv.clients:
        peer = Identity.parse(entry.identity)
        lease = allocator.allocate(peer, ipv4=srv.pool4 is not None, ipv6=srv.pool6 is not None, requested=())
        if lease is not None:
            allocator.release(peer, lease)


def _peek(data: bytes) -> IkeHeader | None:
    try:
        return peek_header(data)
    except MalformedMessage:
        return None


def _kind(link: StreamLink | None) -> str:
    if link is None:
        return "udp"
    return "tls" if isinstance(link, TlsLink) else "tcp"


def _fmt(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    host, port = _addr(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addr(addr: Any) -> tuple[str, int]:
    host = str(addr[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(addr[1])


def _v6(remote: tuple[str, int]) -> tuple[str, int]:
    host, port = remote
    return (f"::ffff:{host}", port) if ":" not in host else remote


def _local_port(link: StreamLink) -> int:
    try:
        return int(link.sock.getsockname()[1])
    except OSError:
        return 0
