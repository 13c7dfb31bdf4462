"""The daemon behind `vpn up`: config -> TUN, routes, dataplane, transport, control socket.

1. Load the config; in manual mode open the sequence reservation of the outbound key
   (vpn/io/seqstate.py) before anything is sent.
2. Undo a journal left by a crashed instance of the same name, then open the TUN and
   configure it (every change journaled under /run, undone on exit).
3. Build the C dataplane, install the SAs, bind the inbound SPI to its peer.
4. Start the transport: TCP client (reconnects with backoff), TCP server, or UDP.
5. Report readiness on the pipe `vpn up` waits on; serve `status` and `down`.
6. On `down`, SIGTERM or SIGINT: stop the transport, undo every change, exit.

Manual mode is a lab and benchmark mode (static keys; RFC 4106 §2 wants automated
keying for GCM), documented as such in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from vpn import config
from vpn import fastpath as fp
from vpn.esp.sa import SaParams
from vpn.framing import encode_frame
from vpn.io import control, paths
from vpn.io.netconf import NetConf
from vpn.io.seqstate import SEQ_BLOCK_PACKETS, SeqReservation, SeqStateError, state_path
from vpn.io.stream import Backoff, StreamLink, StreamServer, listen, open_connection
from vpn.io.tun import TunDevice, TunError
from vpn.io.udp import UdpLink, udp_socket

log = logging.getLogger("vpn.daemon")
T = TypeVar("T")

TUN_CALLS_PER_WAKEUP = 8  # bound the work per event so receive and timers keep running
HOUSEKEEPING_S = 0.25
UDP_ANNOUNCE_S = 15.0  # manual UDP client: an authenticated dummy so the server learns us
ALL_SOURCES: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


class StartupError(Exception):
    """The tunnel could not come up; the message is shown to the user by `vpn up`."""


class TunPump:
    """Reads the TUN in batches while no connection is backed up (backpressure)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dp: fp.Dataplane, tun_fd: int,
                 on_flags: Callable[[int], None]) -> None:
        self.loop = loop
        self.dp = dp
        self.fd = tun_fd
        self.on_flags = on_flags
        self.paused = False
        self.tun_errors = 0
        loop.add_reader(tun_fd, self._readable)

    def _readable(self) -> None:
        for _ in range(TUN_CALLS_PER_WAKEUP):
            flags, err = self.dp.tun_to_net()
            if flags & fp.DP_TUN_ERROR:
                self.tun_errors += 1
                log.debug("TUN read error: errno %d", err)
            if flags & fp.DP_BACKPRESSURE:
                # pause before the owner flushes: a flush that drains at once resumes us
                self.pause()
            self.on_flags(flags)
            if flags & (fp.DP_BACKPRESSURE | fp.DP_TUN_EMPTY):
                return

    def pause(self) -> None:
        if not self.paused:
            self.loop.remove_reader(self.fd)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if not self.paused:
            self.loop.remove_reader(self.fd)
        self.paused = True


