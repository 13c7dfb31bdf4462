"""Our sessions against the messages of a real Libreswan 4.10 RFC 9329 session.

Vectors: ../shared/vectors/libreswan-tcp/ (read in place by tests/vectors/libreswan.py,
skipped where absent). Libreswan's D-H private values are not recorded, so after the
IKE_SA_INIT step the session under test is given the IKE SA keys both Libreswan peers
derived (keys.json: SPIs, nonces, g^ir) and, for AUTH, the IKE_SA_INIT messages they
exchanged. From there on every recorded message goes through our code unchanged:

- Responder: Libreswan's IKE_SA_INIT request is answered with a proposal it offered; its
  IKE_AUTH (PSK, CP, ESN proposals, TS) authenticates, gets an address and a Child SA
  whose keys equal Libreswan's; its CREATE_CHILD_SA rekey with PFS is answered; its
  Delete of the old Child SA and Delete(IKE) end the session.
- Initiator: Libreswan's IKE_AUTH response verifies (PSK AUTH over its own messages) and
  yields the Child SA keys Libreswan's kernel used.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.vectors.libreswan import TCP_SESSIONS, ike_frames, keys, requires_libreswan, session_keys
from vpn.ike.constants import DhId, EncrId, ExchangeType, NotifyType, PrfId
from vpn.ike.credentials import PskAuthenticator
from vpn.ike.crypto import IkeSaKeys, IkeSuite
from vpn.ike.events import (
    ChildCloseReason,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    CloseReason,
    IkeSaClosed,
    IkeSaEstablished,
    VirtualAddressAssigned,
)
from vpn.ike.message import Message, Nonce, SecurityAssociation, TsInitiator, decode_payloads
from vpn.ike.policy import Identity, PoolAllocator, SessionPolicy, VirtualIpRequest
from vpn.ike.responder import IkeResponder
from vpn.ike.session import IkeSession

pytestmark = requires_libreswan

SERVER_ID = Identity.fqdn("server.test")
CLIENT_ID = Identity.fqdn("client.test")


def _psk() -> bytes:
    return str(keys()["psk"]["ascii"]).encode()


def _rng(seed: int):  # type: ignore[no-untyped-def]
    import random

    return random.Random(seed).randbytes


def _addresses(name: str) -> tuple[tuple[str, int], tuple[str, int]]:
    k = session_keys(name)
    return (k["initiator"]["ip"], int(k["initiator"]["port"])), (
        k["responder"]["ip"],
        int(k["responder"]["port"]),
    )


def _recorded_keys(name: str) -> IkeSaKeys:
    ike = session_keys(name)["ike_sa"]
    suite = IkeSuite.from_ids(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_256)
    h = bytes.fromhex
    return IkeSaKeys.derive(
        suite, h(ike["g_ir"]), h(ike["ni"]), h(ike["nr"]), h(ike["spi_i"]), h(ike["spi_r"])
    )


def _adopt_recorded_sa(session: IkeSession, name: str, *, our_init: bytes, their_init: bytes) -> None:
    """Give the session's IKE SA the SPIs, nonces and keys of the recorded session."""
    ike = session_keys(name)["ike_sa"]
    sa = session._sa
    assert sa is not None and sa.algorithms is not None
    session._sas.pop(sa.local_spi)
    sa.spi_i, sa.spi_r = bytes.fromhex(ike["spi_i"]), bytes.fromhex(ike["spi_r"])
    sa.ni, sa.nr = bytes.fromhex(ike["ni"]), bytes.fromhex(ike["nr"])
    sa.set_keys(_recorded_keys(name), sa.algorithms)
    session._sas[sa.local_spi] = sa
    session._init_sent, session._init_received = our_init, their_init


def _events(session: IkeSession) -> list[object]:
    return list(iter(session.next_event, None))


