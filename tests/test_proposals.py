"""strongSwan-style proposal strings (vpn/proposals.py): every keyword, any order, and
errors that name the keyword and the fix (RFC 7296 §3.3, CHECKLIST K06)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpn.ike.constants import DhId, EncrId, EsnId, IntegId, PrfId
from vpn.ike.negotiate import esp_proposals, ike_proposals
from vpn.ike.policy import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, EspProposal, IkeProposal
from vpn.proposals import (
    ESP_KEYWORDS,
    IKE_KEYWORDS,
    ProposalError,
    parse_esp_proposal,
    parse_esp_proposals,
    parse_ike_proposal,
    parse_ike_proposals,
    requires_pfs,
)

GCM128, GCM256 = (EncrId.AES_GCM_16, 128), (EncrId.AES_GCM_16, 256)
CBC128, CBC256 = (EncrId.AES_CBC, 128), (EncrId.AES_CBC, 256)


# --------------------------------------------------------------------------- IKE


@pytest.mark.parametrize(
    ("word", "encr"),
    [("aes128gcm16", GCM128), ("aes128gcm", GCM128), ("aes256gcm16", GCM256), ("aes256gcm", GCM256)],
)
def test_ike_gcm_keywords(word: str, encr: tuple[EncrId, int]) -> None:
    assert parse_ike_proposal(f"{word}-prfsha256-ecp256") == IkeProposal(
        encr=(encr,), prf=(PrfId.HMAC_SHA2_256,), dh=(DhId.ECP256,)
    )


@pytest.mark.parametrize(
    ("word", "integ", "prf"),
    [
        ("sha256", IntegId.HMAC_SHA2_256_128, PrfId.HMAC_SHA2_256),
        ("sha384", IntegId.HMAC_SHA2_384_192, PrfId.HMAC_SHA2_384),
        ("sha512", IntegId.HMAC_SHA2_512_256, PrfId.HMAC_SHA2_512),
    ],
)
@pytest.mark.parametrize(("cbc", "encr"), [("aes128", CBC128), ("aes256", CBC256)])
def test_ike_cbc_takes_the_prf_of_its_integrity(
    cbc: str, encr: tuple[EncrId, int], word: str, integ: IntegId, prf: PrfId
) -> None:
    assert parse_ike_proposal(f"{cbc}-{word}-modp2048") == IkeProposal(
        encr=(encr,), prf=(prf,), dh=(DhId.MODP2048,), integ=(integ,)
    )


def test_ike_cbc_without_prf_takes_the_strongest_hash_and_keeps_integrity_order() -> None:
    p = parse_ike_proposal("aes256-sha256-sha512-sha384-ecp256")
    assert p.integ == (IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA2_512_256, IntegId.HMAC_SHA2_384_192)
    assert p.prf == (PrfId.HMAC_SHA2_512,)
    assert parse_ike_proposal("aes256-sha512-prfsha256-ecp256").prf == (PrfId.HMAC_SHA2_256,)


@pytest.mark.parametrize(
    ("word", "prf"),
    [("prfsha256", PrfId.HMAC_SHA2_256), ("prfsha384", PrfId.HMAC_SHA2_384), ("prfsha512", PrfId.HMAC_SHA2_512)],
)
def test_ike_prf_keywords(word: str, prf: PrfId) -> None:
    assert parse_ike_proposal(f"aes256gcm16-{word}-ecp384").prf == (prf,)


def test_ike_gcm_without_prf_gets_prfsha256() -> None:
    assert parse_ike_proposal("aes256gcm16-ecp384").prf == (PrfId.HMAC_SHA2_256,)


@pytest.mark.parametrize(
    ("word", "group"),
    [
        ("modp2048", DhId.MODP2048),
        ("modp3072", DhId.MODP3072),
        ("modp4096", DhId.MODP4096),
        ("ecp256", DhId.ECP256),
        ("ecp384", DhId.ECP384),
        ("ecp521", DhId.ECP521),
        ("x25519", DhId.CURVE25519),
        ("curve25519", DhId.CURVE25519),
    ],
)
def test_dh_keywords(word: str, group: DhId) -> None:
    assert parse_ike_proposal(f"aes128gcm16-prfsha256-{word}").dh == (group,)
    assert parse_esp_proposal(f"aes128gcm16-{word}").dh == (group,)


def test_keyword_order_does_not_matter_but_listing_order_is_preference() -> None:
    a = parse_ike_proposal("aes256gcm16-aes128gcm16-prfsha384-prfsha256-ecp384-x25519")
    b = parse_ike_proposal("ecp384-prfsha384-aes256gcm16-x25519-prfsha256-aes128gcm16")
    assert a == b
    assert a.encr == (GCM256, GCM128)
    assert a.prf == (PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_256)
    assert a.dh == (DhId.ECP384, DhId.CURVE25519)
    assert parse_ike_proposal("x25519-ecp384-aes256gcm16").dh == (DhId.CURVE25519, DhId.ECP384)


def test_case_spaces_duplicates_aliases_and_strict_flag() -> None:
    want = IkeProposal(encr=(GCM256,), prf=(PrfId.HMAC_SHA2_384,), dh=(DhId.CURVE25519,))
    assert parse_ike_proposal(" AES256GCM16-PrfSha384-X25519 ") == want
    assert parse_ike_proposal("aes256gcm16-aes256gcm-prfsha384-x25519-curve25519") == want
    assert parse_ike_proposal("aes256gcm16-prfsha384-x25519!") == want  # ipsec.conf strict flag


def test_parsed_ike_proposal_goes_on_the_wire_unchanged() -> None:
    """Nothing the parser emits is dropped as unsupported when the SA payload is built."""
    p = parse_ike_proposal("aes256-aes128-sha384-sha256-prfsha512-modp4096-ecp521-x25519")
    (wire,) = ike_proposals([p])
    assert len(wire.transforms) == 2 + 1 + 2 + 3
    (esp,) = esp_proposals([parse_esp_proposal("aes256gcm16-ecp521-modp3072-esn")], b"\x01\x02\x03\x04", with_dh=True)
    assert len(esp.transforms) == 1 + 2 + 1


# --------------------------------------------------------------------------- ESP


def test_esp_defaults_and_esn() -> None:
    assert parse_esp_proposal("aes256gcm16") == EspProposal(encr=(GCM256,), dh=(), esn=(EsnId.NO_ESN, EsnId.ESN))
    assert parse_esp_proposal("aes128gcm-esn").esn == (EsnId.ESN,)
    assert parse_esp_proposal("noesn-aes128gcm").esn == (EsnId.NO_ESN,)
    assert parse_esp_proposal("aes128gcm-esn-noesn").esn == (EsnId.ESN, EsnId.NO_ESN)
    p = parse_esp_proposal("ecp384-aes256gcm16-aes128gcm16-noesn")
    assert p == EspProposal(encr=(GCM256, GCM128), dh=(DhId.ECP384,), esn=(EsnId.NO_ESN,))
    assert p.integ == ()


def test_requires_pfs_only_when_every_esp_proposal_names_a_group() -> None:
    assert requires_pfs(parse_esp_proposals(["aes256gcm16-ecp384", "aes128gcm16-x25519"]))
    assert not requires_pfs(parse_esp_proposals(["aes256gcm16-ecp384", "aes128gcm16"]))
    assert not requires_pfs(DEFAULT_ESP_PROPOSALS)


# --------------------------------------------------------------------------- lists


def test_lists_and_the_default_keyword() -> None:
    mine = parse_ike_proposal("aes256gcm16-prfsha384-ecp384")
    assert parse_ike_proposals(["aes256gcm16-prfsha384-ecp384"]) == (mine,)
    assert parse_ike_proposals(["aes256gcm16-prfsha384-ecp384", "default"]) == (mine, *DEFAULT_IKE_PROPOSALS)
    assert parse_ike_proposals(["DEFAULT", "default"]) == DEFAULT_IKE_PROPOSALS
    assert parse_esp_proposals(["default"]) == DEFAULT_ESP_PROPOSALS
    assert parse_esp_proposals(["aes128gcm16", "aes256gcm16-esn"]) == (
        parse_esp_proposal("aes128gcm16"),
        parse_esp_proposal("aes256gcm16-esn"),
    )


@pytest.mark.parametrize("parse", [parse_ike_proposals, parse_esp_proposals])
def test_empty_list_is_refused(parse: object) -> None:
    with pytest.raises(ProposalError, match="leave the key out"):
        parse([])  # type: ignore[operator]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("aes256gcm16-prfsha384-ecp385", ["'ecp385'", "use one of", "ecp384"]),
        ("aes192-sha256-ecp256", ["'aes192'", "use one of", "aes256"]),
        ("aes256gcm16-sha1-ecp256", ["'sha1'", "use one of"]),
        ("aes256gcm16-modp1024", ["'modp1024'", "modp2048"]),
        ("prfsha256-ecp256", ["no encryption keyword", "add aes256gcm16"]),
        ("sha256-ecp256", ["no encryption keyword"]),
        ("aes256gcm16-prfsha256", ["no Diffie-Hellman group", "add one", "ecp384"]),
        ("aes256gcm16-sha256-ecp256", ["'aes256gcm16'", "'sha256'", "remove 'sha256'", "separate proposal"]),
        ("aes256gcm16-aes256-sha384-ecp256", ["'sha384'", "separate proposal"]),
        ("aes256-ecp256", ["'aes256'", "no integrity keyword", "add sha256", "aes256gcm16"]),
        ("aes256gcm16-esn-ecp256", ["'esn'", "ESP keyword", "remove it"]),
        ("", ["empty proposal", "dash-separated"]),
        ("aes256gcm16--ecp256", ["empty keyword", "dash"]),
        ("aes256gcm16-ecp256-", ["empty keyword"]),
    ],
)
def test_ike_errors_name_the_keyword_and_the_fix(text: str, words: list[str]) -> None:
    with pytest.raises(ProposalError) as e:
        parse_ike_proposal(text)
    for w in words:
        assert w in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)
    assert e.value.problem and e.value.fix and str(e.value) == f"{e.value.problem} ({e.value.fix})"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("aes256-sha256", ["'aes256'", "AES-GCM-16 only", "use aes256gcm16"]),
        ("aes128-ecp256", ["'aes128'", "AES-GCM-16 only"]),
        ("aes256gcm16-sha256", ["'sha256'", "AES-GCM-16 only", "without an integrity keyword"]),
        ("aes256gcm16-prfsha256", ["'prfsha256'", "PRF", "ike_proposals"]),
        ("aes256gcm16-chacha20poly1305", ["'chacha20poly1305'", "use one of", "noesn"]),
        ("ecp256-esn", ["no encryption keyword", "aes256gcm16"]),
    ],
)
def test_esp_errors_name_the_keyword_and_the_fix(text: str, words: list[str]) -> None:
    with pytest.raises(ProposalError) as e:
        parse_esp_proposal(text)
    for w in words:
        assert w in str(e.value), str(e.value)


# --------------------------------------------------------------------------- fuzz

_WORDS = sorted(IKE_KEYWORDS | ESP_KEYWORDS | {"aes192", "sha1", "default", "", "!", "prf", "GCM", "ésn"})


@given(st.lists(st.sampled_from(_WORDS), max_size=8), st.sampled_from(["-", "--", "_", " "]))
def test_keyword_soup_parses_or_raises_value_error(words: list[str], sep: str) -> None:
    text = sep.join(words)
    for parse in (parse_ike_proposal, parse_esp_proposal):
        try:
            got = parse(text)
        except ValueError as exc:
            assert isinstance(exc, ProposalError) and exc.problem and exc.fix
            continue
        assert got.encr  # whatever parses is usable: encryption always present
        if isinstance(got, IkeProposal):
            assert got.prf and got.dh
            assert not (got.integ and any(e == EncrId.AES_GCM_16 for e, _ in got.encr))
            assert len(ike_proposals([got])[0].transforms) == len(got.encr) + len(got.prf) + len(
                got.integ
            ) + len(got.dh)
        else:
            assert all(e == EncrId.AES_GCM_16 for e, _ in got.encr) and not got.integ


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    for parse in (parse_ike_proposal, parse_esp_proposal):
        try:
            parse(text)
        except ProposalError:
            pass
    try:
        parse_ike_proposals(text.split(","))
        parse_esp_proposals(text.split(","))
    except ProposalError:
        pass
