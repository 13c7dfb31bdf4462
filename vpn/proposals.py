"""strongSwan-style proposal strings -> the IKE policy's proposal objects.

The management facility to restrict the IKE and ESP suites (RFC 7296 §3.3, CHECKLIST
K06). A proposal is dash-separated keywords in any order, as in strongSwan's
`proposals` / `esp_proposals`:

    parse_ike_proposal("aes256gcm16-prfsha384-ecp384")   # CNSA-style IKE SA
    parse_ike_proposal("aes256-sha384-modp3072")         # AES-CBC + HMAC-SHA2-384-192
    parse_esp_proposal("aes256gcm16-ecp384-esn")         # ESP with PFS on CREATE_CHILD_SA

Keywords:

- encryption: `aes128gcm16`, `aes256gcm16` (aliases `aes128gcm`, `aes256gcm`); IKE also
  `aes128`, `aes256` (CBC), which need an integrity keyword. ESP is AES-GCM-16 only,
  because that is all the dataplane does.
- integrity (IKE, with CBC only): `sha256`, `sha384`, `sha512` (HMAC-SHA2-*, RFC 4868).
- PRF (IKE): `prfsha256`, `prfsha384`, `prfsha512`. Without one, a CBC proposal gets the
  PRF of its strongest integrity hash (strongSwan takes all of them), and an AES-GCM
  proposal, having no integrity hash to copy (RFC 5282 §8), gets `prfsha256` (strongSwan
  refuses it instead; a CNSA-style suite names `prfsha384`).
- DH groups: `modp2048` `modp3072` `modp4096` `ecp256` `ecp384` `ecp521` `x25519`
  (`curve25519`). Required for IKE; in ESP they mean PFS when Child SAs are created or
  rekeyed with CREATE_CHILD_SA (RFC 7296 §1.3.1), never in IKE_AUTH (§1.2). When every
  ESP proposal names a group, PFS is mandatory (`requires_pfs`). A responder accepts a
  KE in any group of any of its ESP proposals (negotiate.select_esp).
- ESN (ESP): `esn`, `noesn`; neither or both: either is accepted.

Within a proposal the listed order is the preference order. A trailing `!` (ipsec.conf's
strict flag) is accepted and ignored: the configured list is always the whole list. In a
list, the entry `default` stands for the built-in proposals.

Every error is a `ProposalError` (a ValueError) whose text names the keyword and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from vpn.ike.constants import DhId, EncrId, EsnId, IntegId, PrfId
from vpn.ike.policy import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, EspProposal, IkeProposal

_GCM: dict[str, tuple[EncrId, int]] = {
    "aes128gcm16": (EncrId.AES_GCM_16, 128),
    "aes128gcm": (EncrId.AES_GCM_16, 128),
    "aes256gcm16": (EncrId.AES_GCM_16, 256),
    "aes256gcm": (EncrId.AES_GCM_16, 256),
}
_CBC: dict[str, tuple[EncrId, int]] = {
    "aes128": (EncrId.AES_CBC, 128),
    "aes256": (EncrId.AES_CBC, 256),
}
_INTEG: dict[str, IntegId] = {
    "sha256": IntegId.HMAC_SHA2_256_128,
    "sha384": IntegId.HMAC_SHA2_384_192,
    "sha512": IntegId.HMAC_SHA2_512_256,
}
_PRF: dict[str, PrfId] = {
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}
# Without a prf keyword a CBC proposal takes the PRF of its strongest integrity hash.
_PRF_OF_INTEG: dict[IntegId, PrfId] = {
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
}
_DH: dict[str, DhId] = {
    "modp2048": DhId.MODP2048,
    "modp3072": DhId.MODP3072,
    "modp4096": DhId.MODP4096,
    "ecp256": DhId.ECP256,
    "ecp384": DhId.ECP384,
    "ecp521": DhId.ECP521,
    "x25519": DhId.CURVE25519,
    "curve25519": DhId.CURVE25519,
}
_ESN: dict[str, EsnId] = {"esn": EsnId.ESN, "noesn": EsnId.NO_ESN}

P = TypeVar("P", IkeProposal, EspProposal)

DEFAULT_KEYWORD = "default"
IKE_KEYWORDS = frozenset(_GCM) | frozenset(_CBC) | frozenset(_INTEG) | frozenset(_PRF) | frozenset(_DH)
ESP_KEYWORDS = frozenset(_GCM) | frozenset(_DH) | frozenset(_ESN)

_IKE_EXAMPLE = "e.g. aes256gcm16-prfsha384-ecp384"
_ESP_EXAMPLE = "e.g. aes256gcm16 or aes256gcm16-ecp384"


class ProposalError(ValueError):
    """A proposal string that cannot be used; `problem` and `fix` are for the user."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})")


def _keywords(text: str) -> list[str]:
    body = text.strip().lower()
    if body.endswith("!"):
        body = body[:-1]
    if not body:
        raise ProposalError("empty proposal", "write dash-separated keywords, " + _IKE_EXAMPLE)
    words = body.split("-")
    for w in words:
        if not w:
            raise ProposalError(f"empty keyword in {text!r}", "remove the doubled or trailing dash")
    return list(dict.fromkeys(words))  # a keyword given twice counts once


def _known(words: frozenset[str]) -> str:
    return ", ".join(sorted(words))


