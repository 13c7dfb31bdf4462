"""vpn/io/host.py: the TUN gets no automatic IPv6 link-local address.

With one, the kernel sends router solicitations and MLD reports from it into the tunnel,
outside every Child SA's selectors (found against strongSwan, which drops them "due to
policy"; tests/integration/test_interop_strongswan.py counts packets exactly).
"""

from __future__ import annotations

import time

from tests.integration.netns import Netns
from vpn.io.host import _no_ipv6_link_local
from vpn.io.tun import TunDevice

SETTLE_S = 0.3  # the kernel adds the link-local address when the device goes up


def test_tun_has_no_link_local_but_keeps_configured_addresses(netns: Netns) -> None:
    with netns.entered(), TunDevice.open("t1") as tun, TunDevice.open("t2"):
        _no_ipv6_link_local(tun.name)
        for dev in ("t1", "t2"):
            netns.ip("link", "set", dev, "up")
        netns.ip("-6", "addr", "add", "fd00:5::1/64", "dev", "t1", "nodad")
        time.sleep(SETTLE_S)
        ours = netns.ip("-6", "addr", "show", "dev", "t1")
        plain = netns.ip("-6", "addr", "show", "dev", "t2")
    assert "fe80" not in ours and "fd00:5::1" in ours, ours
    assert "fe80" in plain, plain  # the kernel's default, which the daemon turns off
