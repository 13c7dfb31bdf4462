"""The C batch paths against the Python reference: seal batches, stream and UDP
receive with an SA table, the SA table itself, and hostile bytes into the open path."""

from __future__ import annotations

import random

from esphelpers import inner_packet, make_params
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn import fastpath
from vpn.esp.receiver import Counters, Delivered, EspReceiver
from vpn.esp.sa import DropReason, EspDropped, InboundSa, OutboundSa
from vpn.fastpath import FastSa, FastSaTable, SealBatcher, StreamReceiver
from vpn.framing import PREFIX, Deframer, encode_frame, encode_ike

SPI_A, SPI_B = 0x0A0B0C0D, 0xC0DE0001


def _traffic(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        inner_packet(rng.choice([1, 20, 40, 63, 64, 577, 1400]), rng, rng.choice([4, 6]))
        for _ in range(n)
    ]


# --- sealing ---------------------------------------------------------------------------


def test_seal_batch_tcp_equals_python_frames() -> None:
    params = make_params(spi=SPI_A)
    c_out, py_out = FastSa(params, outbound=True), OutboundSa(params)
    packets = _traffic(1, 100) + [b"\x15bad", b""]  # two non-IP packets are dropped
    out, statuses = SealBatcher().seal(c_out, packets, fastpath.MODE_TCP)
    expected = b"".join(encode_frame(py_out.seal(p)) for p in packets[:100])
    assert out == expected
    assert statuses == [0] * 100 + [DropReason.BAD_INNER] * 2


def test_seal_batch_udp_gives_one_datagram_per_packet() -> None:
    params = make_params(spi=SPI_A, esn=True)
    c_out, py_out = FastSa(params, outbound=True), OutboundSa(params)
    packets = _traffic(2, 50)
    batcher = SealBatcher()
    batcher.load(packets)
    n, used = batcher.seal_loaded(c_out, fastpath.MODE_UDP)
    assert n == 50
    datagrams = batcher.datagrams(n)
    assert datagrams == [py_out.seal(p) for p in packets]
    assert used == sum(map(len, datagrams))
    assert batcher.counters.packets == 50 and batcher.counters.bytes == sum(map(len, packets))


def test_seal_batch_stops_when_the_output_is_full_and_resumes() -> None:
    params = make_params(spi=SPI_A)
    c_out, py_out = FastSa(params, outbound=True), OutboundSa(params)
    packets = _traffic(3, 40)
    batcher = SealBatcher(max_packets=64, out_size=8000)
    batcher.load(packets)
    n, used = batcher.seal_loaded(c_out, fastpath.MODE_TCP)
    assert 0 < n < 40 and batcher.counters.no_space == 1
    first = bytes(fastpath.ffi.buffer(batcher.out_buf, used))
    rest, _ = batcher.seal(c_out, packets[n:], fastpath.MODE_TCP)
    assert first + rest == b"".join(encode_frame(py_out.seal(p)) for p in packets)


def test_seal_batch_refuses_descriptors_outside_the_input() -> None:
    c_out = FastSa(make_params(), outbound=True)
    batcher = SealBatcher(max_packets=2, arena_size=100)
    batcher.load([b"\x45" * 10, b"\x45" * 10])
    batcher.in_pkts[1].off = 95  # 95 + 10 > 100
    n, _ = batcher.seal_loaded(c_out, fastpath.MODE_UDP)
    assert n == 2
    assert [batcher.out_pkts[i].status for i in range(2)] == [0, DropReason.BAD_ARG]
    assert c_out.stats().seq == 1


# --- receiving a stream ----------------------------------------------------------------


def _both_receivers(
    esn: bool, max_bad: int = 0
) -> tuple[StreamReceiver, EspReceiver, list[OutboundSa], FastSaTable]:
    table, py_rx = FastSaTable(), EspReceiver(max_bad)
    senders = []
    for spi, seed in ((SPI_A, 1), (SPI_B, 2)):
        params = make_params(spi=spi, esn=esn, seed=seed)
        table.insert(FastSa(params, outbound=False))
        py_rx.add(InboundSa(params))
        senders.append(OutboundSa(params))
    return (
        StreamReceiver(table, expect_prefix=True, max_consecutive_bad=max_bad),
        py_rx,
        senders,
        table,
    )


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


frame_kinds = st.sampled_from(
    [
        "a",
        "a",
        "a",
        "b",
        "b",
        "ike",
        "keepalive",
        "empty",
        "replay",
        "unknown",
        "short",
        "forged",
        "dummy",
        "reorder",
    ]
)


