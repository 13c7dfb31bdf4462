"""The only module that imports the compiled `vpn._fast`; typed wrappers around it.

Everything else in the package calls these wrappers, never `ffi` or `lib` directly.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
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

    def set_seq_ceiling(self, ceiling: int) -> None:
        """Outbound: refuse to send any sequence number above `ceiling` (0 = none)."""
        lib.vpn_esp_sa_set_seq_ceiling(self.handle, ceiling)

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


# ---- TUN offloads and batched TUN I/O (csrc/vpn_gso.c, csrc/vpn_tun.c) ----------------
#
# Buffers are made once and reused: each class below owns one arena plus its cffi views,
# so a batch costs one C call and no Python object per packet.

VNET_HDR_LEN = int(lib.VPN_VNET_HDR_LEN)
TUN_SLOT_BYTES = int(lib.VPN_TUN_SLOT_BYTES)
GSO_STATUS_NAMES = {
    int(lib.VPN_GSO_ESHORT): "ESHORT",
    int(lib.VPN_GSO_EHDR): "EHDR",
    int(lib.VPN_GSO_EIP): "EIP",
    int(lib.VPN_GSO_EL4): "EL4",
    int(lib.VPN_GSO_ESIZE): "ESIZE",
    int(lib.VPN_GSO_ETOOBIG): "ETOOBIG",
    int(lib.VPN_GSO_ENOSPACE): "ENOSPACE",
    int(lib.VPN_GSO_EARG): "EARG",
}
_GSO_STAT_FIELDS = (
    "seg_in",
    "seg_gso_in",
    "seg_out",
    "seg_csum",
    "seg_malformed",
    "seg_toobig",
    "gro_in",
    "gro_out",
    "gro_super",
    "gro_merged",
    "gro_bad_csum",
)


class GsoStats:
    """Counters of struct vpn_gso_stats; the C functions add to them."""

    def __init__(self) -> None:
        self.c = ffi.new("struct vpn_gso_stats *")

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self.c, name)) for name in _GSO_STAT_FIELDS}


class TunReadBatch:
    """Read arena: ``capacity`` slots of TUN_SLOT_BYTES (virtio_net_hdr + 65535)."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.stride = TUN_SLOT_BYTES
        self.buf = bytearray(capacity * self.stride)
        self.ptr = ffi.from_buffer("uint8_t[]", self.buf)
        self.lens = ffi.new("uint32_t[]", capacity)
        self.count = 0

    def read(self, fd: int) -> int:
        """Read frames until EAGAIN or the arena is full; return how many.

        Raises OSError only when the very first read fails with a real error.
        """
        err = ffi.new("int *")
        n = int(lib.vpn_tun_read_batch(fd, self.ptr, self.stride, self.lens, self.capacity, err))
        if n < 0 or (n == 0 and err[0]):
            raise OSError(err[0], os.strerror(err[0]))
        self.count = n
        return n

    def frame(self, i: int) -> bytes:
        """Frame i of the last read (a copy; for tests and diagnostics)."""
        start = i * self.stride
        return bytes(self.buf[start : start + int(self.lens[i])])


class PacketSlots:
    """Fixed slots of ``slot_bytes`` for IP packets (segmentation output, GRO input)."""

    def __init__(self, capacity: int = 512, slot_bytes: int = 2048) -> None:
        self.capacity = capacity
        self.stride = slot_bytes
        self.buf = bytearray(capacity * slot_bytes)
        self.ptr = ffi.from_buffer("uint8_t[]", self.buf)
        self.lens = ffi.new("uint32_t[]", capacity)
        self.offs = ffi.new("uint32_t[]", [i * slot_bytes for i in range(capacity)])
        self.count = 0

    def packet(self, i: int) -> bytes:
        start = i * self.stride
        return bytes(self.buf[start : start + int(self.lens[i])])

    def load(self, packets: list[bytes]) -> None:
        """Fill the slots from Python bytes (tests)."""
        if len(packets) > self.capacity:
            raise ValueError("more packets than slots")
        for i, p in enumerate(packets):
            if len(p) > self.stride:
                raise ValueError("packet larger than a slot")
            self.buf[i * self.stride : i * self.stride + len(p)] = p
            self.lens[i] = len(p)
        self.count = len(packets)


