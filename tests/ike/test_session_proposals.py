"""Configured proposal restrictions (vpn/proposals.py, RFC 7296 §3.3, CHECKLIST K06)
negotiated by an initiator and a responder in memory: the chosen suite, the first KE
group, NO_PROPOSAL_CHOSEN, and PFS on Child SA rekeys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from tests.ike.roundtrip import Network, client_policy, connect, pair, server_policy
from tests.ike.test_session_init import front_door
from vpn import config, policies
from vpn.ike.constants import DhId, EncrId, ExchangeType, IntegId, NotifyType, PrfId
from vpn.ike.events import (
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaInfo,
    ChildSaRekeyed,
    CloseReason,
    EspAlgorithms,
    IkeAlgorithms,
    IkeSaClosed,
    IkeSaEstablished,
)
from vpn.ike.message import KeyExchange, Message
from vpn.ike.policy import ChildPolicy, Lifetimes
from vpn.proposals import parse_esp_proposals, parse_ike_proposals, requires_pfs

NO_REKEY = Lifetimes(ike_rekey_seconds=0, ike_lifetime_seconds=0, child_rekey_seconds=0, child_lifetime_seconds=0)
E = TypeVar("E")
CNSA = IkeAlgorithms(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_384, IntegId.NONE, DhId.ECP384)


def the(events: Sequence[object], cls: type[E]) -> E:
    found = [e for e in events if isinstance(e, cls)]
    assert len(found) == 1, events
    return found[0]


def ke_group(msg: Message) -> int:
    ke = msg.get(KeyExchange)
    assert ke is not None
    return ke.group


def inits(net: Network, src: str) -> list[Message]:
    msgs = [Message.decode(s.data) for s in net.sent_by(src)]
    return [m for m in msgs if m.exchange == ExchangeType.IKE_SA_INIT]


def children(events: Sequence[object]) -> list[ChildSaInfo]:
    return [e.child for e in events if isinstance(e, ChildSaEstablished | ChildSaRekeyed)]


# --------------------------------------------------------------------------- IKE SA


def test_restricted_client_against_default_server_gets_exactly_its_suite() -> None:
    net = connect(client_policy(ike_proposals=parse_ike_proposals(["aes256gcm16-prfsha384-ecp384"])))
    for events in (net.client.events, net.server.events):
        assert the(events, IkeSaEstablished).algorithms == CNSA
    (request,) = inits(net, "client")  # the first KE was already in the one allowed group
    assert ke_group(request) == DhId.ECP384


def test_first_ke_uses_the_first_group_of_the_first_configured_proposal() -> None:
    """The initiator guesses its KE group from its own list (RFC 7296 §1.2); a refusal
    (INVALID_KE_PAYLOAD) is retried only with a group of that list."""
    ike = parse_ike_proposals(["aes256gcm16-prfsha384-modp3072-ecp384", "aes128gcm16-prfsha256-ecp256"])
    net, _ = front_door(client_policy(ike_proposals=ike))
    net.client.session.initiate(net.now)
    net.run(seconds=5)
    first, retry = inits(net, "client")
    assert ke_group(first) == DhId.MODP3072
    assert ke_group(retry) == DhId.ECP384  # the group the server asked for
    assert the(net.client.events, IkeSaEstablished).algorithms == CNSA


def test_restricted_server_accepts_a_default_client_only_within_its_list() -> None:
    server = server_policy(ike_proposals=parse_ike_proposals(["aes256-sha512-ecp521"]))
    net = connect(client_policy(ike_proposals=parse_ike_proposals(["aes256-sha512-ecp521", "default"])), server)
    assert the(net.server.events, IkeSaEstablished).algorithms == IkeAlgorithms(
        EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_512, IntegId.HMAC_SHA2_512_256, DhId.ECP521
    )


@pytest.mark.parametrize(
    ("client", "server"),
    [
        ("aes128gcm16-prfsha256-ecp384", "aes256gcm16-prfsha384-ecp384"),  # encryption differs
        ("aes256gcm16-prfsha256-ecp384", "aes256gcm16-prfsha384-ecp384"),  # PRF differs
        ("aes256gcm16-prfsha384-ecp256", "aes256gcm16-prfsha384-ecp384"),  # no common group
        ("aes256-sha256-ecp384", "aes256gcm16-prfsha256-ecp384"),  # CBC against AEAD
    ],
)
def test_client_outside_the_servers_list_gets_no_proposal_chosen(client: str, server: str) -> None:
    net = pair(
        client_policy(ike_proposals=parse_ike_proposals([client])),
        server_policy(ike_proposals=parse_ike_proposals([server])),
    )
    net.client.session.initiate(net.now)
    net.run(seconds=30)
    assert the(net.client.events, IkeSaClosed).reason is CloseReason.NO_PROPOSAL_CHOSEN
    assert not net.client.session.established and not net.server_session.established
    (reply,) = inits(net, "server")
    assert reply.has_notify(NotifyType.NO_PROPOSAL_CHOSEN)


# --------------------------------------------------------------------------- Child SAs


def test_esp_restriction_and_pfs_on_child_rekey() -> None:
    esp = parse_esp_proposals(["aes128gcm16-ecp384-esn"])
    net = connect(
        client_policy(child=ChildPolicy(proposals=esp), lifetimes=NO_REKEY),
        server_policy(lifetimes=NO_REKEY),
    )
    (first,) = children(net.client.events)
    # IKE_AUTH carries no KE: the first Child SA has no PFS (RFC 7296 §1.2)
    assert first.algorithms == EspAlgorithms(EncrId.AES_GCM_16, 128, IntegId.NONE, True, DhId.NONE)
    net.client.session.rekey_child(net.now, first.spi_in)
    net.run(seconds=2)
    _, new = children(net.client.events)
    assert new.algorithms == EspAlgorithms(EncrId.AES_GCM_16, 128, IntegId.NONE, True, DhId.ECP384)
    _, peer = children(net.server.events)
    assert peer.algorithms == new.algorithms and peer.keys_in == new.keys_out


def test_server_initiated_rekey_uses_the_servers_pfs_group() -> None:
    esp = parse_esp_proposals(["aes256gcm16-x25519"])
    net = connect(client_policy(lifetimes=NO_REKEY), server_policy(child=ChildPolicy(proposals=esp),
                                                                    lifetimes=NO_REKEY))
    (first,) = children(net.server.events)
    net.server_session.rekey_child(net.now, first.spi_in)
    net.run(seconds=2)
    _, new = children(net.client.events)
    assert new.algorithms.dh == DhId.CURVE25519 and new.algorithms.key_bits == 256


# --------------------------------------------------------------------------- from config files

CLIENT_TOML = """
name = "work"
mode = "ike"

