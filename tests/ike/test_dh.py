"""Diffie-Hellman groups: RFC vectors, round trips and the peer public-value checks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.ike.constants import DhId
from vpn.ike.dh import (
    SUPPORTED_DH_GROUPS,
    DhGroup,
    EcpGroup,
    ModpGroup,
    dh_group,
)
from vpn.ike.errors import InvalidKePayload, LocalProtocolError

ALL_GROUPS = sorted(SUPPORTED_DH_GROUPS)
MODP_GROUPS = [DhId.MODP2048, DhId.MODP3072, DhId.MODP4096]
ECP_GROUPS = [DhId.ECP256, DhId.ECP384, DhId.ECP521]


def seeded_rng(seed: str) -> Callable[[int], bytes]:
    """Deterministic stand-in for os.urandom: SHAKE-256 of the seed and a counter."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(f"{seed}/{counter}".encode()).digest(n)

    return rng


def test_supported_groups_are_the_issue_list() -> None:
    assert SUPPORTED_DH_GROUPS == {14, 15, 16, 19, 20, 21, 31}


@pytest.mark.parametrize(
    ("group_id", "public_bytes", "shared_bytes"),
    [
        (DhId.MODP2048, 256, 256),  # RFC 7296 §3.4: the length of the modulus
        (DhId.MODP3072, 384, 384),
        (DhId.MODP4096, 512, 512),
        (DhId.ECP256, 64, 32),  # RFC 5903 §7: x | y; g^ir is x
        (DhId.ECP384, 96, 48),
        (DhId.ECP521, 132, 66),
        (DhId.CURVE25519, 32, 32),  # RFC 8031 §2
    ],
)
def test_round_trip_and_lengths(group_id: DhId, public_bytes: int, shared_bytes: int) -> None:
    group = dh_group(group_id)
    assert (group.public_bytes, group.shared_bytes) == (public_bytes, shared_bytes)
    a = group.generate(seeded_rng(f"a{group_id}"))
    b = group.generate(seeded_rng(f"b{group_id}"))
    assert len(a.public_value) == len(b.public_value) == public_bytes
    assert a.public_value != b.public_value
    shared = a.shared_secret(b.public_value)
    assert len(shared) == shared_bytes
    assert shared == b.shared_secret(a.public_value)
    # a third party gets another secret
    c = group.generate(seeded_rng(f"c{group_id}"))
    assert c.shared_secret(b.public_value) != shared


@pytest.mark.parametrize("group_id", ALL_GROUPS)
def test_generation_is_deterministic_in_the_injected_rng(group_id: DhId) -> None:
    group = dh_group(group_id)
    asked: list[int] = []
    rng = seeded_rng("same")

    def recording_rng(n: int) -> bytes:
        asked.append(n)
        return rng(n)

    first = group.generate(recording_rng).public_value
    assert first == group.generate(seeded_rng("same")).public_value
    assert first != group.generate(seeded_rng("other")).public_value
    assert len(asked) == 1
    if isinstance(group, ModpGroup):
        assert asked == [group.exponent_bytes]
        assert group.exponent_bytes * 8 >= 2 * 112  # NIST SP 800-56A: 2x the strength
    elif isinstance(group, EcpGroup):
        assert asked == [group.coordinate_bytes + 8]
    else:
        assert asked == [32]


@pytest.mark.parametrize("group_id", ALL_GROUPS)
def test_short_rng_output_is_a_local_error(group_id: DhId) -> None:
    with pytest.raises(LocalProtocolError):
        dh_group(group_id).generate(lambda n: bytes(n - 1))


def test_unsupported_group_is_a_local_error() -> None:
    for bad in (DhId.MODP1024, DhId.CURVE448, 0, 9999):
        with pytest.raises(LocalProtocolError):
            dh_group(bad)


@pytest.mark.parametrize("group_id", ALL_GROUPS)
def test_repr_hides_the_private_value(group_id: DhId) -> None:
    secret = bytes(range(1, 33))
    key = dh_group(group_id).generate(secret)
    text = repr(key) + str(key)
    assert group_id.name in text
    assert secret.hex() not in text
    assert str(int.from_bytes(secret)) not in text


# --- MODP (RFC 3526) -------------------------------------------------------------------


