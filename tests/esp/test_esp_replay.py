"""Anti-replay window (RFC 4303 §3.4.3) against a plain model, C and Python."""

from __future__ import annotations

from functools import cache

import pytest
from esphelpers import make_params
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.esp.replay import REPLAY_WINDOW_DEFAULT, ReplayWindow
from vpn.esp.sa import DropReason, EspDropped, InboundSa
from vpn.fastpath import FastSa, ffi, lib

WINDOWS = [32, 64, 100, 1024, 8192]
INNER = b"\x45" + bytes(19)


class PlainModel:
    """Accept a number once, if it is above top - W; nothing clever."""

    def __init__(self, window: int) -> None:
        self.window, self.top, self.seen = window, 0, set[int]()

    def receive(self, seq: int) -> bool:
        if seq == 0 or seq in self.seen or (seq <= self.top and self.top - seq >= self.window):
            return False
        self.seen.add(seq)
        self.top = max(self.top, seq)
        return True


@cache
def sealed_packets() -> list[bytes]:
    """Packets with sequence numbers 1..3*8192+300, sealed once (index = seq - 1)."""
    out = FastSa(make_params(), outbound=True)
    return [out.seal(INNER) for _ in range(3 * 8192 + 300)]


def seq_lists(window: int) -> st.SearchStrategy[list[int]]:
    top = 3 * window + 300
    near = st.integers(min_value=1, max_value=top)
    return st.lists(near, min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), window=st.sampled_from(WINDOWS))
def test_c_window_matches_plain_model(data: st.DataObject, window: int) -> None:
    seqs = data.draw(seq_lists(window))
    packets = sealed_packets()
    params = make_params(replay_window=window)
    c_in, py_in, model = FastSa(params, outbound=False), InboundSa(params), PlainModel(window)
    for seq in seqs:
        expected = model.receive(seq)
        for sa in (c_in, py_in):
            try:
                sa.open(packets[seq - 1])
                accepted = True
            except EspDropped as e:
                assert e.reason is DropReason.REPLAY
                accepted = False
            assert accepted == expected, (seq, window)
    assert c_in.stats().replay == py_in.drops.get(DropReason.REPLAY, 0)
    assert c_in.stats().seq == py_in.seq == model.top


@settings(max_examples=200, deadline=None)
@given(
    window=st.integers(min_value=32, max_value=70000).filter(lambda w: w <= 65536),
    seqs=st.lists(
        st.one_of(st.integers(0, 200), st.integers(0, 1 << 20), st.integers(0, 1 << 62)),
        max_size=200,
    ),
)
def test_python_window_matches_plain_model_with_big_jumps(window: int, seqs: list[int]) -> None:
    w, model = ReplayWindow(window), PlainModel(window)
    for seq in seqs:
        ok = w.check(seq)
        assert ok == model.receive(seq)
        if ok:
            w.update(seq)


def test_default_window_is_1024_and_8192_is_allowed() -> None:
    assert REPLAY_WINDOW_DEFAULT == 1024
    packets = sealed_packets()
    c_in = FastSa(make_params(), outbound=False)
    c_in.open(packets[2000 - 1])
    c_in.open(packets[2000 - 1024])  # 1023 behind: inside the default window
    with pytest.raises(EspDropped):
        c_in.open(packets[2000 - 1025])  # 1024 behind: outside
    big = FastSa(make_params(replay_window=8192), outbound=False)
    big.open(packets[9000 - 1])
    big.open(packets[9000 - 8192])


@pytest.mark.parametrize("window", [0, 31, 65537])
def test_window_sizes_out_of_range_are_refused(window: int) -> None:
    with pytest.raises(ValueError):
        make_params(replay_window=window)
    if window:  # the C side refuses them too (0 means the default there)
        p = ffi.new("vpn_esp_sa_params *", {"spi": 0x1000, "replay_window": window})
        status = ffi.new("int *")
        assert lib.vpn_esp_sa_new(p, bytes(16), 16, bytes(4), status) == ffi.NULL
        assert status[0] == lib.VPN_ST_BAD_ARG


def test_forged_packet_does_not_move_the_window() -> None:
    """RFC 4303 §3.4.3: the window is updated only after the ICV verified."""
    packets = sealed_packets()
    for sa in (FastSa(make_params(), outbound=False), InboundSa(make_params())):
        sa.open(packets[99])  # seq 100
        forged = bytearray(packets[5000])  # seq 5001 ...
        forged[-1] ^= 1  # ... with a broken ICV
        with pytest.raises(EspDropped) as e:
            sa.open(bytes(forged))
        assert e.value.reason is DropReason.ICV
        sa.open(packets[49])  # seq 50 still inside the window: accepted
        sa.open(packets[5000])  # and the genuine 5001 is still new
