"""Diffie-Hellman groups for the KE payload, with peer public-value checks.

    group = dh_group(DhId.CURVE25519)
    key = group.generate(rng)                # rng(n) -> n random bytes (injected)
    ke_data = key.public_value               # exact RFC length, goes in the KE payload
    g_ir = key.shared_secret(peer_ke_data)   # InvalidKePayload if the peer's value is bad

Groups: MODP 14/15/16 (RFC 3526), ECP 19/20/21 (RFC 5903), Curve25519 31 (RFC 8031).
Every check on a peer value raises `InvalidKePayload`; no `cryptography` exception
escapes. Randomness is injected so that tests and the state machine stay deterministic.

MODP arithmetic uses Python integers, not `cryptography`: its finite-field DH API is
deprecated (CryptographyDeprecationWarning) and due for removal, and group 14 is a MUST
(RFC 8247 §2.4). Python's `pow` is not constant-time; each exponent is ephemeral and
used for exactly two exponentiations, which leaves a timing observer one sample per
key. Prefer ECP or Curve25519 groups where the peer allows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from vpn.ike.constants import DhId
from vpn.ike.errors import InvalidKePayload, LocalProtocolError

RandomBytes = Callable[[int], bytes]
"""Injected randomness: called with n, returns n unpredictable bytes (os.urandom)."""

RNG_MAX_DRAWS = 8  # a draw is rejected with probability < 2**-32; 8 in a row is a broken rng


def _draw(rng: RandomBytes, n: int) -> bytes:
    raw = rng(n)
    if len(raw) != n:
        raise LocalProtocolError(f"rng returned {len(raw)} bytes, {n} were asked for")
    return raw


class DhPrivateKey(ABC):
    """One ephemeral key pair of a group. Its repr never shows the private value."""

    __slots__ = ("group", "public_value")

    def __init__(self, group: DhGroup, public_value: bytes) -> None:
        self.group = group
        self.public_value = public_value
        """The KE payload's Key Exchange Data, exactly `group.public_bytes` long."""

    @abstractmethod
    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir from the peer's KE data (RFC 7296 §2.14), `group.shared_bytes` long.

        Raises InvalidKePayload if the peer's value has the wrong length or fails the
        group's validity checks (RFC 6989 for MODP and ECP, RFC 8031 §2.3 for X25519).
        """

    def _check_length(self, peer_public: bytes) -> None:
        if len(peer_public) != self.group.public_bytes:
            raise InvalidKePayload(
                f"{self.group.id.name} public value has {len(peer_public)} bytes, "
                f"expected {self.group.public_bytes}"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.group.id.name} (private value hidden)>"


class DhGroup(ABC):
    """A Diffie-Hellman group (key exchange method) as negotiated in transform type 4."""

    __slots__ = ("id", "public_bytes", "shared_bytes")

    def __init__(self, group_id: DhId, public_bytes: int, shared_bytes: int) -> None:
        self.id = group_id
        self.public_bytes = public_bytes
        self.shared_bytes = shared_bytes

    @abstractmethod
    def generate(self, source: RandomBytes | bytes) -> DhPrivateKey:
        """A key pair from injected randomness, or from a given private value (tests).

        `source` is either the rng callable or the private value itself: a big-endian
        integer for MODP and ECP, the 32-byte scalar for X25519 (RFC 7748 §5).
        A private value out of range raises LocalProtocolError.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id.name}>"


# --- MODP (RFC 3526) -------------------------------------------------------------------


class _ModpKey(DhPrivateKey):
    __slots__ = ("_modp", "_x")

    def __init__(self, group: ModpGroup, x: int) -> None:
        super().__init__(group, pow(group.generator, x, group.prime).to_bytes(group.public_bytes))
        self._modp = group
        self._x = x

    def shared_secret(self, peer_public: bytes) -> bytes:
        self._check_length(peer_public)
        group = self._modp
        y = int.from_bytes(peer_public)
        # RFC 6989 §2.1: for safe-prime groups, 1 < y < p-1 is the whole check.
        if not 1 < y < group.prime - 1:
            raise InvalidKePayload(f"{group.id.name} public value out of range")
        # RFC 7296 §2.14: g^ir is padded with zeros to the length of the modulus.
        return pow(y, self._x, group.prime).to_bytes(group.shared_bytes)


