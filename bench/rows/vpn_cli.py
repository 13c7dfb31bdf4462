"""What the two rows of this project share: running `vpn` in a side's namespace with
its own run directory, and adopting the daemon `vpn up` leaves behind."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bench.rows.base import RowEnv, RowError, Side


def vpn_argv(env: RowEnv, side: Side, *args: str) -> list[str]:
    """`python -m vpn.cli ARGS` with this side's run directory in `env.workdir`."""
    return ["env", f"VPN_RUN_DIR={env.workdir / f'run-{side}'}", sys.executable, "-m", "vpn.cli", *args]


def adopt_daemon(env: RowEnv, up_output: str, name: str) -> int:
    """Adopt the daemon `vpn up` reported ("daemon pid N, log PATH)") for accounting."""
    m = re.search(r"daemon pid (\d+), log (\S+)\)", up_output)
    if m is None:
        raise RowError(f"vpn up did not report its daemon ({name}): {up_output.strip()}")
    return env.adopt(int(m.group(1)), name, log=Path(m.group(2)))
