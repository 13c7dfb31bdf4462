"""Manual keying: static SAs, one peer, over TCP, TLS or UDP (a lab and benchmark mode).

RFC 4106 §2 wants automated keying for AES-GCM; this mode is safe only because the
outbound sequence number is reserved on disk before use (vpn/io/seqstate.py) and the C
path never seals a number above the reservation. The README says it is for labs.

1. Open the sequence reservation of the outbound key before anything is sent.
2. Open and configure the TUN (host.py), install both SAs, bind the inbound SPI.
3. Transport: TCP/TLS client (reconnects with backoff; an authenticated dummy packet on
   each new connection moves the server's return path at once), TCP/TLS server
   (follows the connection where the client's traffic authenticated), or UDP (the
   listening side follows the latest authenticated address, RFC 7296 §2.23).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from vpn import config
from vpn import fastpath as fp
from vpn.esp.sa import SaParams
from vpn.framing import encode_frame
from vpn.io.host import StartupError, TunnelHost, resolve
from vpn.io.seqstate import SEQ_BLOCK_PACKETS, SeqReservation, SeqStateError, state_path
from vpn.io.stream import Backoff, StreamLink, StreamServer, listen, new_flow_label, open_connection
from vpn.io.tls import TlsClientSettings, TlsLink, client_context, server_context
from vpn.io.udp import UdpLink, udp_socket

HOUSEKEEPING_S = 0.25
UDP_ANNOUNCE_S = 15.0  # UDP client: an authenticated dummy so the server learns our address
CONNECT_WAIT_S = 15.0
ALL_SOURCES: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


class ManualTunnel(TunnelHost):
    """A manually keyed tunnel: one peer, static SAs, TCP/TLS (client or server) or UDP."""

    def __init__(self, cfg: config.Config, *, new_key: bool = False,
                 export_keys: Path | None = None) -> None:
        super().__init__(cfg)
        assert cfg.manual is not None
        self.manual = cfg.manual
        self.new_key = new_key
        self.export_keys = export_keys
        self.udp: UdpLink | None = None
        self.reservation: SeqReservation | None = None
        self._last_announce = 0.0
        self.connected = asyncio.Event()
        self.startup_failure: str | None = None
        self.ike_ignored = 0
        self.tls_context: ssl.SSLContext | None = None
        self.tls_settings: TlsClientSettings | None = None
        self.tls_session: ssl.SSLSession | None = None
        tls = cfg.transport.tls
        if cfg.transport.protocol == "tls" and tls is not None:
            if cfg.transport.role == "listen":
                assert tls.certfile is not None and tls.keyfile is not None
                self.tls_context = server_context(str(tls.certfile), str(tls.keyfile))
            else:
                self.tls_settings = TlsClientSettings(
                    server_name=tls.server_name, cafile=str(tls.cafile) if tls.cafile else None,
                    pin_sha256=tls.pin_sha256)
                self.tls_context = client_context(self.tls_settings)

    # -- bring-up ---------------------------------------------------------------------
    async def start(self) -> None:
        cfg, man = self.cfg, self.manual
        out_path = state_path(man.state_dir, cfg.name, man.outbound.spi, man.outbound.keymat)
        try:
            self.reservation = SeqReservation.open(out_path, new_key=self.new_key)
        except SeqStateError as exc:
            raise StartupError(str(exc)) from None
        await self.open_tun()
        self._install_sas()
        await self._start_transport()
        if self.export_keys:
            self._write_export_keys(self.export_keys)
        self.call_later(HOUSEKEEPING_S, self._housekeeping)
        self.state = "up"
        assert self.tun is not None
        self.event(f"{cfg.name} up: manual keys over {cfg.transport.protocol}, device {self.tun.name} "
                   f"(offloads: {','.join(self.tun.offload_names) or 'none'})")

    def _install_sas(self) -> None:
        man = self.manual
        assert self.reservation is not None
        out_params = SaParams.from_keymat(man.outbound.spi, man.outbound.keymat, esn=man.esn)
        out = fp.FastSa(out_params, outbound=True)
        start = self.reservation.start_seq
        mark = self.reservation.reserve(start + SEQ_BLOCK_PACKETS)
        out.set_seq(start - 1)
        out.set_seq_ceiling(mark)
        inb = fp.FastSa(SaParams.from_keymat(man.inbound.spi, man.inbound.keymat, esn=man.esn,
                                             replay_window=man.replay_window), outbound=False)
        self.out_sa, self.in_sa = out, inb
        self.peer = self.dp.peer(1)
        self.peer.set_sa(out)
        self.dp.set_default_peer(self.peer)
        self.dp.install_inbound(inb)
        self.dp.bind_spi(inb.spi, self.peer, list(ALL_SOURCES))

    async def _start_transport(self) -> None:
        tr = self.cfg.transport
        if tr.protocol == "udp":
            v6 = tr.role == "listen" or bool(tr.remote and ":" in tr.remote)
            sock = udp_socket(tr.local, tr.local_port or (tr.port if tr.role == "listen" else 0),
                              family=socket.AF_INET6 if v6 else socket.AF_INET)
            self.udp = UdpLink(self.loop, self.dp, sock, self._on_udp_ike)
            self.udp_links.append(self.udp)
            self.peer.set_conn(self.udp.conn)
            if tr.role == "connect":
                assert tr.remote is not None
                host = await resolve(tr.remote, tr.port)
                self.peer.set_addr(*self.udp.dest(host, tr.port))
                self._announce()
            else:
                self.peer.set_follow(True)  # RFC 7296 §2.23: follow the authenticated address
            return
        if tr.role == "listen":
            self.servers.append(StreamServer(self.loop, listen(tr.local, tr.port), self._accept))
            self.peer.set_follow(True)
            return
        self.spawn(self._client_loop())
        try:
            await asyncio.wait_for(self.connected.wait(), CONNECT_WAIT_S)
        except TimeoutError:
            raise StartupError(f"cannot reach {tr.remote}:{tr.port} over {tr.protocol.upper()}: "
                               f"{self.events[-1] if self.events else 'no answer'}") from None
        if self.startup_failure:
            raise StartupError(self.startup_failure)

    # -- TCP/TLS client -------------------------------------------------------------------
    async def _client_loop(self) -> None:
        tr = self.cfg.transport
        assert tr.remote is not None
        backoff = Backoff()
        label = new_flow_label()  # IPv6: the same flow label on every reconnect (RFC 9329 §6.1)
        while not self._stopping:
            try:
                sock = await open_connection(tr.remote, tr.port, local=tr.local, flow_label=label)
            except OSError as exc:
                self.event(f"connect to {tr.remote}:{tr.port} failed: {exc.strerror or exc}")
                await asyncio.sleep(backoff.next())
                continue
            link = self.new_link(sock, originator=True, tls_context=self.tls_context,
                                 tls_settings=self.tls_settings, tls_session=self.tls_session)
            self.peer.set_conn(link.conn)
            self._announce_on(link)
            self.event(f"connected to {tr.remote}:{tr.port}")
            if self.tls_context is None:
                self.connected.set()
            reason = await link.closed
            self.peer.set_conn(None)
            if self._stopping:
                return
            if not self.connected.is_set() and reason.startswith("TLS"):
                # the server is not who it should be: fail `vpn up` now, do not retry
                self.startup_failure = reason
                self.connected.set()
                return
            if time.monotonic() - link.opened_at > 10:
                backoff.reset()
            self.event(f"connection lost ({reason}); reconnecting")
            await asyncio.sleep(backoff.next())

    def _announce_on(self, link: StreamLink) -> None:
        """An authenticated dummy packet (RFC 4303 §2.6, Next Header 59) so the server
        moves our return path to this connection at once (RFC 9329 §6.1)."""
        link.conn.send_raw(encode_frame(self.out_sa.seal(b"", 59)))
        link.flush()

    def _announce(self) -> None:
        if self.udp is not None and self.cfg.transport.role == "connect":
            addr = self.peer.addr()
            if addr is not None:
                self.udp.send_raw(self.out_sa.seal(b"", 59), addr)
            self._last_announce = time.monotonic()

    def on_tls_session(self, session: ssl.SSLSession) -> None:
        self.tls_session = session  # offered on the next connection (RFC 9329 App. B.3)

    def on_tls_handshake(self, link: TlsLink) -> None:
        if link.originator:
            self.event(f"TLS {link.tls_version} established"
                       + (" (session resumed)" if link.session_reused else ""))
            self.connected.set()

    # -- TCP/TLS server -------------------------------------------------------------------
    def _accept(self, sock: socket.socket) -> StreamLink | None:
        link = self.new_link(sock, originator=False, tls_context=self.tls_context)
        self.event(f"accepted a connection from {link.peername}")
        return link

    def on_link_rx(self, link: StreamLink) -> None:
        if link.authenticated:
            return
        c = link.conn.rx_counters()
        if c.packets or c.dummy:  # ESP authenticated on this connection
            link.authenticated = True
            if not link.originator:
                # RFC 9329 §6.1 (T44): send where the peer's traffic last authenticated
                self.peer.set_conn(link.conn)
                self.event(f"return path moved to {link.peername}")

    def on_link_closed(self, link: StreamLink, reason: str) -> None:
        if not link.originator:
            self.event(f"connection from {link.peername} closed: {reason}")

    def on_stream_ike(self, link: StreamLink, msg: bytes) -> None:
        self.ike_ignored += 1  # manual mode speaks no IKE

    def _on_udp_ike(self, msg: bytes, addr: tuple[str, int]) -> None:
        self.ike_ignored += 1

    def _housekeeping(self) -> None:
        """Extend the sequence reservation well before the ceiling (RFC 4106 §2)."""
        assert self.reservation is not None
        seq = self.out_sa.stats().seq
        if self.reservation.reserved - seq < SEQ_BLOCK_PACKETS // 2:
            mark = self.reservation.reserve(seq + SEQ_BLOCK_PACKETS)
            self.out_sa.set_seq_ceiling(mark)
        if self.udp is not None and time.monotonic() - self._last_announce > UDP_ANNOUNCE_S:
            self._announce()
        self.call_later(HOUSEKEEPING_S, self._housekeeping)

    # -- status, export ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        tr = self.cfg.transport
        out, inb = self.out_sa.stats(), self.in_sa.stats()
        st = self.base_status()
        st.update({
            "transport": tr.protocol,
            "role": tr.role,
            "remote": f"{tr.remote}:{tr.port}" if tr.remote else None,
            "peer": _peer_text(self.peer.addr(), self.links),
            "sas": [
                {"dir": "out", "spi": f"{out.spi:08x}", "seq": out.seq, "packets": out.packets,
                 "bytes": out.bytes, "refused": out.refused},
                {"dir": "in", "spi": f"{inb.spi:08x}", "seq": inb.seq, "packets": inb.packets,
                 "bytes": inb.bytes, "replay": inb.replay, "icv": inb.icv},
            ],
        })
        st["counters"]["ike_ignored"] = self.ike_ignored
        if self.tls_context is not None and st["tls"] is None:
            st["tls"] = {"handshakes": 0, "resumed": 0}
        return st

    def _write_export_keys(self, path: Path) -> None:
        """Wireshark `esp_sa` UAT lines (Preferences > Protocols > ESP), so captures of
        this tunnel decrypt. Written 0600: these are the live keys."""
        lines = [wireshark_esp_sa_line(sa.spi, sa.keymat, family)
                 for sa in (self.manual.outbound, self.manual.inbound) for family in ("IPv4", "IPv6")]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")


def _peer_text(addr: tuple[str, int] | None, links: list[StreamLink]) -> str | None:
    if addr is None and links and links[-1].peername:
        addr = links[-1].peername
    return f"{addr[0]}:{addr[1]}" if addr else None


def wireshark_esp_sa_line(spi: int, keymat: bytes, family: str = "IPv4") -> str:
    """One record of Wireshark's esp_sa file: outer `family` ("IPv4" or "IPv6"; Wireshark
    has no wildcard family, so export both), any address, this SPI, AES-GCM-16 with the
    key and salt as Wireshark wants them (key || salt), no separate integrity. Wireshark
    4.0's record has these 8 fields and no ESN flag: with ESN (our default) it decrypts
    but cannot check the ICV (RFC 4106 §5: with ESN the AAD holds all 64 bits)."""
    bits = (len(keymat) - 4) * 8
    assert bits in (128, 256) and family in ("IPv4", "IPv6")
    return (f'"{family}","*","*","0x{spi:08x}","AES-GCM with 16 octet ICV [RFC4106]",'
            f'"0x{keymat.hex()}","NULL",""')
