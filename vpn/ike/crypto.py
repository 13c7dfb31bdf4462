"""IKEv2 key schedule and the SK payload cipher (RFC 7296 §2.13-§2.18, §3.14; RFC 5282).

Flow for an IKE SA (the session drives it; nothing here keeps state between calls):

1. IKE_SA_INIT: each side makes a key with `dh_group(id).generate(rng)` (vpn.ike.dh),
   sends `key.public_value` in KE and gets g^ir from `key.shared_secret(peer_ke)`.
2. `IkeSaKeys.derive(suite, g_ir, ni, nr, spi_i, spi_r)`: SKEYSEED and the seven keys.
3. `keys.sk_cipher(from_initiator=...)`: one SkCipher per direction for SK/SKF payloads.
4. Child SAs: `keys.child_sa_keys(esp_suite, ni, nr, g_ir=None)` (KEYMAT, §2.17).
5. IKE SA rekey: `keys.rekeyed(new_suite, g_ir, ni, nr, spi_i, spi_r)` (§2.18).

Plus the NAT detection hash (§2.23). DH groups live in vpn.ike.dh and PRFs in
vpn.ike.prf; both are re-exported here so the session needs one import.

Key material objects never show secrets in repr; errors never carry key bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vpn.ike.constants import EncrId, IntegId, PrfId
from vpn.ike.dh import SUPPORTED_DH_GROUPS, DhGroup, DhPrivateKey, RandomBytes, dh_group
from vpn.ike.errors import IntegrityError, LocalProtocolError
from vpn.ike.prf import SUPPORTED_PRFS, Prf, get_prf

__all__ = [
    "SUPPORTED_DH_GROUPS",
    "SUPPORTED_ENCR",
    "SUPPORTED_INTEG",
    "SUPPORTED_PRFS",
    "ChildSaKeys",
    "DhGroup",
    "DhPrivateKey",
    "EncrAlgorithm",
    "EspKeys",
    "EspSuite",
    "IkeSaKeys",
    "IkeSuite",
    "IntegAlgorithm",
    "Prf",
    "RandomBytes",
    "SkCipher",
    "compute_rekey_skeyseed",
    "compute_skeyseed",
    "derive_child_sa_keys",
    "derive_ike_sa_keys",
    "dh_group",
    "encr_algorithm",
    "get_prf",
    "integ_algorithm",
    "nat_detection_hash",
]

AES_BLOCK_BYTES = 16
AES_KEY_BITS = frozenset({128, 192, 256})  # RFC 3602 §5, RFC 5282 §7.3, RFC 4106 §8.1
GCM_SALT_BYTES = 4  # RFC 5282 §7.1 (IKE), RFC 4106 §8.1 (ESP)
GCM_IV_BYTES = 8  # RFC 5282 §3.1 / RFC 4106 §3.1: explicit IV
GCM_16_ICV_BYTES = 16
PAD_LENGTH_BYTES = 1  # RFC 7296 §3.14


# --- transforms ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncrAlgorithm:
    """An encryption transform with its key length, resolved to sizes.

    AEAD (AES-GCM-16): the keying material is key | 4-byte salt (RFC 5282 §7.1,
    RFC 4106 §8.1), the IV is 8 bytes and the ICV 16. AES-CBC: IV of one block, ICV
    from the separate integrity transform.
    """

    id: EncrId
    key_bits: int
    iv_bytes: int
    salt_bytes: int
    icv_bytes: int  # the AEAD tag; 0 when integrity comes from an IntegAlgorithm
    block_bytes: int  # alignment of payloads + padding + pad length (RFC 7296 §3.14)

    @property
    def aead(self) -> bool:
        return self.icv_bytes > 0

    @property
    def key_bytes(self) -> int:
        return self.key_bits // 8

    @property
    def keymat_bytes(self) -> int:
        """Bytes this transform takes from prf+: the key, plus the salt for AEAD."""
        return self.key_bytes + self.salt_bytes


SUPPORTED_ENCR: frozenset[EncrId] = frozenset({EncrId.AES_GCM_16, EncrId.AES_CBC})


def encr_algorithm(encr_id: EncrId | int, key_bits: int) -> EncrAlgorithm:
    """Resolve ENCR transform + Key Length attribute; LocalProtocolError if unsupported."""
    if encr_id not in SUPPORTED_ENCR:
        raise LocalProtocolError(f"unsupported encryption transform {encr_id}")
    if key_bits not in AES_KEY_BITS:
        raise LocalProtocolError(f"unsupported AES key length {key_bits}")
    if encr_id == EncrId.AES_GCM_16:
        # RFC 5282 §3: no alignment requirement on the Padding, so none is sent.
        return EncrAlgorithm(
            EncrId.AES_GCM_16, key_bits, GCM_IV_BYTES, GCM_SALT_BYTES, GCM_16_ICV_BYTES, 1
        )
    # RFC 3602 §3: IV of one block; plaintext a multiple of the block.
    return EncrAlgorithm(EncrId.AES_CBC, key_bits, AES_BLOCK_BYTES, 0, 0, AES_BLOCK_BYTES)


@dataclass(frozen=True, slots=True)
class IntegAlgorithm:
    """An HMAC integrity transform: full-size key, truncated ICV (RFC 4868 §2.1, RFC 2404)."""

    id: IntegId
    key_bytes: int
    icv_bytes: int
    hash: hashes.HashAlgorithm = field(compare=False, repr=False)

    def mac(self, key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, self.hash)
        h.update(data)
        return h.finalize()[: self.icv_bytes]


_INTEGS: dict[IntegId, IntegAlgorithm] = {
    IntegId.HMAC_SHA1_96: IntegAlgorithm(IntegId.HMAC_SHA1_96, 20, 12, hashes.SHA1()),
    IntegId.HMAC_SHA2_256_128: IntegAlgorithm(IntegId.HMAC_SHA2_256_128, 32, 16, hashes.SHA256()),
    IntegId.HMAC_SHA2_384_192: IntegAlgorithm(IntegId.HMAC_SHA2_384_192, 48, 24, hashes.SHA384()),
    IntegId.HMAC_SHA2_512_256: IntegAlgorithm(IntegId.HMAC_SHA2_512_256, 64, 32, hashes.SHA512()),
}

SUPPORTED_INTEG: frozenset[IntegId] = frozenset(_INTEGS)


def integ_algorithm(integ_id: IntegId | int) -> IntegAlgorithm | None:
    """Resolve an INTEG transform; None for NONE; LocalProtocolError if unsupported."""
    if integ_id == IntegId.NONE:
        return None
    try:
        return _INTEGS[IntegId(integ_id)]
    except (KeyError, ValueError):
        raise LocalProtocolError(f"unsupported integrity transform {integ_id}") from None


def _check_integ_pairing(encr: EncrAlgorithm, integ: IntegAlgorithm | None) -> None:
    # RFC 5282 §8: with an AEAD no integrity algorithm is selected (IKE or ESP); a plain
    # cipher needs one.
    if encr.aead and integ is not None:
        raise LocalProtocolError(f"{encr.id.name} takes no integrity transform")
    if not encr.aead and integ is None:
        raise LocalProtocolError(f"{encr.id.name} needs an integrity transform")


@dataclass(frozen=True, slots=True)
class IkeSuite:
    """The negotiated IKE SA transforms that shape its keys (the DH group does not)."""

    encr: EncrAlgorithm
    prf: Prf
    integ: IntegAlgorithm | None = None

    def __post_init__(self) -> None:
        _check_integ_pairing(self.encr, self.integ)

    @classmethod
    def from_ids(
        cls,
        encr: EncrId | int,
        key_bits: int,
        prf: PrfId | int,
        integ: IntegId | int = IntegId.NONE,
    ) -> IkeSuite:
        """From transform IDs; LocalProtocolError for unsupported or mismatched ones."""
        return cls(encr_algorithm(encr, key_bits), get_prf(prf), integ_algorithm(integ))


@dataclass(frozen=True, slots=True)
class EspSuite:
    """The negotiated Child SA (ESP) transforms that shape its KEYMAT (ESN does not)."""

    encr: EncrAlgorithm
    integ: IntegAlgorithm | None = None

    def __post_init__(self) -> None:
        _check_integ_pairing(self.encr, self.integ)

    @classmethod
    def from_ids(
        cls, encr: EncrId | int, key_bits: int, integ: IntegId | int = IntegId.NONE
    ) -> EspSuite:
        return cls(encr_algorithm(encr, key_bits), integ_algorithm(integ))


# --- the SK payload ------------------------------------------------------------------

_SK_OPEN_FAILED = "SK payload failed its integrity check"


class SkCipher:
    """Seal and open the body of one direction's SK / SKF payloads.

    The body is IV | ciphertext | ICV, everything after the generic payload header
    (SK) or the 8-byte fragment header (SKF, RFC 7383 §2.5). `aad` is every message
    byte before the IV, with the final lengths already written in: the caller asks
    `body_length(len(payloads))`, writes the IKE and SK lengths, then seals.

    - AES-GCM-16 (RFC 5282): nonce = salt | IV, AAD = `aad`, 16-byte tag. No padding
      is sent; any Padding up to 255 bytes is accepted (RFC 5282 §3).
    - AES-CBC + HMAC (RFC 7296 §3.14): padding to the block size, ICV = truncated
      HMAC over `aad` | IV | ciphertext, checked before decrypting.

    The IV is the caller's: a per-key counter for GCM (it must never repeat under one
    key), rng output for CBC (it must be unpredictable).
    """

    __slots__ = ("encr", "integ", "_key", "_salt", "_integ_key", "_aead")

    def __init__(
        self,
        encr: EncrAlgorithm,
        integ: IntegAlgorithm | None,
        encr_keymat: bytes,
        integ_key: bytes = b"",
    ) -> None:
        """`encr_keymat` is SK_e* as derived (key | salt for AEAD)."""
        _check_integ_pairing(encr, integ)
        if len(encr_keymat) != encr.keymat_bytes:
            raise LocalProtocolError(f"{encr.id.name} needs {encr.keymat_bytes} key bytes")
        if len(integ_key) != (integ.key_bytes if integ else 0):
            raise LocalProtocolError("integrity key has the wrong length")
        self.encr = encr
        self.integ = integ
        self._key = encr_keymat[: encr.key_bytes]
        self._salt = encr_keymat[encr.key_bytes :]
        self._integ_key = integ_key
        self._aead = AESGCM(self._key) if encr.aead else None

    @property
    def iv_bytes(self) -> int:
        return self.encr.iv_bytes

    @property
    def icv_bytes(self) -> int:
        return self.integ.icv_bytes if self.integ else self.encr.icv_bytes

    def _pad_bytes(self, plain_len: int) -> int:
        return -(plain_len + PAD_LENGTH_BYTES) % self.encr.block_bytes

    def body_length(self, plain_len: int) -> int:
        """Length of `seal`'s output for `plain_len` bytes of inner payloads."""
        return (
            self.encr.iv_bytes
            + plain_len
            + self._pad_bytes(plain_len)
            + PAD_LENGTH_BYTES
            + self.icv_bytes
        )

    def seal(self, aad: bytes, plaintext: bytes, iv: bytes) -> bytes:
        """IV | E(plaintext | padding | pad length) | ICV (RFC 7296 §3.14)."""
        if len(iv) != self.encr.iv_bytes:
            raise LocalProtocolError(f"{self.encr.id.name} IV must be {self.encr.iv_bytes} bytes")
        pad = self._pad_bytes(len(plaintext))
        padded = plaintext + bytes(pad) + bytes((pad,))
        if self._aead is not None:
            return iv + self._aead.encrypt(self._salt + iv, padded, aad)
        assert self.integ is not None  # guaranteed by _check_integ_pairing
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        ciphertext = enc.update(padded) + enc.finalize()
        return iv + ciphertext + self.integ.mac(self._integ_key, aad + iv + ciphertext)

    def open(self, aad: bytes, body: bytes) -> bytes:
        """The inner payloads of a received body, padding removed.

        Raises IntegrityError, with one message for every cause (short body, bad ICV,
        bad alignment, bad Pad Length), so that nothing tells an attacker which check
        failed. RFC 7296 §2.21.1: the caller drops the message silently.
        """
        iv_len = self.encr.iv_bytes
        icv_len = self.icv_bytes
        cipher_len = len(body) - iv_len - icv_len
        block = self.encr.block_bytes
        if cipher_len < max(PAD_LENGTH_BYTES, block) or cipher_len % block:
            raise IntegrityError(_SK_OPEN_FAILED)
        iv = body[:iv_len]
        if self._aead is not None:
            try:
                padded = self._aead.decrypt(self._salt + iv, body[iv_len:], aad)
            except InvalidTag:
                raise IntegrityError(_SK_OPEN_FAILED) from None
        else:
            assert self.integ is not None  # guaranteed by _check_integ_pairing
            ciphertext = body[iv_len : iv_len + cipher_len]
            expected = self.integ.mac(self._integ_key, aad + iv + ciphertext)
            if not constant_time.bytes_eq(expected, body[iv_len + cipher_len :]):
                raise IntegrityError(_SK_OPEN_FAILED)
            dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
            padded = dec.update(ciphertext) + dec.finalize()
        pad = padded[-1]
        if pad + PAD_LENGTH_BYTES > len(padded):
            raise IntegrityError(_SK_OPEN_FAILED)
        return padded[: len(padded) - PAD_LENGTH_BYTES - pad]

    def __repr__(self) -> str:
        integ = self.integ.id.name if self.integ else "none"
        return f"<SkCipher {self.encr.id.name}-{self.encr.key_bits} integ={integ} (keys hidden)>"


