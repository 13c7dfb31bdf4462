"""tests/io: TUN and netconf tests borrow the namespace helpers of tests/integration."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ on the path so that `integration.netns` imports from here as well (pytest's
# default "prepend" import mode only adds tests/io itself for this directory).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integration.conftest import require_netns  # noqa: E402
from integration.netns import Lab, Netns  # noqa: E402


@pytest.fixture
def netns() -> Iterator[Netns]:
    """One empty namespace (loopback up), removed after the test."""
    require_netns()
    with Lab() as lab:
        yield lab.add("io")