class ManualTunnel:
    """A manually keyed tunnel: one peer, static SAs, TCP (client or server) or UDP."""

    def __init__(self, cfg: config.Config, *, new_key: bool = False,
                 export_keys: Path | None = None) -> None:
        assert cfg.manual is not None
        self.cfg = cfg
        self.manual = cfg.manual
        self.new_key = new_key
        self.export_keys = export_keys
        self.loop = asyncio.get_running_loop()
        self.started = time.time()
        self.state = "starting"
        self.links: list[StreamLink] = []
        self.udp: UdpLink | None = None
        self.server: StreamServer | None = None
        self.tun: TunDevice | None = None
        self.netconf: NetConf | None = None
        self.pump: TunPump | None = None
        self.reservation: SeqReservation | None = None
        self.events: list[str] = []
        self._closed_rx: dict[str, int] = {}  # receive counters of connections gone
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._housekeeper: asyncio.TimerHandle | None = None
        self._last_announce = 0.0
        self.connected = asyncio.Event()
        self._nc_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netconf")

    # -- bring-up ---------------------------------------------------------------------
    async def start(self) -> None:
        cfg, man = self.cfg, self.manual
        out_path = state_path(man.state_dir, cfg.name, man.outbound.spi, man.outbound.keymat)
        try:
            self.reservation = SeqReservation.open(out_path, new_key=self.new_key)
        except SeqStateError as exc:
            raise StartupError(str(exc)) from None
        journal = paths.journal_path(cfg.name)
        if journal.exists():
            log.info("undoing the changes of an earlier instance that did not stop cleanly")
            await self._netconf_call(NetConf.undo_journal, journal)
        try:
            self.tun = await self._netconf_call(TunDevice.open, cfg.tunnel.device, mtu=cfg.tunnel.mtu)
        except TunError as exc:
            raise StartupError(str(exc)) from None
        self.netconf = await self._netconf_call(NetConf, journal)
        await self._netconf_call(self._configure_links)
        self.dp = fp.Dataplane(self.tun.fileno(), cfg.tunnel.mtu)
        self._install_sas()
        self.pump = TunPump(self.loop, self.dp, self.tun.fileno(), self._on_tun_flags)
        await self._start_transport()
        if self.export_keys:
            self._write_export_keys(self.export_keys)
        self._housekeeper = self.loop.call_later(HOUSEKEEPING_S, self._housekeeping)
        self.state = "up"
        log.info("%s up: %s over %s, device %s (offloads: %s)", cfg.name, cfg.mode,
                 cfg.transport.protocol, self.tun.name, ",".join(self.tun.offload_names) or "none")

    async def _netconf_call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """pyroute2's synchronous API runs an event loop of its own, so every call goes
        to one dedicated thread (never the daemon's loop thread)."""
        return await self.loop.run_in_executor(self._nc_exec, functools.partial(fn, *args, **kw))

    def _configure_links(self) -> None:
        assert self.tun is not None and self.netconf is not None
        nc, t = self.netconf, self.cfg.tunnel
        for addr in t.addresses:
            nc.add_address(self.tun.name, str(addr))
        nc.set_up(self.tun.name)
        for net in t.routes:
            nc.add_route(str(net), ifname=self.tun.name)

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
            self.peer.set_conn(self.udp.conn)
            if tr.role == "connect":
                assert tr.remote is not None
                host = await _resolve(tr.remote, tr.port)
                self.peer.set_addr(*self.udp.dest(host, tr.port))
                self._announce()
            else:
                self.peer.set_follow(True)  # RFC 7296 §2.23: follow the authenticated address
            self.connected.set()
            return
        if tr.role == "listen":
            sock = listen(tr.local, tr.port)
            self.server = StreamServer(self.loop, sock, self._accept)
            self.peer.set_follow(True)
            self.connected.set()
            return
        self._tasks.append(asyncio.create_task(self._client_loop()))
        try:
            await asyncio.wait_for(self.connected.wait(), 15)
        except TimeoutError:
            raise StartupError(f"cannot reach {tr.remote}:{tr.port} over TCP: "
                               f"{self.events[-1] if self.events else 'no answer'}") from None

    # -- TCP client ---------------------------------------------------------------------
    async def _client_loop(self) -> None:
        tr = self.cfg.transport
        assert tr.remote is not None
        backoff = Backoff()
        while not self._stopping:
            try:
                sock = await open_connection(tr.remote, tr.port, local=tr.local)
            except OSError as exc:
                self._event(f"connect to {tr.remote}:{tr.port} failed: {exc.strerror or exc}")
                await asyncio.sleep(backoff.next())
                continue
            link = self._new_link(sock, originator=True)
            self.peer.set_conn(link.conn)
            self._announce_on(link)
            self._event(f"connected to {tr.remote}:{tr.port}")
            self.connected.set()
            reason = await link.closed
            self.peer.set_conn(None)
            if self._stopping:
                return
            if time.monotonic() - link.opened_at > 10:
                backoff.reset()
            self._event(f"connection lost ({reason}); reconnecting")
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

    # -- TCP server ---------------------------------------------------------------------
    def _accept(self, sock: socket.socket) -> StreamLink | None:
        link = self._new_link(sock, originator=False)
        self._event(f"accepted a connection from {link.peername}")
        return link

    def _new_link(self, sock: socket.socket, *, originator: bool) -> StreamLink:
        link = StreamLink(self.loop, self.dp, sock, originator=originator,
                          on_ike=self._on_stream_ike, on_closed=self._on_link_closed,
                          on_rx=self._on_link_rx, on_drained=self._on_drained)
        self.links.append(link)
        return link

    def _on_link_rx(self, link: StreamLink) -> None:
        if link.authenticated:
            return
        c = link.conn.rx_counters()
        if c.packets or c.dummy:  # ESP authenticated on this connection
            link.authenticated = True
            if not link.originator:
                # RFC 9329 §6.1 (T44): send where the peer's traffic last authenticated
                self.peer.set_conn(link.conn)
                self._event(f"return path moved to {link.peername}")

    def _on_link_closed(self, link: StreamLink, reason: str) -> None:
        if link in self.links:
            self.links.remove(link)
        for k, v in link.conn.rx_counters().as_dict().items():  # drops stay counted
            self._closed_rx[k] = self._closed_rx.get(k, 0) + v
        if not link.originator:
            self._event(f"connection from {link.peername} closed: {reason}")
        if self.pump is not None:
            self.pump.resume()

    def _on_drained(self) -> None:
        if self.pump is not None and self.pump.paused and not any(
            lk.conn.above_high_water() for lk in self.links if lk.is_open
        ):
            self.pump.resume()

    def _on_stream_ike(self, link: StreamLink, msg: bytes) -> None:
        self.ike_ignored = getattr(self, "ike_ignored", 0) + 1  # manual mode speaks no IKE

    def _on_udp_ike(self, msg: bytes, addr: tuple[str, int]) -> None:
        self.ike_ignored = getattr(self, "ike_ignored", 0) + 1

    # -- the hot loop's Python side -------------------------------------------------------
    def _on_tun_flags(self, flags: int) -> None:
        if flags & (fp.DP_BLOCKED | fp.DP_CONN_ERROR):
            for link in list(self.links):
                link.check_error()
                if link.is_open and link.conn.pending():
                    link.flush()

    def _housekeeping(self) -> None:
        """Extend the sequence reservation well before the ceiling (RFC 4106 §2)."""
        assert self.reservation is not None
        seq = self.out_sa.stats().seq
        if self.reservation.reserved - seq < SEQ_BLOCK_PACKETS // 2:
            mark = self.reservation.reserve(seq + SEQ_BLOCK_PACKETS)
            self.out_sa.set_seq_ceiling(mark)
        if self.udp is not None and time.monotonic() - self._last_announce > UDP_ANNOUNCE_S:
            self._announce()
        self._housekeeper = self.loop.call_later(HOUSEKEEPING_S, self._housekeeping)

    def _event(self, text: str) -> None:
        log.info("%s", text)
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.events[:-50]

    # -- status, export, stop -------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        tr = self.cfg.transport
        out, inb = self.out_sa.stats(), self.in_sa.stats()
        rx = dict(self._closed_rx)
        for conn in [lk.conn for lk in self.links] + ([self.udp.conn] if self.udp else []):
            for k, v in conn.rx_counters().as_dict().items():
                rx[k] = rx.get(k, 0) + v
        return {
            "ok": True,
            "state": self.state,
            "mode": "manual",
            "transport": tr.protocol,
            "role": tr.role,
            "remote": f"{tr.remote}:{tr.port}" if tr.remote else None,
            "peer": _peer_text(self.peer.addr(), self.links),
            "device": self.tun.name if self.tun else None,
            "mtu": self.cfg.tunnel.mtu,
            "offloads": list(self.tun.offload_names) if self.tun else [],
            "tun_paused": bool(self.pump and self.pump.paused),
            "uptime_s": round(time.time() - self.started, 1),
            "connections": len([lk for lk in self.links if lk.is_open]),
            "sas": [
                {"dir": "out", "spi": f"{out.spi:08x}", "seq": out.seq, "packets": out.packets,
                 "bytes": out.bytes, "refused": out.refused},
                {"dir": "in", "spi": f"{inb.spi:08x}", "seq": inb.seq, "packets": inb.packets,
                 "bytes": inb.bytes, "replay": inb.replay, "icv": inb.icv},
            ],
            "counters": {**self.dp.counters(), **{f"rx_{k}": v for k, v in rx.items()},
                         "ike_ignored": getattr(self, "ike_ignored", 0)},
            "gso": self.dp.gso_stats(),
            "events": self.events[-10:],
        }

    def _write_export_keys(self, path: Path) -> None:
        """Wireshark `esp_sa` UAT lines (Preferences > Protocols > ESP), so captures of
        this tunnel decrypt. Written 0600: these are the live keys."""
        lines = [wireshark_esp_sa_line(sa.spi, sa.keymat, family)
                 for sa in (self.manual.outbound, self.manual.inbound) for family in ("IPv4", "IPv6")]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.state = "stopping"
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        for t in self._tasks:
            t.cancel()
        if self.pump is not None:
            self.pump.close()
        if self.server is not None:
            self.server.close()
        for link in list(self.links):
            link.close("shutting down")
        if self.udp is not None:
            self.udp.close()
        if self.netconf is not None:
            await self._netconf_call(self.netconf.rollback)
            await self._netconf_call(self.netconf.close)
        if self.tun is not None:
            self.tun.close()
        journal = paths.journal_path(self.cfg.name)
        journal.unlink(missing_ok=True)


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


