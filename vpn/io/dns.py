"""The DNS servers the VPN server pushed (RFC 7296 §3.15.1 INTERNAL_IP4_DNS /
INTERNAL_IP6_DNS), applied for this namespace, journaled, and put back.

Where the change goes (`choose_method`, decided from `detect()`):

- Inside a network namespace (anything not provably the machine's own: PID 1's, or
  kthreadd's where PID 1's is hidden): `ip netns exec NAME` bind-mounts
  /etc/netns/NAME/resolv.conf over /etc/resolv.conf, so that file is rewritten in place
  (a rename cannot replace a mount point) and only that namespace sees it. resolvectl
  is never called there: systemd-resolved serves the whole machine. If /etc/resolv.conf
  is not that file it is the machine's (or a container's): refused, with the fix.
- In the machine's own namespace with systemd-resolved running: `resolvectl dns`,
  `domain ~.` and `default-route` on the tunnel device (resolved forgets the settings
  when the device goes; `resolvectl revert` on stop).
- Otherwise /etc/resolv.conf is rewritten: in place when it is a mount point, else by
  an atomic rename; a symlink is replaced by a file and put back on restore.

The journal (`<run dir>/<name>.dns.json`) is written before the change and holds the
previous file, so `vpn down`, or the next `vpn up` after a crash, restores it. A file
that no longer holds what we wrote (another program changed it since) is left alone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_SOCKET = Path("/run/systemd/resolve/io.systemd.Resolve")  # exists while resolved runs
NETNS_DIR = Path("/run/netns")  # `ip netns add` names: bind mounts of the namespaces
ETC_NETNS = Path("/etc/netns")  # `ip netns exec NAME` binds ETC_NETNS/NAME/* over /etc/*
JOURNAL_VERSION = 1
MAX_NAMESERVERS = 3  # glibc reads at most three (resolv.h MAXNS)
RESOLVECTL_TIMEOUT_S = 10
KEEP_KEYWORDS = ("search", "domain", "options")

Runner = Callable[[Sequence[str]], None]


class DnsError(Exception):
    """DNS cannot be changed here, or the change failed; the message says why and how."""


@dataclass(frozen=True)
class DnsFacts:
    """What decides where DNS goes."""

    in_netns: bool  # not (provably) the machine's own network namespace
    netns_file: Path | None  # /etc/netns/<our namespace>/resolv.conf, if /etc/resolv.conf is it
    resolv_conf_mounted: bool  # /etc/resolv.conf is a mount point (e.g. in a container)
    resolved_running: bool  # systemd-resolved answers, and resolvectl is installed


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _init_netns_inode() -> int | None:
    """The machine's network namespace: PID 1's, or kthreadd's (PID 2; kernel threads
    always live in the initial namespace) where PID 1's is hidden from us."""
    ino = _netns_inode(1)
    if ino is not None:
        return ino
    try:
        if Path("/proc/2/comm").read_text().strip() == "kthreadd":
            return _netns_inode(2)
    except OSError:
        pass
    return None


def netns_names(ino: int, netns_dir: Path = NETNS_DIR) -> list[str]:
    """The `ip netns` names of the namespace with inode `ino` (bind mounts in /run/netns)."""
    try:
        entries = list(netns_dir.iterdir())
    except OSError:
        return []
    names = []
    for entry in entries:
        try:
            if entry.stat().st_ino == ino:
                names.append(entry.name)
        except OSError:
            continue
    return sorted(names)


def is_mount_point(path: Path, mountinfo: str | None = None) -> bool:
    """True if `path` is a mount point of this mount namespace (proc(5) mountinfo:
    the fifth field is the mount point, with spaces etc. octal-escaped)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return False
    target = str(path)
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target:
            return True
    return False


def _unescape(text: str) -> str:
    return text.encode().decode("unicode_escape") if "\\" in text else text


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def detect(resolv_conf: Path = RESOLV_CONF, *, netns_dir: Path = NETNS_DIR, etc_netns: Path = ETC_NETNS) -> DnsFacts:
    """Where are we? Anything not provably the machine's own namespace counts as a
    network namespace, whose DNS may only change through its own /etc/netns file."""
    ours, init = _netns_inode("self"), _init_netns_inode()
    in_netns = ours is None or init is None or ours != init
    own = None
    if in_netns and ours is not None:
        own = next((f for name in netns_names(ours, netns_dir)
                    if _same_file(resolv_conf, f := etc_netns / name / "resolv.conf")), None)
    resolved = RESOLVED_SOCKET.exists() and shutil.which("resolvectl") is not None
    return DnsFacts(in_netns=in_netns, netns_file=own, resolv_conf_mounted=is_mount_point(resolv_conf),
                    resolved_running=resolved)


def choose_method(facts: DnsFacts, resolv_conf: Path = RESOLV_CONF) -> tuple[str, Path]:
    """The method and the file it changes: "in-place" (rewrite the same inode: a bind
    mount), "file" (rename over) or "resolvectl" (no file)."""
    if facts.in_netns:
        if facts.netns_file is None:
            raise DnsError(f"this network namespace has no resolv.conf of its own ({resolv_conf} is not "
                           f"/etc/netns/<namespace>/resolv.conf, as `ip netns exec` binds it): create that "
                           f"file, or set [tunnel] dns = false")
        return "in-place", facts.netns_file  # the file itself: the same from every mount namespace
    if facts.resolved_running:
        return "resolvectl", resolv_conf
    return ("in-place" if facts.resolv_conf_mounted else "file"), resolv_conf


def resolv_conf_text(name: str, servers: Sequence[str], old: str) -> str:
    """The new file: our nameservers, the old file's search/domain/options lines."""
    kept = [ln for ln in old.splitlines() if ln.split()[:1] and ln.split()[0] in KEEP_KEYWORDS]
    lines = [f"# written by vpn ({name}): DNS servers pushed by the VPN server;",
             f"# `vpn down {name}` puts the previous file back"]
    lines += [f"nameserver {s}" for s in servers[:MAX_NAMESERVERS]]
    return "\n".join(lines + kept) + "\n"