class RecordBuffer:
    """Packed ``[virtio_net_hdr][packet]`` records (coalescing output, TUN write input)."""

    def __init__(self, capacity: int = 512, size: int = 512 * 2048) -> None:
        self.capacity = capacity
        self.buf = bytearray(size)
        self.ptr = ffi.from_buffer("uint8_t[]", self.buf)
        self.offs = ffi.new("uint32_t[]", capacity)
        self.lens = ffi.new("uint32_t[]", capacity)
        self.count = 0

    def record(self, i: int) -> bytes:
        start = int(self.offs[i])
        return bytes(self.buf[start : start + int(self.lens[i])])


def segment_batch(
    src: TunReadBatch, start: int, dst: PacketSlots, stats: GsoStats
) -> tuple[int, int]:
    """Segment frames ``start..src.count`` into ``dst``; return (packets, frames consumed).

    Malformed frames are dropped and counted in ``stats``; a frame that does not fit in
    the remaining slots is left for the next call (consumed < remaining).
    """
    consumed = ffi.new("uint32_t *")
    n = int(
        lib.vpn_gso_segment_batch(
            src.ptr + start * src.stride,
            src.stride,
            src.lens + start,
            src.count - start,
            dst.ptr,
            dst.stride,
            dst.stride,
            dst.lens,
            dst.capacity,
            consumed,
            stats.c,
        )
    )
    dst.count = n
    return n, int(consumed[0])


def coalesce_batch(src: PacketSlots, dst: RecordBuffer, stats: GsoStats) -> int:
    """Coalesce the ``src.count`` packets of ``src`` into records in ``dst``."""
    n = int(
        lib.vpn_gro_coalesce(
            src.ptr,
            src.offs,
            src.lens,
            src.count,
            dst.ptr,
            len(dst.buf),
            dst.offs,
            dst.lens,
            dst.capacity,
            stats.c,
        )
    )
    if n < 0:
        raise ValueError(f"coalesce: {GSO_STATUS_NAMES.get(n, n)} (output buffer too small)")
    dst.count = n
    return n


def tun_write_batch(fd: int, src: RecordBuffer, start: int = 0) -> tuple[int, int]:
    """Write records ``start..src.count``; return (consumed, refused by the kernel).

    consumed < remaining means the TUN queue was full (EAGAIN): retry from there.
    Raises OSError for a dead fd (EBADF) or bad arguments.
    """
    failed = ffi.new("uint32_t *")
    err = ffi.new("int *")
    n = int(
        lib.vpn_tun_write_batch(
            fd, src.ptr, src.offs + start, src.lens + start, src.count - start, failed, err
        )
    )
    if n < 0 or (n == 0 and src.count > start and err[0] in (errno.EBADF, errno.EINVAL)):
        raise OSError(err[0], os.strerror(err[0]))
    return n, int(failed[0])


_scratch: dict[str, bytearray] = {}


def gso_segment(frame: bytes, out_cap: int = 65535, max_out: int = 1024) -> list[bytes] | int:
    """Segment one frame; the packets, or the negative VPN_GSO_E* status (tests)."""
    need = max(out_cap * max_out, 1)
    if len(_scratch.get("seg", b"")) < need:
        _scratch["seg"] = bytearray(need)
    out = _scratch["seg"]
    lens = ffi.new("uint32_t[]", max(max_out, 1))
    ptr = ffi.from_buffer("uint8_t[]", out)
    n = int(lib.vpn_gso_segment(frame, len(frame), ptr, out_cap, out_cap, lens, max_out))
    if n < 0:
        return n
    return [bytes(out[i * out_cap : i * out_cap + int(lens[i])]) for i in range(n)]


def gso_finish_csum(pkt: bytearray, csum_start: int, csum_offset: int) -> int:
    """Complete a NEEDS_CSUM packet in place; 0 or VPN_GSO_EHDR."""
    return int(
        lib.vpn_gso_finish_csum(
            ffi.from_buffer("uint8_t[]", pkt), len(pkt), csum_start, csum_offset
        )
    )


