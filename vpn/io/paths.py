"""Where a daemon keeps its run-time files: one directory per network namespace.

/run is shared by every network namespace of the machine, so two instances named
`vpn0` in two namespaces would clobber each other's journal. The directory is keyed by
the inode of this process's network namespace instead.
"""

from __future__ import annotations

import os
from pathlib import Path

RUN_ROOT = Path(os.environ.get("VPN_RUN_DIR", "/run/vpn"))


def netns_id() -> str:
    """A stable identifier of the current network namespace."""
    return f"net{os.stat('/proc/self/ns/net').st_ino}"


def run_dir() -> Path:
    """The private run directory of this network namespace (created 0700)."""
    d = RUN_ROOT / netns_id()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(RUN_ROOT, 0o700)
    return d


def journal_path(name: str) -> Path:
    """Every route, rule, address, DNS and firewall change of instance `name`."""
    return run_dir() / f"{name}.journal"


def log_path(name: str) -> Path:
    return run_dir() / f"{name}.log"
