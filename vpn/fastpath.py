"""The only module that imports the compiled `vpn._fast`; typed wrappers around it.

Everything else in the package calls these wrappers, never `ffi` or `lib` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vpn import _fast  # type: ignore[attr-defined]
from vpn.esp.receiver import Counters, Delivered
from vpn.esp.sa import DropReason, EspDropped, SaFlags, SaParams

ffi = _fast.ffi
lib = _fast.lib


def abi() -> int:
    """ABI number of the compiled module (bumped when the C interface changes)."""
    return int(lib.vpn_fast_abi())


def openssl_version() -> str:
    """The OpenSSL libcrypto version the fast path runs on."""
    return str(ffi.string(lib.vpn_fast_openssl_version()).decode())


# --- output queue (csrc/vpn_outq.c) -------------------------------------------------------


class OutQueue:
    """The ordered, bounded output queue of one stream, owned by C.

    IKE frames from Python and ESP frames sealed in C share it, so frames are never torn
    or interleaved (RFC 9329 §3); a short write keeps its remainder at the head.
    """

    def __init__(self, capacity: int = 4 << 20, high_water: int = 1 << 20) -> None:
        q = lib.vpn_outq_new(capacity, high_water)
        if q == ffi.NULL:
            raise ValueError("invalid output queue size")
        self._q = ffi.gc(q, lib.vpn_outq_free)

    @property
    def handle(self) -> object:
        """The C pointer, for other fast-path calls that append to this queue."""
        return self._q

    def __len__(self) -> int:
        return int(lib.vpn_outq_pending(self._q))

    def above_high_water(self) -> bool:
        """True while the stream is backed up: stop reading the TUN until it drains."""
        return bool(lib.vpn_outq_above_high_water(self._q))

    def push(self, frame: bytes) -> bool:
        """Append one whole frame; False (nothing queued) when it does not fit."""
        return bool(lib.vpn_outq_push(self._q, frame, len(frame)) == 0)

    def push_frame(self, prefix: bytes, body: bytes) -> bool:
        """Append prefix || body as one unit (e.g. length + marker, then an IKE message)."""
        return bool(lib.vpn_outq_push_frame(self._q, prefix, len(prefix), body, len(body)) == 0)

    def flush_fd(self, fd: int) -> int:
        """Send until empty or EAGAIN; returns bytes sent; raises OSError on a dead socket."""
        n = int(lib.vpn_outq_flush_fd(self._q, fd))
        if n < 0:
            raise OSError(-n, "stream write failed")
        return n

    def peek(self) -> bytes:
        """A copy of the pending bytes (for TLS, where Python writes into the SSL object)."""
        size = ffi.new("size_t *")
        ptr = lib.vpn_outq_peek(self._q, size)
        return bytes(ffi.buffer(ptr, size[0]))

    def consume(self, n: int) -> None:
        """Drop n bytes from the head after they were handed to the transport."""
        lib.vpn_outq_consume(self._q, n)

    def clear(self) -> None:
        """Discard everything, including a partly sent frame (RFC 9329 §6.1)."""
        lib.vpn_outq_clear(self._q)


# --- ESP and RFC 9329 framing (csrc/vpn_esp.h, csrc/vpn_frame.h) --------------------
#
# Typed wrappers over the C ESP path. The per-packet methods (FastSa.seal/open) are for
# tests and the control plane; traffic goes through the batch calls, which take
# preallocated buffers and make one C call per batch.


MODE_TCP = int(lib.VPN_MODE_TCP)
MODE_UDP = int(lib.VPN_MODE_UDP)
ESP_HEADROOM = int(lib.VPN_ESP_HEADROOM)
ESP_TAILROOM = int(lib.VPN_ESP_TAILROOM)
ESP_OVERHEAD_MAX = int(lib.VPN_ESP_OVERHEAD_MAX)
_KIND = {int(lib.VPN_PKT_INNER): "inner", int(lib.VPN_PKT_IKE): "ike", int(lib.VPN_PKT_ESP): "esp"}
_MAX_FRAME = 65536


def status_name(status: int) -> str:
    """Name of a VPN_ST_* status code ("ok", "replay", ...)."""
    return str(ffi.string(lib.vpn_status_name(status)).decode())


def _counters(c: object) -> Counters:
    return Counters(**{name: int(getattr(c, name)) for name in Counters().as_dict()})


@dataclass(frozen=True)
class SaStats:
    """Lifetime and drop counters of one C SA (struct vpn_esp_sa_stats)."""

    spi: int
    flags: SaFlags
    seq: int
    packets: int
    bytes: int
    replay: int
    icv: int
    bad_padding: int
    dummy: int
    refused: int


class FastSa:
    """One SA direction in C (an OpenSSL context keyed once); freed with the object."""

    def __init__(self, params: SaParams, outbound: bool) -> None:
        p = ffi.new(
            "vpn_esp_sa_params *",
            {
                "spi": params.spi,
                "direction": lib.VPN_ESP_DIR_OUT if outbound else lib.VPN_ESP_DIR_IN,
                "esn": int(params.esn),
                "replay_window": params.replay_window,
                "soft_packets": params.soft_packets,
                "hard_packets": params.hard_packets,
                "soft_bytes": params.soft_bytes,
                "hard_bytes": params.hard_bytes,
            },
        )
        status = ffi.new("int *")
        handle = lib.vpn_esp_sa_new(p, params.key, len(params.key), params.salt, status)
        if handle == ffi.NULL:
            raise ValueError(f"cannot create the ESP SA: {status_name(status[0])}")
        self.handle = ffi.gc(handle, lib.vpn_esp_sa_free)
        self.outbound = outbound
        self.spi = params.spi
        self._buf = ffi.new("uint8_t[]", _MAX_FRAME + ESP_OVERHEAD_MAX)
        self._len = ffi.new("size_t *")
        self._nh = ffi.new("uint8_t *")
        self._stats = ffi.new("vpn_esp_sa_stats *")

    def stats(self) -> SaStats:
        lib.vpn_esp_sa_get_stats(self.handle, self._stats)
        s = self._stats
        return SaStats(
            int(s.spi), SaFlags(int(s.flags)), int(s.seq), int(s.packets), int(s.bytes),
            int(s.replay), int(s.icv), int(s.bad_padding), int(s.dummy), int(s.refused),
        )  # fmt: skip

    def set_seq(self, seq: int) -> None:
        """Outbound: the next packet gets seq + 1. Inbound: seq becomes the window top."""
        lib.vpn_esp_sa_set_seq(self.handle, seq)

    def seal(self, inner: bytes, next_header: int = 0) -> bytes:
        """One ESP packet (0 = Next Header from the IP version). Raises EspDropped."""
        st = lib.vpn_esp_seal(
            self.handle, inner, len(inner), next_header, self._buf, len(self._buf), self._len
        )
        if st != lib.VPN_OK:
            raise EspDropped(DropReason(st), self.spi)
        return bytes(ffi.buffer(self._buf, self._len[0]))

    def open(self, packet: bytes) -> tuple[bytes, int]:
        """(inner packet, Next Header) of one ESP packet. Raises EspDropped."""
        st = lib.vpn_esp_open(
            self.handle, packet, len(packet), self._buf, len(self._buf), self._len, self._nh
        )
        if st != lib.VPN_OK:
            raise EspDropped(DropReason(st), self.spi)
        return bytes(ffi.buffer(self._buf, self._len[0])), int(self._nh[0])


class FastSaTable:
    """Inbound SAs by SPI in C. Holds a reference to every SA it contains, so an SA
    lives at least until it is removed; removal between batches is safe."""

    def __init__(self, capacity_hint: int = 16) -> None:
        handle = lib.vpn_sa_table_new(capacity_hint)
        if handle == ffi.NULL:
            raise MemoryError("vpn_sa_table_new")
        self.handle = ffi.gc(handle, lib.vpn_sa_table_free)
        self._sas: dict[int, FastSa] = {}

    def insert(self, sa: FastSa) -> None:
        st = lib.vpn_sa_table_insert(self.handle, sa.handle)
        if st != lib.VPN_OK:
            raise ValueError(f"cannot install SPI {sa.spi:08x}: {status_name(st)}")
        self._sas[sa.spi] = sa

    def remove(self, spi: int) -> FastSa | None:
        removed = lib.vpn_sa_table_remove(self.handle, spi)
        sa = self._sas.pop(spi, None)
        assert (removed == ffi.NULL) == (sa is None)
        return sa

    def __contains__(self, spi: int) -> bool:
        return bool(lib.vpn_sa_table_lookup(self.handle, spi) != ffi.NULL)

    def __len__(self) -> int:
        return int(lib.vpn_sa_table_count(self.handle))


def _delivered(buf: object, d: object) -> Delivered:
    data = bytes(ffi.buffer(buf + d.off, d.len)) if d.len else b""  # type: ignore[attr-defined]
    return Delivered(_KIND[int(d.kind)], data, int(d.spi), int(d.next_header))  # type: ignore[attr-defined]


class StreamReceiver:
    """The C receive state of one RFC 9329 stream, with its output arena and counters.

    `feed` returns the delivered items (inner packets, IKE messages; raw ESP packets
    when no table is given) and whether the stream must be closed.
    """

    def __init__(
        self,
        table: FastSaTable | None,
        expect_prefix: bool = False,
        max_consecutive_bad: int = 0,
        out_size: int = 4 * _MAX_FRAME,
        max_items: int = 1024,
    ) -> None:
        handle = lib.vpn_stream_rx_new(int(expect_prefix), max_consecutive_bad)
        if handle == ffi.NULL:
            raise MemoryError("vpn_stream_rx_new")
        self.handle = ffi.gc(handle, lib.vpn_stream_rx_free)
        self.table = table
        self.out = ffi.new("uint8_t[]", out_size)
        self.items = ffi.new("vpn_pkt[]", max_items)
        self.c_counters = ffi.new("vpn_counters *")
        self._consumed = ffi.new("size_t *")
        self._n = ffi.new("size_t *")
        self.closed = False

    @property
    def counters(self) -> Counters:
        return _counters(self.c_counters)

    @property
    def pending(self) -> int:
        return int(lib.vpn_stream_rx_pending(self.handle))

    def feed_raw(self, buf: object, length: int) -> tuple[int, int, int]:
        """One C call on a buffer (cdata or buffer object): (status, consumed, items)."""
        table = self.table.handle if self.table is not None else ffi.NULL
        st = lib.vpn_stream_rx_feed(
            self.handle, table, buf, length, self._consumed, self.out, len(self.out),
            self.items, len(self.items), self._n, self.c_counters,
        )  # fmt: skip
        return int(st), int(self._consumed[0]), int(self._n[0])

    def feed(self, data: bytes) -> list[Delivered]:
        """Feed stream bytes (any split). Sets `closed` when the stream must be closed."""
        out: list[Delivered] = []
        view = ffi.from_buffer("uint8_t[]", data)
        pos = 0
        while not self.closed:
            st, consumed, n = self.feed_raw(view + pos, len(data) - pos)
            out.extend(_delivered(self.out, self.items[i]) for i in range(n))
            pos += consumed
            if st == lib.VPN_ST_CLOSE:
                self.closed = True
            elif st != lib.VPN_ST_NO_SPACE:
                break
        return out


class SealBatcher:
    """Preallocated input arena, descriptors and output buffer for vpn_esp_seal_batch.

    `load` copies packets into the arena once; `seal_loaded` is then one C call per
    batch (the benchmark and the dataplane shape). `seal` does both for tests.
    """

    def __init__(
        self, max_packets: int = 256, arena_size: int = 1 << 20, out_size: int = 0
    ) -> None:
        self.in_buf = ffi.new("uint8_t[]", arena_size)
        self.in_pkts = ffi.new("vpn_pkt[]", max_packets)
        out_size = out_size or arena_size + max_packets * (ESP_OVERHEAD_MAX + 2)
        self.out_buf = ffi.new("uint8_t[]", out_size)
        self.out_pkts = ffi.new("vpn_pkt[]", max_packets)
        self.c_counters = ffi.new("vpn_counters *")
        self._used = ffi.new("size_t *")
        self.count = 0

    @property
    def counters(self) -> Counters:
        return _counters(self.c_counters)

    def load(self, packets: Sequence[bytes]) -> None:
        if len(packets) > len(self.in_pkts) or sum(map(len, packets)) > len(self.in_buf):
            raise ValueError("more packets than the arena or the descriptors hold")
        pos = 0
        for i, p in enumerate(packets):
            ffi.memmove(self.in_buf + pos, p, len(p))
            self.in_pkts[i].off = pos
            self.in_pkts[i].len = len(p)
            pos += len(p)
        self.count = len(packets)

    def seal_loaded(self, sa: FastSa, mode: int) -> tuple[int, int]:
        """Seal the loaded packets: (packets consumed, output bytes)."""
        n = lib.vpn_esp_seal_batch(
            sa.handle, mode, self.in_buf, len(self.in_buf), self.in_pkts, self.count,
            self.out_buf, len(self.out_buf), self.out_pkts, self._used, self.c_counters,
        )  # fmt: skip
        return int(n), int(self._used[0])

    def seal(self, sa: FastSa, packets: Sequence[bytes], mode: int) -> tuple[bytes, list[int]]:
        """(the output buffer's bytes, status per packet); for tests."""
        self.load(packets)
        n, used = self.seal_loaded(sa, mode)
        statuses = [int(self.out_pkts[i].status) for i in range(n)]
        return bytes(ffi.buffer(self.out_buf, used)), statuses

    def datagrams(self, n: int) -> list[bytes]:
        """The sealed packets of the last UDP-mode call, one per datagram (dropped: b"")."""
        return [bytes(ffi.buffer(self.out_buf + d.off, d.len)) for d in self.out_pkts[0:n]]


def udp_receive(
    table: FastSaTable | None, datagrams: Sequence[bytes], counters: object | None = None
) -> list[Delivered | DropReason]:
    """Run vpn_udp_rx_batch over datagrams; per datagram what was delivered or why not."""
    arena = b"".join(datagrams)
    descs = ffi.new("vpn_pkt[]", max(1, len(datagrams)))
    pos = 0
    for i, d in enumerate(datagrams):
        descs[i].off, descs[i].len = pos, len(d)
        pos += len(d)
    out = ffi.new("uint8_t[]", max(1, len(arena)))
    results = ffi.new("vpn_pkt[]", max(1, len(datagrams)))
    c = counters if counters is not None else ffi.new("vpn_counters *")
    n = lib.vpn_udp_rx_batch(
        table.handle if table is not None else ffi.NULL,
        ffi.from_buffer("uint8_t[]", arena), len(arena), descs, len(datagrams),
        out, len(out), results, c,
    )  # fmt: skip
    assert n == len(datagrams)
    return [
        _delivered(out, r) if r.status == lib.VPN_OK else DropReason(int(r.status))
        for r in results[0 : len(datagrams)]
    ]


def new_counters() -> object:
    """A zeroed C vpn_counters struct (read it with counters_of)."""
    return ffi.new("vpn_counters *")


def counters_of(c: object) -> Counters:
    return _counters(c)