@pytest.mark.parametrize("name", TCP_SESSIONS)
def test_our_responder_serves_a_libreswan_session(name: str) -> None:
    k = session_keys(name)
    group = DhId(int(k["ike_sa"]["dh_group"]))
    initiator, responder = _addresses(name)
    i2r = [f.data for f in ike_frames(name, "i2r")]
    r2i = [f.data for f in ike_frames(name, "r2i")]
    policy = SessionPolicy(
        local_id=SERVER_ID,
        authenticator=PskAuthenticator(_psk()),
        allocator=PoolAllocator("10.78.0.0/24", exclude=[f"10.78.0.{i}" for i in range(1, 10)]),
    )
    door = IkeResponder(policy, rng=_rng(1), local_addr=responder)

    # 1. IKE_SA_INIT: a proposal Libreswan offered, in the group of its KE (no INVALID_KE)
    d = door.receive(i2r[0], 0.0, remote_addr=initiator, stream=True)
    session = d.session
    assert session is not None and d.created
    (reply,) = session.messages_to_send()
    answer = Message.decode(reply.data)
    chosen = answer.get(SecurityAssociation)
    assert chosen is not None and len(chosen.proposals) == 1
    assert session.algorithms is not None and session.algorithms.dh == group
    assert (session.algorithms.encr, session.algorithms.key_bits) == (EncrId.AES_GCM_16, 256)
    assert answer.get(Nonce) is not None and answer.has_notify(NotifyType.NAT_DETECTION_SOURCE_IP)
    assert not session.nat_local and not session.nat_remote  # the TCP ports match (§6.5)

    # 2. from here on: Libreswan's keys; our AUTH covers what Libreswan's responder sent
    _adopt_recorded_sa(session, name, our_init=r2i[0], their_init=i2r[0])
    session.receive_message(i2r[1], 1.0, initiator)
    events = _events(session)
    up = [e for e in events if isinstance(e, IkeSaEstablished)]
    assert len(up) == 1 and up[0].peer_id == CLIENT_ID  # Libreswan's PSK AUTH verified
    vip = [e for e in events if isinstance(e, VirtualAddressAssigned)]
    assert vip and vip[0].addresses == (ipaddress.ip_interface("10.78.0.10/32"),)
    (child,) = [e.child for e in events if isinstance(e, ChildSaEstablished)]
    first = k["child_sas"][0]
    assert (
        child.keys_in.encr_key.hex() == first["i2r"]["key"]
        and child.keys_in.salt.hex() == first["i2r"]["salt"]
    )
    assert (
        child.keys_out.encr_key.hex() == first["r2i"]["key"]
        and child.keys_out.salt.hex() == first["r2i"]["salt"]
    )
    assert child.spi_out.hex() == first["r2i"]["spi"]  # Libreswan's inbound SPI
    (auth_reply,) = session.messages_to_send()
    reply_msg = Message.decode(auth_reply.data)
    cipher = _recorded_keys(name).sk_cipher(from_initiator=False)  # SK_er, as Libreswan opens it
    plain = cipher.open(reply_msg.received_aad, reply_msg.encrypted.body)  # type: ignore[union-attr]
    inner = decode_payloads(reply_msg.encrypted.first_payload, plain)  # type: ignore[union-attr]
    tsi = [p for p in inner if isinstance(p, TsInitiator)]
    # Libreswan put its outer address in TSi; the answer carries the leased address
    assert tsi and [str(t.start) for t in tsi[0].selectors] == ["10.78.0.10"]

    # 3. CREATE_CHILD_SA: Libreswan rekeys that Child SA with PFS (KE in its group)
    session.receive_message(i2r[2], 2.0, initiator)
    events = _events(session)
    (rekeyed,) = [e for e in events if isinstance(e, ChildSaRekeyed)]
    assert rekeyed.old_spi_in == child.spi_in and rekeyed.child.algorithms.dh == group
    (rekey_reply,) = session.messages_to_send()
    assert Message.decode(rekey_reply.data).exchange == ExchangeType.CREATE_CHILD_SA

    # 4. Delete of the old Child SA, then Delete(IKE)
    session.receive_message(i2r[3], 3.0, initiator)
    (deleted,) = [e for e in _events(session) if isinstance(e, ChildSaDeleted)]
    assert deleted.spi_in == child.spi_in and deleted.reason is ChildCloseReason.REKEYED
    (delete_reply,) = session.messages_to_send()
    delete_msg = Message.decode(delete_reply.data)
    opened = (
        _recorded_keys(name)
        .sk_cipher(from_initiator=False)
        .open(delete_msg.received_aad, delete_msg.encrypted.body)
    )  # type: ignore[union-attr]
    assert child.spi_in in opened  # our Delete names our inbound SPI of the pair (§1.4.1)
    session.receive_message(i2r[4], 4.0, initiator)
    events = _events(session)
    assert [e.reason for e in events if isinstance(e, IkeSaClosed)] == [CloseReason.DELETED_BY_PEER]
    assert len(session.messages_to_send()) == 1  # the empty answer to Delete(IKE)
    assert session.closed