async def _resolve(host: str, port: int) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise StartupError(f"cannot resolve {host}")
    return str(infos[0][4][0])


# ---------------------------------------------------------------------------------------


async def serve_daemon(tunnel: ManualTunnel, name: str, ready: Callable[[str], None]) -> int:
    stop = asyncio.Event()

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return tunnel.status()
        if cmd == "down":
            stop.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    server = control.ControlServer(name, handler)
    try:
        await server.start()
    except control.ControlError as exc:
        ready(f"error: {exc}")
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await tunnel.start()
        except (StartupError, config.ConfigError, OSError) as exc:
            ready(f"error: {exc}")
            return 1
        ready("ok")
        await stop.wait()
        return 0
    finally:
        await tunnel.stop()
        await server.close()


def _ready_writer(fd: int | None) -> Callable[[str], None]:
    def ready(line: str) -> None:
        nonlocal fd
        if fd is None:
            print(line, file=sys.stderr)
            return
        try:
            os.write(fd, line.encode() + b"\n")
            os.close(fd)
        except OSError:
            pass
        fd = None

    return ready


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vpn.daemon")
    p.add_argument("config")
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--export-keys")
    p.add_argument("--new-key", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("VPN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ready = _ready_writer(args.ready_fd)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        ready(f"error: {exc}")
        return 2

    async def run() -> int:
        tunnel = ManualTunnel(cfg, new_key=args.new_key,
                              export_keys=Path(args.export_keys) if args.export_keys else None)
        return await serve_daemon(tunnel, cfg.name, ready)

    return _run(run())


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))  # type: ignore[arg-type]
    except ImportError:
        return int(asyncio.run(coro))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