class ModpGroup(DhGroup):
    """A MODP group with a safe prime and generator 2 (RFC 3526)."""

    __slots__ = ("prime", "generator", "exponent_bytes")

    def __init__(self, group_id: DhId, prime: int, exponent_bits: int) -> None:
        size = (prime.bit_length() + 7) // 8
        super().__init__(group_id, size, size)
        self.prime = prime
        self.generator = 2
        self.exponent_bytes = exponent_bits // 8

    def generate(self, source: RandomBytes | bytes) -> DhPrivateKey:
        if isinstance(source, bytes | bytearray):
            x = int.from_bytes(source)
            if not 1 < x < self.prime - 1:
                raise LocalProtocolError(f"{self.id.name} private value out of range")
            return _ModpKey(self, x)
        for _ in range(RNG_MAX_DRAWS):
            x = int.from_bytes(_draw(source, self.exponent_bytes))
            if x > 1:
                return _ModpKey(self, x)
        raise LocalProtocolError("rng keeps returning zero exponents")


def _hex_int(text: str) -> int:
    return int("".join(text.split()), 16)


# RFC 3526 §3-§5. p = 2^N - 2^(N-64) - 1 + 2^64 * (floor(2^(N-130) * pi) + k);
# tests/ike/test_dh.py recomputes each from pi.
_MODP_2048 = _hex_int(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AACAA68 FFFFFFFF FFFFFFFF"
)
_MODP_3072 = _hex_int(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D 04507A33"
    "A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7"
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864"
    "D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2"
    "08E24FA0 74E5AB31 43DB5BFC E0FD108E 4B82D120 A93AD2CA FFFFFFFF FFFFFFFF"
)
_MODP_4096 = _hex_int(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D 04507A33"
    "A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7"
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864"
    "D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2"
    "08E24FA0 74E5AB31 43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7"
    "88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA 2583E9CA 2AD44CE8"
    "DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6 287C5947 4E6BC05D 99B2964F A090C3A2"
    "233BA186 515BE7ED 1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9"
    "93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34063199 FFFFFFFF FFFFFFFF"
)

# Private exponent sizes: RFC 3526 §8 gives the strength of each group; an exponent of
# twice the upper strength estimate keeps the exponent from being the weak point.
MODP_EXPONENT_BITS: dict[DhId, int] = {
    DhId.MODP2048: 320,
    DhId.MODP3072: 448,
    DhId.MODP4096: 512,
}


# --- ECP (RFC 5903) --------------------------------------------------------------------


class _EcpKey(DhPrivateKey):
    __slots__ = ("_ecp", "_key")

    def __init__(self, group: EcpGroup, key: ec.EllipticCurvePrivateKey) -> None:
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        super().__init__(group, point[1:])  # RFC 5903 §7: x | y, without the 0x04 octet
        self._ecp = group
        self._key = key

    def shared_secret(self, peer_public: bytes) -> bytes:
        self._check_length(peer_public)
        group = self._ecp
        size = group.coordinate_bytes
        x = int.from_bytes(peer_public[:size])
        y = int.from_bytes(peer_public[size:])
        # RFC 6989 §2.3: coordinates are field elements, the point lies on the curve and
        # is not the point at infinity (which x | y cannot even encode).
        if x >= group.field_prime or y >= group.field_prime:
            raise InvalidKePayload(f"{group.id.name} public value out of range")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(group.curve, b"\x04" + peer_public)
            secret = self._key.exchange(ec.ECDH(), peer)
        except ValueError:
            raise InvalidKePayload(f"{group.id.name} public value is not on the curve") from None
        # RFC 5903 §7: g^ir is the x coordinate only, `coordinate_bytes` long.
        return secret


class EcpGroup(DhGroup):
    """A NIST prime curve group (RFC 5903): KE data is x | y, g^ir is x."""

    __slots__ = ("curve", "coordinate_bytes", "field_prime", "order")

    def __init__(
        self, group_id: DhId, curve: ec.EllipticCurve, field_prime: int, order: int
    ) -> None:
        size = (field_prime.bit_length() + 7) // 8
        super().__init__(group_id, 2 * size, size)
        self.curve = curve
        self.coordinate_bytes = size
        self.field_prime = field_prime
        self.order = order

    def generate(self, source: RandomBytes | bytes) -> DhPrivateKey:
        if isinstance(source, bytes | bytearray):
            d = int.from_bytes(source)
            if not 0 < d < self.order:
                raise LocalProtocolError(f"{self.id.name} private value out of range")
        else:
            # FIPS 186-5 A.2.1 (extra random bits): 64 extra bits make the bias negligible.
            d = int.from_bytes(_draw(source, self.coordinate_bytes + 8)) % (self.order - 1) + 1
        return _EcpKey(self, ec.derive_private_key(d, self.curve))