# --- key material --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class IkeSaKeys:
    """SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr of one IKE SA (RFC 7296 §2.14).

    For an AEAD, SK_ai/SK_ar are empty and SK_ei/SK_er are key | salt (RFC 5282 §7.1).
    "i" is the original initiator of this IKE SA (for a rekeyed SA: whoever initiated
    the rekey, RFC 7296 §2.18).
    """

    suite: IkeSuite
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    @classmethod
    def derive(
        cls, suite: IkeSuite, g_ir: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes
    ) -> IkeSaKeys:
        """Keys of a new IKE SA from IKE_SA_INIT (§2.14): SKEYSEED, then prf+."""
        skeyseed = compute_skeyseed(suite.prf, ni, nr, g_ir)
        return derive_ike_sa_keys(suite, skeyseed, ni, nr, spi_i, spi_r)

    def rekeyed(
        self,
        suite: IkeSuite,
        g_ir: bytes,
        ni: bytes,
        nr: bytes,
        spi_i: bytes,
        spi_r: bytes,
    ) -> IkeSaKeys:
        """Keys of the IKE SA that replaces this one (§2.18).

        SKEYSEED comes from this SA's PRF and SK_d; the new suite's PRF expands it.
        `ni`/`spi_i` belong to the initiator of the rekey exchange, `g_ir` is the
        shared secret of its KE payloads, the SPIs are the new SA's.
        """
        skeyseed = compute_rekey_skeyseed(self.suite.prf, self.sk_d, g_ir, ni, nr)
        return derive_ike_sa_keys(suite, skeyseed, ni, nr, spi_i, spi_r)

    def child_sa_keys(
        self, esp: EspSuite, ni: bytes, nr: bytes, g_ir: bytes | None = None
    ) -> ChildSaKeys:
        """KEYMAT of a Child SA created or rekeyed under this IKE SA (§2.17)."""
        return derive_child_sa_keys(self.suite.prf, self.sk_d, esp, ni, nr, g_ir)

    def sk_cipher(self, *, from_initiator: bool) -> SkCipher:
        """The cipher for messages sent by the original initiator (SK_ei/SK_ai, flag I
        set) or by the original responder (SK_er/SK_ar), RFC 7296 §2.14 / §3.1."""
        if from_initiator:
            return SkCipher(self.suite.encr, self.suite.integ, self.sk_ei, self.sk_ai)
        return SkCipher(self.suite.encr, self.suite.integ, self.sk_er, self.sk_ar)

    def __repr__(self) -> str:
        return f"IkeSaKeys(suite={self.suite!r}, keys hidden)"


