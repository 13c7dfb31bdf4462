"""Independent oracles: packets we seal open elsewhere, and theirs open with ours.

1. `cryptography`'s AESGCM used directly, the ESP layout written out here from
   RFC 4303 §2 and RFC 4106 §3-§5 (not from vpn/esp).
2. scapy's ESP implementation (scapy.layers.ipsec.SecurityAssociation, AES-GCM,
   tunnel mode, with and without `esn_en`).
Both the C path and the Python reference are checked against each.
"""

from __future__ import annotations

import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from esphelpers import inner_packet, make_params
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw, raw

from vpn.esp.sa import InboundSa, OutboundSa, SaParams
from vpn.fastpath import FastSa


def rfc4106_seal(p: SaParams, seq: int, iv: bytes, inner: bytes, nh: int) -> bytes:
    pad_len = (4 - (len(inner) + 2) % 4) % 4
    plaintext = inner + bytes(range(1, pad_len + 1)) + bytes([pad_len, nh])
    if p.esn:
        aad = struct.pack(">LLL", p.spi, seq >> 32, seq & 0xFFFFFFFF)
    else:
        aad = struct.pack(">LL", p.spi, seq)
    body = AESGCM(p.key).encrypt(p.salt + iv, plaintext, aad)
    return struct.pack(">LL", p.spi, seq & 0xFFFFFFFF) + iv + body


def rfc4106_open(p: SaParams, packet: bytes, seq_hi: int) -> tuple[bytes, int]:
    spi, seq_lo = struct.unpack(">LL", packet[:8])
    aad = struct.pack(">LLL", spi, seq_hi, seq_lo) if p.esn else packet[:8]
    plaintext = AESGCM(p.key).decrypt(p.salt + packet[8:16], packet[16:], aad)
    pad_len, nh = plaintext[-2], plaintext[-1]
    assert plaintext[-2 - pad_len : -2] == bytes(range(1, pad_len + 1))
    return plaintext[: -2 - pad_len], nh


def sealers(p: SaParams) -> list[OutboundSa | FastSa]:
    return [OutboundSa(p), FastSa(p, outbound=True)]


def openers(p: SaParams) -> list[InboundSa | FastSa]:
    return [InboundSa(p), FastSa(p, outbound=False)]


def opened(sa: InboundSa | FastSa, packet: bytes) -> tuple[bytes, int]:
    if isinstance(sa, InboundSa):
        o = sa.open(packet)
        return o.inner, o.next_header
    return sa.open(packet)


START = {False: 0, True: (3 << 32) - 5}  # ESN: cross a 2^32 boundary on the way


@pytest.mark.parametrize("key_len", [16, 32])
@pytest.mark.parametrize("esn", [False, True])
def test_cryptography_oracle_both_directions(key_len: int, esn: bool) -> None:
    p = make_params(key_len, esn, seed=7)
    rng = random.Random(key_len)
    out_sas, in_sas = sealers(p), openers(p)
    for sa in out_sas + in_sas:
        sa.set_seq(START[esn])
    for i, size in enumerate([1, 2, 3, 4, 5, 20, 40, 41, 42, 43, 576, 1280, 1400, 1500, 9000]):
        seq = START[esn] + i + 1
        inner = inner_packet(size, rng, 4 if i % 2 else 6)
        nh = 4 if i % 2 else 41
        for sa in out_sas:
            packet = sa.seal(inner)
            assert rfc4106_open(p, packet, seq >> 32) == (inner, nh)
        # theirs, with a random IV (the IV is explicit: we must read it, not assume it)
        theirs = rfc4106_seal(p, seq, rng.randbytes(8), inner, nh)
        for sa in in_sas:
            assert opened(sa, theirs) == (inner, nh)


def _inner_scapy(version: int, size: int) -> bytes:
    payload = Raw(bytes(range(256)) * (size // 256 + 1))
    if version == 4:
        return raw(IP(src="10.78.0.10", dst="10.79.0.1") / UDP(sport=1234, dport=53) / payload)[
            :size
        ]
    return raw(IPv6(src="fd00::a", dst="fd00::1") / UDP(sport=1234, dport=53) / payload)[:size]


def _scapy_sa(p: SaParams, seq: int) -> SecurityAssociation:
    return SecurityAssociation(
        ESP, spi=p.spi, seq_num=seq & 0xFFFFFFFF, crypt_algo="AES-GCM", crypt_key=p.key + p.salt,
        tunnel_header=IP(src="192.0.2.1", dst="192.0.2.2"), esn_en=p.esn, esn=seq >> 32,
    )  # fmt: skip


@pytest.mark.parametrize("key_len", [16, 32])
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("version", [4, 6])
def test_scapy_oracle_both_directions(key_len: int, esn: bool, version: int) -> None:
    p = make_params(key_len, esn, seed=11)
    out_sas, in_sas = sealers(p), openers(p)
    for sa in out_sas + in_sas:
        sa.set_seq(START[esn])
    nh = 4 if version == 4 else 41
    for i, size in enumerate([48, 49, 50, 51, 100, 1400]):
        seq = START[esn] + i + 1
        inner = _inner_scapy(version, size)
        scapy_pkt = IP(inner) if version == 4 else IPv6(inner)
        # scapy seals with IV = the counter, as we do: the bytes must be identical.
        theirs = raw(
            _scapy_sa(p, seq).encrypt(
                scapy_pkt, seq_num=seq & 0xFFFFFFFF, iv=seq.to_bytes(8, "big")
            )[ESP]
        )
        for sa in out_sas:
            mine = sa.seal(inner)
            assert mine == theirs
            outer = IP(raw(IP(src="192.0.2.1", dst="192.0.2.2", proto=50) / Raw(mine)))
            decrypted = _scapy_sa(p, seq).decrypt(outer)
            assert raw(decrypted) == inner
        for sa in in_sas:
            assert opened(sa, theirs) == (inner, nh)
