"""Sequence numbers: crossing 2^32 with ESN, seq_hi inference, no wrap, lifetimes."""

from __future__ import annotations

import pytest
from esphelpers import make_params

from vpn.esp.replay import infer_seq
from vpn.esp.sa import DropReason, EspDropped, InboundSa, OutboundSa, SaFlags
from vpn.fastpath import FastSa

INNER = b"\x45" + bytes(59)
TWO32 = 1 << 32


def _pairs(esn: bool, **kw: int) -> tuple[list[OutboundSa | FastSa], list[InboundSa | FastSa]]:
    p = make_params(esn=esn, **kw)
    return [OutboundSa(p), FastSa(p, outbound=True)], [InboundSa(p), FastSa(p, outbound=False)]


def _open(sa: InboundSa | FastSa, packet: bytes) -> bytes:
    return sa.open(packet).inner if isinstance(sa, InboundSa) else sa.open(packet)[0]


def test_esn_sender_crosses_2_32_and_the_receiver_follows() -> None:
    outs, ins = _pairs(esn=True)
    for sa in outs + ins:
        sa.set_seq(TWO32 - 3)
    for expected in range(TWO32 - 2, TWO32 + 3):
        py_packet, c_packet = (sa.seal(INNER) for sa in outs)
        assert py_packet == c_packet
        # on the wire only the low 32 bits; the IV carries all 64 (RFC 4106 §3.1)
        assert int.from_bytes(c_packet[4:8], "big") == expected & 0xFFFFFFFF
        assert int.from_bytes(c_packet[8:16], "big") == expected
        for sa in ins:
            assert _open(sa, c_packet) == INNER
    assert outs[1].stats().seq == ins[1].stats().seq == TWO32 + 2
    assert ins[0].seq == TWO32 + 2


def test_esn_late_packet_from_the_old_subspace_opens_after_the_crossing() -> None:
    """RFC 4303 App. A2.2 Case B: window spans two subspaces; seq_lo near 2^32-1 -> Th-1."""
    outs, ins = _pairs(esn=True)
    for sa in outs + ins:
        sa.set_seq(TWO32 - 10)
    late = [sa.seal(INNER) for sa in outs]  # seq 2^32 - 9, held back
    for _ in range(20):  # crosses into subspace 1
        packets = [sa.seal(INNER) for sa in outs]
        for sa in ins:
            _open(sa, packets[0])
    for sa in ins:
        assert _open(sa, late[0]) == INNER  # still inside the window: accepted once
        with pytest.raises(EspDropped) as e:
            _open(sa, late[1])  # the same sequence number again
        assert e.value.reason is DropReason.REPLAY


def test_without_esn_the_counter_stops_at_2_32_minus_1() -> None:
    outs, _ = _pairs(esn=False)
    for sa in outs:
        sa.set_seq(TWO32 - 2)
    last = [sa.seal(INNER) for sa in outs]
    assert last[0] == last[1]
    assert int.from_bytes(last[0][4:8], "big") == TWO32 - 1
    for sa in outs:
        with pytest.raises(EspDropped) as e:
            sa.seal(INNER)
        assert e.value.reason is DropReason.SEQ_EXHAUSTED
    py, c = outs
    assert isinstance(py, OutboundSa) and isinstance(c, FastSa)
    assert SaFlags.SEQ_EXHAUSTED in py.flags and SaFlags.SEQ_EXHAUSTED in c.stats().flags
    assert c.stats().seq == TWO32 - 1 and c.stats().refused == 1


def test_with_esn_the_counter_stops_at_2_64_minus_1() -> None:
    outs, _ = _pairs(esn=True)
    for sa in outs:
        sa.set_seq((1 << 64) - 2)
    assert outs[0].seal(INNER) == outs[1].seal(INNER)
    for sa in outs:
        with pytest.raises(EspDropped) as e:
            sa.seal(INNER)
        assert e.value.reason is DropReason.SEQ_EXHAUSTED