def gro_coalesce(packets: list[bytes], stats: GsoStats | None = None) -> list[bytes]:
    """Coalesce Python packets into records (tests; the hot path uses coalesce_batch)."""
    n = len(packets)
    src = PacketSlots(max(n, 1), max([len(p) for p in packets] + [1]))
    src.load(packets)
    dst = RecordBuffer(max(n, 1), sum(len(p) for p in packets) + VNET_HDR_LEN * n + 1)
    coalesce_batch(src, dst, stats or GsoStats())
    return [dst.record(i) for i in range(dst.count)]


# ---- the dataplane (csrc/vpn_dp.c) --------------------------------------------------
#
# One Dataplane per daemon: the TUN fd, the inbound SA table, routes and SPI bindings.
# Connections (TCP/TLS streams, UDP sockets) and peers (remote ends with an outbound SA)
# hang off it. Each call below is one C call that handles a whole batch.

DP_CONN_TCP = int(lib.VPN_DP_CONN_TCP)
DP_CONN_UDP = int(lib.VPN_DP_CONN_UDP)
DP_CONN_FEED = int(lib.VPN_DP_CONN_FEED)
DP_TUN_EMPTY = int(lib.VPN_DP_TUN_EMPTY)
DP_BACKPRESSURE = int(lib.VPN_DP_BACKPRESSURE)
DP_BLOCKED = int(lib.VPN_DP_BLOCKED)
DP_CONN_ERROR = int(lib.VPN_DP_CONN_ERROR)
DP_TUN_ERROR = int(lib.VPN_DP_TUN_ERROR)
DP_RX_OK = int(lib.VPN_DP_RX_OK)
DP_RX_EOF = int(lib.VPN_DP_RX_EOF)
DP_RX_CLOSE = int(lib.VPN_DP_RX_CLOSE)
DP_RX_ERROR = int(lib.VPN_DP_RX_ERROR)
_IKE_BUF_BYTES = 256 * 1024
_IKE_MAX = 64
_SOCKADDR_BYTES = 128

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Range = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address]


def _ranges(nets: Sequence[Network | Range]) -> tuple[object, int]:
    """Traffic-selector address ranges as a C array (vpn_dp_range)."""
    n = len(nets)
    if n > int(lib.VPN_DP_MAX_TS):
        raise ValueError("too many traffic selectors for one SA")
    ranges = ffi.new("vpn_dp_range[]", max(n, 1))
    for i, net in enumerate(nets):
        first, last = (net.network_address, net.broadcast_address) if not isinstance(net, tuple) else net
        ranges[i].family = first.version
        ffi.memmove(ranges[i].start, first.packed, len(first.packed))
        ffi.memmove(ranges[i].end, last.packed, len(last.packed))
    return ranges, n


def _struct_dict(s: object, ctype: str) -> dict[str, int]:
    return {name: int(getattr(s, name)) for name, _ in ffi.typeof(ctype).fields}


def sockaddr_bytes(host: str, port: int) -> bytes:
    """A struct sockaddr_in/_in6 for (numeric host, port), as C wants it."""
    addr = ipaddress.ip_address(host)
    if addr.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + addr.packed + bytes(8)
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + addr.packed
            + struct.pack("=I", 0))


def sockaddr_tuple(raw: bytes) -> tuple[str, int]:
    """(host, port) of a struct sockaddr_in/_in6, the host written as the socket module
    writes it (a v4-mapped address as ::ffff:a.b.c.d, which vpn.io.udp unmaps)."""
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raise ValueError(f"address family {family}")


