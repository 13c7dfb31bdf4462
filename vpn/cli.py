"""`vpn` command line: up, down, status, genkey, demo.

`vpn up CONFIG` starts a daemon (`python -m vpn.daemon`) in its own session, waits until
it reports that the tunnel is up (or why it failed) through a pipe, and returns; the
daemon stays. `vpn down` and `vpn status` talk to it through the control socket of this
network namespace (vpn/io/control.py).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vpn import __version__, config
from vpn.io import control, paths

UP_TIMEOUT_S = 60.0
STOP_WAIT_S = 15.0


def _pick_name(name: str | None) -> str:
    if name:
        return name
    names = control.running_instances()
    if len(names) == 1:
        return names[0]
    if not names:
        raise control.ControlError("no instance is running in this network namespace")
    raise control.ControlError(f"several instances run here ({', '.join(names)}): name one")


def cmd_up(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)  # validate before forking: errors go to the user
    if cfg.server is not None:
        print(f"error: {cfg.path} is a server configuration: run it with `vpn serve {cfg.path}`", file=sys.stderr)
        return 2
    log_path = paths.log_path(cfg.name)
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "vpn.daemon", str(Path(args.config).resolve()), "--ready-fd", str(write_fd)]
    if args.export_keys:
        cmd += ["--export-keys", str(Path(args.export_keys).resolve())]
    if args.new_key:
        cmd.append("--new-key")
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(write_fd,), start_new_session=True, close_fds=True)
    os.close(write_fd)
    status = _wait_ready(read_fd, proc, UP_TIMEOUT_S)
    if status == "ok":
        print(f"{cfg.name}: up (daemon pid {proc.pid}, log {log_path})")
        return 0
    _wait_undone(proc, stop_first=status.startswith("not up after"))
    print(f"{cfg.name}: failed: {status} (log {log_path})", file=sys.stderr)
    return 1


def _wait_undone(proc: subprocess.Popen[bytes], *, stop_first: bool) -> None:
    """A daemon that failed to start undoes its changes, then exits: return after that
    (one that is still starting is told to stop first)."""
    if not stop_first:
        try:
            proc.wait(timeout=STOP_WAIT_S)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.terminate()
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    os.set_blocking(fd, False)
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                chunk = None
            if chunk:
                data += chunk
                if b"\n" in data:
                    line = data.split(b"\n", 1)[0].decode(errors="replace")
                    return "ok" if line == "ok" else line.removeprefix("error: ")
            elif chunk == b"":
                return f"the daemon exited (code {proc.wait(5)}) before the tunnel came up"
            time.sleep(0.05)
        return f"not up after {timeout:.0f} s"
    finally:
        os.close(fd)


def cmd_serve(args: argparse.Namespace) -> int:
    """The server in the foreground (for systemd or a terminal); logs go to stderr."""
    import logging

    from vpn import daemon

    cfg = config.load(args.config)
    if cfg.server is None:
        print(f"error: {cfg.path} has no [server] table: `vpn serve` needs a server configuration "
              f"(clients use `vpn up`)", file=sys.stderr)
        return 2
    logging.basicConfig(level=os.environ.get("VPN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(line: str) -> None:
        print(f"{cfg.name}: {'serving' if line == 'ok' else line}", flush=True)

    async def run() -> int:
        return await daemon.serve_daemon(lambda: daemon.make_tunnel(cfg), cfg.name, ready)

    return daemon.run_loop(run())


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the daemon, which undoes its changes. With no daemon (it crashed or was
    killed), undo what it left: routes, rules, addresses, DNS and the kill switch."""
    from vpn.client import leftover_names, undo_leftovers

    running = control.running_instances()
    name = args.name
    if name is None and not running:
        left = leftover_names()
        if len(left) > 1:
            raise control.ControlError(f"several instances left changes here ({', '.join(left)}): name one")
        if not left:
            raise control.ControlError("no instance is running in this network namespace")
        name = left[0]
    name = name or _pick_name(None)
    if name not in running:
        undone = undo_leftovers(name)
        if not undone:
            raise control.ControlError(f"no instance named {name!r} is running in this network namespace")
        print(f"{name}: not running; undid what it left behind: {', '.join(undone)}")
        return 0
    reply = control.request(name, "down", timeout=30)
    if not reply.get("ok"):
        print(f"{name}: {reply.get('error', 'failed')}", file=sys.stderr)
        return 1
    # the daemon exits after answering; wait for its socket to disappear
    deadline = time.monotonic() + 15
    while name in control.running_instances() and time.monotonic() < deadline:
        time.sleep(0.05)
    if name not in control.running_instances():
        undo_leftovers(name)  # whatever its own stop could not undo (normally nothing)
    print(f"{name}: down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else control.running_instances()
    if not names:
        from vpn.client import leftover_names

        print("no instance is running in this network namespace", file=sys.stderr)
        for name in leftover_names():  # a crashed instance's routes, DNS or kill switch
            print(f"{name} did not stop cleanly and left changes behind: `vpn down {name}` undoes them",
                  file=sys.stderr)
        return 1
    out = {}
    for name in names:
        out[name] = control.request(name, "status")
    if args.json:
        print(json.dumps(out if len(out) > 1 else out[names[0]], indent=2))
    else:
        for name, st in out.items():
            print(format_status(name, st))
    return 0


def format_status(name: str, st: dict[str, Any]) -> str:
    """A human-readable rendering of a daemon's status reply."""
    lines = [f"{name}: {st.get('state', '?')}"]
    if st.get("role") == "client":
        return "\n".join(lines + _format_client(st))
    if st.get("role") == "server":
        return "\n".join(lines + _format_server(st))
    for key in ("mode", "transport", "role", "remote", "peer", "device", "mtu", "uptime_s"):
        if st.get(key) is not None:
            lines.append(f"  {key}: {st[key]}")
    for sa in st.get("sas") or []:
        shown = ("dir", "spi", "seq", "packets", "bytes")
        extra = ", ".join(f"{k} {v}" for k, v in sa.items() if k not in shown and v)
        lines.append(f"  sa {sa['dir']:<3} spi {sa['spi']}: seq {sa['seq']}, {sa['packets']} packets, "
                     f"{_human_bytes(sa['bytes'])}" + (f", {extra}" if extra else ""))
    counters = st.get("counters")
    if isinstance(counters, dict):
        nonzero = {k: v for k, v in counters.items() if v}
        lines.append("  counters: " + ", ".join(f"{k}={v}" for k, v in sorted(nonzero.items())))
    for event in st.get("events") or []:
        lines.append(f"  event: {event}")
    return "\n".join(lines)


def _format_server(st: dict[str, Any]) -> list[str]:
    """The IKE server's status: one block per client, then listener counters and events."""
    clients = st.get("clients") or []
    lines = [f"  identity: {st.get('identity')}, device {st.get('device')}, up {_duration(st.get('uptime_s'))}",
             f"  clients: {len(clients)} connected, {st.get('clients_closed', 0)} gone, "
             f"{st.get('half_open', 0)} half-open"]
    for c in clients:
        k = c.get("counters") or {}
        vip = ", ".join(c.get("virtual_ip") or []) or "-"
        lines.append(f"  client {c.get('identity')}: {vip} over {str(c.get('transport')).upper()} from "
                     f"{c.get('remote')}" + ("" if c.get("connected", True) else " (connection lost)"))
        lines.append(f"    IKE SA {c.get('spi_i')}/{c.get('spi_r')} {c.get('algorithms')}, "
                     f"since {_duration(c.get('since_s'))}")
        for ch in c.get("child_sas") or []:
            lines.append(f"    Child SA in {ch['spi_in']} out {ch['spi_out']} {ch['algorithms']}")
        lines.append(f"    in {k.get('packets_in', 0)} packets, {_human_bytes(k.get('bytes_in', 0))}; "
                     f"out {k.get('packets_out', 0)} packets, {_human_bytes(k.get('bytes_out', 0))}"
                     + (f"; {k['ts_violation']} spoofed dropped" if k.get("ts_violation") else ""))
        lines += ["  " + m for m in _format_moves(c.get("path_moves"))]
    closed = (st.get("listener") or {}).get("closed") or {}
    if any(closed.values()):
        lines.append("  listener closed: " + ", ".join(f"{r}={n}" for r, n in sorted(closed.items()) if n))
    for event in st.get("events") or []:
        lines.append(f"  event: {event}")
    return lines


def _format_moves(moves: Any) -> list[str]:
    """MOBIKE moves, one line each (RFC 4555; RFC 9329 §7.1)."""
    out = []
    for m in moves or []:
        out.append(f"  moved {m.get('time')}: {str(m.get('from')).upper()} -> {str(m.get('to')).upper()} "
                   f"({m.get('reason')})")
    return out


def _format_client(st: dict[str, Any]) -> list[str]:
    """The IKE client's status: where, how, which SAs, when they rekey, liveness."""
    transport = str(st.get("transport", "?")).upper()
    if st.get("fell_back"):
        transport += f" (fell back from UDP: {st.get('fallback_reason')})"
    elif st.get("configured_transport") == "auto":
        transport += " (auto)"
    if st.get("connected") is False:
        transport += ", connection lost: reconnecting"
    if st.get("probing_udp"):
        transport += ", probing UDP"
    lines = [f"  server: {st.get('server')} at {st.get('server_address')} over {transport}",
             f"  device: {st.get('device')}, mtu {st.get('mtu')}, up {_duration(st.get('uptime_s'))}",
             f"  virtual IP: {', '.join(st.get('virtual_ip') or []) or '-'}"
             + (f"; DNS {', '.join(st['dns'])} ({st.get('dns_method')})" if st.get("dns") else ""),
             f"  routing: {'full tunnel' if st.get('full_tunnel') else 'split tunnel'}"]
    ks = st.get("kill_switch")
    lines.append(f"  kill switch: on ({ks.get('table')}, {ks.get('blocked_packets')} packets blocked)"
                 if isinstance(ks, dict) else "  kill switch: off")
    ike = st.get("ike_sa")
    if isinstance(ike, dict):
        lines.append(f"  IKE SA {ike['spi_i']}_i {ike['spi_r']}_r with {ike['peer']}: {ike['algorithms']}, "
                     f"established {_duration(ike.get('established_s_ago'))} ago, "
                     f"rekey in {_duration(ike.get('rekey_in_s'))}")
        dpd = ike.get("dpd") or {}
        live = f"  liveness: last heard {_duration(ike.get('last_heard_s_ago'))} ago"
        if dpd.get("in_progress"):
            live += "; DPD in progress"
        elif dpd.get("waiting_for"):
            live += f"; waiting for the answer to: {dpd['waiting_for']}"
        elif dpd.get("next_in_s") is not None:
            live += f"; next DPD in {_duration(dpd['next_in_s'])}"
        if dpd.get("last_sent_s_ago") is not None:
            answered = dpd.get("last_answered_s_ago")
            live += f"; last DPD {_duration(dpd['last_sent_s_ago'])} ago" + (
                f", answered {_duration(answered)} ago" if answered is not None else ", unanswered")
        lines.append(live)
    else:
        wait = st.get("next_attempt_in_s")
        lines.append("  IKE SA: none" + (f" (next attempt in {_duration(wait)})" if wait is not None else "")
                     + (f"; last failure: {st['last_failure']}" if st.get("last_failure") else ""))
    for c in st.get("child_sas") or []:
        lines.append(f"  Child SA in {c['spi_in']} out {c['spi_out']}: {c['algorithms']}, "
                     f"rekey in {_duration(c.get('rekey_in_s'))}")
        lines.append(f"    in  {c['in_packets']} packets, {_human_bytes(c['in_bytes'])}"
                     + (f", {c['replay_drops']} replayed" if c.get("replay_drops") else "")
                     + (f", {c['icv_drops']} failed ICV" if c.get("icv_drops") else ""))
        lines.append(f"    out {c['out_packets']} packets, {_human_bytes(c['out_bytes'])}")
        lines.append(f"    traffic: {', '.join(c['ts_local'])} <-> {', '.join(c['ts_remote'])}")
    for event in st.get("events") or []:
        lines.append(f"  event: {event}")
    lines += _format_moves(st.get("moves"))
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.2f} TB"