def _build_stream(kinds: list[str], senders: list[OutboundSa], rng: random.Random) -> bytes:
    frames, sent = [PREFIX], []
    held = None
    for k in kinds:
        if k in ("a", "b", "reorder"):
            sa = senders[0] if k != "b" else senders[1]
            p = sa.seal(inner_packet(rng.randrange(1, 1500), rng, rng.choice([4, 6])))
            if k == "reorder" and held is None:
                held = p  # delivered later, out of order but inside the window
                continue
            frames.append(encode_frame(p))
            sent.append(p)
        elif k == "ike":
            frames.append(encode_ike(rng.randbytes(rng.randrange(28, 300))))
        elif k == "keepalive":
            frames.append(b"\x00\x03\xff")
        elif k == "empty":
            frames.append(b"\x00\x02")
        elif k == "replay" and sent:
            frames.append(encode_frame(rng.choice(sent)))
        elif k == "unknown":
            frames.append(encode_frame(b"\x77\x77\x77\x77" + rng.randbytes(60)))
        elif k == "short":
            frames.append(encode_frame(senders[0].params.spi.to_bytes(4, "big") + bytes(20)))
        elif k == "forged" and sent:
            p = bytearray(rng.choice(sent))
            p[4:8] = (0xFFFF0000).to_bytes(4, "big")  # a new sequence number, wrong ICV
            frames.append(encode_frame(bytes(p)))
        elif k == "dummy":
            frames.append(encode_frame(senders[1].seal(b"", 59)))
    if held is not None:
        frames.append(encode_frame(held))
    return b"".join(frames)


@settings(max_examples=80, deadline=None)
@given(
    kinds=st.lists(frame_kinds, max_size=40),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=10),
    esn=st.booleans(),
    seed=st.integers(0, 1000),
    small=st.booleans(),
)
def test_stream_receive_c_equals_python_on_any_split(
    kinds: list[str], cuts: list[int], esn: bool, seed: int, small: bool
) -> None:
    rx, py_rx, senders, _ = _both_receivers(esn)
    if small:  # tiny output arena and descriptor array: exercises the NO_SPACE resume
        rx = StreamReceiver(rx.table, expect_prefix=True, out_size=3000, max_items=2)
    stream = _build_stream(kinds, senders, random.Random(seed))
    deframer = Deframer(expect_prefix=True)
    c_got: list[Delivered] = []
    py_got: list[Delivered] = []
    for chunk in _split(stream, cuts):
        c_got += rx.feed(chunk)
        py_got += py_rx.receive_stream(deframer, chunk)
    assert c_got == py_got
    c_counts, py_counts = rx.counters.as_dict(), py_rx.counters.as_dict()
    c_counts.pop("no_space")
    py_counts.pop("no_space")
    assert c_counts == py_counts
    assert rx.closed == py_rx.closed
    assert rx.pending == deframer.pending == 0 or rx.closed


def test_each_drop_reason_moves_its_counter() -> None:
    rx, _, senders, _ = _both_receivers(esn=False)
    a = senders[0].seal(b"\x45" + bytes(30))
    forged = bytearray(senders[0].seal(b"\x45" + bytes(30)))
    forged[20] ^= 0x80
    got = rx.feed(
        PREFIX + encode_frame(a) + encode_frame(a) + encode_frame(bytes(forged))
        + encode_frame(b"\x01\x02\x03\x04" + bytes(40)) + encode_frame(a[:33])
        + b"\x00\x03\xff" + b"\x00\x02" + encode_frame(senders[1].seal(b"", 59))
        + encode_ike(b"\x01" * 28)
    )  # fmt: skip
    assert [d.kind for d in got] == ["inner", "ike"]
    c = rx.counters
    expected = Counters(
        packets=1,
        bytes=31,
        ike=1,
        replay=1,
        icv=1,
        unknown_spi=1,
        too_short=1,
        keepalive=1,
        empty=1,
        dummy=1,
    )
    assert c == expected


def test_many_consecutive_bad_frames_close_the_stream_a_few_do_not() -> None:
    rx, _, senders, _ = _both_receivers(esn=False, max_bad=5)
    unknown = encode_frame(b"\x77\x77\x77\x77" + bytes(60))
    good = encode_frame(senders[0].seal(b"\x45" + bytes(30)))
    rx.feed(PREFIX + unknown * 4 + good + unknown * 4)
    assert not rx.closed  # a few unknown SPIs (RFC 9329 §6.1: SA databases out of sync)
    assert rx.feed(unknown + good) == [] and rx.closed
    assert rx.counters.fatal == 1 and rx.counters.unknown_spi == 9


def test_length_0_or_1_closes_and_nothing_after_it_is_parsed() -> None:
    for fatal in (b"\x00\x00", b"\x00\x01"):
        rx, _, senders, _ = _both_receivers(esn=False)
        good = encode_frame(senders[0].seal(b"\x45" + bytes(30)))
        got = rx.feed(PREFIX + good + fatal + good)
        assert len(got) == 1 and rx.closed
        assert rx.counters.bad_length == 1 and rx.counters.fatal == 1
        assert rx.feed(good) == []