def test_without_esn_a_receiver_never_infers_high_bits() -> None:
    outs, ins = _pairs(esn=False)
    for sa in outs + ins:
        sa.set_seq(TWO32 - 5)
    packet = outs[1].seal(INNER)
    for sa in ins:
        assert _open(sa, packet) == INNER


@pytest.mark.parametrize(
    ("seq_lo", "top", "window", "expected"),
    [
        # Case A: Tl >= W - 1, window inside one subspace
        (5000, (2 << 32) + 5000, 1024, (2 << 32) + 5000),
        (4000, (2 << 32) + 5000, 1024, (2 << 32) + 4000),  # inside the window
        (3977, (2 << 32) + 5000, 1024, (2 << 32) + 3977),  # the bottom edge Tl - W + 1
        (3976, (2 << 32) + 5000, 1024, (3 << 32) + 3976),  # below it: next subspace
        (1023, (2 << 32) + 1023, 1024, (2 << 32) + 1023),  # Tl == W - 1 is still Case A
        (0, (2 << 32) + 1023, 1024, (2 << 32) + 0),
        # Case B: Tl < W - 1, window spans the previous subspace
        (10, (2 << 32) + 100, 1024, (2 << 32) + 10),
        (0xFFFFFFFF, (2 << 32) + 100, 1024, (1 << 32) + 0xFFFFFFFF),  # late, old subspace
        (TWO32 - 923, (2 << 32) + 100, 1024, (1 << 32) + TWO32 - 923),  # bottom edge
        (TWO32 - 924, (2 << 32) + 100, 1024, (2 << 32) + TWO32 - 924),  # below: ahead
        (200, (2 << 32) + 100, 1024, (2 << 32) + 200),  # ahead of the top
    ],
)
def test_infer_seq_rfc4303_appendix_a2(seq_lo: int, top: int, window: int, expected: int) -> None:
    assert infer_seq(seq_lo, top, window) == expected


def test_soft_and_hard_packet_limits_flag_then_refuse() -> None:
    outs, ins = _pairs(esn=False, soft_packets=3, hard_packets=5)
    for i in range(1, 6):
        packets = [sa.seal(INNER) for sa in outs]
        assert packets[0] == packets[1]
        for sa in ins:
            _open(sa, packets[1])
        py_flags, c_flags = outs[0].flags, outs[1].stats().flags  # type: ignore[union-attr]
        assert py_flags == c_flags
        assert (SaFlags.SOFT_EXPIRED in c_flags) == (i >= 3)
        assert (SaFlags.HARD_EXPIRED in c_flags) == (i >= 5)
        assert ins[0].flags == ins[1].stats().flags == c_flags  # type: ignore[union-attr]
    for sa in outs:
        with pytest.raises(EspDropped) as e:
            sa.seal(INNER)
        assert e.value.reason is DropReason.HARD_EXPIRED
    # the receiver refuses too (RFC 4301 §4.4.2.1: a hard-expired SA is dead)
    extra = OutboundSa(make_params(esn=False))
    extra.set_seq(10)
    for sa in ins:
        with pytest.raises(EspDropped) as e:
            _open(sa, extra.seal(INNER))
        assert e.value.reason is DropReason.HARD_EXPIRED
    assert outs[1].stats().refused == 1  # type: ignore[union-attr]


def test_soft_and_hard_byte_limits_count_inner_bytes() -> None:
    outs, _ = _pairs(esn=True, soft_bytes=150, hard_bytes=240)
    for sa in outs:
        sa.seal(INNER)  # 60
        sa.seal(INNER)  # 120
    c = outs[1]
    assert isinstance(c, FastSa)
    assert c.stats().flags == SaFlags(0) and c.stats().bytes == 120
    for sa in outs:
        sa.seal(INNER)  # 180 >= soft
    assert c.stats().flags == SaFlags.SOFT_EXPIRED == outs[0].flags  # type: ignore[union-attr]
    for sa in outs:
        sa.seal(INNER)  # 240 >= hard
    assert SaFlags.HARD_EXPIRED in c.stats().flags
    with pytest.raises(EspDropped):
        c.seal(INNER)
