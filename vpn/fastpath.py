"""The only module that imports the compiled `vpn._fast`; typed wrappers around it.

Everything else in the package calls these wrappers, never `ffi` or `lib` directly.
"""

from __future__ import annotations

import errno
import os

from vpn import _fast  # type: ignore[attr-defined]

ffi = _fast.ffi
lib = _fast.lib


def abi() -> int:
    """ABI number of the compiled module (bumped when the C interface changes)."""
    return int(lib.vpn_fast_abi())


def openssl_version() -> str:
    """The OpenSSL libcrypto version the fast path runs on."""
    return str(ffi.string(lib.vpn_fast_openssl_version()).decode())


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
