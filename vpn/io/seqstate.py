"""Persisted sequence-number reservations for manually keyed SAs.

RFC 4106 §2 requires automated keying for AES-GCM because a manual key restarted with
its counter back at 1 reuses nonces, which breaks GCM completely. Manual mode therefore
never sends a sequence number that is not covered by a reservation already on disk:

1. On start the file's high-water mark H is read; sending resumes at H + 1.
2. Before sending, a new mark H + BLOCK is written, fsync'd and renamed into place.
3. The dataplane may seal up to that mark and no further (a hard limit in C); the
   daemon extends the reservation well before the limit is reached.

A crash loses at most one block of sequence numbers, never reuses one. A key without a
state file is refused unless the caller states the key is new (it may have been used
by an earlier installation whose state is gone).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SEQ_BLOCK_PACKETS = 1 << 22  # ~4 s at 1 Mpps between fsyncs; a crash skips at most this many
_MAGIC = "vpn-seq 1"


class SeqStateError(Exception):
    """The state file is missing, unreadable or corrupt; the message says what to do."""


def state_path(state_dir: Path, name: str, spi: int, keymat: bytes) -> Path:
    """One state file per (instance, SPI, key): a new key never inherits an old mark."""
    fingerprint = hashlib.sha256(b"vpn-seq-state" + keymat).hexdigest()[:16]
    return state_dir / f"{name}-{spi:08x}-{fingerprint}.seq"


class SeqReservation:
    """The on-disk high-water mark of one outbound SA's sequence counter."""

    def __init__(self, path: Path, reserved: int) -> None:
        self.path = path
        self.reserved = reserved

    @classmethod
    def open(cls, path: Path, *, new_key: bool = False) -> SeqReservation:
        """Read the mark; with `new_key` create the file at 0 if it does not exist."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            if not new_key:
                raise SeqStateError(
                    f"{path}: no sequence state for this key; it may have been used before, and "
                    "reusing a GCM key from sequence 1 would repeat nonces. Generate new keys "
                    "(`vpn genkey`), or pass --new-key if this key has never been used."
                ) from None
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            state = cls(path, 0)
            state._write(0)
            return state
        except OSError as exc:
            raise SeqStateError(f"{path}: cannot read: {exc.strerror}") from None
        lines = text.split("\n")
        if len(lines) < 2 or lines[0] != _MAGIC or not lines[1].isdigit():
            raise SeqStateError(f"{path}: corrupt sequence state; generate new keys (`vpn genkey`)")
        return cls(path, int(lines[1]))

    @property
    def start_seq(self) -> int:
        """The first sequence number this run may send."""
        return self.reserved + 1

    def reserve(self, upto: int) -> int:
        """Persist a mark of at least `upto` (rounded up to a block); returns the new mark."""
        if upto <= self.reserved:
            return self.reserved
        mark = self.reserved + SEQ_BLOCK_PACKETS
        while mark < upto:
            mark += SEQ_BLOCK_PACKETS
        self._write(mark)
        self.reserved = mark
        return mark

    def _write(self, mark: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{_MAGIC}\n{mark}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
