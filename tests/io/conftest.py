"""tests/io: TUN and netconf tests borrow the namespace helpers of tests/integration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import require_netns
from tests.integration.netns import Lab, Netns


@pytest.fixture
def netns() -> Iterator[Netns]:
    """One empty namespace (loopback up), removed after the test."""
    require_netns()
    with Lab() as lab:
        yield lab.add("io")
