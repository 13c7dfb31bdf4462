"""The only module that imports the compiled `vpn._fast`; typed wrappers around it.

Everything else in the package calls these wrappers, never `ffi` or `lib` directly.
"""

from __future__ import annotations

from vpn import _fast  # type: ignore[attr-defined]

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