def _pi_fixed_point(bits: int) -> int:
    """floor(pi * 2**bits), by Machin's formula with guard bits."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inv(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            n += 2
            total += sign * (term // n)
            sign = -sign
        return total

    return (16 * arctan_inv(5) - 4 * arctan_inv(239)) >> guard


@pytest.mark.parametrize(
    ("group_id", "bits", "k"),
    [(DhId.MODP2048, 2048, 124476), (DhId.MODP3072, 3072, 1690314), (DhId.MODP4096, 4096, 240904)],
)
def test_modp_prime_is_rfc3526(group_id: DhId, bits: int, k: int) -> None:
    """RFC 3526 §3-§5: p = 2^N - 2^(N-64) - 1 + 2^64 * (floor(2^(N-130) pi) + k), g = 2."""
    group = dh_group(group_id)
    assert isinstance(group, ModpGroup)
    expected = 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_fixed_point(bits - 130) + k)
    assert group.prime == expected
    assert group.generator == 2
    # 2 generates the prime-order subgroup of the safe prime p = 2q + 1
    assert pow(2, (group.prime - 1) // 2, group.prime) == 1


def test_modp_values_are_zero_padded_to_the_modulus() -> None:
    """RFC 7296 §3.4 and §2.14: public values and g^ir keep leading zeros."""
    group = dh_group(DhId.MODP2048)
    small = group.generate((2).to_bytes(1))  # x = 2: y = 4
    assert small.public_value == bytes(255) + b"\x04"
    other = group.generate(seeded_rng("peer"))
    assert other.shared_secret(small.public_value) == small.shared_secret(other.public_value)
    # x = 2 against y = 3 gives 9: 255 zero bytes then 0x09
    assert small.shared_secret((3).to_bytes(256)) == bytes(255) + b"\x09"


@pytest.mark.parametrize("group_id", MODP_GROUPS)
def test_modp_rejects_out_of_range_peer_values(group_id: DhId) -> None:
    """RFC 6989 §2.1: 1 < y < p-1."""
    group = dh_group(group_id)
    assert isinstance(group, ModpGroup)
    key = group.generate(seeded_rng("modp"))
    size = group.public_bytes
    p = group.prime
    for y in (0, 1, p - 1, p, p + 1, 2 ** (8 * size) - 1):
        with pytest.raises(InvalidKePayload):
            key.shared_secret(y.to_bytes(size))
    for y in (2, p - 2):
        assert len(key.shared_secret(y.to_bytes(size))) == size


@pytest.mark.parametrize("group_id", MODP_GROUPS)
def test_modp_private_value_range(group_id: DhId) -> None:
    group = dh_group(group_id)
    assert isinstance(group, ModpGroup)
    for x in (0, 1, group.prime - 1, group.prime):
        with pytest.raises(LocalProtocolError):
            group.generate(x.to_bytes(group.public_bytes))


def test_modp_rng_returning_zeros_is_redrawn_then_refused() -> None:
    group = dh_group(DhId.MODP2048)
    draws = iter([bytes(40), (1).to_bytes(40), (5).to_bytes(40)])
    key = group.generate(lambda n: next(draws))
    assert key.public_value == (32).to_bytes(256)  # 2**5
    with pytest.raises(LocalProtocolError):
        group.generate(lambda n: bytes(n))


# --- ECP (RFC 5903) ----------------------------------------------------------------------

# RFC 5903 §8.1-§8.3: i, g^i = (x, y), r, g^r = (x, y), g^ir x coordinate.
RFC5903_VECTORS = {
    DhId.ECP256: (
        "c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433",
        "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"
        "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3",
        "c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53",
        "d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63"
        "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab",
        "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de",
    ),
    DhId.ECP384: (
        "099f3c7034d4a2c699884d73a375a67f7624ef7c6b3c0f160647b67414dce655"
        "e35b538041e649ee3faef896783ab194",
        "667842d7d180ac2cde6f74f37551f55755c7645c20ef73e31634fe72b4c55ee6"
        "de3ac808acb4bdb4c88732aee95f41aa"
        "9482ed1fc0eeb9cafc4984625ccfc23f65032149e0e144ada024181535a0f38e"
        "eb9fcff3c2c947dae69b4c634573a81c",
        "41cb0779b4bdb85d47846725fbec3c9430fab46cc8dc5060855cc9bda0aa2942"
        "e0308312916b8ed2960e4bd55a7448fc",
        "e558dbef53eecde3d3fccfc1aea08a89a987475d12fd950d83cfa41732bc509d"
        "0d1ac43a0336def96fda41d0774a3571"
        "dcfbec7aacf3196472169e838430367f66eebe3c6e70c416dd5f0c68759dd1ff"
        "f83fa40142209dff5eaad96db9e6386c",
        "11187331c279962d93d604243fd592cb9d0a926f422e47187521287e7156c5c4"
        "d603135569b9e9d09cf5d4a270f59746",
    ),
    DhId.ECP521: (
        "0037ade9319a89f4dabdb3ef411aaccca5123c61acab57b5393dce47608172a0"
        "95aa85a30fe1c2952c6771d937ba9777f5957b2639bab072462f68c27a57382d"
        "4a52",
        "0015417e84dbf28c0ad3c278713349dc7df153c897a1891bd98bab4357c9ecbe"
        "e1e3bf42e00b8e380aeae57c2d107564941885942af5a7f4601723c4195d176c"
        "ed3e"
        "017cae20b6641d2eeb695786d8c946146239d099e18e1d5a514c739d7cb4a10a"
        "d8a788015ac405d7799dc75e7b7d5b6cf2261a6a7f1507438bf01beb6ca3926f"
        "9582",
        "0145ba99a847af43793fdd0e872e7cdfa16be30fdc780f97bccc3f078380201e"
        "9c677d600b343757a3bdbf2a3163e4c2f869cca7458aa4a4effc311f5cb15168"
        "5eb9",
        "00d0b3975ac4b799f5bea16d5e13e9af971d5e9b984c9f39728b5e5739735a21"
        "9b97c356436adc6e95bb0352f6be64a6c2912d4ef2d0433ced2b6171640012d9"
        "460f"
        "015c68226383956e3bd066e797b623c27ce0eac2f551a10c2c724d9852077b87"
        "220b6536c5c408a1d2aebb8e86d678ae49cb57091f4732296579ab44fcd17f0f"
        "c56a",
        "01144c7d79ae6956bc8edb8e7c787c4521cb086fa64407f97894e5e6b2d79b04"
        "d1427e73ca4baa240a34786859810c06b3c715a3a8cc3151f2bee417996d19f3"
        "ddea",
    ),
}


@pytest.mark.parametrize("group_id", ECP_GROUPS)
def test_rfc5903_vectors(group_id: DhId) -> None:
    i, gi, r, gr, gir = (bytes.fromhex(v) for v in RFC5903_VECTORS[group_id])
    group = dh_group(group_id)
    initiator = group.generate(i)
    responder = group.generate(r)
    assert initiator.public_value == gi
    assert responder.public_value == gr
    assert initiator.shared_secret(gr) == gir
    assert responder.shared_secret(gi) == gir


@pytest.mark.parametrize("group_id", ECP_GROUPS)
def test_ecp_group_order(group_id: DhId) -> None:
    """(n-1)G = -G: same x as G. n itself and 0 are refused as private values."""
    group = dh_group(group_id)
    assert isinstance(group, EcpGroup)
    size = group.coordinate_bytes
    g = group.generate((1).to_bytes(size)).public_value
    minus_g = group.generate((group.order - 1).to_bytes(size)).public_value
    assert g[:size] == minus_g[:size] and g[size:] != minus_g[size:]
    for bad in (0, group.order, group.order + 1):
        with pytest.raises(LocalProtocolError):
            group.generate(bad.to_bytes(size))


@pytest.mark.parametrize("group_id", ECP_GROUPS)
def test_ecp_rejects_bad_points(group_id: DhId) -> None:
    """RFC 6989 §2.3: on the curve, coordinates in the field, not the point at infinity."""
    group = dh_group(group_id)
    assert isinstance(group, EcpGroup)
    size = group.coordinate_bytes
    key = group.generate(seeded_rng("ecp"))
    good = group.generate(seeded_rng("peer")).public_value
    key.shared_secret(good)
    x, y = good[:size], good[size:]
    bad_values = [
        bytes(2 * size),  # (0, 0): how "infinity" would look, and not on the curve
        x + (int.from_bytes(y) ^ 1).to_bytes(size),  # off the curve
        (int.from_bytes(x) ^ 1).to_bytes(size) + y,
        group.field_prime.to_bytes(size) + y,
        x + group.field_prime.to_bytes(size),
        b"\xff" * (2 * size),
    ]
    for bad in bad_values:
        with pytest.raises(InvalidKePayload):
            key.shared_secret(bad)


def test_ecp521_rejects_unreduced_coordinates() -> None:
    """P-521's 66-byte fields can carry x + p: the same point mod p, still refused."""
    group = dh_group(DhId.ECP521)
    assert isinstance(group, EcpGroup)
    size = group.coordinate_bytes
    key = group.generate(seeded_rng("ecp521"))
    good = group.generate(seeded_rng("peer521")).public_value
    x, y = int.from_bytes(good[:size]), int.from_bytes(good[size:])
    p = group.field_prime
    for bad in ((x + p, y), (x, y + p)):
        if max(bad) < 2 ** (8 * size):
            with pytest.raises(InvalidKePayload):
                key.shared_secret(bad[0].to_bytes(size) + bad[1].to_bytes(size))


