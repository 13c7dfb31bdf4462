"""Manual-key sequence reservations never allow a sequence number to be sent twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpn.io.seqstate import SEQ_BLOCK_PACKETS, SeqReservation, SeqStateError, state_path


def test_missing_state_refused_unless_new_key(tmp_path: Path) -> None:
    p = tmp_path / "s.seq"
    with pytest.raises(SeqStateError, match="--new-key"):
        SeqReservation.open(p)
    r = SeqReservation.open(p, new_key=True)
    assert r.start_seq == 1 and p.exists()
    assert (p.stat().st_mode & 0o077) == 0


def test_restart_resumes_above_every_reserved_number(tmp_path: Path) -> None:
    p = tmp_path / "s.seq"
    r = SeqReservation.open(p, new_key=True)
    mark = r.reserve(10)
    assert mark == SEQ_BLOCK_PACKETS
    # the process "crashes" after sending up to the mark; a restart starts above it
    r2 = SeqReservation.open(p)
    assert r2.start_seq == mark + 1
    assert r2.reserve(mark + 5 * SEQ_BLOCK_PACKETS) >= mark + 5 * SEQ_BLOCK_PACKETS
    assert SeqReservation.open(p).start_seq > mark + 5 * SEQ_BLOCK_PACKETS


def test_reserve_below_mark_writes_nothing(tmp_path: Path) -> None:
    p = tmp_path / "s.seq"
    r = SeqReservation.open(p, new_key=True)
    r.reserve(5)
    before = p.stat().st_mtime_ns
    assert r.reserve(3) == SEQ_BLOCK_PACKETS
    assert p.stat().st_mtime_ns == before


def test_corrupt_state_refused(tmp_path: Path) -> None:
    p = tmp_path / "s.seq"
    p.write_text("garbage\n")
    with pytest.raises(SeqStateError, match="corrupt"):
        SeqReservation.open(p)


def test_state_path_depends_on_key(tmp_path: Path) -> None:
    a = state_path(tmp_path, "lab", 0x1000, b"k" * 36)
    b = state_path(tmp_path, "lab", 0x1000, b"j" * 36)
    assert a != b and a.parent == tmp_path
    assert "6b6b" not in a.name  # the key itself never appears in the file name
