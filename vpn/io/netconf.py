"""Addresses, link state, MTU, routes and policy rules through pyroute2, undoable.

Flow:
  1. ``NetConf(journal=path)`` opens a netlink socket in the current network namespace
     (or in ``netns``).
  2. Each change (``add_address``, ``set_up``, ``set_mtu``, ``add_route``, ``add_rule``)
     is applied, then pushed on a stack as a JSON-able ``Change``; with a journal, the
     whole stack is rewritten atomically (write, fsync, rename) after every change.
  3. ``rollback()`` undoes the stack in reverse order and deletes the journal. After a
     crash, ``undo_journal(path)`` in a new process does the same from the file.

A change is recorded only after the kernel accepted it, so undo never removes something
that was there before (a crash between the two leaves that one change behind). Undoing
something already gone (the TUN vanished with its process, taking its addresses and
routes) is not an error. pyroute2's synchronous API runs its own event loop: from asyncio
code, call these methods in a worker thread.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

JOURNAL_VERSION = 1
# Undoing these means "already gone": not an error.
_GONE = {errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENXIO}


class NetConfError(Exception):
    """The kernel refused a change; the message names the change."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what}: {os.strerror(code)}")
        self.code = code


class NetConfExistsError(NetConfError):
    """The address, route or rule exists already (and is not ours to undo)."""


@dataclass(frozen=True)
class Change:
    """One applied change, as recorded in the journal: ``op`` and its arguments."""

    op: str
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return self.op + " " + " ".join(f"{k}={v}" for k, v in self.args.items())


def _family(addr: str) -> int:
    return (
        socket.AF_INET6 if ipaddress.ip_network(addr, strict=False).version == 6 else socket.AF_INET
    )