@dataclass(frozen=True, slots=True, repr=False)
class EspKeys:
    """One direction of a Child SA: cipher key, salt (AES-GCM) and integrity key."""

    encr_key: bytes
    salt: bytes = b""
    integ_key: bytes = b""

    def __repr__(self) -> str:
        return (
            f"EspKeys(encr_key={len(self.encr_key)} bytes, salt={len(self.salt)} bytes, "
            f"integ_key={len(self.integ_key)} bytes, hidden)"
        )


@dataclass(frozen=True, slots=True, repr=False)
class ChildSaKeys:
    """KEYMAT of a Child SA split per direction (RFC 7296 §2.17).

    `i2r` protects traffic from the initiator of the exchange that created the Child
    SA (IKE_AUTH or CREATE_CHILD_SA) to its responder; `r2i` the other way.
    """

    suite: EspSuite
    i2r: EspKeys
    r2i: EspKeys

    def __repr__(self) -> str:
        return f"ChildSaKeys(suite={self.suite!r}, keys hidden)"


def compute_skeyseed(prf: Prf, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14; HMAC PRFs take the whole nonces)."""
    return prf(ni + nr, g_ir)


def compute_rekey_skeyseed(
    old_prf: Prf, old_sk_d: bytes, g_ir: bytes, ni: bytes, nr: bytes
) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), with the old SA's PRF (§2.18)."""
    return old_prf(old_sk_d, g_ir + ni + nr)


