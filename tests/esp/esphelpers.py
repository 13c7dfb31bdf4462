"""Shared helpers for the ESP tests: deterministic keys and inner packets."""

from __future__ import annotations

import random

from vpn.esp.sa import SaParams


def make_params(
    key_len: int = 32, esn: bool = False, spi: int = 0x1234ABCD, seed: int = 1, **kw: int
) -> SaParams:
    rng = random.Random(seed)
    return SaParams(spi, rng.randbytes(key_len), rng.randbytes(4), esn=esn, **kw)


def inner_packet(size: int, rng: random.Random, version: int = 4) -> bytes:
    """`size` octets whose first nibble is the IP version (what Next Header follows)."""
    if size == 0:
        return b""
    body = rng.randbytes(size)
    return bytes([(version << 4) | (body[0] & 0x0F)]) + body[1:]
