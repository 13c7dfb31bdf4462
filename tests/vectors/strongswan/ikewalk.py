"""Minimal, independent IKEv2 reader for the strongSwan vectors (stdlib + cryptography).

Only what the vectors need: the header (RFC 7296 §3.1), the generic payload chain
(§3.2), the SK payload with AES-CBC + HMAC-SHA2 (§3.14) or AES-GCM-16 (RFC 5282 §3),
SKF fragments (RFC 7383 §2.5) and the prf / prf+ of §2.13. It is deliberately separate
from vpn.ike (message.py / crypto.py are written elsewhere): the vectors are checked by
code that does not share their bugs. The lead may switch the tests to vpn.ike later.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HEADER = struct.Struct("!8s8sBBBBII")
FLAG_INITIATOR = 0x08
FLAG_RESPONSE = 0x20

# IANA numbers used by the vectors (kept local on purpose).
PT_SA, PT_KE, PT_IDI, PT_IDR, PT_CERT, PT_CERTREQ, PT_AUTH, PT_NONCE = (
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
)
PT_NOTIFY, PT_DELETE, PT_VID, PT_TSI, PT_TSR, PT_SK, PT_CP, PT_EAP, PT_SKF = (
    41,
    42,
    43,
    44,
    45,
    46,
    47,
    48,
    53,
)
EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}
ENCR_AES_CBC, ENCR_AES_GCM_16 = 12, 20
INTEG_ICV = {12: 16, 13: 24, 14: 32}  # HMAC_SHA2_{256_128,384_192,512_256}
INTEG_HASH = {12: hashlib.sha256, 13: hashlib.sha384, 14: hashlib.sha512}
PRF_HASH = {5: hashlib.sha256, 6: hashlib.sha384, 7: hashlib.sha512, 2: hashlib.sha1}


class WalkError(Exception):
    """The bytes are not what a well-formed vector should contain."""


@dataclass(frozen=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    version: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & FLAG_INITIATOR)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)


@dataclass(frozen=True)
class Payload:
    type: int
    critical: bool
    body: bytes
    offset: int  # of the generic header inside the buffer it was read from


def parse_header(msg: bytes) -> Header:
    if len(msg) < HEADER.size:
        raise WalkError("short IKE header")
    h = Header(*HEADER.unpack_from(msg))
    if h.length != len(msg):
        raise WalkError("IKE length does not match the datagram")
    return h


def walk(first: int, data: bytes, start: int = 0) -> list[Payload]:
    """Follow the Next Payload chain from `first` over `data[start:]` (RFC 7296 §3.2)."""
    out = []
    pos, kind = start, first
    while kind != 0:
        if pos + 4 > len(data):
            raise WalkError("truncated payload header")
        nxt, flags, length = struct.unpack_from("!BBH", data, pos)
        if length < 4 or pos + length > len(data):
            raise WalkError("bad payload length")
        out.append(Payload(kind, bool(flags & 0x80), data[pos + 4 : pos + length], pos))
        if kind in (PT_SK, PT_SKF):
            if pos + length != len(data):
                raise WalkError("SK/SKF is not the last payload")
            break
        pos, kind = pos + length, nxt
    if kind == 0 and pos != len(data):
        raise WalkError("trailing bytes after the last payload")
    return out


@dataclass(frozen=True)
class SkKeys:
    """The keys protecting one direction of an IKE SA."""

    encr: int
    sk_e: bytes
    integ: int | None
    sk_a: bytes


def _decrypt(msg: bytes, p: Payload, skip: int, keys: SkKeys) -> bytes:
    """Decrypt the SK/SKF body after `skip` octets (0 for SK, 4 for SKF's numbers)."""
    body_start = p.offset + 4 + skip
    body = msg[body_start:]
    if keys.encr == ENCR_AES_GCM_16:
        key, salt = keys.sk_e[:-4], keys.sk_e[-4:]
        iv, ct = body[:8], body[8:]
        # RFC 5282 §5.1: AAD = IKE header .. end of the (SK/SKF) payload's clear part.
        plain = AESGCM(key).decrypt(salt + iv, ct, msg[:body_start])
    elif keys.encr == ENCR_AES_CBC and keys.integ in INTEG_ICV:
        icv_len = INTEG_ICV[keys.integ]
        icv = msg[-icv_len:]
        mac = hmac.new(keys.sk_a, msg[:-icv_len], INTEG_HASH[keys.integ]).digest()[:icv_len]
        if not hmac.compare_digest(mac, icv):
            raise WalkError("SK integrity check failed")
        iv, ct = body[:16], body[16:-icv_len]
        dec = Cipher(algorithms.AES(keys.sk_e), modes.CBC(iv)).decryptor()
        plain = dec.update(ct) + dec.finalize()
    else:
        raise WalkError(f"unsupported SK transform {keys.encr}/{keys.integ}")
    pad = plain[-1]
    if pad + 1 > len(plain):
        raise WalkError("bad SK padding")
    return plain[: -pad - 1]


@dataclass(frozen=True)
class Fragment:
    number: int
    total: int
    first_inner: int  # Next Payload of the SKF payload (only meaningful in fragment 1)
    plaintext: bytes


def decrypt_message(msg: bytes, keys: SkKeys) -> tuple[int, bytes] | Fragment:
    """Decrypt an SK message to (first inner payload type, payload bytes), or one SKF."""
    h = parse_header(msg)
    payloads = walk(h.next_payload, msg, HEADER.size)
    last = payloads[-1]
    if last.type == PT_SK:
        inner = msg[last.offset]  # the SK payload's Next Payload is the first inner type
        return inner, _decrypt(msg, last, 0, keys)
    if last.type == PT_SKF:
        number, total = struct.unpack_from("!HH", last.body)
        return Fragment(number, total, msg[last.offset], _decrypt(msg, last, 4, keys))
    raise WalkError("message has no SK payload")


def reassemble(frags: list[Fragment]) -> tuple[int, bytes]:
    """RFC 7383 §2.6: all fragments present, in order; fragment 1 names the first payload."""
    frags = sorted(frags, key=lambda f: f.number)
    total = frags[0].total
    if [f.number for f in frags] != list(range(1, total + 1)):
        raise WalkError("missing or duplicate fragments")
    return frags[0].first_inner, b"".join(f.plaintext for f in frags)


def prf(alg: int, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, PRF_HASH[alg]).digest()


def prf_plus(alg: int, key: bytes, seed: bytes, size: int) -> bytes:
    """RFC 7296 §2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out, t, n = b"", b"", 1
    while len(out) < size:
        t = prf(alg, key, t + seed + bytes((n,)))
        out += t
        n += 1
    return out[:size]


def first(payloads: list[Payload], kind: int) -> Payload | None:
    return next((p for p in payloads if p.type == kind), None)


def notifies(payloads: list[Payload]) -> list[tuple[int, int, bytes, bytes]]:
    """(protocol, type, spi, data) of each Notify payload (RFC 7296 §3.10)."""
    out = []
    for p in payloads:
        if p.type == PT_NOTIFY:
            proto, spi_size, ntype = struct.unpack_from("!BBH", p.body)
            out.append((proto, ntype, p.body[4 : 4 + spi_size], p.body[4 + spi_size :]))
    return out


@dataclass(frozen=True)
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: tuple[tuple[int, int, int | None], ...]  # (type, id, key length)


def proposals(sa_body: bytes) -> list[Proposal]:
    """SA payload body to proposals with their transforms (RFC 7296 §3.3)."""
    out = []
    pos = 0
    while pos < len(sa_body):
        last, _, plen, num, proto, spi_size, count = struct.unpack_from("!BBHBBBB", sa_body, pos)
        spi = sa_body[pos + 8 : pos + 8 + spi_size]
        tpos = pos + 8 + spi_size
        transforms = []
        for _ in range(count):
            _, _, tlen, ttype, _, tid = struct.unpack_from("!BBHBBH", sa_body, tpos)
            key_len = None
            apos = tpos + 8
            while apos < tpos + tlen:
                atype, aval = struct.unpack_from("!HH", sa_body, apos)
                if atype == 0x800E:  # TV Key Length
                    key_len = aval
                apos += 4
            transforms.append((ttype, tid, key_len))
            tpos += tlen
        out.append(Proposal(num, proto, spi, tuple(transforms)))
        pos += plen
        if last == 0:
            break
    return out
