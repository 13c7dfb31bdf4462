"""The row interface of the tunnel benchmark, and the process tracking rows use.

A row is one tunnel implementation under test: a subclass of `Row` with a `name`, the
executables it `needs` (mapped to their Debian packages), and two methods. The harness
(`bench.tunnel`) hands it a `RowEnv`: two namespaces joined by one veth (`env.pair`,
outer addresses 198.18.0.1 client / .2 server), the inner addresses iperf3 will use
(`env.inner`), and a fresh private directory (`env.workdir`). For each run it calls

1. `up(env) -> list[int]`: start the daemons and configure the tunnel so that
   `inner.server4` and `inner.server6`, on the server side, are reachable from the
   client namespace through the tunnel (not over the veth: the harness checks the
   route). Long-running processes are started with `env.spawn(side, argv, name=...)`;
   a tool that daemonizes itself is started with `env.run(side, argv)` and its daemon
   handed over with `env.adopt(pid, name)`. Never plain Popen: the harness must be able
   to end every process. Return the PIDs of the daemon processes on both sides; their
   descendants (e.g. ocserv's sec-mod and per-client workers) are found and counted by
   the harness. An empty list means "no daemon" (veth): CPU and RSS are then null.
   `up` may return before the tunnel passes traffic: the harness then probes with a
   1 KB iperf3 transfer until it does (bounded by `bench.tunnel.READY_TIMEOUT`).
2. `down(env)`: optional extra cleanup (e.g. `vpn down`). Afterwards the harness ends
   every spawned or adopted process still alive (SIGTERM, SIGKILL after `TERM_GRACE`,
   by PID) and deletes `env.workdir`. The namespaces outlive the row and are reused by
   the next one, so nothing may be left in them.

Rows touch nothing outside the two namespaces and `env.workdir` (a file that a tool
insists on putting elsewhere, like wireguard-go's UAPI socket, is removed in `down`).
Keys and certificates are made per `up` into `env.workdir` (mode 0700; a row may open
it to 0711 for a daemon that drops privileges, its secret files stay 0600).
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from bench.netns import Pair, in_ns, is_zombie

Side = Literal["client", "server"]

# Seconds: a one-shot command, the grace between SIGTERM and SIGKILL at teardown.
RUN_TIMEOUT = 15.0
TERM_GRACE = 3.0
# Extra places to look for executables: daemons live in /usr/sbin.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class RowError(RuntimeError):
    """A row could not be set up or measured; the message says what and where."""


@dataclass(frozen=True)
class Inner:
    """Addresses inside the tunnel (RFC 2544 benchmarking range, distinct from the veth).

    `server4`/`server6` are what iperf3 connects to; `client4`/`client6` are the
    client's tunnel addresses where the row can choose them (ocserv leases its own).
    The server side takes the first host of each prefix, as ocserv does.
    """

    server4: str = "198.19.0.1"
    client4: str = "198.19.0.2"
    net4: str = "198.19.0.0"
    prefix4: int = 24
    server6: str = "2001:2:0:2::1"
    client6: str = "2001:2:0:2::2"
    net6: str = "2001:2:0:2::"
    prefix6: int = 64


def find_exe(name: str) -> str | None:
    """Absolute path of an executable in PATH or the sbin directories, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(name, path=path)


# -- /proc ------------------------------------------------------------------------