def _run(argv: Sequence[str]) -> None:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=RESOLVECTL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DnsError(f"{' '.join(argv)}: {exc}") from None
    if r.returncode != 0:
        raise DnsError(f"{' '.join(argv)}: {r.stderr.strip() or f'exit {r.returncode}'}")


class DnsConfig:
    """Apply DNS servers for instance `name`; `restore()` (or `undo_journal` after a crash)
    puts back what was there."""

    def __init__(self, name: str, journal: Path, *, facts: DnsFacts | None = None,
                 resolv_conf: Path = RESOLV_CONF, run: Runner = _run) -> None:
        self.name = name
        self.journal = journal
        self.method, self.resolv_conf = choose_method(facts or detect(resolv_conf), resolv_conf)
        self.run = run
        self.applied: list[str] = []

    def apply(self, ifname: str, servers: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address | str],
              *, route_all: bool = True) -> None:
        """Use `servers` for lookups. `route_all` (a full tunnel): with resolved, every
        name goes to them (routing domain `~.`); else resolved also keeps the other
        links' servers. A file holds only ours. Calling again replaces our servers and
        keeps the first journal (the file as it was before us)."""
        texts = [str(ipaddress.ip_address(str(s))) for s in servers]
        if not texts:
            return
        if self.method == "resolvectl":
            self._journal({"method": "resolvectl", "ifname": ifname})
            self.run(["resolvectl", "dns", ifname, *texts])
            if route_all:  # every name through the tunnel's servers, none elsewhere
                self.run(["resolvectl", "domain", ifname, "~."])
                self.run(["resolvectl", "default-route", ifname, "yes"])
        else:
            self._write_file(texts)
        self.applied = texts

    def _write_file(self, servers: list[str]) -> None:
        old_entry = self._read_journal()
        path = self.resolv_conf
        if old_entry is not None and old_entry.get("method") == "file":
            original = old_entry.get("original")
            symlink = old_entry.get("symlink")
        else:
            symlink = os.readlink(path) if path.is_symlink() else None
            try:
                original = path.read_text()
            except FileNotFoundError:
                original = None
        new = resolv_conf_text(self.name, servers, original or "")
        in_place = self.method == "in-place"
        self._journal({"method": "file", "path": str(path), "original": original, "symlink": symlink,
                       "written": new, "in_place": in_place})
        if in_place:
            _write_in_place(path, new)
        else:
            _replace(path, new)

    def restore(self) -> bool:
        """Put back what `apply` changed; True if there was something to undo."""
        done = undo_journal(self.journal, run=self.run)
        self.applied = []
        return done

    def _read_journal(self) -> dict[str, Any] | None:
        return _load(self.journal)

    def _journal(self, entry: dict[str, Any]) -> None:
        data = json.dumps({"version": JOURNAL_VERSION, "name": self.name, **entry}, indent=1)
        _replace(self.journal, data, mode=0o600)


def _load(journal: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(journal.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DnsError(f"{journal}: unreadable DNS journal ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != JOURNAL_VERSION:
        raise DnsError(f"{journal}: unknown DNS journal version")
    return data


def undo_journal(journal: Path, *, run: Runner = _run) -> bool:
    """Restore DNS as the journal says (after a crash, or on stop); True if it had an
    entry. The journal is removed once done."""
    entry = _load(journal)
    if entry is None:
        return False
    if entry.get("method") == "resolvectl":
        try:
            run(["resolvectl", "revert", str(entry["ifname"])])
        except DnsError:
            pass  # the device is gone, and resolved forgot it with it
    elif entry.get("method") == "file":
        _restore_file(entry)
    journal.unlink(missing_ok=True)
    return True


def _restore_file(entry: dict[str, Any]) -> None:
    path = Path(entry["path"])
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = None
    if current != entry.get("written"):
        return  # never written (crash before it), or someone else's since: leave it
    symlink, original = entry.get("symlink"), entry.get("original")
    if entry.get("in_place"):
        _write_in_place(path, original or "")
    elif symlink is not None:
        tmp = path.with_name(path.name + ".vpn-tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(symlink, tmp)
        os.replace(tmp, path)
    elif original is None:
        path.unlink(missing_ok=True)
    else:
        _replace(path, original)


def _write_in_place(path: Path, text: str) -> None:
    """Truncate and rewrite the same inode (works through a bind mount)."""
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _replace(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a sibling and rename it over `path`: readers see old or new, never half."""
    tmp = path.with_name(path.name + ".vpn-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
