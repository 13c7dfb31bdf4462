"""Manual keys: the C SA never sends a sequence number above the persisted reservation."""

from __future__ import annotations

import pytest

from vpn import fastpath as fp
from vpn.esp.sa import DropReason, EspDropped, SaFlags, SaParams

PKT = bytes([0x45]) + bytes(39)


def test_ceiling_refuses_then_resumes_when_raised() -> None:
    sa = fp.FastSa(SaParams(spi=0x1234, key=bytes(32), salt=bytes(4)), outbound=True)
    sa.set_seq(100)
    sa.set_seq_ceiling(102)
    sa.seal(PKT)
    sa.seal(PKT)
    with pytest.raises(EspDropped) as e:
        sa.seal(PKT)
    assert e.value.reason == DropReason.SEQ_EXHAUSTED
    st = sa.stats()
    assert st.seq == 102 and st.refused == 1 and not st.flags & SaFlags.SEQ_EXHAUSTED
    sa.set_seq_ceiling(200)
    assert int.from_bytes(sa.seal(PKT)[4:8], "big") == 103
