"""Smoke test of `python -m bench.tunnel`: the veth row and one baseline, 1 s, one run.

Checks the JSON contract (fields, types, ratios), not speed. Runs the CLI as a user
would, from the repository root, as root (network namespaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.netns import PREFIX, Pair, list_namespaces
from bench.rows import ROWS
from bench.rows.base import Inner, RowEnv, process_tree, read_stat

ROOT = Path(__file__).resolve().parents[2]

BASELINE = "openvpn-tcp"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def _ours(names: list[str], pid: int) -> list[str]:
    return [n for n in names if n.startswith(f"{PREFIX}{pid}-")]


def test_veth_and_openvpn_rows_report_the_documented_fields() -> None:
    missing = ROWS[BASELINE].missing_packages()
    if missing:
        pytest.skip(f"{BASELINE} needs Debian package(s) {', '.join(missing)}")
    argv = ["-m", "bench.tunnel", "--json", "--rows", f"veth,{BASELINE}", "--runs", "1", "--seconds", "1"]
    with subprocess.Popen(
        [sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=55)
        except subprocess.TimeoutExpired:
            proc.terminate()  # it removes its namespaces on SIGTERM
            proc.communicate(timeout=15)
            raise
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [o["name"] for o in lines] == ["veth", BASELINE]
    veth, vpn = lines
    for o in lines:
        assert o["error"] is None
        assert o["runs"] == 1 and o["seconds"] == 1 and o["family"] == 4
        for key in ("gbps", "gbps_reverse"):
            assert isinstance(o[key], float) and o[key] > 0
        assert len(o["gbps_runs"]) == 1 and len(o["gbps_reverse_runs"]) == 1
        assert o["vs_ocserv_tls"] is None and o["vs_ocserv_tls_reverse"] is None  # row not run
    # The ceiling has no daemon: no CPU or RSS; it is its own reference.
    assert veth["cpu_s_per_gb"] is None and veth["peak_rss_mb"] is None
    assert veth["vs_veth"] == 1.0
    # The tunnel row counts its two openvpn processes.
    assert isinstance(vpn["cpu_s_per_gb"], float) and vpn["cpu_s_per_gb"] > 0
    assert isinstance(vpn["peak_rss_mb"], float) and 1.0 < vpn["peak_rss_mb"] < 1024
    assert vpn["vs_openvpn_tcp"] == 1.0
    assert vpn["vs_veth"] == pytest.approx(vpn["gbps"] / veth["gbps"], rel=0.01)
    assert veth["vs_openvpn_tcp"] == pytest.approx(veth["gbps"] / vpn["gbps"], rel=0.01)
    # Everything it created is gone: its namespaces (named after its PID).
    assert _ours(list_namespaces(), proc.pid) == []


def test_unknown_row_is_refused_before_anything_is_created() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tunnel", "--rows", "veth,nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "veth" in proc.stderr


def test_process_accounting_follows_descendants_and_adopted_daemons_are_ended(tmp_path: Path) -> None:
    # A "daemon" with a worker child (like ocserv), and an orphan (like a self-daemonizing
    # `vpn up`): the tree counts the child, and stop_all() ends the adopted orphan by PID.
    with subprocess.Popen(["sh", "-c", "sleep 30 & wait"]) as parent:
        orphan = int(subprocess.check_output(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], timeout=5))
        try:
            deadline = time.monotonic() + 5
            while len(process_tree([parent.pid])) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            tree = process_tree([parent.pid])
            assert {pid for pid, _ in tree} >= {parent.pid} and len(tree) == 2
            assert orphan not in {pid for pid, _ in tree}
            pair = Pair(tag="t", client="unused-c", server="unused-s")
            env = RowEnv(pair=pair, inner=Inner(), workdir=tmp_path)
            env.adopt(orphan, "orphan")
            assert env.dead() == []
            t0 = time.monotonic()
            env.stop_all(grace=5)
            assert time.monotonic() - t0 < 4  # ended by SIGTERM, not after the grace
            assert env.procs == []
            stat = read_stat(orphan)
            assert stat is None or open(f"/proc/{orphan}/stat").read().split(") ")[1][0] == "Z"
        finally:
            parent.kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, 9)