def _encryption(text: str, gcm: list[str], cbc: list[str], integ: list[str], *, example: str) -> None:
    """Checks shared by IKE and ESP: some encryption, AEAD never with integrity."""
    if not gcm and not cbc:
        raise ProposalError(f"no encryption keyword in {text!r}", f"add aes256gcm16 or aes128gcm16, {example}")
    if gcm and integ:
        # RFC 5282 §8, RFC 8221 §6: an AEAD proposal carries no integrity transform.
        raise ProposalError(
            f"{gcm[0]!r} (AES-GCM, which has its own integrity) is combined with integrity {integ[0]!r} "
            f"in {text!r}",
            f"remove {integ[0]!r}, or put AES-CBC with {integ[0]!r} in a separate proposal",
        )


def parse_ike_proposal(text: str) -> IkeProposal:
    """One IKE SA proposal from keywords (see the module docstring)."""
    gcm: list[str] = []
    cbc: list[str] = []
    integ: list[str] = []
    prf: list[str] = []
    dh: list[str] = []
    for w in _keywords(text):
        if w in _GCM:
            gcm.append(w)
        elif w in _CBC:
            cbc.append(w)
        elif w in _INTEG:
            integ.append(w)
        elif w in _PRF:
            prf.append(w)
        elif w in _DH:
            dh.append(w)
        elif w in _ESN:
            raise ProposalError(f"{w!r} in {text!r} is an ESP keyword", "remove it from ike_proposals")
        else:
            raise ProposalError(f"unknown keyword {w!r} in {text!r}", f"use one of {_known(IKE_KEYWORDS)}")
    _encryption(text, gcm, cbc, integ, example=_IKE_EXAMPLE)
    if cbc and not integ:
        raise ProposalError(
            f"{cbc[0]!r} (AES-CBC) has no integrity keyword in {text!r}",
            f"add sha256, sha384 or sha512, or use {cbc[0]}gcm16 instead",
        )
    if not dh:
        raise ProposalError(
            f"no Diffie-Hellman group in {text!r}", "add one, e.g. ecp256, ecp384, x25519 or modp3072"
        )
    encr = tuple(_GCM[w] for w in gcm) + tuple(_CBC[w] for w in cbc)
    integs = tuple(_INTEG[w] for w in integ)
    if prf:
        prfs = tuple(_PRF[w] for w in prf)
    elif integs:
        prfs = (_PRF_OF_INTEG[max(integs)],)  # IDs grow with the hash: 12 < 13 < 14
    else:
        prfs = (PrfId.HMAC_SHA2_256,)
    groups = tuple(dict.fromkeys(_DH[w] for w in dh))  # x25519 and curve25519 are one group
    return IkeProposal(encr=tuple(dict.fromkeys(encr)), prf=prfs, dh=groups, integ=integs)


def parse_esp_proposal(text: str) -> EspProposal:
    """One ESP (Child SA) proposal from keywords (see the module docstring)."""
    gcm: list[str] = []
    dh: list[str] = []
    esn: list[str] = []
    for w in _keywords(text):
        if w in _GCM:
            gcm.append(w)
        elif w in _DH:
            dh.append(w)
        elif w in _ESN:
            esn.append(w)
        elif w in _CBC or w in _INTEG:
            raise ProposalError(
                f"{w!r} in {text!r}: the dataplane does AES-GCM-16 only (RFC 4106), not AES-CBC or HMAC",
                "use aes256gcm16 or aes128gcm16 without an integrity keyword",
            )
        elif w in _PRF:
            raise ProposalError(
                f"{w!r} in {text!r} is a PRF, which ESP has none of",
                "remove it from esp_proposals; PRFs belong in ike_proposals",
            )
        else:
            raise ProposalError(f"unknown keyword {w!r} in {text!r}", f"use one of {_known(ESP_KEYWORDS)}")
    _encryption(text, gcm, [], [], example=_ESP_EXAMPLE)
    return EspProposal(
        encr=tuple(dict.fromkeys(_GCM[w] for w in gcm)),
        dh=tuple(dict.fromkeys(_DH[w] for w in dh)),
        esn=tuple(_ESN[w] for w in esn) if esn else EspProposal().esn,
    )


def parse_ike_proposals(texts: Sequence[str]) -> tuple[IkeProposal, ...]:
    """A list of IKE proposals, most preferred first; `default` adds the built-in ones."""
    return _parse_list(texts, parse_ike_proposal, DEFAULT_IKE_PROPOSALS, _IKE_EXAMPLE)


def parse_esp_proposals(texts: Sequence[str]) -> tuple[EspProposal, ...]:
    """A list of ESP proposals, most preferred first; `default` adds the built-in ones."""
    return _parse_list(texts, parse_esp_proposal, DEFAULT_ESP_PROPOSALS, _ESP_EXAMPLE)


def _parse_list(
    texts: Sequence[str], parse: Callable[[str], P], defaults: tuple[P, ...], example: str
) -> tuple[P, ...]:
    if not texts:
        raise ProposalError("the list is empty", f"give at least one proposal ({example}), or leave the key out")
    out: list[P] = []
    for text in texts:
        got = defaults if text.strip().lower() == DEFAULT_KEYWORD else (parse(text),)
        out += [p for p in got if p not in out]
    return tuple(out)


def requires_pfs(proposals: Sequence[EspProposal]) -> bool:
    """Whether every ESP proposal names a DH group: then a CREATE_CHILD_SA without KE
    (no PFS) matches none of them and is refused (RFC 7296 §1.3.1, §3.3.3)."""
    return bool(proposals) and all(p.dh for p in proposals)
