"""RFC 9329 framing: the Python deframer, and the C deframer held equal to it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn import fastpath
from vpn.esp.receiver import Delivered
from vpn.esp.sa import DropReason
from vpn.framing import (
    PREFIX,
    Deframer,
    DeframerClosed,
    EmptyMessage,
    EspPacket,
    Fatal,
    IkeMessage,
    Keepalive,
    StreamItem,
    TooShort,
    demux_udp,
    encode_frame,
    encode_ike,
)

IKE_MSG = bytes(range(28))  # 28 octets: an IKE header's worth
ESP_MSG = bytes.fromhex("ab766e6500000001") + bytes(40)


def test_prefix_is_iketcp() -> None:
    assert PREFIX == bytes.fromhex("494b45544350")


def test_length_counts_itself() -> None:
    assert encode_frame(b"") == b"\x00\x02"
    assert encode_frame(b"\xff") == b"\x00\x03\xff"  # the NAT keepalive form (§6.6)
    assert encode_ike(IKE_MSG) == b"\x00\x22" + b"\x00" * 4 + IKE_MSG
    assert encode_frame(bytes(65533))[:2] == b"\xff\xff"
    with pytest.raises(ValueError):
        encode_frame(bytes(65534))


@pytest.mark.parametrize(
    ("stream", "items"),
    [
        (b"\x00\x02", [EmptyMessage()]),
        (b"\x00\x03\xff", [Keepalive()]),
        (b"\x00\x03\x01", [TooShort(b"\x01")]),
        (b"\x00\x05\x00\x00\x00", [TooShort(b"\x00\x00\x00")]),
        (b"\x00\x06\x00\x00\x00\x00", [IkeMessage(b"")]),
        (encode_ike(IKE_MSG), [IkeMessage(IKE_MSG)]),
        (encode_frame(ESP_MSG), [EspPacket(ESP_MSG)]),
        (b"\x00\x00" + encode_ike(IKE_MSG), [Fatal("length")]),
        (encode_ike(IKE_MSG) + b"\x00\x01", [IkeMessage(IKE_MSG), Fatal("length")]),
    ],
)
def test_deframer_rules(stream: bytes, items: list[StreamItem]) -> None:
    assert Deframer().feed(stream) == items


def test_fatal_closes_the_deframer() -> None:
    d = Deframer()
    assert d.feed(b"\x00\x01\x00\x02") == [Fatal("length")]
    assert d.closed
    with pytest.raises(DeframerClosed):
        d.feed(b"\x00\x02")


def test_accepting_side_waits_for_the_whole_prefix() -> None:
    d = Deframer(expect_prefix=True)
    assert d.feed(b"IKE") == [] and d.pending == 3
    assert d.feed(b"TC") == [] and d.pending == 5
    assert d.feed(b"P\x00\x02" + encode_ike(IKE_MSG)[:5]) == [EmptyMessage()]
    assert d.pending == 5
    assert d.feed(encode_ike(IKE_MSG)[5:]) == [IkeMessage(IKE_MSG)]


@pytest.mark.parametrize("bad", [b"X", b"IKX", b"IKETCQ", b"\x00\x02"])
def test_wrong_prefix_is_fatal(bad: bytes) -> None:
    assert Deframer(expect_prefix=True).feed(bad)[-1] == Fatal("prefix")
    rx = fastpath.StreamReceiver(None, expect_prefix=True)
    assert rx.feed(bad) == [] and rx.closed and rx.counters.fatal == 1


def test_udp_demux() -> None:
    assert demux_udp(b"\xff") == Keepalive()  # RFC 3948 §2.3
    assert demux_udp(b"\x00\x00\x00\x00" + IKE_MSG) == IkeMessage(IKE_MSG)  # §2.2
    assert demux_udp(ESP_MSG) == EspPacket(ESP_MSG)
    assert demux_udp(b"\x00\x00") == TooShort(b"\x00\x00")
    assert demux_udp(b"") == EmptyMessage()


# --- the C deframer equals the Python one -------------------------------------------

messages = st.one_of(
    st.builds(lambda b: b"\x00\x00\x00\x00" + b, st.binary(max_size=80)),  # IKE
    st.builds(lambda b: b"\x01" + b, st.binary(min_size=3, max_size=120)),  # ESP-looking
    st.just(b""),  # empty
    st.just(b"\xff"),  # keepalive
    st.binary(min_size=1, max_size=3),  # too short (or a keepalive)
    st.binary(min_size=60000, max_size=65533).map(lambda b: b"\x02" + b[1:]),  # big ESP
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _python_view(items: list[StreamItem]) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    delivered: list[tuple[str, bytes]] = []
    counts = {"keepalive": 0, "empty": 0, "too_short": 0, "fatal": 0}
    for it in items:
        if isinstance(it, IkeMessage):
            delivered.append(("ike", it.data))
        elif isinstance(it, EspPacket):
            delivered.append(("esp", it.data))
        elif isinstance(it, Keepalive):
            counts["keepalive"] += 1
        elif isinstance(it, EmptyMessage):
            counts["empty"] += 1
        elif isinstance(it, TooShort):
            counts["too_short"] += 1
        else:
            counts["fatal"] += 1
    return delivered, counts


@settings(max_examples=150, deadline=None)
@given(
    msgs=st.lists(messages, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12),
    prefix=st.booleans(),
    tail=st.sampled_from([b"", b"\x00", b"\x00\x01", b"\x00\x00", b"\x00\x09\x00"]),
)
def test_any_split_gives_the_same_items_in_python_and_c(
    msgs: list[bytes], cuts: list[int], prefix: bool, tail: bytes
) -> None:
    stream = (PREFIX if prefix else b"") + b"".join(encode_frame(m) for m in msgs) + tail
    whole = Deframer(expect_prefix=prefix).feed(stream)
    py = Deframer(expect_prefix=prefix)
    rx = fastpath.StreamReceiver(None, expect_prefix=prefix, out_size=70000, max_items=4)
    py_items: list[StreamItem] = []
    c_items = []
    for chunk in _split(stream, cuts):
        if not py.closed:
            py_items += py.feed(chunk)
        c_items += [(d.kind, d.data) for d in rx.feed(chunk)]
    assert py_items == whole
    delivered, counts = _python_view(py_items)
    assert c_items == delivered
    c = rx.counters
    assert (c.keepalive, c.empty, c.too_short, c.fatal) == (
        counts["keepalive"], counts["empty"], counts["too_short"], counts["fatal"],
    )  # fmt: skip
    assert rx.closed == py.closed
    fatal_length = tail in (b"\x00\x01", b"\x00\x00")
    assert c.bad_length == int(fatal_length)
    if not rx.closed:
        assert rx.pending == py.pending


def test_c_udp_demux_without_sa_table_equals_python() -> None:
    datagrams = [b"\xff", b"\x00\x00\x00\x00" + IKE_MSG, ESP_MSG, b"\x00\x00", b""]
    results = fastpath.udp_receive(None, datagrams)
    assert results == [
        DropReason.KEEPALIVE,
        Delivered("ike", IKE_MSG),
        Delivered("esp", ESP_MSG, spi=0xAB766E65),
        DropReason.TOO_SHORT,
        DropReason.EMPTY,
    ]


def test_descriptor_array_full_of_empty_ike_messages_resumes() -> None:
    """Regression: an empty IKE message (4-octet frame body) needs a descriptor too."""
    stream = encode_ike(b"") * 9
    rx = fastpath.StreamReceiver(None, out_size=64, max_items=4)
    assert [d.data for d in rx.feed(stream)] == [b""] * 9
    assert rx.counters.ike == 9 and rx.counters.no_space == 2
