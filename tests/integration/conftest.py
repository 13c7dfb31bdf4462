"""Fixtures for tests that need root and network namespaces."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from .netns import Lab, Topology, build_topology, sweep_stale


def require_netns() -> None:
    """Skip (with the reason) where namespaces cannot be made: not root, no iproute2."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, TUN devices)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`apt-get install iproute2`)")


@pytest.fixture(scope="session", autouse=True)
def _sweep_stale_namespaces() -> None:
    if os.geteuid() == 0 and shutil.which("ip"):
        sweep_stale()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Namespaces for one test, all removed afterwards (also when the test fails)."""
    require_netns()
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def topology(lab: Lab) -> Topology:
    """client <-> router <-> server with IPv4 and IPv6, forwarding on in the router."""
    return build_topology(lab)
