"""Proposal selection and traffic selector narrowing (vpn/ike/negotiate.py).

Client proposals are modelled on CHECKLIST Part 2 §2.1 (strongSwan 5.9 defaults,
Libreswan 4.x defaults, macOS 14 without PFS).
"""

from __future__ import annotations

import pytest

from vpn.ike.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from vpn.ike.negotiate import (
    InvalidKeGroup,
    NoProposalChosen,
    accept_esp_response,
    accept_ike_response,
    esp_proposals,
    ike_proposals,
    narrow,
    select_esp,
    select_ike,
    within,
)
from vpn.ike.payloads import Proposal, SecurityAssociation, TrafficSelector, Transform, TransformAttribute
from vpn.ike.policy import DEFAULT_IKE_PROPOSALS, EspProposal, IkeProposal

T = TransformType


def _t(ttype: TransformType, tid: int, bits: int | None = None) -> Transform:
    return Transform(ttype, tid, bits)


def sa(*proposals: Proposal) -> SecurityAssociation:
    return SecurityAssociation(tuple(proposals))


STRONGSWAN_AEAD = Proposal(
    2,
    ProtocolId.IKE,
    b"",
    (
        _t(T.ENCR, EncrId.AES_GCM_16, 128),
        _t(T.ENCR, EncrId.AES_GCM_16, 256),
        _t(T.PRF, PrfId.HMAC_SHA2_256),
        _t(T.PRF, PrfId.HMAC_SHA2_384),
        _t(T.DH, DhId.ECP256),
        _t(T.DH, DhId.CURVE25519),
        _t(T.DH, DhId.MODP2048),
    ),
)
STRONGSWAN_CBC = Proposal(
    1,
    ProtocolId.IKE,
    b"",
    (
        _t(T.ENCR, EncrId.AES_CBC, 128),
        _t(T.ENCR, EncrId.AES_CBC, 256),
        _t(T.INTEG, IntegId.HMAC_SHA2_256_128),
        _t(T.PRF, PrfId.HMAC_SHA2_256),
        _t(T.DH, DhId.ECP256),
        _t(T.DH, DhId.MODP2048),
    ),
)
WINDOWS_MODP1024 = Proposal(
    1,
    ProtocolId.IKE,
    b"",
    (
        _t(T.ENCR, EncrId.AES_CBC, 256),
        _t(T.INTEG, IntegId.HMAC_SHA1_96),
        _t(T.PRF, PrfId.HMAC_SHA1),
        _t(T.DH, DhId.MODP1024),
    ),
)


def test_ike_takes_the_ke_group_when_the_chosen_proposal_allows_it() -> None:
    # strongSwan sends KE for ECP256 (its first group): accepted without INVALID_KE even
    # though our preferred group is Curve25519.
    sel = select_ike(sa(STRONGSWAN_CBC, STRONGSWAN_AEAD), DEFAULT_IKE_PROPOSALS, DhId.ECP256)
    assert sel.algorithms.dh == DhId.ECP256
    # our preference order: the AEAD proposal first, AES-256 before AES-128
    assert sel.algorithms.encr == EncrId.AES_GCM_16 and sel.algorithms.key_bits == 256
    assert sel.algorithms.integ == IntegId.NONE
    assert sel.proposal.num == 2
    assert [t.type for t in sel.proposal.transforms] == [T.ENCR, T.PRF, T.DH]


def test_ike_asks_for_another_group_only_when_no_proposal_allows_the_ke() -> None:
    with pytest.raises(InvalidKeGroup) as exc:
        select_ike(sa(STRONGSWAN_AEAD), DEFAULT_IKE_PROPOSALS, DhId.ECP521)
    assert exc.value.group == DhId.CURVE25519  # our preferred group among the peer's


def test_ike_ke_group_in_a_later_proposal_avoids_invalid_ke() -> None:
    only_x25519 = IkeProposal(((EncrId.AES_GCM_16, 128),), (PrfId.HMAC_SHA2_256,), (DhId.CURVE25519,))
    also_modp = IkeProposal(
        ((EncrId.AES_CBC, 128),), (PrfId.HMAC_SHA2_256,), (DhId.MODP2048,), (IntegId.HMAC_SHA2_256_128,)
    )
    sel = select_ike(sa(STRONGSWAN_CBC, STRONGSWAN_AEAD), (only_x25519, also_modp), DhId.MODP2048)
    assert sel.algorithms.encr == EncrId.AES_CBC and sel.algorithms.dh == DhId.MODP2048


