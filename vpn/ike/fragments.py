"""IKE fragmentation (RFC 7383): split a sealed message into SKF messages, and reassemble.

Sending (`seal_fragments`): the inner payloads' plaintext is cut into pieces so that each
fragment message, sealed on its own, fits `max_bytes` (§2.5); fragment 1 names the first
inner payload, the others carry 0. Used only on UDP and only when both peers sent
IKEV2_FRAGMENTATION_SUPPORTED; over TCP fragments are never sent (RFC 9329 §7.5).

Receiving (`Reassembly`): each fragment is authenticated and decrypted by the caller
before `add` (§2.6: a fragment failing its ICV is dropped alone); duplicates are
ignored, a larger Total Fragments restarts the collection and a smaller one is dropped
(§2.6.2), and the whole collection is bounded in fragments and bytes (§5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vpn.ike.constants import PayloadType
from vpn.ike.crypto import SkCipher
from vpn.ike.errors import LocalProtocolError
from vpn.ike.message import SKF_HEADER_BYTES, Message

# RFC 7383 §5: bound reassembly. 64 fragments of >= 256 bytes cover any message we accept
# (64 KiB); a peer announcing more is refused before anything is stored.
MAX_FRAGMENTS = 64


def _chunk_size(cipher: SkCipher, shell_bytes: int, max_bytes: int) -> int:
    """The largest plaintext piece whose sealed fragment message fits in max_bytes."""
    room = max_bytes - shell_bytes - SKF_HEADER_BYTES
    size = room - cipher.iv_bytes - cipher.icv_bytes - 1
    while size > 0 and cipher.body_length(size) > room:
        size -= 1
    if size <= 0:
        raise LocalProtocolError(f"fragment size {max_bytes} leaves no room for data")
    return size


def seal_fragments(
    shell: Message,
    first_payload: PayloadType | int,
    plaintext: bytes,
    cipher: SkCipher,
    next_iv: Callable[[], bytes],
    max_bytes: int,
) -> list[bytes]:
    """The SKF messages carrying `plaintext` (RFC 7383 §2.5), each at most `max_bytes`.

    `shell` holds the IKE header fields (and no payloads); `next_iv()` returns a fresh IV
    for each fragment.
    """
    size = _chunk_size(cipher, len(shell.encode()), max_bytes)
    pieces = [plaintext[i : i + size] for i in range(0, len(plaintext), size)] or [b""]
    total = len(pieces)
    if total > MAX_FRAGMENTS:
        raise LocalProtocolError(f"message needs {total} fragments, more than {MAX_FRAGMENTS}")
    out = []
    for number, piece in enumerate(pieces, 1):
        first = first_payload if number == 1 else PayloadType.NONE
        aad = shell.skf_aad(number, total, first, cipher.body_length(len(piece)))
        body = cipher.seal(aad, piece, next_iv())
        out.append(shell.encode_with_skf(number, total, first, body))
    return out


@dataclass(slots=True)
class Reassembly:
    """Fragments of one message (one message ID and direction) being collected."""

    message_id: int
    total: int
    started: float
    first_payload: PayloadType | int = PayloadType.NONE
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0

    def add(
        self, number: int, total: int, first_payload: PayloadType | int, plaintext: bytes, max_bytes: int
    ) -> tuple[PayloadType | int, bytes] | None:
        """Store one authenticated fragment; the whole plaintext when complete.

        Returns None while incomplete (or when the fragment was dropped). RFC 7383
        §2.6.2: a larger `total` restarts the collection, a smaller one is dropped.
        Raises OverflowError when the collection would exceed `max_bytes`.
        """
        if total < self.total:
            return None
        if total > self.total:
            self.total = total
            self.pieces.clear()
            self.size = 0
            self.first_payload = PayloadType.NONE
        if number in self.pieces:
            return None  # duplicate
        if self.size + len(plaintext) > max_bytes:
            raise OverflowError("fragment reassembly exceeds its memory bound")
        self.pieces[number] = plaintext
        self.size += len(plaintext)
        if number == 1:
            self.first_payload = first_payload
        if len(self.pieces) < self.total:
            return None
        return self.first_payload, b"".join(self.pieces[n] for n in range(1, self.total + 1))
