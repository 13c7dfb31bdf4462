"""A real RFC 9329 session from Libreswan 4.10 (Linux espintcp) through our receive path.

Source: ../shared/vectors/libreswan-tcp/ (read in place, never copied; the tests skip
when it is absent). Both directions of tcp-dh19 and tcp-dh31 are fed to the C stream
receiver and to the Python reference, split into small odd pieces: every IKE message
comes up, every ESP packet (first Child SA and the PFS-rekeyed one, with ESN) opens and
carries the ICMP echo with the session's known pattern, and C and Python agree.
"""

from __future__ import annotations

import pytest

from tests.vectors.libreswan import DIRECTIONS, TCP_SESSIONS, requires_libreswan, session_keys, stream
from vpn import fastpath as fp
from vpn.esp.receiver import EspReceiver
from vpn.esp.sa import InboundSa, SaParams
from vpn.framing import Deframer

pytestmark = requires_libreswan


def _params(session: str, direction: str) -> list[SaParams]:
    out = []
    for child in session_keys(session)["child_sas"]:
        d = child[direction]
        out.append(SaParams(spi=int(d["spi"], 16), key=bytes.fromhex(d["key"]), salt=bytes.fromhex(d["salt"]),
                            esn=bool(child["esn"])))
    return out


def _patterns(session: str) -> list[bytes]:
    return [bytes.fromhex(c["icmp_pattern"]["hex"]) for c in session_keys(session)["child_sas"]]


@pytest.mark.parametrize("session", TCP_SESSIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_libreswan_stream_opens_in_c_and_python(session: str, direction: str) -> None:
    data = stream(session, direction)
    table = fp.FastSaTable()
    ref = EspReceiver()
    for p in _params(session, direction):
        table.insert(fp.FastSa(p, outbound=False))
        ref.add(InboundSa(p))
    rx = fp.StreamReceiver(table, expect_prefix=direction == "i2r")
    deframer = Deframer(expect_prefix=direction == "i2r")
    c_items, py_items = [], []
    for i in range(0, len(data), 7):  # odd pieces: frames split everywhere
        c_items += rx.feed(data[i : i + 7])
        py_items += ref.receive_stream(deframer, data[i : i + 7])
    assert not rx.closed and rx.pending == 0
    assert [(d.kind, d.data, d.spi) for d in c_items] == [(d.kind, d.data, d.spi) for d in py_items]
    inner = [d for d in c_items if d.kind == "inner"]
    ike = [d for d in c_items if d.kind == "ike"]
    assert len(ike) == 5 and len(inner) == 6  # IKE_SA_INIT, AUTH, CHILD, 2 deletes; 3+3 pings
    c = rx.counters
    assert (c.icv, c.replay, c.unknown_spi, c.bad_padding, c.fatal) == (0, 0, 0, 0, 0)
    first, second = _patterns(session)
    for d in inner:
        assert d.next_header == 4 and d.data[9] == 1  # IPv4 inside, ICMP
        assert (first in d.data) != (second in d.data)  # each ping on the SA that carried it