def derive_ike_sa_keys(
    suite: IkeSuite, skeyseed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes
) -> IkeSaKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED,
    Ni | Nr | SPIi | SPIr) (RFC 7296 §2.14). SK_d/SK_p* have the PRF's key length."""
    prf_len = suite.prf.key_bytes
    integ_len = suite.integ.key_bytes if suite.integ else 0
    encr_len = suite.encr.keymat_bytes
    sizes = (prf_len, integ_len, integ_len, encr_len, encr_len, prf_len, prf_len)
    keymat = suite.prf.plus(skeyseed, ni + nr + spi_i + spi_r, sum(sizes))
    parts = _split(keymat, sizes)
    return IkeSaKeys(suite, *parts)


def derive_child_sa_keys(
    prf: Prf,
    sk_d: bytes,
    esp: EspSuite,
    ni: bytes,
    nr: bytes,
    g_ir: bytes | None = None,
) -> ChildSaKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 §2.17).

    Order: all keys i->r first, then r->i; within a direction the encryption key
    before the integrity key (§2.17). For AES-GCM each encryption key is followed by
    its 4-byte salt (RFC 4106 §8.1).
    """
    encr_len = esp.encr.key_bytes
    salt_len = esp.encr.salt_bytes
    integ_len = esp.integ.key_bytes if esp.integ else 0
    sizes = (encr_len, salt_len, integ_len) * 2
    seed = (g_ir or b"") + ni + nr
    parts = _split(prf.plus(sk_d, seed, sum(sizes)), sizes)
    return ChildSaKeys(esp, EspKeys(*parts[:3]), EspKeys(*parts[3:]))


def _split(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    out = []
    pos = 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    return out


# --- NAT detection -------------------------------------------------------------------

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def nat_detection_hash(spi_i: bytes, spi_r: bytes, address: IpAddress | str, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) for NAT_DETECTION_*_IP (RFC 7296 §2.23).

    SPIr is eight zero bytes in the IKE_SA_INIT request. The address is 4 bytes for
    IPv4 and 16 for IPv6, the port 2 bytes, all in network order.
    """
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise LocalProtocolError("IKE SPIs are 8 bytes")
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"bad port {port}")
    packed = ipaddress.ip_address(address).packed
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spi_i + spi_r + packed + port.to_bytes(2))
    return digest.finalize()
