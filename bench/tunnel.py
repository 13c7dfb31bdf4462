"""End-to-end tunnel throughput: iperf3 through each tunnel between two namespaces.

Usage: `python -m bench.tunnel [--json] [--rows a,b,...] [--runs N] [--seconds S] [--ipv6]`
(as root). `--json` prints one JSON object per row per line on stdout; without it, a
table. Progress goes to stderr. Exit status 1 if any row failed (its line then has
`"error"`), 2 on bad arguments or a missing prerequisite.

Method (fixed, so numbers are reproducible):

- Topology: two namespaces `vpnb<PID>-<N>-client` and `-server` joined by one veth
  (MTU 1500, default offloads, outer 198.18.0.1/.2 and 2001:2:0:1::1/::2), created once
  and shared by every row (bench.netns). Inner (tunnel) addresses 198.19.0.1 (server)
  and .2 (client), 2001:2:0:2::1/::2 (iperf3 uses IPv4 unless `--ipv6`); `veth` puts
  them straight on the veth.
- Order: for each run 1..N, for each row in order: bring the row up (fresh keys and
  daemons; ready when a 1 KB iperf3 transfer to the inner server address succeeds and,
  for tunnel rows, the client namespace routes that address through something other
  than the veth),
  measure client->server, then server->client (`-R`), tear the row down. Runs are thus
  interleaved across rows, so load drift on a shared machine hits all rows alike.
- One measurement: `iperf3 -c <inner server> -t S -J` (one TCP stream, iperf3 3.12
  defaults: 128 KB writes, OS socket buffers, no omit interval) against an `iperf3 -s`
  in the server namespace started with the row. Goodput = `end.sum_received`
  bits_per_second (the receiver's count) in Gbit/s (10^9 bit/s).
- `gbps`, `gbps_reverse`: median over the N runs of each direction.
- `cpu_s_per_gb`: user+system CPU seconds (/proc/<pid>/stat utime+stime, all threads)
  of the row's daemon processes and all their descendants, both namespaces, read just
  before and just after each iperf3 client, summed over all 2N measurements, divided by
  the bytes received summed likewise, per 10^9 bytes. iperf3 itself, the kernel's
  softirq threads and short-lived helper processes are not counted. null for `veth`.
- `peak_rss_mb`: the largest VmHWM (/proc/<pid>/status) of any one daemon process at
  the end of any measurement, in MiB. null for `veth`.
- `vs_openvpn_tcp`, `vs_ocserv_tls`, `vs_veth`: this row's `gbps` divided by that
  row's `gbps` in the same invocation (null if that row was not run or failed);
  `*_reverse` likewise for `gbps_reverse`. Also `gbps_runs`, `gbps_reverse_runs` (per
  run, in order), `runs`, `seconds`, `family`, `error`.
- A run that fails (setup, readiness or iperf3 error) is set up afresh and repeated
  once; a second failure marks the row failed: its numbers are null and `error` says
  why, with the tail of each daemon's log. iperf3 errors of the control phase (before
  any data, e.g. the server still resetting after the readiness probe) are retried.
- Nothing is pinned to a CPU; the machine's other load is not controlled: compare rows
  within one invocation only. Kernel work done in softirq context (TCP, veth, TUN
  receive) is charged to whatever process was running or to none, so `cpu_s_per_gb` undercounts
  rows whose cost is mostly in the kernel; it compares rows, it is not a total.

Rows (bench/rows/): `veth`, `openvpn-tcp`, `ocserv-tls`, `wireguard-go`; see each
module for its exact configuration and `bench/rows/base.py` for the row interface.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import netns
from bench.rows import ROWS
from bench.rows.base import Inner, Row, RowEnv, RowError, find_exe, process_tree, vm_hwm_kb

IPERF_PORT = 5201
READY_TIMEOUT = 30.0  # seconds for a row to pass its first 1 KB
IPERF_SLACK = 30.0  # seconds an iperf3 client may run beyond -t before it is killed
REFERENCES = ("openvpn-tcp", "ocserv-tls", "veth")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class RowResult:
    name: str
    fwd: list[float] = field(default_factory=list)  # Gbit/s per run
    rev: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    rx_bytes: int = 0
    rss_kb: int | None = None
    has_daemons: bool = False
    error: str | None = None

    def add(self, s: Sample) -> None:
        self.fwd.append(s.fwd_bps / 1e9)
        self.rev.append(s.rev_bps / 1e9)
        self.has_daemons = s.has_daemons
        if s.has_daemons:
            self.cpu_s += s.cpu_s
            self.rx_bytes += s.rx_bytes
            if s.rss_kb is not None:
                self.rss_kb = max(s.rss_kb, self.rss_kb or 0)


# -- /proc accounting -------------------------------------------------------------


def cpu_delta_s(before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]) -> float:
    """CPU seconds spent between two snapshots (new processes count from zero)."""
    return sum(t - before.get(k, 0) for k, t in after.items()) / CLK_TCK


def peak_rss_kb(tree: dict[tuple[int, int], int]) -> int | None:
    values = [v for pid, _ in tree if (v := vm_hwm_kb(pid)) is not None]
    return max(values, default=None)


# -- iperf3 -----------------------------------------------------------------------


# Errors of iperf3's control phase, before any data: the server was still resetting
# after the previous test (it re-listens with a delay) or the tunnel dropped a SYN.
_RETRY_ERRORS = ("unable to connect", "unable to receive control message", "the server is busy")
IPERF_RETRIES = 5


def iperf3(
    env: RowEnv, target: str, *, seconds: int | None, reverse: bool = False, connect_ms: int = 5000
) -> tuple[float, int]:
    """Run one iperf3 client in the client namespace; (receiver bit/s, bytes received).

    `seconds=None` sends 1 KB only (the readiness probe). Errors of the control phase
    are retried up to IPERF_RETRIES times, half a second apart.
    """
    for attempt in range(IPERF_RETRIES):
        try:
            return _iperf3_once(env, target, seconds, reverse, connect_ms)
        except RowError as exc:
            if attempt == IPERF_RETRIES - 1 or not any(e in str(exc) for e in _RETRY_ERRORS):
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _iperf3_once(
    env: RowEnv, target: str, seconds: int | None, reverse: bool, connect_ms: int
) -> tuple[float, int]:
    exe = find_exe("iperf3") or "iperf3"
    argv = [exe, "-c", target, "-p", str(IPERF_PORT), "-J", "--connect-timeout", str(connect_ms)]
    argv += ["-n", "1K"] if seconds is None else ["-t", str(seconds)]
    if reverse:
        argv.append("-R")
    timeout = (seconds or 0) + IPERF_SLACK
    try:
        res = subprocess.run(
            netns.in_ns(env.pair.client, argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RowError(f"iperf3 to {target}: no result after {timeout:.0f} s") from exc
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        raise RowError(
            f"iperf3 to {target}: exit {res.returncode}, no JSON: {res.stderr.strip()[:200]}"
        ) from exc
    if "error" in doc:
        raise RowError(f"iperf3 to {target}: {doc['error']}")
    recv = doc["end"]["sum_received"]
    return float(recv["bits_per_second"]), int(recv["bytes"])


def _route_dev(env: RowEnv, target: str) -> str:
    out = env.run("client", ["ip", "route", "get", target]).split()
    return out[out.index("dev") + 1] if "dev" in out else "?"


def wait_ready(env: RowEnv, target: str, tunnel: bool) -> None:
    """Until a 1 KB iperf3 transfer through the row succeeds (READY_TIMEOUT)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if env.dead():
            p = env.dead()[0]
            raise RowError(f"{p.name} exited with {p.returncode()} before the tunnel was up")
        try:
            _iperf3_once(env, target, None, False, 1000)
            break
        except RowError as exc:
            if time.monotonic() > deadline:
                raise RowError(f"tunnel not passing traffic after {READY_TIMEOUT:.0f} s: {exc}") from exc
            time.sleep(0.2)
    dev = _route_dev(env, target)
    if tunnel and dev == env.pair.client_if:
        raise RowError(f"{target} is routed over the plain veth {dev!r}, not through the tunnel")


