"""Read the Libreswan RFC 9329 vectors where they live; nothing of them is copied here.

Source: ../shared/vectors/libreswan-tcp/ (README.md there: two Libreswan 4.10 peers in
QEMU, IKEv2 and ESP in one TCP stream, captured with tshark, every key logged). The
`tcp-*.i2r.bin` / `tcp-*.r2i.bin` files are the raw TCP payload of each direction
(`tshark -q -z follow,tcp,raw,0`); `keys.json` has the SPIs, nonces, KE values and SK_*.

The directory is not part of the project. Tests that need it use `requires_libreswan`,
which skips them, naming the path, when it is absent (set VPN_LIBRESWAN_VECTORS to point
elsewhere). The deframer here is a deliberately small, strict, test-only reading of
RFC 9329 §3 (not vpn/framing.py), so that these tests check the IKE codec alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

LIBRESWAN_DIR = Path(os.environ.get("VPN_LIBRESWAN_VECTORS", "/work/shared/vectors/libreswan-tcp"))
TCP_SESSIONS = ("tcp-dh19", "tcp-dh31")
DIRECTIONS = ("i2r", "r2i")

requires_libreswan = pytest.mark.skipif(
    not (LIBRESWAN_DIR / "keys.json").is_file(),
    reason=f"Libreswan vectors not present at {LIBRESWAN_DIR} (shared folder, not in the repo)",
)

_PREFIX = b"IKETCP"  # RFC 9329 §3.1: sent once by the TCP originator
_NON_ESP_MARKER = b"\x00\x00\x00\x00"


@dataclass(frozen=True)
class Frame:
    """One RFC 9329 frame: `offset` of its Length field in the stream, and its content."""

    offset: int
    is_ike: bool
    data: bytes  # the IKE message (marker removed) or the ESP packet


def deframe(stream: bytes, *, with_prefix: bool) -> list[Frame]:
    """Split a whole TCP byte stream into frames; any inconsistency fails loudly."""
    pos = 0
    if with_prefix:
        if stream[:6] != _PREFIX:
            raise ValueError("stream does not start with IKETCP")
        pos = 6
    frames = []
    while pos < len(stream):
        if pos + 2 > len(stream):
            raise ValueError(f"truncated Length at {pos}")
        length = int.from_bytes(stream[pos : pos + 2], "big")  # counts itself (§3)
        if length < 3 or pos + length > len(stream):
            raise ValueError(f"bad Length {length} at {pos}")
        body = stream[pos + 2 : pos + length]
        if body[:4] == _NON_ESP_MARKER:
            frames.append(Frame(pos, True, body[4:]))
        else:
            frames.append(Frame(pos, False, body))
        pos += length
    return frames


def stream(session: str, direction: str) -> bytes:
    return (LIBRESWAN_DIR / f"{session}.{direction}.bin").read_bytes()


def ike_frames(session: str, direction: str) -> list[Frame]:
    """The IKE frames of one direction of a TCP session, in wire order."""
    frames = deframe(stream(session, direction), with_prefix=direction == "i2r")
    return [f for f in frames if f.is_ike]


@cache
def _keys() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((LIBRESWAN_DIR / "keys.json").read_text())
    return data


def keys() -> dict[str, Any]:
    """The whole keys.json (PSK, IDs, sessions)."""
    return _keys()


def session_keys(session: str) -> dict[str, Any]:
    """The keys.json entry of one session (ike_sa, child_sas, ...)."""
    for entry in _keys()["sessions"]:
        if entry["name"] == session:
            result: dict[str, Any] = entry
            return result
    raise KeyError(session)
