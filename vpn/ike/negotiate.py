"""Proposal selection (RFC 7296 §2.7, §3.3) and traffic selector narrowing (§2.9).

Responder side: `select_ike` / `select_esp` pick one proposal and one transform per type
from what the peer offered, in this side's order of preference, and build the single
proposal of the response. A KE payload in a group the chosen proposal allows is taken
as is; only when no acceptable proposal allows the KE group is INVALID_KE_PAYLOAD asked
for, naming our preferred group (RFC 7296 §1.2, §1.3; CHECKLIST §2.1).

Initiator side: `accept_ike_response` / `accept_esp_response` check that the responder's
proposal is one we offered, with one of our transforms per type (§3.3.6).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vpn.ike.constants import (
    DhId,
    EncrId,
    EsnId,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from vpn.ike.crypto import SUPPORTED_DH_GROUPS, SUPPORTED_ENCR, SUPPORTED_INTEG, SUPPORTED_PRFS
from vpn.ike.errors import RemoteProtocolError
from vpn.ike.events import EspAlgorithms, IkeAlgorithms
from vpn.ike.payloads import Proposal, SecurityAssociation, TrafficSelector, Transform
from vpn.ike.policy import EspProposal, IkeProposal

IKE_SPI_BYTES = 8
ESP_SPI_BYTES = 4
_KNOWN_TYPES = frozenset(int(t) for t in TransformType)
_AEAD = frozenset({EncrId.AES_GCM_16})


class NoProposalChosen(RemoteProtocolError):
    """Nothing the peer offered is acceptable (or its answer is not what we offered)."""

    notify = NotifyType.NO_PROPOSAL_CHOSEN


class InvalidKeGroup(RemoteProtocolError):
    """An acceptable proposal exists, but not for the KE payload's group.

    `group` is the one to ask for in INVALID_KE_PAYLOAD (RFC 7296 §1.2).
    """

    notify = NotifyType.INVALID_KE_PAYLOAD

    def __init__(self, group: DhId) -> None:
        super().__init__(f"KE group not acceptable, {group.name} wanted")
        self.group = group


@dataclass(frozen=True, slots=True)
class IkeSelection:
    proposal: Proposal  # the response's SA proposal (one transform per type)
    algorithms: IkeAlgorithms
    spi: bytes  # the SPI in the chosen proposal (CREATE_CHILD_SA IKE rekey), else b""


@dataclass(frozen=True, slots=True)
class EspSelection:
    proposal: Proposal
    algorithms: EspAlgorithms
    spi: bytes  # the peer's SPI from its chosen proposal


# --------------------------------------------------------------------------- matching


def _plain(t: Transform) -> bool:
    # §3.3.6: a transform with an attribute we do not understand is not acceptable.
    return not t.attributes


def _pick(ours: Iterable[Transform], theirs: Sequence[Transform]) -> list[Transform]:
    """Our transforms (in our order) that the peer also offered, exactly."""
    offered = {(int(t.id), t.key_length) for t in theirs if _plain(t)}
    return [t for t in ours if (int(t.id), t.key_length) in offered]


def _usable(t: Transform) -> bool:
    if t.type == TransformType.ENCR:
        return t.id in SUPPORTED_ENCR and t.key_length in (128, 192, 256)
    if t.type == TransformType.PRF:
        return t.id in SUPPORTED_PRFS
    if t.type == TransformType.INTEG:
        return t.id in SUPPORTED_INTEG or t.id == IntegId.NONE
    if t.type == TransformType.DH:
        return t.id in SUPPORTED_DH_GROUPS or t.id == DhId.NONE
    return t.type == TransformType.ESN and t.id in (EsnId.NO_ESN, EsnId.ESN)


@dataclass(slots=True)
class _Match:
    encr: Transform
    integ: Transform | None
    prf: Transform | None
    dh: Transform | None  # None: the peer offered no DH type at all
    esn: Transform | None
    needs_group: DhId | None  # set when the KE group is not the chosen one


def _match(
    ours: Proposal,
    theirs: Proposal,
    *,
    need_prf: bool,
    need_dh: bool,
    ke_group: int | None,
    dh_prefs: Sequence[Transform] | None,
) -> _Match | None:
    """One suite from `theirs` acceptable under `ours`, or None (§2.7, §3.3.3)."""
    if theirs.transform_types() - _KNOWN_TYPES:
        return None  # §3.3.3: a proposal with an unknown transform type is unacceptable
    t_encr = theirs.transforms_of(TransformType.ENCR)
    t_integ = theirs.transforms_of(TransformType.INTEG)
    t_prf = theirs.transforms_of(TransformType.PRF)
    t_dh = theirs.transforms_of(TransformType.DH)
    t_esn = theirs.transforms_of(TransformType.ESN)
    prf = None
    if need_prf or t_prf:
        prfs = _pick(ours.transforms_of(TransformType.PRF), t_prf)
        if not prfs:
            return None
        prf = prfs[0]
    esn = None
    if t_esn:
        esns = _pick(ours.transforms_of(TransformType.ESN), t_esn)
        if not esns:
            return None
        esn = esns[0]
    dh_match = _match_dh(
        dh_prefs if dh_prefs is not None else ours.transforms_of(TransformType.DH),
        t_dh,
        need_dh=need_dh,
        ke_group=ke_group,
    )
    if dh_match is None:
        return None
    dh, needs = dh_match
    for encr in _pick(ours.transforms_of(TransformType.ENCR), t_encr):
        if encr.id in _AEAD:
            # RFC 5282 §8: with an AEAD only "no integrity" is acceptable.
            if t_integ and not any(t.id == IntegId.NONE for t in t_integ):
                continue
            integ = Transform(TransformType.INTEG, IntegId.NONE) if t_integ else None
        else:
            integs = [t for t in _pick(ours.transforms_of(TransformType.INTEG), t_integ)]
            integs = [t for t in integs if t.id != IntegId.NONE]
            if not integs:
                continue
            integ = integs[0]
        return _Match(encr, integ, prf, dh, esn, needs)
    return None


def _match_dh(
    ours: Sequence[Transform], theirs: Sequence[Transform], *, need_dh: bool, ke_group: int | None
) -> tuple[Transform | None, DhId | None] | None:
    """(chosen DH transform or None for no DH type, group to ask for), None if impossible."""
    if not theirs:
        if need_dh or ke_group is not None:
            return None
        return None, None
    common = _pick(ours, theirs)
    if ke_group is not None:
        for t in common:
            if t.id == ke_group:
                return t, None
        groups = [t for t in common if t.id != DhId.NONE]
        return (groups[0], DhId(groups[0].id)) if groups else None
    # No KE payload: only "no DH" is possible, else ask for a group.
    for t in common:
        if t.id == DhId.NONE:
            return t, None
    if need_dh:
        return None
    groups = [t for t in common if t.id != DhId.NONE]
    return (groups[0], DhId(groups[0].id)) if groups else None


def _select(
    ours: Sequence[Proposal],
    offered: Sequence[Proposal],
    protocol: ProtocolId,
    spi_size: int,
    *,
    need_prf: bool,
    need_dh: bool,
    ke_group: int | None,
    dh_prefs: Sequence[Transform] | None = None,
) -> tuple[Proposal, _Match]:
    first_mismatch: DhId | None = None
    for mine in ours:
        for theirs in offered:
            if theirs.protocol != protocol or len(theirs.spi) != spi_size:
                continue
            m = _match(mine, theirs, need_prf=need_prf, need_dh=need_dh, ke_group=ke_group, dh_prefs=dh_prefs)
            if m is None:
                continue
            if m.needs_group is None:
                return theirs, m
            if first_mismatch is None:
                first_mismatch = m.needs_group
    if first_mismatch is not None:
        raise InvalidKeGroup(first_mismatch)
    raise NoProposalChosen("no acceptable proposal")


def _answer(theirs: Proposal, m: _Match, spi: bytes) -> Proposal:
    chosen = [m.encr]
    if m.prf is not None:
        chosen.append(m.prf)
    if m.integ is not None:
        chosen.append(m.integ)
    if m.dh is not None:
        chosen.append(m.dh)
    if m.esn is not None:
        chosen.append(m.esn)
    return Proposal(theirs.num, theirs.protocol, spi, tuple(chosen))


def _ike_algorithms(m: _Match) -> IkeAlgorithms:
    assert m.prf is not None and m.dh is not None and m.encr.key_length is not None
    return IkeAlgorithms(
        EncrId(m.encr.id),
        m.encr.key_length,
        PrfId(m.prf.id),
        IntegId(m.integ.id) if m.integ is not None else IntegId.NONE,
        DhId(m.dh.id),
    )


def _esp_algorithms(m: _Match) -> EspAlgorithms:
    assert m.encr.key_length is not None
    return EspAlgorithms(
        EncrId(m.encr.id),
        m.encr.key_length,
        IntegId(m.integ.id) if m.integ is not None else IntegId.NONE,
        m.esn is not None and m.esn.id == EsnId.ESN,
        DhId(m.dh.id) if m.dh is not None else DhId.NONE,
    )


def ike_proposals(configured: Sequence[IkeProposal], spi: bytes = b"") -> list[Proposal]:
    """Our IKE proposals as SA payload proposals, numbered from 1, unsupported IDs dropped."""
    out: list[Proposal] = []
    for p in configured:
        prop = p.to_proposal(len(out) + 1, spi)
        out.append(Proposal(prop.num, prop.protocol, prop.spi, tuple(filter(_usable, prop.transforms))))
    return out


def esp_proposals(
    configured: Sequence[EspProposal], spi: bytes, *, with_dh: bool, dh: DhId | None = None
) -> list[Proposal]:
    out: list[Proposal] = []
    for p in configured:
        prop = p.to_proposal(len(out) + 1, spi, with_dh=with_dh, dh=dh)
        out.append(Proposal(prop.num, prop.protocol, spi, tuple(filter(_usable, prop.transforms))))
    return out


# --------------------------------------------------------------------------- responder


def select_ike(
    offered: SecurityAssociation,
    configured: Sequence[IkeProposal],
    ke_group: int | None,
    *,
    spi: bytes = b"",
    rekey: bool = False,
) -> IkeSelection:
    """Choose the IKE SA suite (IKE_SA_INIT, or an IKE rekey with `rekey` and our new
    `spi`). Raises NoProposalChosen or InvalidKeGroup."""
    ours = ike_proposals(configured)
    spi_size = IKE_SPI_BYTES if rekey else 0
    theirs, m = _select(
        ours, offered.proposals, ProtocolId.IKE, spi_size, need_prf=True, need_dh=True, ke_group=ke_group
    )
    return IkeSelection(_answer(theirs, m, spi), _ike_algorithms(m), theirs.spi)


def select_esp(
    offered: SecurityAssociation,
    configured: Sequence[EspProposal],
    ke_group: int | None,
    *,
    spi: bytes,
    in_ike_auth: bool,
    require_pfs: bool = False,
) -> EspSelection:
    """Choose the Child SA suite; our inbound `spi` goes in the answer.

    In IKE_AUTH there is no KE, so DH transforms offered are ignored (RFC 7296 §1.2).
    Elsewhere a KE gives PFS in the groups of our proposals (any supported group when
    none are configured); no KE is accepted unless `require_pfs` (macOS rekeys without
    KE, CHECKLIST X1).
    """
    offered_props = list(offered.proposals)
    if in_ike_auth:
        offered_props = [
            Proposal(p.num, p.protocol, p.spi, tuple(t for t in p.transforms if t.type != TransformType.DH))
            for p in offered_props
        ]
        ke_group = None
    ours = esp_proposals(configured, spi, with_dh=False)
    dh_prefs: list[Transform] = []
    if not in_ike_auth:
        groups: list[DhId] = []
        for c in configured:
            groups += [g for g in c.dh if g not in groups]
        if not groups:  # no PFS groups configured: take any the peer may want
            groups = list(_DH_PREFERENCE)
        dh_prefs = [Transform(TransformType.DH, g) for g in groups if g in SUPPORTED_DH_GROUPS]
        if not require_pfs:
            dh_prefs.append(Transform(TransformType.DH, DhId.NONE))
    theirs, m = _select(
        ours,
        offered_props,
        ProtocolId.ESP,
        ESP_SPI_BYTES,
        need_prf=False,
        need_dh=require_pfs and not in_ike_auth,
        ke_group=ke_group,
        dh_prefs=dh_prefs,
    )
    return EspSelection(_answer(theirs, m, spi), _esp_algorithms(m), theirs.spi)


_DH_PREFERENCE = (
    DhId.CURVE25519,
    DhId.ECP256,
    DhId.ECP384,
    DhId.ECP521,
    DhId.MODP2048,
    DhId.MODP3072,
    DhId.MODP4096,
)


# --------------------------------------------------------------------------- initiator


def _accept(
    sent: Sequence[Proposal], answer: SecurityAssociation, protocol: ProtocolId
) -> tuple[Proposal, Proposal]:
    """(our proposal, the answer's proposal) after checking the answer is a subset."""
    if len(answer.proposals) != 1:
        raise NoProposalChosen("the response must hold exactly one proposal")
    got = answer.proposals[0]
    mine = next((p for p in sent if p.num == got.num), None)
    if mine is None or got.protocol != protocol:
        raise NoProposalChosen("the response names a proposal we did not send")
    seen: set[int] = set()
    for t in got.transforms:
        if int(t.type) in seen:
            raise NoProposalChosen("the response has two transforms of one type")
        seen.add(int(t.type))
        if t.type == TransformType.INTEG and t.id == IntegId.NONE:
            continue
        if t.type == TransformType.DH and t.id == DhId.NONE and not mine.transforms_of(TransformType.DH):
            continue
        if not any(
            (o.type, int(o.id), o.key_length) == (t.type, int(t.id), t.key_length) for o in mine.transforms
        ):
            raise NoProposalChosen(f"the response chose a transform we did not offer: {t}")
    for ttype in mine.transform_types():
        if ttype not in seen and ttype != TransformType.DH:
            raise NoProposalChosen(f"the response lacks transform type {ttype}")
    return mine, got


def accept_ike_response(
    sent: Sequence[Proposal], answer: SecurityAssociation, *, rekey: bool = False
) -> IkeSelection:
    """The suite the responder chose in IKE_SA_INIT (or an IKE rekey)."""
    _, got = _accept(sent, answer, ProtocolId.IKE)
    # §3.3.1: no SPI in IKE_SA_INIT (an 8-byte one is tolerated), the new SPI in a rekey.
    if len(got.spi) != IKE_SPI_BYTES if rekey else len(got.spi) not in (0, IKE_SPI_BYTES):
        raise NoProposalChosen("bad SPI size in the IKE proposal")
    m = _from_single(got)
    if m.prf is None or m.dh is None:
        raise NoProposalChosen("the IKE proposal lacks a PRF or DH transform")
    return IkeSelection(got, _ike_algorithms(m), got.spi)


def accept_esp_response(sent: Sequence[Proposal], answer: SecurityAssociation) -> EspSelection:
    """The Child SA suite the responder chose; `spi` is its inbound SPI (our outbound)."""
    _, got = _accept(sent, answer, ProtocolId.ESP)
    if len(got.spi) != ESP_SPI_BYTES or got.spi == bytes(ESP_SPI_BYTES):
        raise NoProposalChosen("bad SPI in the ESP proposal")
    return EspSelection(got, _esp_algorithms(_from_single(got)), got.spi)


def _from_single(p: Proposal) -> _Match:
    encr = p.transforms_of(TransformType.ENCR)
    if len(encr) != 1 or encr[0].key_length is None:
        raise NoProposalChosen("the proposal needs one ENCR transform with a key length")
    one = {int(t.type): t for t in p.transforms}
    integ = one.get(TransformType.INTEG)
    if encr[0].id not in _AEAD and (integ is None or integ.id == IntegId.NONE):
        raise NoProposalChosen("a non-AEAD cipher without integrity")
    if encr[0].id in _AEAD and integ is not None and integ.id != IntegId.NONE:
        raise NoProposalChosen("an AEAD cipher with an integrity transform")
    return _Match(
        encr[0],
        integ,
        one.get(TransformType.PRF),
        one.get(TransformType.DH),
        one.get(TransformType.ESN),
        None,
    )


# --------------------------------------------------------------------------- selectors


def narrow(
    requested: Sequence[TrafficSelector], allowed: Sequence[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """The parts of `requested` inside `allowed` (RFC 7296 §2.9), in request order.

    Empty means TS_UNACCEPTABLE. Duplicates are removed.
    """
    out: list[TrafficSelector] = []
    for r in requested:
        for a in allowed:
            x = r.intersect(a)
            if x is not None and x not in out:
                out.append(x)
    return tuple(out)


def within(got: Sequence[TrafficSelector], offered: Sequence[TrafficSelector]) -> bool:
    """Whether every selector in `got` lies inside one of `offered` (a correct narrowing)."""
    return bool(got) and all(any(o.intersect(g) == g for o in offered) for g in got)