def test_rekey_between_batches_remove_and_insert() -> None:
    rx, _, senders, table = _both_receivers(esn=False)
    old = encode_frame(senders[0].seal(b"\x45" + bytes(30)))
    assert len(rx.feed(PREFIX + old)) == 1
    removed = table.remove(SPI_A)
    assert removed is not None and removed.stats().packets == 1 and SPI_A not in table
    assert rx.feed(encode_frame(senders[0].seal(b"\x45" + bytes(30)))) == []
    assert rx.counters.unknown_spi == 1
    new_params = make_params(spi=0x5EED0001, seed=9)
    table.insert(FastSa(new_params, outbound=False))
    got = rx.feed(encode_frame(OutboundSa(new_params).seal(b"\x60" + bytes(40))))
    assert [(d.spi, d.next_header) for d in got] == [(0x5EED0001, 41)]


# --- UDP 4500 --------------------------------------------------------------------------


def test_udp_receive_equals_python() -> None:
    table, py_rx = FastSaTable(), EspReceiver()
    params = make_params(spi=SPI_A, esn=True)
    table.insert(FastSa(params, outbound=False))
    py_rx.add(InboundSa(params))
    sender = OutboundSa(params)
    sender.set_seq((1 << 32) - 3)
    table_sa = table.remove(SPI_A)
    assert table_sa is not None
    table_sa.set_seq((1 << 32) - 3)
    py_rx.sas[SPI_A].set_seq((1 << 32) - 3)
    table.insert(table_sa)
    p = [sender.seal(b"\x45" + bytes(i)) for i in range(6)]
    datagrams = [
        p[0],
        b"\xff",
        p[1],
        p[1],
        b"\x00\x00\x00\x00" + b"ike!" * 7,
        p[3],
        p[2],
        b"\x12\x34",
        p[5][:-1] + bytes([p[5][-1] ^ 1]),
        p[5],
    ]
    counters = fastpath.new_counters()
    c_results = fastpath.udp_receive(table, datagrams, counters)
    py_results = [py_rx.receive_datagram(d) for d in datagrams]
    assert c_results == py_results
    assert fastpath.counters_of(counters) == py_rx.counters
    assert py_rx.counters.packets == 5 and py_rx.counters.replay == 1


# --- the SA table ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(256, 1200)), max_size=200))
def test_sa_table_matches_a_dict(ops: list[tuple[bool, int]]) -> None:
    """Small SPI range: many collisions, growth and backward-shift deletions."""
    table, model = FastSaTable(capacity_hint=1), dict[int, FastSa]()
    for insert, spi in ops:
        if insert:
            sa = FastSa(make_params(spi=spi, key_len=16), outbound=False)
            if spi in model:
                try:
                    table.insert(sa)
                    raise AssertionError("duplicate SPI accepted")
                except ValueError:
                    pass
            else:
                table.insert(sa)
                model[spi] = sa
        else:
            assert (table.remove(spi) is not None) == (model.pop(spi, None) is not None)
        assert len(table) == len(model)
    for spi in range(256, 1201):
        assert (spi in table) == (spi in model)


def test_outbound_sas_do_not_go_into_the_table() -> None:
    try:
        FastSaTable().insert(FastSa(make_params(), outbound=True))
        raise AssertionError("outbound SA accepted")
    except ValueError:
        pass


# --- hostile bytes into the open path --------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), spi_known=st.booleans(), cuts=st.lists(st.integers(0, 400)))
def test_random_bytes_never_crash_and_move_the_right_counter(
    data: bytes, spi_known: bool, cuts: list[int]
) -> None:
    rx, py_rx, senders, table = _both_receivers(esn=spi_known)
    packet = (SPI_A.to_bytes(4, "big") + data) if spi_known else data
    # per-packet open
    sa = FastSa(make_params(spi=SPI_A, esn=spi_known, seed=1), outbound=False)
    try:
        sa.open(packet)
        raise AssertionError("random bytes authenticated")
    except EspDropped as e:
        assert e.reason in (
            DropReason.TOO_SHORT,
            DropReason.ICV,
            DropReason.WRONG_SA,
            DropReason.REPLAY,
        )
    # as a stream, both as one frame and as raw stream bytes
    deframer = Deframer(expect_prefix=True)
    for chunk in _split(PREFIX + encode_frame(packet) + data, cuts):
        assert rx.feed(chunk) == py_rx.receive_stream(deframer, chunk)
    c, p = rx.counters.as_dict(), py_rx.counters.as_dict()
    c.pop("no_space"), p.pop("no_space")
    assert c == p
    assert rx.counters.packets == 0  # nothing forged gets through
    moved = {k for k, v in c.items() if v and k != "consecutive_bad"}
    assert moved, "some counter moved"
    first_is = fastpath.udp_receive(table, [packet])[0]
    assert isinstance(first_is, DropReason) or first_is.kind == "ike"