def test_ike_no_proposal_chosen_for_modp1024_only() -> None:
    with pytest.raises(NoProposalChosen):
        select_ike(sa(WINDOWS_MODP1024), DEFAULT_IKE_PROPOSALS, DhId.MODP1024)


def test_unknown_transform_type_makes_the_proposal_unacceptable() -> None:
    odd = Proposal(1, ProtocolId.IKE, b"", (*STRONGSWAN_AEAD.transforms, _t(99, 1)))  # type: ignore[arg-type]
    with pytest.raises(NoProposalChosen):
        select_ike(sa(odd), DEFAULT_IKE_PROPOSALS, DhId.ECP256)


def test_transform_with_unknown_attribute_is_skipped() -> None:
    weird = Transform(T.ENCR, EncrId.AES_GCM_16, 256, (TransformAttribute(99, 1),))
    prop = Proposal(
        1, ProtocolId.IKE, b"", (weird, _t(T.ENCR, EncrId.AES_GCM_16, 128), *STRONGSWAN_AEAD.transforms[2:])
    )
    sel = select_ike(sa(prop), DEFAULT_IKE_PROPOSALS, DhId.ECP256)
    assert sel.algorithms.key_bits == 128


def test_aead_with_integrity_other_than_none_is_refused() -> None:
    bad = Proposal(
        1,
        ProtocolId.IKE,
        b"",
        (
            _t(T.ENCR, EncrId.AES_GCM_16, 256),
            _t(T.INTEG, IntegId.HMAC_SHA2_256_128),
            _t(T.PRF, PrfId.HMAC_SHA2_256),
            _t(T.DH, DhId.CURVE25519),
        ),
    )
    with pytest.raises(NoProposalChosen):
        select_ike(sa(bad), DEFAULT_IKE_PROPOSALS, DhId.CURVE25519)
    ok = Proposal(
        1,
        ProtocolId.IKE,
        b"",
        (
            _t(T.ENCR, EncrId.AES_GCM_16, 256),
            _t(T.INTEG, IntegId.NONE),
            _t(T.PRF, PrfId.HMAC_SHA2_256),
            _t(T.DH, DhId.CURVE25519),
        ),
    )
    sel = select_ike(sa(ok), DEFAULT_IKE_PROPOSALS, DhId.CURVE25519)
    assert (T.INTEG, IntegId.NONE) in [(t.type, t.id) for t in sel.proposal.transforms]


def test_rekey_proposals_need_an_eight_byte_spi() -> None:
    spi = b"\x01" * 8
    rekey = Proposal(1, ProtocolId.IKE, spi, STRONGSWAN_AEAD.transforms)
    sel = select_ike(sa(rekey), DEFAULT_IKE_PROPOSALS, DhId.CURVE25519, spi=b"\x02" * 8, rekey=True)
    assert sel.spi == spi and sel.proposal.spi == b"\x02" * 8
    with pytest.raises(NoProposalChosen):
        select_ike(sa(STRONGSWAN_AEAD), DEFAULT_IKE_PROPOSALS, DhId.CURVE25519, rekey=True)


# --- ESP


MACOS_ESP = Proposal(
    1, ProtocolId.ESP, b"\xaa\xbb\xcc\xdd", (_t(T.ENCR, EncrId.AES_GCM_16, 256), _t(T.ESN, EsnId.NO_ESN))
)
LIBRESWAN_PFS = Proposal(
    1,
    ProtocolId.ESP,
    b"\x01\x02\x03\x04",
    (
        _t(T.ENCR, EncrId.AES_GCM_16, 256),
        _t(T.ENCR, EncrId.AES_GCM_16, 128),
        _t(T.DH, DhId.MODP2048),
        _t(T.DH, DhId.CURVE25519),
        _t(T.ESN, EsnId.ESN),
        _t(T.ESN, EsnId.NO_ESN),
    ),
)


