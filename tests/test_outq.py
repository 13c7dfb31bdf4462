"""The C output queue keeps frames whole and in order across short writes."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.fastpath import OutQueue


def drain(sock: socket.socket) -> bytes:
    out = b""
    sock.setblocking(False)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_short_writes_keep_order_and_whole_frames() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    q = OutQueue(capacity=1 << 20, high_water=1 << 19)
    frames = [os.urandom(n) for n in (1, 1500, 7000, 3, 65535, 20)]
    for f in frames:
        assert q.push(f)
    got = b""
    rounds = 0
    while len(q) and rounds < 10000:
        q.flush_fd(a.fileno())
        got += drain(b)
        rounds += 1
    got += drain(b)
    assert got == b"".join(frames)
    assert rounds > 1  # the small buffers really forced short writes


def test_full_queue_refuses_whole_frame_and_reports_high_water() -> None:
    q = OutQueue(capacity=8192, high_water=4096)
    assert not q.above_high_water()
    assert q.push(b"x" * 5000)
    assert q.above_high_water()
    assert not q.push(b"y" * 4000)  # does not fit: nothing of it is queued
    assert len(q) == 5000
    q.consume(5000)
    assert len(q) == 0 and q.push(b"y" * 8000)


def test_peek_consume_and_prefix() -> None:
    q = OutQueue()
    assert q.push_frame(b"\x00\x08\x00\x00\x00\x00", b"ab")
    assert q.peek() == b"\x00\x08\x00\x00\x00\x00ab"
    q.consume(3)
    assert q.peek() == b"\x00\x00\x00ab"
    q.clear()
    assert q.peek() == b""


def test_dead_socket_raises() -> None:
    a, b = socket.socketpair()
    b.close()
    q = OutQueue()
    q.push(b"abc")
    with pytest.raises(OSError):
        for _ in range(3):
            q.flush_fd(a.fileno())


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        OutQueue(capacity=100, high_water=10)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.one_of(st.binary(min_size=1, max_size=3000), st.integers(0, 5000)), max_size=60))
def test_queue_matches_a_bytes_model(ops: list[bytes | int]) -> None:
    q = OutQueue(capacity=16384, high_water=8192)
    model = bytearray()
    for op in ops:
        if isinstance(op, bytes):
            ok = q.push(op)
            assert ok == (len(model) + len(op) <= 16384)
            if ok:
                model += op
        else:
            q.consume(op)
            del model[:op]
        assert q.peek() == bytes(model)