# --- Curve25519 (RFC 7748, RFC 8031) ---------------------------------------------------


def test_rfc7748_section_6_1_diffie_hellman() -> None:
    group = dh_group(DhId.CURVE25519)
    alice = group.generate(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = group.generate(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public_value.hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert bob.public_value.hex() == (
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.shared_secret(bob.public_value).hex() == shared
    assert bob.shared_secret(alice.public_value).hex() == shared


@pytest.mark.parametrize(
    ("scalar", "u", "out"),
    [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (  # the u coordinate has its top bit set: it must be masked (RFC 7748 §5)
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ],
)
def test_rfc7748_section_5_2_vectors(scalar: str, u: str, out: str) -> None:
    key = dh_group(DhId.CURVE25519).generate(bytes.fromhex(scalar))
    assert key.shared_secret(bytes.fromhex(u)).hex() == out


def test_rfc7748_section_5_2_iterated() -> None:
    group = dh_group(DhId.CURVE25519)
    k = u = (9).to_bytes(32, "little")
    for i in range(1, 1001):
        k, u = group.generate(k).shared_secret(u), k
        if i == 1:
            assert k.hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


# Points of small order on Curve25519, and p-1, p, p+1 (non-canonical): each makes the
# X25519 output all zero, which RFC 8031 §2.3 says MUST be rejected. (Encodings with the
# top bit set are other points: RFC 7748 §5 masks that bit.)
X25519_LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("point", X25519_LOW_ORDER)
def test_x25519_rejects_all_zero_output(point: str) -> None:
    key = dh_group(DhId.CURVE25519).generate(seeded_rng("x25519"))
    with pytest.raises(InvalidKePayload):
        key.shared_secret(bytes.fromhex(point))


def test_x25519_private_value_must_be_32_bytes() -> None:
    for size in (0, 31, 33):
        with pytest.raises(LocalProtocolError):
            dh_group(DhId.CURVE25519).generate(bytes(size))


# --- any peer bytes: a secret or InvalidKePayload, nothing else ---------------------------


@pytest.mark.parametrize("group_id", ALL_GROUPS)
def test_wrong_lengths_are_refused(group_id: DhId) -> None:
    group = dh_group(group_id)
    key = group.generate(seeded_rng("len"))
    peer = group.generate(seeded_rng("len-peer")).public_value
    for bad in (b"", peer[:-1], peer + b"\x00", b"\x00" + peer, b"\x04" + peer[1:] + b"\x00"):
        if len(bad) == group.public_bytes:
            continue
        with pytest.raises(InvalidKePayload):
            key.shared_secret(bad)


def _fuzz_peer_value(group: DhGroup, data: bytes) -> None:
    key = group.generate(seeded_rng(f"fuzz{group.id}"))
    try:
        shared = key.shared_secret(data)
    except InvalidKePayload:
        return
    assert len(shared) == group.shared_bytes


@settings(max_examples=60, deadline=None)
@given(
    group_id=st.sampled_from([DhId.ECP256, DhId.ECP384, DhId.ECP521, DhId.CURVE25519]),
    data=st.data(),
)
def test_fuzz_curve_peer_values(group_id: DhId, data: st.DataObject) -> None:
    group = dh_group(group_id)
    size = data.draw(
        st.sampled_from([group.public_bytes, group.public_bytes, 0, group.public_bytes + 1])
    )
    _fuzz_peer_value(group, data.draw(st.binary(min_size=size, max_size=size)))


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_fuzz_modp_peer_values(data: st.DataObject) -> None:
    group = dh_group(data.draw(st.sampled_from(MODP_GROUPS)))
    _fuzz_peer_value(
        group, data.draw(st.binary(min_size=group.public_bytes, max_size=group.public_bytes))
    )