def test_esp_without_pfs_is_accepted_by_default_macos() -> None:
    sel = select_esp(sa(MACOS_ESP), (EspProposal(),), None, spi=b"\x11\x22\x33\x44", in_ike_auth=False)
    assert sel.algorithms.dh == DhId.NONE and not sel.algorithms.esn
    assert sel.spi == b"\xaa\xbb\xcc\xdd" and sel.proposal.spi == b"\x11\x22\x33\x44"
    with pytest.raises(NoProposalChosen):
        select_esp(
            sa(MACOS_ESP),
            (EspProposal(),),
            None,
            spi=b"\x11\x22\x33\x44",
            in_ike_auth=False,
            require_pfs=True,
        )


def test_esp_pfs_with_any_supported_group_in_the_proposal() -> None:
    sel = select_esp(
        sa(LIBRESWAN_PFS), (EspProposal(),), DhId.MODP2048, spi=b"\x01\x01\x01\x01", in_ike_auth=False
    )
    assert sel.algorithms.dh == DhId.MODP2048
    assert sel.algorithms.esn is False  # our order prefers no ESN
    assert [t.type for t in sel.proposal.transforms] == [T.ENCR, T.DH, T.ESN]


def test_esp_pfs_restricted_to_configured_groups() -> None:
    only_x25519 = (EspProposal(dh=(DhId.CURVE25519,)),)
    with pytest.raises(InvalidKeGroup) as exc:
        select_esp(sa(LIBRESWAN_PFS), only_x25519, DhId.MODP2048, spi=b"\x01\x01\x01\x01", in_ike_auth=False)
    assert exc.value.group == DhId.CURVE25519


def test_esp_pfs_proposal_without_ke_asks_for_a_group() -> None:
    with pytest.raises(InvalidKeGroup) as exc:
        select_esp(sa(LIBRESWAN_PFS), (EspProposal(),), None, spi=b"\x01\x01\x01\x01", in_ike_auth=False)
    assert exc.value.group == DhId.CURVE25519


def test_esp_in_ike_auth_ignores_dh_transforms() -> None:
    sel = select_esp(sa(LIBRESWAN_PFS), (EspProposal(),), None, spi=b"\x01\x01\x01\x01", in_ike_auth=True)
    assert sel.algorithms.dh == DhId.NONE
    assert T.DH not in [t.type for t in sel.proposal.transforms]


def test_esp_spi_must_be_four_bytes() -> None:
    bad = Proposal(1, ProtocolId.ESP, b"\x01\x02", MACOS_ESP.transforms)
    with pytest.raises(NoProposalChosen):
        select_esp(sa(bad), (EspProposal(),), None, spi=b"\x01\x01\x01\x01", in_ike_auth=True)


def test_esp_cbc_refused_when_only_gcm_configured() -> None:
    cbc = Proposal(
        1,
        ProtocolId.ESP,
        b"\x01\x02\x03\x04",
        (_t(T.ENCR, EncrId.AES_CBC, 256), _t(T.INTEG, IntegId.HMAC_SHA2_256_128), _t(T.ESN, EsnId.NO_ESN)),
    )
    with pytest.raises(NoProposalChosen):
        select_esp(sa(cbc), (EspProposal(),), None, spi=b"\x01\x01\x01\x01", in_ike_auth=True)


# --- initiator checks


def test_accept_ike_response_round_trip() -> None:
    sent = ike_proposals(DEFAULT_IKE_PROPOSALS)
    sel = select_ike(sa(*sent), DEFAULT_IKE_PROPOSALS, DhId.CURVE25519)
    got = accept_ike_response(sent, sa(sel.proposal))
    assert got.algorithms == sel.algorithms


