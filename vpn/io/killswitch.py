"""The client's kill switch: one nftables table of our own, `inet vpnks_<name>`, whose
output chain lets out only

- loopback, the tunnel device, and packets of our own outer sockets (they carry the
  fwmark that policy routing already keeps out of the tunnel);
- what keeps the outer link itself alive, and nothing that can carry user data beyond
  it: DHCPv4 client -> server (the lease of the outer address; UDP 68 -> 67), IPv6
  neighbour and router solicitations/advertisements with hop limit 255 (RFC 4861 §7.1:
  valid only on the link; without NS/NA the next IPv6 hop cannot be resolved for our own
  marked packets either), MLD reports with hop limit 1 (RFC 3810 §5: link-local; switches
  that snoop MLD stop forwarding the solicited-node groups NDP uses without them) and
  DHCPv6 to ff02::1:2 (link-scope multicast, RFC 8415 §7.1). ARP is not in the inet
  family and passes.

Everything else is rejected at once (a TCP reset, or ICMP administratively prohibited)
so applications fail fast instead of hanging, and counted.

The table is installed before the tunnel comes up and replaced atomically (one `nft -f`
transaction) by the next start, so there is no moment without it. It is not removed
when the daemon dies: only `vpn down` (also without a running daemon) removes it, using
the state file `<run dir>/<name>.killswitch.json` written before the table.
Forwarded traffic (containers, a router) is not covered: only this host's own output.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

NFT_TIMEOUT_S = 10
TABLE_PREFIX = "vpnks_"
STATE_VERSION = 1


class KillSwitchError(Exception):
    """nft is missing or refused the table; the message says which."""


def table_name(name: str) -> str:
    """nftables identifiers: letters, digits and underscores."""
    return TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", name)


def ruleset(table: str, tun: str, mark: int) -> str:
    """The whole table, replacing any earlier one in the same transaction."""
    return "\n".join([
        f"add table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy drop;",
        '    oifname "lo" accept',
        f'    oifname "{tun}" accept',
        f"    meta mark {mark:#x} accept",
        "    udp sport 68 udp dport 67 accept",
        "    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } "
        "ip6 hoplimit 255 accept",
        "    icmpv6 type { mld-listener-report, mld2-listener-report } ip6 hoplimit 1 accept",
        "    ip6 daddr ff02::1:2 udp sport 546 udp dport 547 accept",
        "    meta l4proto tcp counter reject with tcp reset",
        "    counter reject with icmpx admin-prohibited",
        "  }",
        "}",
    ]) + "\n"


def _nft(text: str, *args: str) -> str:
    if shutil.which("nft") is None:
        raise KillSwitchError("nft not found: install nftables (`apt-get install nftables`)")
    argv = ["nft", *args] if args else ["nft", "-f", "-"]
    try:
        r = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise KillSwitchError(f"nft did not answer within {NFT_TIMEOUT_S} s") from None
    if r.returncode != 0:
        raise KillSwitchError(f"nft refused the kill switch: {r.stderr.strip()}")
    return r.stdout


class KillSwitch:
    """Instance `name`'s kill switch; `state` is its journal entry in the run directory."""

    def __init__(self, name: str, state: Path) -> None:
        self.name = name
        self.table = table_name(name)
        self.state = state

    @property
    def recorded(self) -> bool:
        """A kill switch of this instance is (or may be) in place."""
        return self.state.exists()

    def apply(self, tun: str, mark: int) -> None:
        """Install (or atomically replace) the table; journaled first."""
        tmp = self.state.with_name(self.state.name + ".tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, "table": self.table, "tun": tun, "mark": mark}))
        tmp.replace(self.state)
        _nft(ruleset(self.table, tun, mark))

    def remove(self) -> bool:
        """Delete the table and its state; True if one was recorded (the state file is
        written before the table, so no table exists without it)."""
        try:
            data = json.loads(self.state.read_text())
        except FileNotFoundError:
            return False
        except ValueError:
            data = {}
        table = str(data.get("table", self.table)) if isinstance(data, dict) else self.table
        if not re.fullmatch(r"[A-Za-z0-9_]+", table):
            table = self.table
        _nft(f"add table inet {table}\ndelete table inet {table}\n")
        self.state.unlink(missing_ok=True)
        return True

    def blocked(self) -> int | None:
        """Packets rejected so far (None if the table is not there)."""
        try:
            out = _nft("", "list", "table", "inet", self.table)
        except KillSwitchError:
            return None
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))
