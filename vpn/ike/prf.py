"""IKEv2 pseudorandom functions and prf+ (RFC 7296 §2.13), HMAC based.

Supported: PRF_HMAC_SHA1 (RFC 2104, for old peers) and PRF_HMAC_SHA2_256/384/512
(RFC 4868). The AES-based PRFs (XCBC, CMAC) are not implemented: they take only part
of the nonces as the SKEYSEED key (RFC 7296 §2.14), and no current peer needs them.

    prf = get_prf(PrfId.HMAC_SHA2_256)
    tag = prf(key, data)                     # one HMAC
    keymat = prf.plus(key, seed, 168)        # prf+ (RFC 7296 §2.13)
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac

from vpn.ike.constants import PrfId
from vpn.ike.errors import LocalProtocolError

PRF_PLUS_MAX_BLOCKS = 255  # RFC 7296 §2.13: the counter is one octet, 0x01..0xff


class Prf:
    """One HMAC-based IKEv2 PRF. Call it as `prf(key, data) -> bytes`.

    `output_bytes` is also the PRF's preferred key length (for HMAC the hash output
    size), which RFC 7296 §2.14 makes the length of SK_d, SK_pi and SK_pr.
    """

    __slots__ = ("id", "_hash", "output_bytes")

    def __init__(self, prf_id: PrfId, hash_algorithm: hashes.HashAlgorithm) -> None:
        self.id = prf_id
        self._hash = hash_algorithm
        self.output_bytes: int = hash_algorithm.digest_size

    @property
    def key_bytes(self) -> int:
        """The preferred key length (RFC 7296 §2.13): the output size for HMAC."""
        return self.output_bytes

    def __call__(self, key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, self._hash)
        h.update(data)
        return h.finalize()

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (RFC 7296 §2.13): T1 | T2 | ... cut to `length` bytes.

        T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n). At most 255 blocks may be
        produced; asking for more is a local error (no IKE key schedule needs it).
        """
        if length < 0 or length > PRF_PLUS_MAX_BLOCKS * self.output_bytes:
            raise LocalProtocolError(f"prf+ cannot produce {length} bytes with {self.id.name}")
        out = bytearray()
        block = b""
        counter = 1
        while len(out) < length:
            block = self(key, block + seed + bytes((counter,)))
            out += block
            counter += 1
        return bytes(out[:length])

    def __repr__(self) -> str:
        return f"Prf({self.id.name})"


_PRFS: dict[PrfId, Prf] = {
    PrfId.HMAC_SHA1: Prf(PrfId.HMAC_SHA1, hashes.SHA1()),
    PrfId.HMAC_SHA2_256: Prf(PrfId.HMAC_SHA2_256, hashes.SHA256()),
    PrfId.HMAC_SHA2_384: Prf(PrfId.HMAC_SHA2_384, hashes.SHA384()),
    PrfId.HMAC_SHA2_512: Prf(PrfId.HMAC_SHA2_512, hashes.SHA512()),
}

SUPPORTED_PRFS: frozenset[PrfId] = frozenset(_PRFS)


def get_prf(prf_id: PrfId | int) -> Prf:
    """The PRF for a transform ID; LocalProtocolError if not in SUPPORTED_PRFS.

    The session offers and accepts only SUPPORTED_PRFS, so an unsupported ID here is a
    bug on this side, not the peer's.
    """
    try:
        return _PRFS[PrfId(prf_id)]
    except (KeyError, ValueError):
        raise LocalProtocolError(f"unsupported PRF transform {prf_id}") from None