def cmd_genkey(args: argparse.Namespace) -> int:
    """Write a matched pair of manual key files (client and server), mode 0600."""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_bytes = 32 + 4 if args.bits == 256 else 16 + 4
    spi_a, spi_b = (secrets.randbits(31) | 0x1000 for _ in range(2))
    k_a, k_b = secrets.token_hex(key_bytes), secrets.token_hex(key_bytes)
    files = {
        "client.keys": (spi_a, k_a, spi_b, k_b),
        "server.keys": (spi_b, k_b, spi_a, k_a),
    }
    for fname, (o_spi, o_key, i_spi, i_key) in files.items():
        path = out / fname
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"# manual ESP keys (lab mode), generated by vpn genkey\n"
                     f"[outbound]\nspi = {o_spi:#010x}\nkey = \"{o_key}\"\n\n"
                     f"[inbound]\nspi = {i_spi:#010x}\nkey = \"{i_key}\"\n")
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vpn import demo

    return int(demo.run(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpn", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"vpn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="bring a tunnel up and leave a daemon running")
    up.add_argument("config")
    up.add_argument("--export-keys", metavar="FILE", help="write the SAs as Wireshark esp_sa lines")
    up.add_argument("--new-key", action="store_true",
                    help="manual mode: the keys were never used before (creates their sequence state)")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run an IKEv2 server in the foreground")
    serve.add_argument("config")
    serve.set_defaults(func=cmd_serve)

    down = sub.add_parser("down", help="stop an instance and undo everything it changed")
    down.add_argument("name", nargs="?")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="show tunnels, SAs and counters")
    status.add_argument("name", nargs="?")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    gk = sub.add_parser("genkey", help="generate a pair of manual-mode key files")
    gk.add_argument("--out-dir", default=".")
    gk.add_argument("--bits", type=int, choices=(128, 256), default=256)
    gk.set_defaults(func=cmd_genkey)

    demo = sub.add_parser("demo", help="a self-contained tunnel in network namespaces")
    demo.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    demo.add_argument("--manual", action="store_true", help="manual keys instead of IKEv2 (tcp or udp)")
    demo.add_argument("--seconds", type=float, default=3.0, help="length of the throughput test")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except config.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except control.ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