# --- Curve25519 (RFC 8031) -------------------------------------------------------------

X25519_BYTES = 32  # RFC 7748 §5, RFC 8031 §2


class _X25519Key(DhPrivateKey):
    __slots__ = ("_key",)

    def __init__(self, group: X25519Group, key: x25519.X25519PrivateKey) -> None:
        super().__init__(group, key.public_key().public_bytes_raw())
        self._key = key

    def shared_secret(self, peer_public: bytes) -> bytes:
        self._check_length(peer_public)
        try:
            secret = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            # OpenSSL refuses an all-zero result itself (low-order peer point).
            secret = bytes(X25519_BYTES)
        # RFC 8031 §2.3: an all-zero shared secret MUST be rejected.
        if secret == bytes(X25519_BYTES):
            raise InvalidKePayload("CURVE25519 public value is a low-order point")
        return secret


class X25519Group(DhGroup):
    """Curve25519 (RFC 8031): 32-byte little-endian u coordinates, X25519 output as g^ir."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(DhId.CURVE25519, X25519_BYTES, X25519_BYTES)

    def generate(self, source: RandomBytes | bytes) -> DhPrivateKey:
        if isinstance(source, bytes | bytearray):
            if len(source) != X25519_BYTES:
                raise LocalProtocolError("CURVE25519 private value must be 32 bytes")
            scalar = bytes(source)
        else:
            scalar = _draw(source, X25519_BYTES)  # clamped by X25519 (RFC 7748 §5)
        return _X25519Key(self, x25519.X25519PrivateKey.from_private_bytes(scalar))


# --- registry ----------------------------------------------------------------------------

_GROUPS: dict[DhId, DhGroup] = {
    DhId.MODP2048: ModpGroup(DhId.MODP2048, _MODP_2048, MODP_EXPONENT_BITS[DhId.MODP2048]),
    DhId.MODP3072: ModpGroup(DhId.MODP3072, _MODP_3072, MODP_EXPONENT_BITS[DhId.MODP3072]),
    DhId.MODP4096: ModpGroup(DhId.MODP4096, _MODP_4096, MODP_EXPONENT_BITS[DhId.MODP4096]),
    # RFC 5903 §3.1-§3.3 (FIPS 186-4 D.1.2.3-5): field primes and group orders.
    DhId.ECP256: EcpGroup(
        DhId.ECP256,
        ec.SECP256R1(),
        2**256 - 2**224 + 2**192 + 2**96 - 1,
        _hex_int("FFFFFFFF 00000000 FFFFFFFF FFFFFFFF BCE6FAAD A7179E84 F3B9CAC2 FC632551"),
    ),
    DhId.ECP384: EcpGroup(
        DhId.ECP384,
        ec.SECP384R1(),
        2**384 - 2**128 - 2**96 + 2**32 - 1,
        _hex_int(
            "FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF C7634D81 F4372DDF"
            "581A0DB2 48B0A77A ECEC196A CCC52973"
        ),
    ),
    DhId.ECP521: EcpGroup(
        DhId.ECP521,
        ec.SECP521R1(),
        2**521 - 1,
        _hex_int(
            "01FF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFA"
            "51868783 BF2F966B 7FCC0148 F709A5D0 3BB5C9B8 899C47AE BB6FB71E 91386409"
        ),
    ),
    DhId.CURVE25519: X25519Group(),
}

SUPPORTED_DH_GROUPS: frozenset[DhId] = frozenset(_GROUPS)


def dh_group(group_id: DhId | int) -> DhGroup:
    """The group for a transform ID; LocalProtocolError if not in SUPPORTED_DH_GROUPS.

    A peer's KE payload naming another group is answered by the session with
    INVALID_KE_PAYLOAD (RFC 7296 §1.2) before it gets here.
    """
    try:
        return _GROUPS[DhId(group_id)]
    except (KeyError, ValueError):
        raise LocalProtocolError(f"unsupported Diffie-Hellman group {group_id}") from None