@pytest.mark.parametrize(
    "answer",
    [
        Proposal(
            1,
            ProtocolId.IKE,
            b"",
            (_t(T.ENCR, EncrId.AES_GCM_16, 192), _t(T.PRF, PrfId.HMAC_SHA2_256), _t(T.DH, DhId.CURVE25519)),
        ),
        Proposal(
            7,
            ProtocolId.IKE,
            b"",
            (_t(T.ENCR, EncrId.AES_GCM_16, 256), _t(T.PRF, PrfId.HMAC_SHA2_256), _t(T.DH, DhId.CURVE25519)),
        ),
        Proposal(1, ProtocolId.IKE, b"", (_t(T.ENCR, EncrId.AES_GCM_16, 256), _t(T.DH, DhId.CURVE25519))),
        Proposal(
            1,
            ProtocolId.IKE,
            b"",
            (
                _t(T.ENCR, EncrId.AES_GCM_16, 256),
                _t(T.ENCR, EncrId.AES_GCM_16, 128),
                _t(T.PRF, PrfId.HMAC_SHA2_256),
                _t(T.DH, DhId.CURVE25519),
            ),
        ),
        Proposal(
            1,
            ProtocolId.ESP,
            b"",
            (_t(T.ENCR, EncrId.AES_GCM_16, 256), _t(T.PRF, PrfId.HMAC_SHA2_256), _t(T.DH, DhId.CURVE25519)),
        ),
    ],
    ids=["key-length-not-offered", "unknown-num", "missing-prf", "two-encr", "wrong-protocol"],
)
def test_accept_ike_response_refuses_what_we_did_not_offer(answer: Proposal) -> None:
    with pytest.raises(NoProposalChosen):
        accept_ike_response(ike_proposals(DEFAULT_IKE_PROPOSALS), sa(answer))


def test_accept_esp_response() -> None:
    sent = esp_proposals((EspProposal(),), b"\x09\x09\x09\x09", with_dh=False)
    sel = select_esp(sa(*sent), (EspProposal(),), None, spi=b"\x05\x05\x05\x05", in_ike_auth=True)
    got = accept_esp_response(sent, sa(sel.proposal))
    assert got.spi == b"\x05\x05\x05\x05" and got.algorithms.key_bits == 256
    zero = Proposal(1, ProtocolId.ESP, b"\x00\x00\x00\x00", sel.proposal.transforms)
    with pytest.raises(NoProposalChosen):
        accept_esp_response(sent, sa(zero))


def test_unsupported_ids_are_not_offered() -> None:
    prop = IkeProposal(
        ((EncrId.AES_GCM_16, 256), (EncrId.CHACHA20_POLY1305, 256)),
        (PrfId.HMAC_SHA2_256, PrfId.AES128_XCBC),
        (DhId.CURVE25519, DhId.MODP1024),
    )
    (p,) = ike_proposals((prop,))
    assert {int(t.id) for t in p.transforms} == {EncrId.AES_GCM_16, PrfId.HMAC_SHA2_256, DhId.CURVE25519}


# --- traffic selectors


def ts(net: str, proto: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
    return TrafficSelector.from_network(net, proto, ports)


def test_narrow_full_tunnel_to_a_virtual_address() -> None:
    got = narrow((ts("0.0.0.0/0"), ts("::/0")), (TrafficSelector.from_address("10.9.0.5"),))
    assert got == (TrafficSelector.from_address("10.9.0.5"),)


def test_narrow_to_split_subnets_keeps_request_order() -> None:
    got = narrow((ts("0.0.0.0/0"),), (ts("10.0.0.0/8"), ts("192.168.1.0/24")))
    assert got == (ts("10.0.0.0/8"), ts("192.168.1.0/24"))


def test_narrow_protocol_and_ports() -> None:
    got = narrow((ts("10.0.0.0/8", 6, (0, 65535)),), (ts("10.1.0.0/16", 0, (443, 443)),))
    assert got == (ts("10.1.0.0/16", 6, (443, 443)),)
    assert narrow((ts("10.0.0.0/8", 6),), (ts("10.0.0.0/8", 17),)) == ()


def test_narrow_nothing_in_common() -> None:
    assert narrow((ts("192.168.0.0/16"),), (ts("10.0.0.0/8"),)) == ()
    assert narrow((ts("::/0"),), (ts("10.0.0.0/8"),)) == ()


def test_within() -> None:
    offered = (ts("0.0.0.0/0"), ts("::/0"))
    assert within((TrafficSelector.from_address("10.0.0.1"),), offered)
    assert not within((), offered)
    assert not within((ts("10.0.0.0/8"),), (ts("10.0.0.0/9"),))