[transport]
remote = "198.51.100.1"

[ike]
identity = "alice@example"
remote_identity = "vpn.example"
psk = "0123456789abcdef0123"
{extra}
"""

SERVER_TOML = """
name = "srv"
mode = "ike"

[tunnel]
addresses = ["10.10.0.1/24"]

[server]
identity = "vpn.example"
psk = "0123456789abcdef0123"
tls_port = 0
pool4 = "10.10.0.0/24"
{extra}

[[client]]
identity = "alice@example"
psk = "0123456789abcdef0123"
"""


def from_files(tmp_path: Path, client_extra: str, server_extra: str) -> Network:
    paths = []
    for name, text in (("c.toml", CLIENT_TOML.format(extra=client_extra)),
                       ("s.toml", SERVER_TOML.format(extra=server_extra))):
        p = tmp_path / name
        p.write_text(text)
        p.chmod(0o600)
        paths.append(p)
    c_pol = policies.client_policy(config.load(paths[0]))
    s_pol, _ = policies.server_policy(config.load(paths[1]))
    return pair(c_pol, s_pol)


def test_config_to_session_cnsa_suite_and_mandatory_pfs(tmp_path: Path) -> None:
    """Both sides configured CNSA-style with PFS (ESP groups in every proposal): IKE is
    ECP384/AES-256-GCM/PRF-SHA384, the Child SA rekey uses ECP384 for PFS."""
    keys = 'ike_proposals = ["aes256gcm16-prfsha384-ecp384"]\nesp_proposals = ["aes256gcm16-ecp384"]'
    net = from_files(tmp_path, keys, keys)
    assert net.server_session.policy.child.require_pfs
    net.client.session.initiate(net.now)
    net.run(seconds=2)
    assert the(net.client.events, IkeSaEstablished).algorithms == CNSA
    (first,) = children(net.client.events)
    net.client.session.rekey_child(net.now, first.spi_in)
    net.run(seconds=2)
    _, new = children(net.client.events)
    assert new.algorithms.dh == DhId.ECP384 and new.algorithms.key_bits == 256


def test_config_server_requiring_pfs_refuses_a_rekey_without_ke(tmp_path: Path) -> None:
    net = from_files(tmp_path, "", 'esp_proposals = ["aes256gcm16-ecp384", "aes128gcm16-x25519"]')
    assert requires_pfs(net.server_session.policy.child.proposals)
    net.client.session.initiate(net.now)
    net.run(seconds=2)
    assert net.client.session.established
    (first,) = children(net.client.events)
    net.client.session.rekey_child(net.now, first.spi_in)  # the default client offers no KE
    net.run(seconds=2)
    failed = the(net.client.events, ChildSaFailed)
    assert (failed.notify, failed.rekey_of) == (NotifyType.NO_PROPOSAL_CHOSEN, first.spi_in)
    assert net.client.session.established  # a failed rekey leaves the IKE SA and old SA up
