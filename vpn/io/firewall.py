"""Forwarding for the server: sysctls and one nftables table of our own.

The table `inet vpn_<name>` holds everything (MSS clamping on the tunnel, masquerade of
the pools to the uplink), so removing it removes all of it; a table left by a crashed
instance is replaced on the next start. The forwarding sysctls are set, and their old
values kept in the run directory of this namespace and put back on stop (or on the next
start after a crash).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vpn.io import paths

FORWARD_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")
NFT_TIMEOUT_S = 10


class FirewallError(Exception):
    """nft is missing or refused the ruleset; the message says which."""


@dataclass(frozen=True)
class ForwardingSpec:
    tun: str
    uplink: str | None
    pools: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    mss_clamp: bool = True


def ruleset(table: str, spec: ForwardingSpec) -> str:
    """The nftables ruleset text for `spec` (one table, replaced as a whole)."""
    lines = [f"table inet {table} {{",
             "  chain forward {",
             "    type filter hook forward priority mangle; policy accept;"]
    if spec.mss_clamp:
        # inner TCP must fit the tunnel MTU (RFC 9329 §3, T13): clamp SYNs both ways
        lines += [f'    iifname "{spec.tun}" tcp flags syn tcp option maxseg size set rt mtu',
                  f'    oifname "{spec.tun}" tcp flags syn tcp option maxseg size set rt mtu']
    lines.append("  }")
    if spec.uplink:
        lines += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
        for pool in spec.pools:
            fam = "ip" if pool.version == 4 else "ip6"
            lines.append(f'    {fam} saddr {pool} oifname "{spec.uplink}" masquerade')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


class Firewall:
    """The server's forwarding state; `apply()` then `remove()`, both idempotent."""

    def __init__(self, name: str) -> None:
        self.table = f"vpn_{name.replace('-', '_').replace('.', '_')}"
        self.saved = paths.run_dir() / f"{name}.sysctl.json"
        self.applied = False

    def apply(self, spec: ForwardingSpec) -> None:
        self._restore_sysctls()  # a crashed instance's values first
        if shutil.which("nft") is None:
            raise FirewallError("nft not found: install nftables (`apt-get install nftables`)")
        self._nft(f"add table inet {self.table}\ndelete table inet {self.table}\n")
        self._nft(ruleset(self.table, spec))
        old = {k: _read_sysctl(k) for k in FORWARD_SYSCTLS}
        self.saved.write_text(json.dumps(old))
        for k in FORWARD_SYSCTLS:
            _write_sysctl(k, "1")
        self.applied = True

    def remove(self) -> None:
        if shutil.which("nft") is not None:
            try:
                self._nft(f"add table inet {self.table}\ndelete table inet {self.table}\n")
            except FirewallError:
                pass
        self._restore_sysctls()
        self.applied = False

    def _restore_sysctls(self) -> None:
        try:
            old = json.loads(self.saved.read_text())
        except (OSError, ValueError):
            return
        for k, v in old.items():
            if k in FORWARD_SYSCTLS and isinstance(v, str):
                _write_sysctl(k, v)
        self.saved.unlink(missing_ok=True)

    def _nft(self, text: str) -> None:
        r = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
        if r.returncode != 0:
            raise FirewallError(f"nft refused the ruleset: {r.stderr.strip()}")


def _read_sysctl(key: str) -> str:
    return Path("/proc/sys", key).read_text().strip()


def _write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key).write_text(value)