class _IkeSink:
    """A reusable buffer that C fills with IKE messages (Non-ESP marker stripped)."""

    def __init__(self) -> None:
        self.buf = ffi.new("uint8_t[]", _IKE_BUF_BYTES)
        self.pkts = ffi.new("vpn_pkt[]", _IKE_MAX)
        self.n = ffi.new("size_t *")
        self.err = ffi.new("int *")
        self.addrs = ffi.new("uint8_t[]", _IKE_MAX * _SOCKADDR_BYTES)
        self.addr_lens = ffi.new("uint32_t[]", _IKE_MAX)

    def messages(self) -> list[bytes]:
        return [bytes(ffi.buffer(self.buf + p.off, p.len)) for p in self.pkts[0 : self.n[0]]]

    def messages_from(self) -> list[tuple[bytes, tuple[str, int]]]:
        out = []
        for i, msg in enumerate(self.messages()):
            raw = bytes(ffi.buffer(self.addrs + i * _SOCKADDR_BYTES, self.addr_lens[i]))
            out.append((msg, sockaddr_tuple(raw)))
        return out


class Dataplane:
    """The C dataplane of one daemon (see csrc/vpn_dp.h for the flow)."""

    def __init__(self, tun_fd: int, mtu: int, batch: int = 64) -> None:
        handle = lib.vpn_dp_new(tun_fd, mtu, batch)
        if handle == ffi.NULL:
            raise ValueError("cannot create the dataplane (bad MTU or out of memory)")
        self.handle = ffi.gc(handle, lib.vpn_dp_free)
        self._table = lib.vpn_dp_sa_table(self.handle)
        self._inbound: dict[int, FastSa] = {}
        self._err = ffi.new("int *")
        self._ctr = ffi.new("vpn_dp_counters *")
        self._gso = ffi.new("struct vpn_gso_stats *")

    # inbound SAs ---------------------------------------------------------------------
    def install_inbound(self, sa: FastSa) -> None:
        """Start accepting ESP for this inbound SA (keeps it alive until removed)."""
        st = lib.vpn_sa_table_insert(self._table, sa.handle)
        if st != lib.VPN_OK:
            raise ValueError(f"cannot install SPI {sa.spi:08x}: {status_name(st)}")
        self._inbound[sa.spi] = sa

    def remove_inbound(self, spi: int) -> FastSa | None:
        lib.vpn_sa_table_remove(self._table, spi)
        lib.vpn_dp_unbind_spi(self.handle, spi)
        return self._inbound.pop(spi, None)

    def inbound(self, spi: int) -> FastSa | None:
        return self._inbound.get(spi)

    # send ------------------------------------------------------------------------------
    def tun_to_net(self) -> tuple[int, int]:
        """Read one batch from the TUN, seal and send it: (DP_* flags, errno)."""
        flags = int(lib.vpn_dp_tun_to_net(self.handle, self._err))
        return flags, int(self._err[0])

    # objects ---------------------------------------------------------------------------
    def conn(self, kind: int, fd: int, *, expect_prefix: bool = False,
             capacity: int = 8 << 20, high_water: int = 1 << 20) -> DpConn:
        return DpConn(self, kind, fd, expect_prefix, capacity, high_water)

    def peer(self, peer_id: int) -> DpPeer:
        return DpPeer(self, peer_id)

    # routing and policy ------------------------------------------------------------------
    def route_add(self, net: Network, peer: DpPeer) -> None:
        st = lib.vpn_dp_route_add(self.handle, net.version, net.network_address.packed,
                                  net.prefixlen, peer.handle)
        if st != lib.VPN_OK:
            raise ValueError(f"cannot add route {net}: {status_name(st)}")
        peer._routes.add(net)

    def route_del(self, net: Network) -> bool:
        return bool(lib.vpn_dp_route_del(self.handle, net.version, net.network_address.packed,
                                         net.prefixlen) == lib.VPN_OK)

    def set_default_peer(self, peer: DpPeer | None) -> None:
        lib.vpn_dp_set_default_peer(self.handle, peer.handle if peer else ffi.NULL)
        self._default = peer

    def bind_spi(self, spi: int, peer: DpPeer, sources: Sequence[Network | Range],
                 destinations: Sequence[Network | Range] = ()) -> None:
        """Inbound `spi` belongs to `peer` and may carry inner sources in `sources` and,
        if given, inner destinations in `destinations` (our selectors; RFC 4301 §5.2);
        other packets are dropped and counted (ts_violation)."""
        src, n = _ranges(sources)
        st = lib.vpn_dp_bind_spi(self.handle, spi, peer.handle, src, n)
        if st == lib.VPN_OK:
            dst, m = _ranges(destinations)
            st = lib.vpn_dp_bind_spi_dst(self.handle, spi, dst, m)
        if st != lib.VPN_OK:
            raise ValueError(f"cannot bind SPI {spi:08x}: {status_name(st)}")

    # counters ----------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        lib.vpn_dp_get_counters(self.handle, self._ctr)
        return _struct_dict(self._ctr[0], "vpn_dp_counters")

    def gso_stats(self) -> dict[str, int]:
        lib.vpn_dp_get_gso_stats(self.handle, self._gso)
        return _struct_dict(self._gso[0], "struct vpn_gso_stats")


