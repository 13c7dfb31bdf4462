"""`vpn demo` (the README's main command) runs end to end and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.conftest import require_netns


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return {n for n in names if n.startswith("vpndemo-")}  # others' namespaces may come and go


def test_demo_pings_measures_and_cleans_up() -> None:
    require_netns()
    before = _namespaces()
    r = subprocess.run([sys.executable, "-m", "vpn.cli", "demo", "--seconds", "1"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ping 10.77.0.1 through the tunnel" in r.stdout
    assert "Gbit/s" in r.stdout and "vpn status (server)" in r.stdout
    assert "torn down" in r.stdout
    assert _namespaces() == before
