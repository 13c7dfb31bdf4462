"""Anti-replay window (RFC 4303 §3.4.3) and ESN high-order bit inference (Appendix A2).

The readable model of what csrc/vpn_esp.c does with a ring of 64-bit words: here the
window is one Python int whose bit i says "packet top - i was received". The check
comes before the ICV is verified, the update only after (RFC 4303 §3.4.3).
"""

from __future__ import annotations

REPLAY_WINDOW_DEFAULT = 1024  # packets; RFC 4303 §3.4.3 asks for at least 32 (64 default)
REPLAY_WINDOW_MIN = 32
REPLAY_WINDOW_MAX = 65536  # the bitmap costs 8 KiB per inbound SA at this size

_MOD32 = 1 << 32


def infer_seq(seq_lo: int, top: int, window: int) -> int:
    """The full 64-bit sequence number of a packet carrying only the low 32 bits.

    RFC 4303 Appendix A2.2: Th:Tl is the top of the window, W its size, the bottom is
    Tl - W + 1 (mod 2^32). Case A: the window lies within one 2^32 subspace; Case B: it
    spans two. The arithmetic on seq_hi is mod 2^32 as in the RFC's pseudo-code; a
    wrong guess simply fails the ICV check.
    """
    th, tl = top >> 32, top & 0xFFFFFFFF
    bottom = (tl - window + 1) % _MOD32
    if tl >= window - 1:  # Case A
        seq_hi = th if seq_lo >= bottom else th + 1
    else:  # Case B
        seq_hi = th - 1 if seq_lo >= bottom else th
    return ((seq_hi % _MOD32) << 32) | seq_lo


class ReplayWindow:
    """Sliding window of the last `size` sequence numbers (RFC 4303 §3.4.3)."""

    def __init__(self, size: int = REPLAY_WINDOW_DEFAULT) -> None:
        if not REPLAY_WINDOW_MIN <= size <= REPLAY_WINDOW_MAX:
            raise ValueError(f"replay window must be {REPLAY_WINDOW_MIN}..{REPLAY_WINDOW_MAX}")
        self.size = size
        self.top = 0  # highest authenticated sequence number (the right edge)
        self.bitmap = 0  # bit i set: packet (top - i) was received, 0 <= i < size

    def check(self, seq: int) -> bool:
        """True if `seq` may be new: right of the edge, or inside and not yet seen."""
        if seq == 0:  # never sent: the first packet carries 1 (RFC 4303 §3.3.3)
            return False
        if seq > self.top:
            return True
        offset = self.top - seq
        if offset >= self.size:  # left of the window
            return False
        return not (self.bitmap >> offset) & 1

    def update(self, seq: int) -> None:
        """Mark `seq` received; call only after its ICV verified."""
        if seq > self.top:
            shift = seq - self.top
            self.bitmap = (
                0 if shift >= self.size else (self.bitmap << shift) & ((1 << self.size) - 1)
            )
            self.top = seq
        self.bitmap |= 1 << (self.top - seq)

    def reset(self, top: int) -> None:
        """Start over as if `top` had just been received (0: nothing received)."""
        self.top = top
        self.bitmap = 1 if top else 0