class DpConn:
    """A transport of the dataplane: a TCP stream, a UDP socket, or a stream whose
    bytes Python moves (TLS). TCP and TLS connections own the ordered output queue."""

    def __init__(self, dp: Dataplane, kind: int, fd: int, expect_prefix: bool,
                 capacity: int, high_water: int) -> None:
        handle = lib.vpn_dp_conn_new(dp.handle, kind, fd, int(expect_prefix), capacity, high_water)
        if handle == ffi.NULL:
            raise ValueError("cannot create the connection")
        self.dp = dp  # the dataplane outlives its connections
        self.kind = kind
        self.fd = fd
        self.handle = ffi.gc(handle, lib.vpn_dp_conn_free)
        self._sink = _IkeSink()
        self._consumed = ffi.new("size_t *")
        self._rxc = ffi.new("vpn_counters *")
        q = lib.vpn_dp_conn_outq(self.handle)
        self._outq = q if q != ffi.NULL else None

    def close(self) -> None:
        """Detach from the dataplane now (the fd is the caller's to close). The receive
        counters stay readable (their last values); the queue is gone."""
        if self.handle is not None:
            lib.vpn_dp_conn_get_rx_counters(self.handle, self._rxc)
            handle, self.handle, self._outq = self.handle, None, None
            ffi.gc(handle, None)  # drop the destructor (returns None, not the pointer)
            lib.vpn_dp_conn_free(handle)

    # output ------------------------------------------------------------------------------
    def send_ike(self, message: bytes) -> bool:
        """Queue one IKE message: Length || Non-ESP marker || message (RFC 9329 §3.1)."""
        if self._outq is None:
            raise ValueError("UDP connections send IKE through their socket")
        prefix = struct.pack("!H", len(message) + 6) + b"\x00\x00\x00\x00"
        return bool(lib.vpn_outq_push_frame(self._outq, prefix, 6, message, len(message)) == 0)

    def send_raw(self, data: bytes) -> bool:
        """Queue raw stream bytes (the "IKETCP" prefix)."""
        assert self._outq is not None
        return bool(lib.vpn_outq_push(self._outq, data, len(data)) == 0)

    def pending(self) -> int:
        return int(lib.vpn_outq_pending(self._outq)) if self._outq is not None else 0

    def above_high_water(self) -> bool:
        return self._outq is not None and bool(lib.vpn_outq_above_high_water(self._outq))

    def flush(self) -> int:
        """Write the queue to the socket until EAGAIN; OSError when the socket died."""
        n = int(lib.vpn_dp_conn_flush(self.handle))
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return n

    def take_pending(self) -> bytes:
        """FEED connections: the queued bytes, removed from the queue (for TLS)."""
        assert self._outq is not None
        size = ffi.new("size_t *")
        ptr = lib.vpn_outq_peek(self._outq, size)
        data = bytes(ffi.buffer(ptr, size[0]))
        lib.vpn_outq_consume(self._outq, size[0])
        return data

    def clear(self) -> None:
        if self._outq is not None:
            lib.vpn_outq_clear(self._outq)

    @property
    def error(self) -> int:
        return int(lib.vpn_dp_conn_error(self.handle))

    # input -------------------------------------------------------------------------------
    def rx(self, budget: int = 4 << 20) -> tuple[int, list[bytes], int]:
        """Read the TCP socket: (DP_RX_* status, IKE messages, errno)."""
        s = self._sink
        st = int(lib.vpn_dp_conn_rx(self.handle, budget, s.buf, _IKE_BUF_BYTES, s.pkts, _IKE_MAX,
                                    s.n, s.err))
        return st, s.messages(), int(s.err[0])

    def feed(self, data: bytes) -> tuple[int, int, list[bytes]]:
        """Stream bytes read by Python (TLS plaintext): (status, consumed, IKE messages)."""
        s = self._sink
        st = int(lib.vpn_dp_conn_feed(self.handle, data, len(data), self._consumed, s.buf,
                                      _IKE_BUF_BYTES, s.pkts, _IKE_MAX, s.n))
        return st, int(self._consumed[0]), s.messages()

    def udp_rx(self) -> tuple[int, list[tuple[bytes, tuple[str, int]]], int]:
        """Read a batch of datagrams: (status, [(IKE message, source)], errno)."""
        s = self._sink
        st = int(lib.vpn_dp_udp_rx(self.handle, s.buf, _IKE_BUF_BYTES, s.pkts, _IKE_MAX, s.n,
                                   s.addrs, _SOCKADDR_BYTES, s.addr_lens, s.err))
        return st, s.messages_from(), int(s.err[0])

    def rx_counters(self) -> Counters:
        if self.handle is not None:
            lib.vpn_dp_conn_get_rx_counters(self.handle, self._rxc)
        return _counters(self._rxc[0])

    def rx_pending(self) -> int:
        """Bytes of a partial prefix or frame held by the deframer (0 once closed)."""
        return int(lib.vpn_dp_conn_rx_pending(self.handle)) if self.handle is not None else 0