@contextlib.contextmanager
def row_up(row: Row, pair: netns.Pair, inner: Inner, target: str) -> Iterator[tuple[RowEnv, list[int]]]:
    """Bring `row` up with a fresh iperf3 server and workdir; always tear everything down."""
    env = RowEnv(
        pair=pair, inner=inner, workdir=Path(tempfile.mkdtemp(prefix=f"{netns.PREFIX}{os.getpid()}-"))
    )
    try:
        env.spawn("server", ["iperf3", "-s", "-p", str(IPERF_PORT)], name="iperf3-server")
        pids = row.up(env)
        wait_ready(env, target, tunnel=row.tunnel)
        yield env, pids
    except Exception as exc:
        tails = env.log_tails()
        raise RowError(f"{exc}" + (f"\n{tails}" if tails else "")) from exc
    finally:
        with netns.no_sigint():
            try:
                row.down(env)
            except Exception as exc:  # teardown goes on; say what was left
                print(f"bench: {row.name}: teardown: {exc}", file=sys.stderr)
            env.stop_all()
            shutil.rmtree(env.workdir, ignore_errors=True)


@dataclass(frozen=True)
class Sample:
    """One run of one row: both directions."""

    fwd_bps: float
    rev_bps: float
    cpu_s: float  # daemons' CPU over both measurements
    rx_bytes: int  # received over both measurements
    rss_kb: int | None  # largest VmHWM of one daemon process
    has_daemons: bool