class NetConf:
    """Make network changes and remember them so they can be undone."""

    def __init__(self, journal: str | Path | None = None, *, netns: str | None = None) -> None:
        self.journal = Path(journal) if journal is not None else None
        self.netns = netns
        # flags=0: a misspelt namespace is an error, not a new empty namespace.
        self._ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
        self._stack: list[Change] = []

    # -- lifecycle

    def close(self) -> None:
        """Close the netlink socket (does not roll back)."""
        self._ipr.close()

    def __enter__(self) -> NetConf:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def changes(self) -> tuple[Change, ...]:
        """The applied changes, oldest first."""
        return tuple(self._stack)

    # -- changes

    def add_address(self, ifname: str, cidr: str) -> None:
        """Add ``cidr`` (e.g. "10.9.0.2/24" or "fd00::2/64") to ``ifname``.

        IPv6 addresses are added without duplicate address detection (IFA_F_NODAD): on a
        TUN there is nobody to collide with, and DAD would delay traffic by seconds.
        """
        iface = ipaddress.ip_interface(cidr)
        args = {"ifname": ifname, "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
        extra: dict[str, Any] = {}
        if iface.version == 6:
            extra["flags"] = 0x02  # IFA_F_NODAD
        self._apply(
            f"adding address {cidr} to {ifname}",
            lambda: self._ipr.addr(
                "add",
                index=self._index(ifname),
                address=args["address"],
                prefixlen=args["prefixlen"],
                **extra,
            ),
        )
        self._record(Change("addr", args))

    def set_up(self, ifname: str) -> None:
        """Bring ``ifname`` up; undo brings it down again only if it was down."""
        index = self._index(ifname)
        was_up = bool(self._link(index).get("flags", 0) & 1)
        self._apply(f"bringing {ifname} up", lambda: self._ipr.link("set", index=index, state="up"))
        if not was_up:
            self._record(Change("up", {"ifname": ifname}))

    def set_mtu(self, ifname: str, mtu: int) -> None:
        """Set the MTU of ``ifname``; undo restores the previous one."""
        index = self._index(ifname)
        old = int(self._link(index).get("mtu"))
        self._apply(
            f"setting MTU {mtu} on {ifname}", lambda: self._ipr.link("set", index=index, mtu=mtu)
        )
        if old != mtu:
            self._record(Change("mtu", {"ifname": ifname, "mtu": mtu, "old": old}))

    def add_route(
        self,
        dst: str,
        *,
        ifname: str | None = None,
        gateway: str | None = None,
        table: int | None = None,
        metric: int | None = None,
    ) -> None:
        """Add a route to ``dst`` (a prefix; "0.0.0.0/0" and "::/0" for default routes)."""
        if ifname is None and gateway is None:
            raise ValueError("a route needs an interface or a gateway")
        net = ipaddress.ip_network(dst, strict=True)
        args = {
            "dst": str(net),
            **_given(ifname=ifname, gateway=gateway, table=table, metric=metric),
        }
        self._apply(f"adding route {dst}", lambda: self._ipr.route("add", **self._route_spec(args)))
        self._record(Change("route", args))

    def add_rule(
        self,
        *,
        family: int,
        priority: int,
        table: int,
        fwmark: int | None = None,
        fwmask: int | None = None,
        invert: bool = False,
        suppress_prefixlength: int | None = None,
        src: str | None = None,
    ) -> None:
        """Add a policy rule (``ip rule``); ``family`` is 4 or 6.

        The two rules of a full tunnel, as wg-quick sets them: ``not fwmark M table T``
        (invert=True) and ``table main suppress_prefixlength 0``.
        """
        if family not in (4, 6):
            raise ValueError("family must be 4 or 6")
        args = {
            "family": family,
            "priority": priority,
            "table": table,
            **_given(
                fwmark=fwmark, fwmask=fwmask, suppress_prefixlength=suppress_prefixlength, src=src
            ),
        }
        if invert:
            args["invert"] = True
        self._apply(f"adding rule {args}", lambda: self._ipr.rule("add", **_rule_spec(args)))
        self._record(Change("rule", args))

    # -- undo

    def undo_one(self, op: str, **match: Any) -> bool:
        """Undo the newest recorded change `op` whose arguments include `match` now (e.g.
        an address that is no longer ours) and forget it; False if none matches."""
        for i in range(len(self._stack) - 1, -1, -1):
            change = self._stack[i]
            if change.op == op and all(change.args.get(k) == v for k, v in match.items()):
                self._undo(change)
                del self._stack[i]
                self._write_journal()
                return True
        return False

    def rollback(self) -> None:
        """Undo every change, newest first; then delete the journal.

        Keeps going past failures and raises one NetConfError naming all of them at the
        end (the journal is then kept, holding what could not be undone).
        """
        failed: list[Change] = []
        errors: list[str] = []
        while self._stack:
            change = self._stack.pop()
            try:
                self._undo(change)
            except NetConfError as e:
                failed.append(change)
                errors.append(f"{change.describe()}: {e}")
        self._stack = list(reversed(failed))
        self._write_journal()
        if errors:
            raise NetConfError("rollback incomplete: " + "; ".join(errors), errno.EIO)

    @classmethod
    def undo_journal(cls, journal: str | Path, *, netns: str | None = None) -> int:
        """Undo what a previous process journaled (e.g. after a crash); return the count.

        A missing journal means there is nothing to undo (returns 0).
        """
        path = Path(journal)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        if data.get("version") != JOURNAL_VERSION:
            raise ValueError(f"{path}: unknown journal version {data.get('version')!r}")
        with cls(path, netns=netns) as nc:
            nc._stack = [Change(c["op"], c["args"]) for c in data["changes"]]
            count = len(nc._stack)
            nc.rollback()
        return count

    # -- internals

    def _index(self, ifname: str) -> int:
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetConfError(f"interface {ifname}", errno.ENODEV)
        return int(found[0])

    def _link(self, index: int) -> Any:
        return self._ipr.get_links(index)[0]

    def _route_spec(self, args: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = {"dst": args["dst"], "family": _family(args["dst"])}
        if "ifname" in args:
            spec["oif"] = self._index(args["ifname"])
        if "gateway" in args:
            spec["gateway"] = args["gateway"]
        if "table" in args:
            spec["table"] = args["table"]
        if "metric" in args:
            spec["priority"] = args["metric"]
        return spec

    def _apply(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except NetlinkError as e:
            cls = NetConfExistsError if e.code == errno.EEXIST else NetConfError
            raise cls(what, e.code) from None

    def _undo(self, c: Change) -> None:
        a = c.args
        try:
            if c.op == "addr":
                self._ipr.addr(
                    "del",
                    index=self._index(a["ifname"]),
                    address=a["address"],
                    prefixlen=a["prefixlen"],
                )
            elif c.op == "up":
                self._ipr.link("set", index=self._index(a["ifname"]), state="down")
            elif c.op == "mtu":
                self._ipr.link("set", index=self._index(a["ifname"]), mtu=a["old"])
            elif c.op == "route":
                self._ipr.route("del", **self._route_spec(a))
            elif c.op == "rule":
                self._ipr.rule("del", **_rule_spec(a))
            else:
                raise NetConfError(f"unknown change {c.op!r}", errno.EINVAL)
        except NetConfError as e:
            if e.code not in _GONE:
                raise
        except NetlinkError as e:
            if e.code not in _GONE:
                raise NetConfError(f"undoing {c.describe()}", e.code) from None

    def _record(self, change: Change) -> None:
        self._stack.append(change)
        self._write_journal()

    def _write_journal(self) -> None:
        if self.journal is None:
            return
        if not self._stack:
            self.journal.unlink(missing_ok=True)
            return
        data = {"version": JOURNAL_VERSION, "changes": [asdict(c) for c in self._stack]}
        _atomic_write(self.journal, json.dumps(data, indent=1).encode())


def _given(**kw: Any) -> dict[str, Any]:
    """The keyword arguments that were given (not None): what a Change records."""
    return {k: v for k, v in kw.items() if v is not None}


def _rule_spec(args: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "family": socket.AF_INET6 if args["family"] == 6 else socket.AF_INET,
        "priority": args["priority"],
        "table": args["table"],
    }
    for k in ("fwmark", "fwmask"):
        if k in args:
            spec[k] = args[k]
    if "suppress_prefixlength" in args:
        spec["suppress_prefixlen"] = args["suppress_prefixlength"]  # FRA_SUPPRESS_PREFIXLEN
    if "src" in args:
        net = ipaddress.ip_network(args["src"], strict=False)
        spec["src"] = str(net.network_address)
        spec["src_len"] = net.prefixlen
    if args.get("invert"):
        spec["flags"] = 0x2  # FIB_RULE_INVERT
    return spec


def _atomic_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename over, fsync the directory: the file is old or new, never torn."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
