"""Policy objects of the session (vpn/ike/policy.py): identities, the address pool,
retransmission schedule and validation of a SessionPolicy."""

from __future__ import annotations

import ipaddress

import pytest

from tests.ike.roundtrip import policy
from vpn.ike.constants import IdType
from vpn.ike.errors import LocalProtocolError
from vpn.ike.policy import ChildPolicy, Identity, IkeProposal, PoolAllocator, RetransmitPolicy


@pytest.mark.parametrize(
    ("text", "id_type", "data"),
    [
        ("192.0.2.1", IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
        ("2001:db8::1", IdType.ID_IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed),
        ("alice@example.org", IdType.ID_RFC822_ADDR, b"alice@example.org"),
        ("@vpn.example.org", IdType.ID_FQDN, b"vpn.example.org"),
        ("vpn.example.org", IdType.ID_FQDN, b"vpn.example.org"),
        ("keyid:0a0b", IdType.ID_KEY_ID, b"\x0a\x0b"),
    ],
)
def test_identity_parse_and_str(text: str, id_type: IdType, data: bytes) -> None:
    ident = Identity.parse(text)
    assert (ident.id_type, ident.data) == (id_type, data)
    assert str(ident) == text.lstrip("@")
    assert ident.as_idi().data == data and ident.as_idr().id_type == id_type


def test_pool_is_stable_per_identity_and_skips_reserved() -> None:
    pool = PoolAllocator("10.0.0.0/29", "fd00::/125", dns=["10.0.0.1"], exclude=["10.0.0.2"])
    alice, bob = Identity.email("a@x"), Identity.email("b@x")
    a = pool.allocate(alice, ipv4=True, ipv6=True, requested=())
    assert a is not None and [str(x) for x in a.addresses] == ["10.0.0.3/32", "fd00::1/128"]
    assert a.dns == (ipaddress.ip_address("10.0.0.1"),)
    assert pool.allocate(alice, ipv4=True, ipv6=False, requested=()).addresses[0] == a.addresses[0]  # type: ignore[union-attr]
    b = pool.allocate(bob, ipv4=True, ipv6=False, requested=())
    assert b is not None and b.addresses[0] != a.addresses[0]
    pool.release(alice, a)
    again = pool.allocate(alice, ipv4=True, ipv6=False, requested=())
    assert again is not None and again.addresses[0] == a.addresses[0]  # remembered
    # /29: .3 .4 .5 .6 usable (.0, .7 network/broadcast, .1 DNS, .2 excluded)
    others = [pool.allocate(Identity.email(f"{i}@x"), ipv4=True, ipv6=False, requested=()) for i in range(5)]
    assert sum(o is not None for o in others) == 2  # .5 and .6 were left
    assert pool.allocate(alice, ipv4=False, ipv6=False, requested=()) is None


def test_pool_address_stays_held_while_a_newer_lease_holds_it() -> None:
    """A client's new IKE SA gets its address while the old SA still holds it; when
    the old one goes (INITIAL_CONTACT, expiry) the address must stay taken."""
    pool = PoolAllocator("10.0.0.0/30", exclude=["10.0.0.2"])  # one usable address: .1
    alice, bob = Identity.email("a@x"), Identity.email("b@x")
    old = pool.allocate(alice, ipv4=True, ipv6=False, requested=())
    new = pool.allocate(alice, ipv4=True, ipv6=False, requested=())
    assert old is not None and new is not None and old.addresses == new.addresses
    pool.release(alice, old)
    assert pool.in_use() == {ipaddress.ip_address("10.0.0.1"): alice}
    assert pool.allocate(bob, ipv4=True, ipv6=False, requested=()) is None
    pool.release(alice, new)
    assert pool.in_use() == {}
    got = pool.allocate(bob, ipv4=True, ipv6=False, requested=())
    assert got is not None and str(got.addresses[0]) == "10.0.0.1/32"
    pool.release(alice, new)  # a stale release from someone else's lease frees nothing
    assert pool.in_use() == {ipaddress.ip_address("10.0.0.1"): bob}


def test_retransmit_schedule() -> None:
    rt = RetransmitPolicy(timeout=1.0, base=2.0, tries=3, max_interval=3.0)
    assert [rt.interval(k) for k in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert rt.total() == 9.0 and rt.stream_timeout() == 9.0
    assert RetransmitPolicy(tcp_timeout=5).stream_timeout() == 5


def test_policy_validation() -> None:
    with pytest.raises(LocalProtocolError):
        policy(ike_proposals=())
    with pytest.raises(LocalProtocolError):
        policy(ike_proposals=(IkeProposal((), (), ()),))
    with pytest.raises(LocalProtocolError):
        policy(child=ChildPolicy(proposals=()))
    with pytest.raises(LocalProtocolError):
        policy(fragment_size=100)