def measure_once(row: Row, pair: netns.Pair, inner: Inner, target: str, seconds: int) -> Sample:
    """Bring the row up, measure client->server then server->client, tear it down."""
    bps: list[float] = []
    cpu_s, rx_bytes, rss_kb = 0.0, 0, None
    with row_up(row, pair, inner, target) as (env, pids):
        for reverse in (False, True):
            before = process_tree(pids)
            rate, nbytes = iperf3(env, target, seconds=seconds, reverse=reverse)
            after = process_tree(pids)
            bps.append(rate)
            cpu_s += cpu_delta_s(before, after)
            rx_bytes += nbytes
            rss = peak_rss_kb(after)
            if rss is not None:
                rss_kb = max(rss, rss_kb or 0)
    return Sample(bps[0], bps[1], cpu_s, rx_bytes, rss_kb, bool(pids))


# -- report -----------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 4 significant digits, or None when either is missing."""
    return float(f"{a / b:.4g}") if a is not None and b else None


def summarize(results: list[RowResult], runs: int, seconds: int, family: int) -> list[dict[str, Any]]:
    """The output objects, in row order, with ratios to the reference rows of this run."""
    med = {
        r.name: (None if r.error else _median(r.fwd), None if r.error else _median(r.rev)) for r in results
    }
    out = []
    for r in results:
        fwd, rev = med[r.name]
        cpu = (r.cpu_s / r.rx_bytes * 1e9) if r.has_daemons and r.rx_bytes and not r.error else None
        obj: dict[str, Any] = {
            "name": r.name,
            "gbps": None if fwd is None else round(fwd, 3),
            "gbps_reverse": None if rev is None else round(rev, 3),
            "cpu_s_per_gb": None if cpu is None else round(cpu, 2),
            "peak_rss_mb": (
                round(r.rss_kb / 1024, 1) if r.has_daemons and r.rss_kb is not None and not r.error else None
            ),
        }
        for ref in REFERENCES:
            key = "vs_" + ref.replace("-", "_")
            ref_fwd, ref_rev = med.get(ref, (None, None))
            obj[key] = _ratio(fwd, ref_fwd)
            obj[key + "_reverse"] = _ratio(rev, ref_rev)
        obj.update(
            gbps_runs=[round(v, 3) for v in r.fwd],
            gbps_reverse_runs=[round(v, 3) for v in r.rev],
            runs=runs,
            seconds=seconds,
            family=family,
            error=r.error,
        )
        out.append(obj)
    return out


