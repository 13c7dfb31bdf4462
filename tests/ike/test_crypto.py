"""PRFs, prf+, the IKE and Child SA key schedules, the SK payload cipher and NAT-D.

Expected values come from RFC vectors (RFC 4231, RFC 2202) or from an independent
computation in the test itself with the standard library's hmac/hashlib and the raw
`cryptography` primitives, following the RFC formulas literally.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import ipaddress

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.ike.constants import EncrId, IntegId, PrfId
from vpn.ike.crypto import (
    ChildSaKeys,
    EspKeys,
    EspSuite,
    IkeSaKeys,
    IkeSuite,
    SkCipher,
    compute_rekey_skeyseed,
    compute_skeyseed,
    encr_algorithm,
    get_prf,
    integ_algorithm,
    nat_detection_hash,
)
from vpn.ike.errors import IntegrityError, LocalProtocolError

HASHLIB_NAME = {
    PrfId.HMAC_SHA1: "sha1",
    PrfId.HMAC_SHA2_256: "sha256",
    PrfId.HMAC_SHA2_384: "sha384",
    PrfId.HMAC_SHA2_512: "sha512",
}


def ref_prf(prf_id: PrfId, key: bytes, data: bytes) -> bytes:
    return std_hmac.new(key, data, HASHLIB_NAME[prf_id]).digest()


def ref_prf_plus(prf_id: PrfId, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 §2.13, written out: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        t = ref_prf(prf_id, key, t + seed + bytes([n]))
        out += t
        n += 1
    return out[:length]


# --- PRF ---------------------------------------------------------------------------------

# RFC 4231 §4.2-§4.8 (test case 5, a truncation test, is left out): key, data,
# HMAC-SHA-256, -384, -512.
RFC4231 = [
    (
        "0b" * 20,
        b"Hi There".hex(),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
        "faea9ea9076ede7f4af152e8b2fa9cb6",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    ),
    (
        b"Jefe".hex(),
        b"what do ya want for nothing?".hex(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
        "8e2240ca5e69e2c78b3239ecfab21649",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ),
    (
        "aa" * 20,
        "dd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b"
        "2a5ab39dc13814b94e3ab6e101a34f27",
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
        "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
    ),
    (
        "0102030405060708090a0b0c0d0e0f10111213141516171819",
        "cd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e"
        "6801dd23c4a7d679ccf8a386c674cffb",
        "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
        "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
    ),
    (
        "aa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6"
        "0c2ef6ab4030fe8296248df163f44952",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
    ),
    (
        "aa" * 131,
        b"This is a test using a larger than block-size key and a larger than "
        b"block-size data. The key needs to be hashed before being used by the "
        b"HMAC algorithm.".hex(),
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5"
        "a678cc31e799176d3860e6110c46523e",
        "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
        "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
    ),
]


@pytest.mark.parametrize(("key", "data", "sha256", "sha384", "sha512"), RFC4231)
def test_hmac_sha2_prfs_rfc4231(key: str, data: str, sha256: str, sha384: str, sha512: str) -> None:
    k, d = bytes.fromhex(key), bytes.fromhex(data)
    assert get_prf(PrfId.HMAC_SHA2_256)(k, d).hex() == sha256
    assert get_prf(PrfId.HMAC_SHA2_384)(k, d).hex() == sha384
    assert get_prf(PrfId.HMAC_SHA2_512)(k, d).hex() == sha512


@pytest.mark.parametrize(
    ("key", "data", "digest"),
    [  # RFC 2202 §3, test cases 1-3
        ("0b" * 20, b"Hi There".hex(), "b617318655057264e28bc0b6fb378c8ef146be00"),
        (
            b"Jefe".hex(),
            b"what do ya want for nothing?".hex(),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        ),
        ("aa" * 20, "dd" * 50, "125d7342b9ac11cd91a39af48aa17b4f63f175d3"),
    ],
)
def test_hmac_sha1_prf_rfc2202(key: str, data: str, digest: str) -> None:
    assert get_prf(PrfId.HMAC_SHA1)(bytes.fromhex(key), bytes.fromhex(data)).hex() == digest


@pytest.mark.parametrize(
    ("prf_id", "size"),
    [
        (PrfId.HMAC_SHA1, 20),
        (PrfId.HMAC_SHA2_256, 32),
        (PrfId.HMAC_SHA2_384, 48),
        (PrfId.HMAC_SHA2_512, 64),
    ],
)
def test_prf_sizes(prf_id: PrfId, size: int) -> None:
    prf = get_prf(prf_id)
    assert prf.output_bytes == prf.key_bytes == size
    assert prf.id == prf_id


@pytest.mark.parametrize("prf_id", list(HASHLIB_NAME))
@pytest.mark.parametrize("length", [0, 1, 19, 20, 21, 32, 33, 64, 65, 168, 200])
def test_prf_plus_matches_rfc7296_2_13(prf_id: PrfId, length: int) -> None:
    key = b"K" * 17
    seed = bytes(range(40))
    assert get_prf(prf_id).plus(key, seed, length) == ref_prf_plus(prf_id, key, seed, length)


def test_prf_plus_first_blocks_by_hand() -> None:
    """T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02), T3 = prf(K, T2 | S | 0x03)."""
    key, seed = b"key", b"seed"
    t1 = std_hmac.new(key, b"seed\x01", "sha256").digest()
    t2 = std_hmac.new(key, t1 + b"seed\x02", "sha256").digest()
    t3 = std_hmac.new(key, t2 + b"seed\x03", "sha256").digest()
    assert get_prf(PrfId.HMAC_SHA2_256).plus(key, seed, 80) == (t1 + t2 + t3)[:80]


def test_prf_plus_stops_at_255_blocks() -> None:
    prf = get_prf(PrfId.HMAC_SHA2_256)
    assert len(prf.plus(b"k", b"s", 255 * 32)) == 255 * 32
    for bad in (255 * 32 + 1, -1):
        with pytest.raises(LocalProtocolError):
            prf.plus(b"k", b"s", bad)


def test_unsupported_prfs_are_local_errors() -> None:
    for bad in (PrfId.HMAC_MD5, PrfId.AES128_XCBC, PrfId.AES128_CMAC, 0, 99):
        with pytest.raises(LocalProtocolError):
            get_prf(bad)


# --- transforms ------------------------------------------------------------------------


def test_transform_resolution() -> None:
    gcm = encr_algorithm(EncrId.AES_GCM_16, 256)
    assert (gcm.key_bytes, gcm.salt_bytes, gcm.keymat_bytes, gcm.iv_bytes, gcm.icv_bytes) == (
        32,
        4,
        36,
        8,
        16,
    )
    assert gcm.aead
    cbc = encr_algorithm(EncrId.AES_CBC, 128)
    assert (cbc.key_bytes, cbc.keymat_bytes, cbc.iv_bytes, cbc.block_bytes) == (16, 16, 16, 16)
    assert not cbc.aead
    sizes = {
        IntegId.HMAC_SHA1_96: (20, 12),  # RFC 2404
        IntegId.HMAC_SHA2_256_128: (32, 16),  # RFC 4868 §2.1
        IntegId.HMAC_SHA2_384_192: (48, 24),
        IntegId.HMAC_SHA2_512_256: (64, 32),
    }
    for integ_id, (key_bytes, icv_bytes) in sizes.items():
        integ = integ_algorithm(integ_id)
        assert integ is not None
        assert (integ.key_bytes, integ.icv_bytes) == (key_bytes, icv_bytes)
    assert integ_algorithm(IntegId.NONE) is None


def test_bad_transform_combinations_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        encr_algorithm(EncrId.AES_GCM_16, 100)
    with pytest.raises(LocalProtocolError):
        encr_algorithm(EncrId.DES3, 192)
    with pytest.raises(LocalProtocolError):
        integ_algorithm(IntegId.AES_XCBC_96)
    with pytest.raises(LocalProtocolError):  # RFC 5282 §8: no integrity with an AEAD
        IkeSuite.from_ids(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_256_128)
    with pytest.raises(LocalProtocolError):  # CBC alone has no integrity
        IkeSuite.from_ids(EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_256)
    with pytest.raises(LocalProtocolError):
        EspSuite.from_ids(EncrId.AES_CBC, 128)


# --- IKE SA key schedule -----------------------------------------------------------------

NI = bytes(range(32))
NR = bytes(range(100, 132))
SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("a1a2a3a4a5a6a7a8")
G_IR = bytes(range(200, 232)) * 2

IKE_SUITES = [
    # (encr, key bits, prf, integ, expected SK_ei length, SK_ai length)
    (EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_256, IntegId.NONE, 36, 0),
    (EncrId.AES_GCM_16, 128, PrfId.HMAC_SHA2_384, IntegId.NONE, 20, 0),
    (EncrId.AES_CBC, 128, PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_256_128, 16, 32),
    (EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_384, IntegId.HMAC_SHA2_384_192, 32, 48),
    (EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_512, IntegId.HMAC_SHA2_512_256, 32, 64),
    (EncrId.AES_CBC, 128, PrfId.HMAC_SHA1, IntegId.HMAC_SHA1_96, 16, 20),
]


@pytest.mark.parametrize(("encr", "bits", "prf_id", "integ", "e_len", "a_len"), IKE_SUITES)
def test_ike_sa_keys_rfc7296_2_14(
    encr: EncrId, bits: int, prf_id: PrfId, integ: IntegId, e_len: int, a_len: int
) -> None:
    suite = IkeSuite.from_ids(encr, bits, prf_id, integ)
    keys = IkeSaKeys.derive(suite, G_IR, NI, NR, SPI_I, SPI_R)

    skeyseed = ref_prf(prf_id, NI + NR, G_IR)  # SKEYSEED = prf(Ni | Nr, g^ir)
    assert compute_skeyseed(suite.prf, NI, NR, G_IR) == skeyseed
    p_len = len(skeyseed)  # SK_d, SK_pi, SK_pr: the PRF's preferred key length
    total = 3 * p_len + 2 * a_len + 2 * e_len
    stream = ref_prf_plus(prf_id, skeyseed, NI + NR + SPI_I + SPI_R, total)
    parts = [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]
    assert [len(p) for p in parts] == [p_len, a_len, a_len, e_len, e_len, p_len, p_len]
    assert b"".join(parts) == stream


def test_rekeyed_ike_sa_uses_old_prf_for_skeyseed_and_new_prf_for_prf_plus() -> None:
    """RFC 7296 §2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the old PRF."""
    old = IkeSaKeys.derive(
        IkeSuite.from_ids(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_256), G_IR, NI, NR, SPI_I, SPI_R
    )
    new_suite = IkeSuite.from_ids(
        EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_512, IntegId.HMAC_SHA2_512_256
    )
    g_new, ni2, nr2 = b"\x42" * 32, b"\x01" * 24, b"\x02" * 40
    spi_i2, spi_r2 = b"\x11" * 8, b"\x22" * 8
    new = old.rekeyed(new_suite, g_new, ni2, nr2, spi_i2, spi_r2)

    skeyseed = ref_prf(PrfId.HMAC_SHA2_256, old.sk_d, g_new + ni2 + nr2)
    assert compute_rekey_skeyseed(old.suite.prf, old.sk_d, g_new, ni2, nr2) == skeyseed
    stream = ref_prf_plus(PrfId.HMAC_SHA2_512, skeyseed, ni2 + nr2 + spi_i2 + spi_r2, 64 * 7)
    assert new.suite is new_suite
    assert (
        new.sk_d + new.sk_ai + new.sk_ar + new.sk_ei + new.sk_er + new.sk_pi + new.sk_pr
        == (stream[: 64 * 5 + 32 * 2])
    )
    assert len(new.sk_ei) == 32 and len(new.sk_ai) == 64


# --- Child SA KEYMAT -----------------------------------------------------------------------


@pytest.mark.parametrize("g_ir", [None, b"\x07" * 32])
def test_child_keymat_aes_gcm(g_ir: bytes | None) -> None:
    """§2.17 + RFC 4106 §8.1: i->r key | salt, then r->i key | salt."""
    ike = IkeSaKeys.derive(
        IkeSuite.from_ids(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_256), G_IR, NI, NR, SPI_I, SPI_R
    )
    child = ike.child_sa_keys(EspSuite.from_ids(EncrId.AES_GCM_16, 128), NI, NR, g_ir)
    keymat = ref_prf_plus(PrfId.HMAC_SHA2_256, ike.sk_d, (g_ir or b"") + NI + NR, 40)
    assert child.i2r == EspKeys(keymat[0:16], keymat[16:20])
    assert child.r2i == EspKeys(keymat[20:36], keymat[36:40])
    assert child.i2r.integ_key == b""


def test_child_keymat_aes_cbc_hmac_order() -> None:
    """§2.17: i->r first, then r->i; encryption key before integrity key in each."""
    ike = IkeSaKeys.derive(
        IkeSuite.from_ids(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_384), G_IR, NI, NR, SPI_I, SPI_R
    )
    esp = EspSuite.from_ids(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)
    child = ike.child_sa_keys(esp, NI, NR)
    keymat = ref_prf_plus(PrfId.HMAC_SHA2_384, ike.sk_d, NI + NR, 2 * (32 + 32))
    assert child.i2r == EspKeys(keymat[0:32], b"", keymat[32:64])
    assert child.r2i == EspKeys(keymat[64:96], b"", keymat[96:128])
    assert child.suite == esp


def test_key_material_repr_hides_secrets() -> None:
    suite = IkeSuite.from_ids(EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_256_128)
    ike = IkeSaKeys.derive(suite, G_IR, NI, NR, SPI_I, SPI_R)
    child = ike.child_sa_keys(EspSuite.from_ids(EncrId.AES_GCM_16, 256), NI, NR)
    secrets = [ike.sk_d, ike.sk_ai, ike.sk_ar, ike.sk_ei, ike.sk_er, ike.sk_pi, ike.sk_pr]
    secrets += [child.i2r.encr_key, child.i2r.salt, child.r2i.encr_key, child.r2i.salt]
    cipher = ike.sk_cipher(from_initiator=True)
    for obj in (ike, child, child.i2r, child.r2i, cipher):
        text = repr(obj) + str(obj) + f"{obj}"
        for secret in secrets:
            assert secret.hex() not in text
            assert repr(secret) not in text
    assert "AES_CBC" in repr(ike)
    assert isinstance(child, ChildSaKeys)


# --- the SK payload -----------------------------------------------------------------------

SK_SUITES = [
    (EncrId.AES_GCM_16, 128, IntegId.NONE),
    (EncrId.AES_GCM_16, 256, IntegId.NONE),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
]
SK_IDS = [f"{e.name}-{b}-{i.name}" for e, b, i in SK_SUITES]


def suite_keys(encr_id: EncrId, bits: int, integ_id: IntegId, seed: int = 1) -> tuple[bytes, bytes]:
    """Fixed test keys: (SK_e keymat, SK_a) for a suite."""
    encr = encr_algorithm(encr_id, bits)
    integ = integ_algorithm(integ_id)
    keymat = bytes((seed * 7 + i) % 256 for i in range(encr.keymat_bytes))
    integ_key = bytes((seed * 13 + i) % 256 for i in range(integ.key_bytes if integ else 0))
    return keymat, integ_key


def make_cipher(encr_id: EncrId, bits: int, integ_id: IntegId, seed: int = 1) -> SkCipher:
    keymat, integ_key = suite_keys(encr_id, bits, integ_id, seed)
    return SkCipher(encr_algorithm(encr_id, bits), integ_algorithm(integ_id), keymat, integ_key)


def make_iv(cipher: SkCipher, n: int = 1) -> bytes:
    return n.to_bytes(cipher.iv_bytes)


def header_for(cipher: SkCipher, plain_len: int, extra: bytes = b"") -> bytes:
    """An IKE header + SK generic header whose lengths match the sealed body."""
    body = cipher.body_length(plain_len)
    sk_len = 4 + len(extra) + body
    total = 28 + sk_len
    return (
        b"\x11" * 8
        + b"\x22" * 8
        + bytes((46, 0x20, 35, 0x08))
        + (1).to_bytes(4)
        + total.to_bytes(4)
        + bytes((35, 0))
        + sk_len.to_bytes(2)
        + extra
    )


PLAIN = bytes(range(23)) + b"IDi payload here"


@pytest.mark.parametrize(("encr", "bits", "integ"), SK_SUITES, ids=SK_IDS)
def test_sk_round_trip_and_body_length(encr: EncrId, bits: int, integ: IntegId) -> None:
    cipher = make_cipher(encr, bits, integ)
    for n in range(0, 70):
        plain = bytes(range(n))
        aad = header_for(cipher, n)
        body = cipher.seal(aad, plain, make_iv(cipher, n + 1))
        assert len(body) == cipher.body_length(n)
        assert body[: cipher.iv_bytes] == make_iv(cipher, n + 1)
        assert cipher.open(aad, body) == plain
        cipher_len = len(body) - cipher.iv_bytes - cipher.icv_bytes
        if encr == EncrId.AES_CBC:
            assert cipher_len % 16 == 0 and n + 1 <= cipher_len < n + 17
        else:
            assert cipher_len == n + 1  # RFC 5282: no padding, only the Pad Length


def test_sk_gcm_layout_rfc5282() -> None:
    """nonce = salt | IV; AAD = header; body = IV | E(payloads | 0x00) | 16-byte ICV."""
    encr = encr_algorithm(EncrId.AES_GCM_16, 256)
    keymat = bytes(range(36))
    cipher = SkCipher(encr, None, keymat)
    aad = header_for(cipher, len(PLAIN))
    iv = bytes.fromhex("0000000000000007")
    expected = iv + AESGCM(keymat[:32]).encrypt(keymat[32:] + iv, PLAIN + b"\x00", aad)
    assert cipher.seal(aad, PLAIN, iv) == expected


def test_sk_cbc_layout_rfc7296_3_14() -> None:
    """body = IV | AES-CBC(payloads | padding | pad length) | HMAC(header..ciphertext)."""
    encr = encr_algorithm(EncrId.AES_CBC, 128)
    integ = integ_algorithm(IntegId.HMAC_SHA2_256_128)
    key, mac_key = bytes(range(16)), bytes(range(50, 82))
    cipher = SkCipher(encr, integ, key, mac_key)
    aad = header_for(cipher, len(PLAIN))
    iv = bytes(range(16, 32))
    pad = -(len(PLAIN) + 1) % 16
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ct = enc.update(PLAIN + bytes(pad) + bytes((pad,))) + enc.finalize()
    icv = std_hmac.new(mac_key, aad + iv + ct, "sha256").digest()[:16]
    assert cipher.seal(aad, PLAIN, iv) == iv + ct + icv


@pytest.mark.parametrize(("encr", "bits", "integ"), SK_SUITES, ids=SK_IDS)
def test_sk_every_bit_flip_fails(encr: EncrId, bits: int, integ: IntegId) -> None:
    cipher = make_cipher(encr, bits, integ)
    aad = header_for(cipher, len(PLAIN))
    body = cipher.seal(aad, PLAIN, make_iv(cipher))
    for i in range(len(body) * 8):
        flipped = bytearray(body)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(IntegrityError):
            cipher.open(aad, bytes(flipped))
    for i in range(len(aad) * 8):
        flipped = bytearray(aad)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(IntegrityError):
            cipher.open(bytes(flipped), body)
    assert cipher.open(aad, body) == PLAIN


@pytest.mark.parametrize(("encr", "bits", "integ"), SK_SUITES, ids=SK_IDS)
def test_sk_truncated_extended_or_foreign_bodies_fail(
    encr: EncrId, bits: int, integ: IntegId
) -> None:
    cipher = make_cipher(encr, bits, integ)
    aad = header_for(cipher, len(PLAIN))
    body = cipher.seal(aad, PLAIN, make_iv(cipher))
    for cut in range(len(body)):
        with pytest.raises(IntegrityError):
            cipher.open(aad, body[:cut])
    with pytest.raises(IntegrityError):
        cipher.open(aad, body + b"\x00")
    with pytest.raises(IntegrityError):
        cipher.open(aad[:-1], body)
    other_key = make_cipher(encr, bits, integ, seed=2)  # e.g. the other direction's key
    with pytest.raises(IntegrityError):
        other_key.open(aad, body)


def _seal_raw(suite: tuple[EncrId, int, IntegId], aad: bytes, padded: bytes, iv: bytes) -> bytes:
    """Encrypt already padded plaintext the way a peer would, bypassing our padding."""
    keymat, integ_key = suite_keys(*suite)
    encr = encr_algorithm(suite[0], suite[1])
    key = keymat[: encr.key_bytes]
    if encr.aead:
        return iv + AESGCM(key).encrypt(keymat[encr.key_bytes :] + iv, padded, aad)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ct = enc.update(padded) + enc.finalize()
    icv_len = {
        IntegId.HMAC_SHA2_256_128: 16,
        IntegId.HMAC_SHA2_384_192: 24,
        IntegId.HMAC_SHA2_512_256: 32,
        IntegId.HMAC_SHA1_96: 12,
    }[suite[2]]
    hash_name = {16: "sha256", 24: "sha384", 32: "sha512", 12: "sha1"}[icv_len]
    return iv + ct + std_hmac.new(integ_key, aad + iv + ct, hash_name).digest()[:icv_len]


@pytest.mark.parametrize(("encr", "bits", "integ"), SK_SUITES, ids=SK_IDS)
def test_sk_accepts_any_aligned_padding(encr: EncrId, bits: int, integ: IntegId) -> None:
    """RFC 7296 §3.14: the recipient MUST accept any Pad Length giving proper alignment."""
    cipher = make_cipher(encr, bits, integ)
    plain = b"x" * 10
    pad = 21 if encr == EncrId.AES_CBC else 7  # 10 + 21 + 1 = 32: two blocks
    padded = plain + bytes(range(1, pad + 1)) + bytes((pad,))
    body = _seal_raw((encr, bits, integ), b"A" * 32, padded, make_iv(cipher))
    assert cipher.open(b"A" * 32, body) == plain


def test_sk_gcm_accepts_every_padding_length() -> None:
    """RFC 5282 §3: no alignment rule; the recipient MUST accept up to 255 octets."""
    suite = (EncrId.AES_GCM_16, 256, IntegId.NONE)
    cipher = make_cipher(*suite)
    plain = b"\x2a\x00\x00\x08\x01\x02\x03\x04"
    for pad in range(256):
        padded = plain + bytes((i * 37 + 1) % 256 for i in range(pad)) + bytes((pad,))
        body = _seal_raw(suite, b"A" * 32, padded, make_iv(cipher, pad))
        assert cipher.open(b"A" * 32, body) == plain


@pytest.mark.parametrize(("encr", "bits", "integ"), SK_SUITES, ids=SK_IDS)
def test_sk_pad_length_beyond_plaintext_fails(encr: EncrId, bits: int, integ: IntegId) -> None:
    cipher = make_cipher(encr, bits, integ)
    padded = b"y" * 31 + bytes((31,))  # claims 31 bytes of padding: 32 would be needed
    body = _seal_raw((encr, bits, integ), b"A" * 32, padded, make_iv(cipher))
    assert cipher.open(b"A" * 32, body) == b""  # 31 is still fine
    bad = _seal_raw((encr, bits, integ), b"A" * 32, b"y" * 31 + bytes((32,)), make_iv(cipher))
    with pytest.raises(IntegrityError) as bad_pad:
        cipher.open(b"A" * 32, bad)
    with pytest.raises(IntegrityError) as bad_icv:
        cipher.open(b"B" * 32, body)
    with pytest.raises(IntegrityError) as short:
        cipher.open(b"A" * 32, body[:5])
    # one message for every cause: nothing says which check failed
    assert str(bad_pad.value) == str(bad_icv.value) == str(short.value)


def test_sk_empty_payload_chain() -> None:
    """An SK payload may carry no payloads at all (an empty INFORMATIONAL response)."""
    cipher = make_cipher(EncrId.AES_GCM_16, 256, IntegId.NONE)
    aad = header_for(cipher, 0)
    body = cipher.seal(aad, b"", make_iv(cipher))
    assert len(body) == 8 + 1 + 16
    assert cipher.open(aad, body) == b""


def test_skf_aad_covers_the_fragment_header() -> None:
    """RFC 7383 §2.5: for SKF the AAD runs through Fragment Number and Total Fragments."""
    cipher = make_cipher(EncrId.AES_GCM_16, 128, IntegId.NONE)
    aad = header_for(cipher, len(PLAIN), extra=(2).to_bytes(2) + (3).to_bytes(2))
    assert len(aad) == 36
    body = cipher.seal(aad, PLAIN, make_iv(cipher))
    assert cipher.open(aad, body) == PLAIN
    other_fragment = aad[:32] + (3).to_bytes(2) + (3).to_bytes(2)
    with pytest.raises(IntegrityError):
        cipher.open(other_fragment, body)


def test_sk_cipher_directions_from_ike_keys() -> None:
    suite = IkeSuite.from_ids(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_256)
    keys = IkeSaKeys.derive(suite, G_IR, NI, NR, SPI_I, SPI_R)
    initiator_out = keys.sk_cipher(from_initiator=True)
    aad = header_for(initiator_out, len(PLAIN))
    body = initiator_out.seal(aad, PLAIN, make_iv(initiator_out))
    # the responder opens it with the same (SK_ei) view, not with SK_er
    assert keys.sk_cipher(from_initiator=True).open(aad, body) == PLAIN
    with pytest.raises(IntegrityError):
        keys.sk_cipher(from_initiator=False).open(aad, body)


def test_sk_cipher_local_misuse() -> None:
    cipher = make_cipher(EncrId.AES_GCM_16, 256, IntegId.NONE)
    with pytest.raises(LocalProtocolError):
        cipher.seal(b"", b"x", bytes(12))  # GCM's explicit IV is 8 bytes
    gcm = encr_algorithm(EncrId.AES_GCM_16, 256)
    cbc = encr_algorithm(EncrId.AES_CBC, 256)
    sha = integ_algorithm(IntegId.HMAC_SHA2_256_128)
    with pytest.raises(LocalProtocolError):
        SkCipher(gcm, None, bytes(32))  # salt missing
    with pytest.raises(LocalProtocolError):
        SkCipher(cbc, sha, bytes(32), bytes(16))  # integrity key too short
    with pytest.raises(LocalProtocolError):
        SkCipher(cbc, None, bytes(32))


@settings(max_examples=300, deadline=None)
@given(
    suite=st.sampled_from(SK_SUITES),
    aad=st.binary(max_size=40),
    body=st.binary(max_size=120),
)
def test_sk_open_of_arbitrary_bytes_only_raises_integrity_error(
    suite: tuple[EncrId, int, IntegId], aad: bytes, body: bytes
) -> None:
    with pytest.raises(IntegrityError):
        make_cipher(*suite).open(aad, body)


# --- NAT detection (RFC 7296 §2.23) ------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["192.0.2.1", "10.77.0.3", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1"]
)
def test_nat_detection_hash(address: str) -> None:
    spi_i, spi_r = bytes.fromhex("513b68b26bee6548"), bytes(8)
    packed = ipaddress.ip_address(address).packed
    expected = hashlib.sha1(spi_i + spi_r + packed + (4500).to_bytes(2)).digest()
    assert nat_detection_hash(spi_i, spi_r, address, 4500) == expected
    assert nat_detection_hash(spi_i, spi_r, ipaddress.ip_address(address), 4500) == expected
    assert nat_detection_hash(spi_i, spi_r, address, 500) != expected
    assert len(expected) == 20


def test_nat_detection_hash_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        nat_detection_hash(bytes(7), bytes(8), "192.0.2.1", 500)
    with pytest.raises(LocalProtocolError):
        nat_detection_hash(bytes(8), bytes(8), "192.0.2.1", 65536)