def read_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+stime in clock ticks, starttime) of `pid` from /proc, or None if gone.

    For a process (thread-group leader) the times cover all its threads.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()  # comm may hold spaces and parens
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19])


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of `pid` in KiB, or None if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def process_tree(roots: Sequence[int]) -> dict[tuple[int, int], int]:
    """{(pid, starttime): CPU ticks} for `roots` and all their descendants."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := read_stat(int(entry))) is not None:
            stats[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[tuple[int, int], int] = {}
    todo = [p for p in roots if p in stats]
    while todo:
        pid = todo.pop()
        _, ticks, start = stats[pid]
        if (pid, start) not in out:
            out[(pid, start)] = ticks
            todo.extend(children.get(pid, []))
    return out


# -- processes of a row -----------------------------------------------------------


@dataclass
class Proc:
    """A process the row started (`popen`) or adopted (`start`: its /proc starttime)."""

    name: str
    pid: int
    log: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    start: int | None = None

    def returncode(self) -> int | None:
        """Exit status once it has exited (-1 if adopted and gone), else None."""
        if self.popen is not None:
            return self.popen.poll()
        st = read_stat(self.pid)  # an exited orphan may linger as a zombie of init
        return None if st is not None and st[2] == self.start and not is_zombie(self.pid) else -1

    def signal(self, sig: int) -> None:
        if self.returncode() is None:  # never signal a reused PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def reap(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the exit; True if it has exited."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout=max(0.0, timeout))
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.returncode() is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@dataclass
class RowEnv:
    """What a row gets: namespaces, inner addresses, a private dir, a process spawner."""

    pair: Pair
    inner: Inner
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def ns(self, side: Side) -> str:
        """The namespace name of `side`."""
        return self.pair.client if side == "client" else self.pair.server

    def log_path(self, name: str) -> Path:
        """Where `spawn(..., name=name)` writes the process's stdout and stderr."""
        return self.workdir / f"{name}.log"

    def spawn(
        self,
        side: Side,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> int:
        """Start a long-running process in namespace `side`; return its PID.

        Output goes to `workdir/<name>.log` (shown if the row fails). The process runs
        in its own session so a terminal's Ctrl-C reaches only the harness, which then
        ends it in order.
        """
        exe = find_exe(argv[0])
        if exe is None:
            raise RowError(f"{name}: executable {argv[0]!r} not found")
        log = self.log_path(name)
        full_env = {**os.environ, **(env or {})}
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                in_ns(self.ns(side), [exe, *argv[1:]]),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        self.procs.append(Proc(name, popen.pid, log, popen=popen))
        if stdin is not None:
            assert popen.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                popen.stdin.write(stdin)
                popen.stdin.close()
        return popen.pid

    def run(
        self, side: Side, argv: Sequence[str], *, input: bytes | None = None, timeout: float = RUN_TIMEOUT
    ) -> str:
        """Run a short command in namespace `side`; return stdout, raise RowError on failure."""
        exe = find_exe(argv[0])
        if exe is None:
            raise RowError(f"executable {argv[0]!r} not found")
        try:
            res = subprocess.run(
                in_ns(self.ns(side), [exe, *argv[1:]]),
                input=input,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RowError(f"{' '.join(argv)} timed out after {timeout:.0f} s") from exc
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip()
            raise RowError(f"{' '.join(argv)}: {err or f'exit {res.returncode}'}")
        return res.stdout.decode(errors="replace")

    def adopt(self, pid: int, name: str, log: Path | None = None) -> int:
        """Track a process the row did not spawn (a self-daemonizing tool) for teardown."""
        st = read_stat(pid)
        if st is None:
            raise RowError(f"{name}: process {pid} is not running")
        self.procs.append(Proc(name, pid, log, start=st[2]))
        return pid

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
        """Poll `check()` every 50 ms until true; RowError after `timeout` or if a process died."""
        deadline = time.monotonic() + timeout
        while not check():
            for p in self.dead():
                raise RowError(f"waiting for {what}: {p.name} exited with {p.returncode()}")
            if time.monotonic() > deadline:
                raise RowError(f"waiting for {what}: timed out after {timeout:.0f} s")
            time.sleep(0.05)

    def dead(self) -> list[Proc]:
        """Spawned or adopted processes that have exited."""
        return [p for p in self.procs if p.returncode() is not None]

    def log_tails(self, lines: int = 8) -> str:
        """The last lines of each process log, for an error report."""
        parts = []
        for p in self.procs:
            if p.log is None:
                continue
            try:
                text = p.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- {p.name} (pid {p.pid}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def stop_all(self, grace: float = TERM_GRACE) -> None:
        """End every tracked process, last started first: SIGTERM, then SIGKILL."""
        for p in reversed(self.procs):
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in reversed(self.procs):
            if not p.reap(deadline - time.monotonic()):
                p.signal(signal.SIGKILL)
                p.reap(grace)
        self.procs.clear()


class Row(abc.ABC):
    """One tunnel implementation under test (see the module docstring)."""

    name: ClassVar[str]
    # executable -> Debian package that ships it (reported when missing).
    needs: ClassVar[Mapping[str, str]] = {}
    # False only for rows without a tunnel (veth): the harness then skips its check that
    # the inner server address is not routed over the plain veth.
    tunnel: ClassVar[bool] = True

    @classmethod
    def missing_packages(cls) -> list[str]:
        """Debian packages whose executables this row needs but cannot find."""
        return sorted({pkg for exe, pkg in cls.needs.items() if find_exe(exe) is None})

    @abc.abstractmethod
    def up(self, env: RowEnv) -> list[int]:
        """Bring the tunnel up; return the PIDs of the row's daemon processes."""

    def down(self, env: RowEnv) -> None:  # noqa: B027 - optional hook
        """Extra cleanup before the harness ends the spawned processes."""