def format_table(objs: list[dict[str, Any]]) -> str:
    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = ("row", "Gbit/s", "reverse", "CPU s/GB", "RSS MB", "vs ovpn", "vs ocserv", "vs veth")
    lines = ["{:<14} {:>8} {:>8} {:>9} {:>7} {:>8} {:>9} {:>8}".format(*head)]
    for o in objs:
        lines.append(
            "{:<14} {:>8} {:>8} {:>9} {:>7} {:>8} {:>9} {:>8}".format(
                o["name"],
                f(o["gbps"], ".3f"),
                f(o["gbps_reverse"], ".3f"),
                f(o["cpu_s_per_gb"], ".1f"),
                f(o["peak_rss_mb"], ".1f"),
                f(o["vs_openvpn_tcp"], ".2f"),
                f(o["vs_ocserv_tls"], ".2f"),
                f(o["vs_veth"], ".3f"),
            )
        )
        if o["error"]:
            lines.append(f"  error: {o['error'].splitlines()[0]}")
    return "\n".join(lines)


# -- CLI --------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.tunnel",
        description="iperf3 throughput through each tunnel (see module docstring).",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per row per line")
    p.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated rows, in order (default: {','.join(ROWS)})"
    )
    p.add_argument("--runs", type=int, default=3, help="runs per row and direction (default 3)")
    p.add_argument("--seconds", type=int, default=10, help="iperf3 -t per measurement (default 10)")
    p.add_argument("--ipv6", action="store_true", help="iperf3 over the inner IPv6 addresses")
    args = p.parse_args(argv)
    args.row_names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in args.row_names if n not in ROWS]
    if unknown or not args.row_names:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if args.runs < 1 or args.seconds < 1:
        p.error("--runs and --seconds must be at least 1")
    return args


def _run_row(
    row: Row, res: RowResult, run: int, args: argparse.Namespace, pair: netns.Pair, inner: Inner, target: str
) -> None:
    """One run of one row, set up afresh once more if it fails; the row's error otherwise."""
    for attempt in (1, 2):
        t0 = time.monotonic()
        try:
            sample = measure_once(row, pair, inner, target, args.seconds)
        except RowError as exc:
            print(f"bench: run {run} {row.name}: attempt {attempt} FAILED: {exc}", file=sys.stderr)
            if attempt == 2:
                res.error = str(exc)
            continue
        res.add(sample)
        print(
            f"bench: run {run}/{args.runs} {row.name}: {res.fwd[-1]:.3f} Gbit/s, "
            f"reverse {res.rev[-1]:.3f} ({time.monotonic() - t0:.1f} s)",
            file=sys.stderr,
        )
        return


def sweep_workdirs() -> list[str]:
    """Remove work directories left by runs whose process is gone (SIGKILL, crash)."""
    tmp = Path(tempfile.gettempdir())
    swept = []
    for d in tmp.glob(f"{netns.PREFIX}*-*"):
        m = re.match(rf"^{netns.PREFIX}(\d+)-", d.name)
        if m and d.is_dir() and not netns.pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            swept.append(d.name)
    return swept


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup of rows and namespaces


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if os.geteuid() != 0:
        print("bench.tunnel: needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "iperf3") if find_exe(t) is None]
    if missing:
        print(f"bench.tunnel: missing {', '.join(missing)} (Debian: iproute2, iperf3)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    sweep_workdirs()
    inner = Inner()
    target = inner.server6 if args.ipv6 else inner.server4
    rows = [ROWS[n]() for n in args.row_names]
    results = [RowResult(r.name) for r in rows]
    for row, res in zip(rows, results, strict=True):
        if pkgs := type(row).missing_packages():
            res.error = f"not installed: {' '.join(pkgs)} (apt-get install {' '.join(pkgs)})"
    try:
        with netns.namespaces() as pair:
            for run in range(1, args.runs + 1):
                for row, res in zip(rows, results, strict=True):
                    if not res.error:
                        _run_row(row, res, run, args, pair, inner, target)
    except KeyboardInterrupt:
        print("bench.tunnel: interrupted; everything it started is removed", file=sys.stderr)
        return 130
    objs = summarize(results, args.runs, args.seconds, 6 if args.ipv6 else 4)
    if args.json:
        for o in objs:
            print(json.dumps(o, allow_nan=False))
    else:
        print(format_table(objs))
    return 1 if any(o["error"] for o in objs) else 0


if __name__ == "__main__":
    sys.exit(main())
