"""`vpn serve`: the IKEv2 server (responder) for many clients over UDP, TCP and TLS.

1. Open the TUN with the server's own tunnel address, route the pools into it.
2. Listen: UDP 500 (bare IKE) and 4500 (Non-ESP marker + ESP, RFC 3948), TCP 4500
   (RFC 9329) and TLS 443 (Appendix A). The server never connects out.
3. Every IKE message goes through the stateless front door (vpn/ike/responder.py:
   cookies, half-open limits) to the session of its SPIs; each session gets a
   ClientState: an IkeEndpoint, a dataplane peer and its Child SAs.
4. Virtual addresses come from the pools, stable per identity; each is routed (in C) to
   its client's peer, and each inbound SPI only carries that client's selectors, so no
   client can speak with another's address (RFC 4301 §5.2).
5. Return path: IKE and ESP go back on the connection (or to the address) where the
   client's traffic last authenticated (RFC 9329 §6.1, RFC 7296 §2.23).
6. Forwarding: sysctls and an nftables table (masquerade to the uplink, TCP MSS clamp),
   journaled and removed on stop (vpn/io/firewall.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from vpn import config
from vpn import fastpath as fp
from vpn.ike import events as ev
from vpn.ike.policy import Identity
from vpn.ike.responder import CookiePolicy, IkeResponder
from vpn.ike.session import IkeSession, Outgoing
from vpn.io import firewall
from vpn.io.endpoint import ChildInstaller, IkeEndpoint
from vpn.io.host import StartupError, TunnelHost
from vpn.io.stream import StreamLink, StreamServer, listen
from vpn.io.tls import server_context
from vpn.io.udp import UdpLink, udp_socket
from vpn.policies import PolicyError, lease_networks, server_policy

log = logging.getLogger("vpn.server")

IKE_UDP_PORT = 500
NATT_PORT = 4500
ORPHAN_LINK_CLOSE_S = 5.0  # RFC 9329 §6.1 (T34): a connection left without an IKE SA
HOUSEKEEPING_S = 1.0


@dataclass(eq=False)
class ClientState:
    """One client: its session, dataplane peer, Child SAs, transport and addresses."""

    endpoint: IkeEndpoint
    peer: fp.DpPeer
    installer: ChildInstaller
    link: StreamLink | None
    udp_remote: tuple[str, int] | None
    created: float
    identity: Identity | None = None
    addresses: list[str] = field(default_factory=list)
    routes: list[Any] = field(default_factory=list)
    udp_local_port: int = NATT_PORT  # UDP: answer from the port the client used (500/4500)
    in_packets: int = 0
    rekeying: set[bytes] = field(default_factory=set)
    dropped_seen: int = 0  # the session's drop count after the last message it received

    @property
    def session(self) -> IkeSession:
        return self.endpoint.session


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
        self.responder = IkeResponder(self.policy, rng=os.urandom, cookies=CookiePolicy())
        self.clients: dict[int, ClientState] = {}  # id(session) -> client
        self.sock500: list[socket.socket] = []
        self.udp4500: UdpLink | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.firewall: firewall.Firewall | None = None
        self._next_peer_id = 1
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
                self.servers.append(StreamServer(self.loop, listen(srv.listen, srv.tcp_port), self._accept_tcp))
            if srv.tls_port:
                assert srv.tls_cert is not None and srv.tls_key is not None
                self.tls_context = server_context(str(srv.tls_cert), str(srv.tls_key))
                self.servers.append(StreamServer(self.loop, listen(srv.listen, srv.tls_port), self._accept_tls))
        except OSError as exc:
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from None
        self.call_later(HOUSEKEEPING_S, self._housekeeping)
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
        self._dispatch(msg, link.peername or ("0.0.0.0", 0), via=link, local_port=_local_port(link))

    def _dispatch(self, data: bytes, remote: tuple[str, int], *, via: StreamLink | None, local_port: int) -> None:
        now = time.monotonic()
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
            return
        client = self.clients.get(id(s))
        if client is None:
            if not d.created:
                return
            client = self._new_client(s, via, remote, local_port)
            client.udp_local_port = local_port
        if via is None:
            client.udp_local_port = local_port
        # The message was processed by responder.receive(): it authenticated unless the
        # session counted a drop since the last one. Move the return path first, so the
        # events it caused (a Child SA: ESP to the port IKE_AUTH came from) use it.
        authentic = s.dropped == client.dropped_seen
        client.dropped_seen = s.dropped
        if authentic and s.established and not d.created:
            self._authenticated_on(client, via, remote)
        client.endpoint.pump()

    def _new_client(self, s: IkeSession, via: StreamLink | None, remote: tuple[str, int],
                    local_port: int) -> ClientState:
        peer = self.dp.peer(self._next_peer_id)
        self._next_peer_id += 1
        peer.set_follow(True)  # RFC 9329 §6.1, RFC 7296 §2.23: the latest authenticated path
        endpoint = IkeEndpoint(self.loop, s, lambda out: None, self._on_event,
                               after_pump=lambda ep: self.responder.refresh(ep.session))
        client = ClientState(endpoint=endpoint, peer=peer, installer=ChildInstaller(self.dp, peer),
                             link=via, udp_remote=None if via is not None else remote, created=time.time())
        endpoint.send = lambda out, c=client: self._send(c, out)  # type: ignore[misc]
        if via is not None:
            peer.set_conn(via.conn)
        elif self.udp4500 is not None:
            peer.set_conn(self.udp4500.conn)
        self.clients[id(s)] = client
        return client

    def _authenticated_on(self, client: ClientState, via: StreamLink | None, remote: tuple[str, int]) -> None:
        """A message of this client authenticated: its return path is here (RFC 9329 §6.1)."""
        if via is not None:
            via.authenticated = True
            if client.link is not via:
                client.link = via
                client.peer.set_conn(via.conn)
                self.event(f"{client.identity}: return path moved to {via.peername}")
        elif client.link is None and remote[1] == NATT_PORT:
            client.udp_remote = remote

    # -- output ------------------------------------------------------------------------
    def _send(self, client: ClientState, out: Outgoing) -> None:
        link = self._link_of(client)
        if link is not None:
            link.send_ike(out.data)
            return
        remote = out.remote or client.udp_remote
        if remote is None:
            return
        self._send_udp(out.data, remote, from_port=client.udp_local_port)

    def _link_of(self, client: ClientState) -> StreamLink | None:
        """The stream the client's traffic last authenticated on (C may have moved it)."""
        handle = client.peer.conn_handle()
        for link in self.links:
            if link.is_open and link.conn.handle == handle:
                return link
        return client.link if client.link is not None and client.link.is_open else None

    def _send_raw(self, out: Outgoing, via: StreamLink | None, local_port: int) -> None:
        if via is not None:
            via.send_ike(out.data)
        elif out.remote is not None:
            self._send_udp(out.data, out.remote, from_port=local_port)

    def _send_udp(self, data: bytes, remote: tuple[str, int], from_port: int | None = None) -> None:
        port = from_port if from_port is not None else (IKE_UDP_PORT if remote[1] == IKE_UDP_PORT else NATT_PORT)
        if port == IKE_UDP_PORT and self.sock500:
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
            how = f"TCP {client.link.peername}" if client.link else f"UDP {client.udp_remote}"
            self.event(f"{e.peer_id}: IKE SA established over {how} ({e.algorithms})")
        elif isinstance(e, ev.VirtualAddressAssigned) and e.assigned_to_peer:
            for net in lease_networks(e.addresses):
                self.dp.route_add(net, client.peer)
                client.routes.append(net)
            client.addresses = [str(a.ip) for a in e.addresses]
            self.event(f"{e.peer_id}: assigned {', '.join(client.addresses)}")
        elif isinstance(e, ev.ChildSaEstablished | ev.ChildSaRekeyed):
            if client.link is None and client.udp_remote is not None:
                host, _port = client.udp_remote
                client.peer.set_addr(*self.udp4500.dest(host, client.udp_remote[1])) if self.udp4500 else None
            try:
                client.installer.install(e.child)
            except ValueError as exc:
                self.event(f"{client.identity}: Child SA not installed: {exc}")
                endpoint.command(endpoint.session.delete_child, e.child.spi_in)
            if isinstance(e, ev.ChildSaRekeyed):
                client.rekeying.discard(e.old_spi_in)
        elif isinstance(e, ev.ChildSaDeleted):
            client.installer.remove(e.spi_in)
            client.rekeying.discard(e.spi_in)
        elif isinstance(e, ev.PeerAddressChanged):
            client.udp_remote = e.new
            if client.link is None and self.udp4500 is not None:
                client.peer.set_addr(*self.udp4500.dest(*e.new))
            self.event(f"{client.identity}: peer address now {e.new[0]}:{e.new[1]}")
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
            self.dp.route_del(net)
        client.endpoint.stop()
        if not s.closed:
            s.close(time.monotonic())  # releases the lease; nothing is sent for it now
        self.responder.forget(s)
        self.closed_clients += 1
        self.event(f"{client.identity or 'unauthenticated peer'}: IKE SA closed: {why}")
        link = client.link
        if link is not None and link.is_open:
            self.loop.call_later(ORPHAN_LINK_CLOSE_S, lambda: self._close_orphan(link))

    def _close_orphan(self, link: StreamLink) -> None:
        if link.is_open and not any(c.link is link for c in self.clients.values()):
            link.close("no IKE SA left on this connection")

    def on_link_closed(self, link: StreamLink, reason: str) -> None:
        for client in self.clients.values():
            if client.link is link:
                client.link = None  # keep the SA: the client reconnects (RFC 9329 §6.1, T35)

    # -- housekeeping -------------------------------------------------------------------
    def _housekeeping(self) -> None:
        for client in list(self.clients.values()):
            ep = client.endpoint
            if ep.closed or not ep.session.established:
                continue
            rows = client.installer.status()
            packets = sum(r["in_packets"] for r in rows)
            if packets != client.in_packets:
                client.in_packets = packets
                ep.session.peer_activity(ep.now())
            for spi in client.installer.soft_expired():
                if spi not in client.rekeying:
                    client.rekeying.add(spi)
                    try:
                        ep.command(ep.session.rekey_child, spi)
                    except Exception as exc:  # noqa: BLE001 - keep serving the others
                        self.event(f"{client.identity}: rekey not started: {exc}")
        self.call_later(HOUSEKEEPING_S, self._housekeeping)

    # -- status, stop ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.base_status()
        clients = []
        for c in self.clients.values():
            s = c.session
            link = self._link_of(c)
            clients.append({
                "identity": str(c.identity) if c.identity else None,
                "state": s.state.name.lower(),
                "virtual_ip": c.addresses,
                "transport": ("tls" if link is not None and hasattr(link, "ssl") else "tcp") if link else "udp",
                "remote": f"{link.peername}" if link else (f"{c.udp_remote[0]}:{c.udp_remote[1]}"
                                                          if c.udp_remote else None),
                "spi_i": s.spi_i.hex(), "spi_r": s.spi_r.hex(),
                "algorithms": str(s.algorithms) if s.algorithms else None,
                "child_sas": c.installer.status(),
                "counters": c.peer.counters(),
                "since_s": round(time.time() - c.created, 1),
            })
        st.update({"role": "server", "identity": self.srv.identity, "clients": clients,
                   "clients_closed": self.closed_clients, "half_open": self.responder.half_open})
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
