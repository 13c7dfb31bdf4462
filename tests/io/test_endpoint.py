"""ChildInstaller (vpn/io/endpoint.py): Child SA events into C SAs, and the signals that
make the control plane rekey."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from vpn import fastpath as fp
from vpn.ike.constants import EncrId, IntegId
from vpn.ike.crypto import EspKeys
from vpn.ike.events import ChildSaInfo, EspAlgorithms
from vpn.ike.payloads import TrafficSelector
from vpn.io.endpoint import SEQ32_REKEY_AT, ChildInstaller

ANY4 = (TrafficSelector.from_network("0.0.0.0/0"),)


def child(spi_in: int, spi_out: int, *, esn: bool) -> ChildSaInfo:
    return ChildSaInfo(
        spi_in.to_bytes(4, "big"), spi_out.to_bytes(4, "big"),
        EspAlgorithms(EncrId.AES_GCM_16, 256, IntegId.NONE, esn),
        EspKeys(bytes(32), b"\x01\x02\x03\x04"), EspKeys(bytes(range(32)), b"\x05\x06\x07\x08"),
        ANY4, ANY4,
    )  # fmt: skip


@pytest.fixture
def installer() -> Iterator[ChildInstaller]:
    app, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun.setblocking(False)
    dp = fp.Dataplane(tun.fileno(), 1400, batch=16)
    yield ChildInstaller(dp, dp.peer(1))
    app.close()
    tun.close()


def test_a_32_bit_counter_near_its_end_asks_for_a_rekey(installer: ChildInstaller) -> None:
    """RFC 4303 §3.3.3: without ESN the sender must rekey before the counter cycles."""
    installer.install(child(0x1001, 0x2001, esn=False))
    installer.install(child(0x1002, 0x2002, esn=True))
    assert installer.soft_expired() == []
    for spi in (0x1001, 0x1002):
        installer.outbound[spi].set_seq(SEQ32_REKEY_AT - 1)
    assert installer.soft_expired() == []
    for spi in (0x1001, 0x1002):
        installer.outbound[spi].set_seq(SEQ32_REKEY_AT)
    assert installer.soft_expired() == [(0x1001).to_bytes(4, "big")]  # with ESN: 2^64 is far


def test_the_peer_s_counter_near_its_end_asks_for_a_rekey_too(installer: ChildInstaller) -> None:
    installer.install(child(0x1001, 0x2001, esn=False))
    sa_in = installer.dp.inbound(0x1001)
    assert sa_in is not None
    sa_in.set_seq(SEQ32_REKEY_AT)
    assert installer.soft_expired() == [(0x1001).to_bytes(4, "big")]


def test_soft_byte_limit_reported(installer: ChildInstaller) -> None:
    installer.soft_bytes = 1000
    installer.install(child(0x1001, 0x2001, esn=True))
    sa = installer.outbound[0x1001]
    sa.seal(bytes([0x45]) + bytes(599))
    assert installer.soft_expired() == []
    sa.seal(bytes([0x45]) + bytes(599))
    assert installer.soft_expired() == [(0x1001).to_bytes(4, "big")]
