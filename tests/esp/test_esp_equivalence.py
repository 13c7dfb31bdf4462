"""C fast path and Python reference give identical ESP bytes, for every inner size.

Sizes 0..9000 (0 is a dummy packet, Next Header 59), AES-128 and AES-256, 32-bit and
extended sequence numbers. Each packet sealed by one side opens on the other.
"""

from __future__ import annotations

import random

import pytest
from esphelpers import inner_packet, make_params

from vpn.esp.sa import (
    NEXT_HEADER_DUMMY,
    DropReason,
    EspDropped,
    InboundSa,
    OutboundSa,
)
from vpn.fastpath import FastSa

MAX_SIZE = 9000


@pytest.mark.parametrize("key_len", [16, 32])
@pytest.mark.parametrize("esn", [False, True])
def test_every_size_identical_bytes_both_ways(key_len: int, esn: bool) -> None:
    params = make_params(key_len, esn, seed=key_len + esn)
    py_out, c_out = OutboundSa(params), FastSa(params, outbound=True)
    py_in, c_in = InboundSa(params), FastSa(params, outbound=False)
    if esn:  # make the high half of the counter matter in IV and AAD
        for sa in (py_out, c_out, py_in, c_in):  # the receiver's window top follows
            sa.set_seq((7 << 32) - 100)
    rng = random.Random(42)
    for size in range(MAX_SIZE + 1):
        inner = inner_packet(size, rng, version=4 if size % 2 else 6)
        nh = NEXT_HEADER_DUMMY if size == 0 else None
        py_packet = py_out.seal(inner, nh)
        c_packet = c_out.seal(inner, nh or 0)
        assert c_packet == py_packet, f"size {size}"
        # RFC 4303 §2.4: the ciphertext, and so the packet, ends 4-octet aligned.
        assert len(c_packet) == 16 + (size + 2 + 3) // 4 * 4 + 16
        if size == 0:
            with pytest.raises(EspDropped) as e:
                c_in.open(py_packet)
            assert e.value.reason is DropReason.DUMMY
            with pytest.raises(EspDropped) as e:
                py_in.open(c_packet)
            assert e.value.reason is DropReason.DUMMY
            continue
        assert c_in.open(py_packet) == (inner, 4 if size % 2 else 41)
        opened = py_in.open(c_packet)
        assert (opened.inner, opened.next_header) == (inner, 4 if size % 2 else 41)
    stats = c_in.stats()
    assert stats.packets == py_in.packets == MAX_SIZE + 1
    assert stats.bytes == py_in.bytes
    assert stats.dummy == 1
    assert c_out.stats().seq == py_out.seq


def test_sequence_numbers_start_at_one_and_count() -> None:
    params = make_params()
    c_out = FastSa(params, outbound=True)
    for expected in (1, 2, 3):
        packet = c_out.seal(b"\x45" + bytes(19))
        assert int.from_bytes(packet[4:8], "big") == expected
        assert int.from_bytes(packet[8:16], "big") == expected  # RFC 4106 §3.1: IV = counter
        assert int.from_bytes(packet[0:4], "big") == params.spi


@pytest.mark.parametrize("first", [b"", b"\x00", b"\x15", b"\x55", b"\xf0"])
def test_non_ip_inner_packets_are_refused_by_both(first: bytes) -> None:
    params = make_params()
    c_out, py_out = FastSa(params, outbound=True), OutboundSa(params)
    inner = first + bytes(20) if first else b""
    for seal in (c_out.seal, py_out.seal):
        with pytest.raises(EspDropped) as e:
            seal(inner)
        assert e.value.reason is DropReason.BAD_INNER
    assert c_out.stats().seq == py_out.seq == 0  # no sequence number consumed


def test_largest_inner_packet_fits_one_frame_and_one_more_does_not() -> None:
    params = make_params()
    c_out, py_out = FastSa(params, outbound=True), OutboundSa(params)
    biggest = b"\x45" + bytes(65496 - 1)
    sealed = c_out.seal(biggest)
    assert len(sealed) + 2 <= 65535
    assert py_out.seal(biggest) == sealed
    for seal in (c_out.seal, py_out.seal):
        with pytest.raises(EspDropped) as e:
            seal(biggest + b"\x00")
        assert e.value.reason is DropReason.TOO_BIG


def test_in_place_seal_and_open_with_headroom() -> None:
    """The layout of vpn_esp.h: inner at slot + 18, sealed and framed without a copy."""
    from vpn.fastpath import ESP_HEADROOM, ESP_TAILROOM, ffi, lib

    params = make_params()
    c_out, c_in = FastSa(params, outbound=True), FastSa(params, outbound=False)
    py_out = OutboundSa(params)
    rng = random.Random(5)
    for size in (1, 2, 3, 4, 5, 100, 1399, 1400):
        inner = inner_packet(size, rng)
        slot = ffi.new("uint8_t[]", ESP_HEADROOM + size + ESP_TAILROOM)
        ffi.memmove(slot + ESP_HEADROOM, inner, size)
        esp_len = ffi.new("size_t *")
        st = lib.vpn_esp_seal(
            c_out.handle, slot + ESP_HEADROOM, size, 0, slot + 2, len(slot) - 2, esp_len
        )
        assert st == lib.VPN_OK
        assert lib.vpn_frame_put_len(slot, esp_len[0]) == lib.VPN_OK
        frame = bytes(ffi.buffer(slot, 2 + esp_len[0]))
        expected = py_out.seal(inner)
        assert frame == (len(expected) + 2).to_bytes(2, "big") + expected
        # open in place: the inner packet lands at esp + 16
        inner_len, nh = ffi.new("size_t *"), ffi.new("uint8_t *")
        st = lib.vpn_esp_open(
            c_in.handle, slot + 2, esp_len[0], slot + 18, esp_len[0] - 16, inner_len, nh
        )
        assert st == lib.VPN_OK and nh[0] == 4
        assert bytes(ffi.buffer(slot + 18, inner_len[0])) == inner


def test_overlapping_buffers_other_than_in_place_are_refused() -> None:
    from vpn.fastpath import ffi, lib

    c_out = FastSa(make_params(), outbound=True)
    buf = ffi.new("uint8_t[]", 200)
    buf[20] = buf[16] = 0x45
    out_len = ffi.new("size_t *")
    assert lib.vpn_esp_seal(c_out.handle, buf + 20, 50, 0, buf, 200, out_len) == lib.VPN_ST_BAD_ARG
    assert lib.vpn_esp_seal(c_out.handle, buf + 16, 50, 0, buf, 200, out_len) == lib.VPN_OK
