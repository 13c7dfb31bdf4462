"""The row interface of the tunnel benchmark, and the process tracking rows use.

A row is one tunnel implementation under test. The harness (`bench.tunnel`) gives it
two namespaces joined by one veth (`RowEnv.pair`, outer addresses) and the inner
addresses iperf3 will use (`RowEnv.inner`); the row

1. `up(env)`: starts its daemons with `env.spawn(side, argv)` (never plain Popen: the
   harness must be able to end them) and configures the tunnel so that
   `inner.server4` (and `inner.server6`) in the server namespace is reachable from the
   client namespace through the tunnel. It returns the PIDs of its daemon processes on
   both sides; their descendants (e.g. ocserv's sec-mod and per-client workers) are
   found and counted by the harness. An empty list means "no daemon" (veth): CPU and
   RSS are then reported as null. `up` may return before the tunnel passes traffic:
   the harness probes with iperf3 until it does (bounded by `READY_TIMEOUT`).
2. `down(env)`: optional extra cleanup. Afterwards the harness ends every spawned
   process (SIGTERM, then SIGKILL after a grace period, by PID) and deletes
   `env.workdir`; the namespaces outlive the row and are reused by the next one.

Rows must not touch anything outside the two namespaces and `env.workdir` (files
under /run that their tool insists on are removed in `down`). Keys and certificates
are generated per `up` into `env.workdir`, which is private (mode 0700).
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

from bench.netns import Pair, in_ns

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


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class RowEnv:
    """What a row gets: namespaces, inner addresses, a private dir, a process spawner."""

    pair: Pair
    inner: Inner
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def ns(self, side: Side) -> str:
        return self.pair.client if side == "client" else self.pair.server

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
        log = self.workdir / f"{name}.log"
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
        self.procs.append(Proc(name, popen, log))
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

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
        """Poll `check()` every 50 ms until true; RowError after `timeout` or if a process died."""
        deadline = time.monotonic() + timeout
        while not check():
            dead = self.dead()
            if dead:
                raise RowError(f"waiting for {what}: {dead[0].name} exited with {dead[0].popen.returncode}")
            if time.monotonic() > deadline:
                raise RowError(f"waiting for {what}: timed out after {timeout:.0f} s")
            time.sleep(0.05)

    def dead(self) -> list[Proc]:
        """Spawned processes that have exited."""
        return [p for p in self.procs if p.popen.poll() is not None]

    def log_tails(self, lines: int = 8) -> str:
        """The last lines of each process log, for an error report."""
        parts = []
        for p in self.procs:
            try:
                text = p.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- {p.name} (pid {p.popen.pid}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def stop_all(self, grace: float = TERM_GRACE) -> None:
        """End every spawned process, last started first: SIGTERM, then SIGKILL."""
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in reversed(self.procs):
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=grace)
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