@pytest.mark.parametrize("name", TCP_SESSIONS)
def test_our_initiator_accepts_libreswans_ike_auth_response(name: str) -> None:
    k = session_keys(name)
    group = DhId(int(k["ike_sa"]["dh_group"]))
    initiator, responder = _addresses(name)
    i2r = [f.data for f in ike_frames(name, "i2r")]
    r2i = [f.data for f in ike_frames(name, "r2i")]
    from vpn.ike.policy import IkeProposal

    policy = SessionPolicy(
        local_id=CLIENT_ID,
        remote_id=SERVER_ID,
        authenticator=PskAuthenticator(_psk()),
        ike_proposals=(IkeProposal(((EncrId.AES_GCM_16, 256),), (PrfId.HMAC_SHA2_256,), (group,)),),
        virtual_ip=VirtualIpRequest(),
        initial_contact=False,
    )
    client = IkeSession(
        policy, initiator=True, rng=_rng(2), stream=True, local_addr=initiator, remote_addr=responder
    )
    client.initiate(0.0)
    client.messages_to_send()
    # The IKE_SA_INIT response is Libreswan's; our KE private value cannot match its
    # g^ir, so take the SA as Libreswan derived it and build IKE_AUTH on it.
    init_resp = Message.decode(r2i[0])
    assert init_resp.get(SecurityAssociation) is not None
    sa = client._sa
    assert sa is not None
    from vpn.ike.negotiate import accept_ike_response

    selection = accept_ike_response(client._offered_ike, init_resp.get(SecurityAssociation))  # type: ignore[arg-type]
    sa.algorithms = selection.algorithms
    _adopt_recorded_sa(client, name, our_init=i2r[0], their_init=r2i[0])
    sa.next_message_id = 1
    from vpn.ike.state import IkeInput

    sa.fsm.apply(IkeInput.RECV_INIT_RESPONSE)
    sa.outstanding = None
    client._send_auth_request(sa, 0.5)
    client.messages_to_send()
    client.receive_message(r2i[1], 1.0, responder)
    events = _events(client)
    up = [e for e in events if isinstance(e, IkeSaEstablished)]
    assert len(up) == 1 and up[0].peer_id == SERVER_ID  # Libreswan's AUTH verified
    vip = [e for e in events if isinstance(e, VirtualAddressAssigned)]
    assert vip[0].addresses == (ipaddress.ip_interface("10.78.0.10/32"),)
    (child,) = [e.child for e in events if isinstance(e, ChildSaEstablished)]
    first = k["child_sas"][0]
    assert child.algorithms.esn  # Libreswan picked ESN from our offer
    assert child.spi_out.hex() == first["i2r"]["spi"]  # Libreswan's inbound SPI
    assert child.keys_out.encr_key.hex() == first["i2r"]["key"]
    assert child.keys_in.encr_key.hex() == first["r2i"]["key"]