class DpPeer:
    """A remote end: its outbound SA, its current connection and (UDP) address."""

    def __init__(self, dp: Dataplane, peer_id: int) -> None:
        handle = lib.vpn_dp_peer_new(dp.handle, peer_id)
        if handle == ffi.NULL:
            raise MemoryError("vpn_dp_peer_new")
        self.dp = dp
        self.id = peer_id
        self.handle = ffi.gc(handle, lib.vpn_dp_peer_free)
        self._sa: FastSa | None = None
        self._conn: DpConn | None = None
        self._routes: set[Network] = set()
        self._ctr = ffi.new("vpn_dp_peer_counters *")
        self._addr = ffi.new("uint8_t[]", _SOCKADDR_BYTES)

    def set_sa(self, sa: FastSa | None) -> None:
        """The outbound SA traffic to this peer is sealed with (swapped on rekey)."""
        lib.vpn_dp_peer_set_sa(self.handle, sa.handle if sa else ffi.NULL)
        self._sa = sa

    @property
    def sa(self) -> FastSa | None:
        return self._sa

    def set_conn(self, conn: DpConn | None) -> None:
        lib.vpn_dp_peer_set_conn(self.handle, conn.handle if conn else ffi.NULL)
        self._conn = conn

    def conn_handle(self) -> object:
        return lib.vpn_dp_peer_conn(self.handle)

    def set_addr(self, host: str, port: int) -> None:
        raw = sockaddr_bytes(host, port)
        lib.vpn_dp_peer_set_addr(self.handle, raw, len(raw))

    def addr(self) -> tuple[str, int] | None:
        n = int(lib.vpn_dp_peer_get_addr(self.handle, self._addr, _SOCKADDR_BYTES))
        return sockaddr_tuple(bytes(ffi.buffer(self._addr, n))) if n else None

    def set_follow(self, follow: bool) -> None:
        """Move the return path to where this peer's traffic last authenticated."""
        lib.vpn_dp_peer_set_follow(self.handle, int(follow))

    def counters(self) -> dict[str, int]:
        lib.vpn_dp_peer_get_counters(self.handle, self._ctr)
        return _struct_dict(self._ctr[0], "vpn_dp_peer_counters")
