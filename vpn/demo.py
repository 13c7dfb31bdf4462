"""`vpn demo`: a self-contained tunnel between two network namespaces.

1. Create namespaces `vpndemo-<pid>-client` and `-server` joined by a veth pair
   (192.0.2.1 / 192.0.2.2, TEST-NET-1; fd00:d3::1 / ::2), nothing in the machine's own
   namespace changes.
2. Generate a throwaway PSK (or manual keys with --manual), write both configs into a
   private temp dir.
3. Start `vpn serve` (IKEv2 server) in the server namespace, then `vpn up` the client:
   IKEv2 over TCP (RFC 9329) by default, a virtual address from the server's pool.
4. Ping through the tunnel, run a short iperf3 throughput test both ways.
5. Show `vpn status` of both sides, then `vpn down` and remove everything, also on
   failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SERVER_OUTER, CLIENT_OUTER = "192.0.2.1", "192.0.2.2"
SERVER_INNER, CLIENT_INNER = "10.77.0.1", "10.77.0.2"
STEP_TIMEOUT_S = 60


def _ns_cmd(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _run(
    argv: list[str], timeout: float = STEP_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def _say(text: str) -> None:
    print(text, flush=True)


class Demo:
    def __init__(self, transport: str, seconds: float, manual: bool = False) -> None:
        self.manual = manual
        tag = f"vpndemo-{os.getpid()}"
        self.client, self.server = f"{tag}-client", f"{tag}-server"
        self.transport = transport
        self.seconds = max(1, int(seconds))
        self.tmp = Path(tempfile.mkdtemp(prefix="vpn-demo-"))
        os.chmod(self.tmp, 0o700)
        self.vpn = [sys.executable, "-m", "vpn.cli"]
        self.up: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def setup(self) -> None:
        for ns in (self.client, self.server):
            _run(["ip", "netns", "add", ns])
            _run(_ns_cmd(ns, ["ip", "link", "set", "lo", "up"]))
            Path(f"/etc/netns/{ns}").mkdir(parents=True, exist_ok=True)
            Path(f"/etc/netns/{ns}/resolv.conf").write_text("nameserver 127.0.0.1\n")
        _run(["ip", "link", "add", "d-c", "netns", self.client, "type", "veth", "peer", "name", "d-s",
              "netns", self.server])
        for ns, ifname, v4, v6 in ((self.server, "d-s", SERVER_OUTER, "fd00:d3::1"),
                                   (self.client, "d-c", CLIENT_OUTER, "fd00:d3::2")):
            _run(_ns_cmd(ns, ["ip", "addr", "add", f"{v4}/24", "dev", ifname]))
            _run(_ns_cmd(ns, ["ip", "-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad"]))
            _run(_ns_cmd(ns, ["ip", "link", "set", ifname, "up"]))
        _say(f"namespaces {self.client} and {self.server} joined by a veth "
             f"({CLIENT_OUTER} <-> {SERVER_OUTER})")

    def configure(self) -> None:
        if self.manual:
            self._configure_manual()
            return
        psk = self.tmp / "demo.psk"
        psk.write_text(secrets.token_urlsafe(32) + "\n")
        os.chmod(psk, 0o600)
        (self.tmp / "server.toml").write_text(textwrap.dedent(f"""\
            name = "demo-s"
            mode = "ike"
            [tunnel]
            addresses = ["{SERVER_INNER}/24"]
            [server]
            identity = "server.demo"
            psk_file = "demo.psk"
            tls_port = 0
            pool4 = "10.77.0.0/24"
            [[client]]
            identity = "client@demo"
            psk_file = "demo.psk"
            """))
        (self.tmp / "client.toml").write_text(textwrap.dedent(f"""\
            name = "demo-c"
            mode = "ike"
            [transport]
            protocol = "{self.transport}"
            remote = "{SERVER_OUTER}"
            [tunnel]
            full_tunnel = false
            routes = ["10.77.0.0/24"]
            dns = false
            [ike]
            identity = "client@demo"
            remote_identity = "server.demo"
            psk_file = "demo.psk"
            """))

    def _configure_manual(self) -> None:
        _run(self.vpn + ["genkey", "--out-dir", str(self.tmp)])
        for role, inner, extra in (
            ("server", SERVER_INNER, 'role = "listen"'),
            ("client", CLIENT_INNER, f'role = "connect"\nremote = "{SERVER_OUTER}"'),
        ):
            cfg = textwrap.dedent(f"""\
                name = "demo-{role[0]}"
                mode = "manual"
                [tunnel]
                addresses = ["{inner}/24"]
                [transport]
                protocol = "{self.transport}"
                {{extra}}
                [manual]
                key_file = "{role}.keys"
                state_dir = "{self.tmp}/state-{role}"
                """).replace("{extra}", extra)
            (self.tmp / f"{role}.toml").write_text(cfg)

    def start(self) -> None:
        if not self.manual:
            self._start_server()
        for role, ns in (("server", self.server), ("client", self.client)):
            if role == "server" and not self.manual:
                continue
            extra = ["--new-key"] if self.manual else []
            r = _run(_ns_cmd(ns, self.vpn + ["up", str(self.tmp / f"{role}.toml"), *extra]), check=False)
            if r.returncode != 0:
                raise RuntimeError(f"vpn up ({role}) failed: {r.stderr.strip() or r.stdout.strip()}")
            self.up.append(ns)
            _say(f"{role}: {r.stdout.strip()}")

    def _start_server(self) -> None:
        """`vpn serve` runs in the foreground: start it and wait until it serves."""
        log = open(self.tmp / "server.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(_ns_cmd(self.server, self.vpn + ["serve", str(self.tmp / "server.toml")]),
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.server_proc = proc
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if b"serving" in (self.tmp / "server.log").read_bytes():
                _say("server: vpn serve (IKEv2 responder) is listening on UDP 500/4500 and TCP 4500")
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = (self.tmp / "server.log").read_text(errors="replace")[-500:]
        raise RuntimeError(f"vpn serve did not start:\n{tail}")

    def ping(self) -> None:
        r = _run(_ns_cmd(self.client, ["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER_INNER]), check=False)
        if r.returncode != 0:
            raise RuntimeError(f"ping through the tunnel failed:\n{r.stdout}{r.stderr}")
        _say("ping " + SERVER_INNER + " through the tunnel: " + r.stdout.strip().splitlines()[-1])

    def throughput(self) -> None:
        if shutil.which("iperf3") is None:
            _say("iperf3 is not installed: skipping the throughput test (apt-get install iperf3)")
            return
        for reverse in (False, True):
            srv = subprocess.Popen(_ns_cmd(self.server, ["iperf3", "-s", "-1", "-B", SERVER_INNER]),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(srv)
            time.sleep(0.5)
            argv = ["iperf3", "-c", SERVER_INNER, "-t", str(self.seconds), "-J"] + (["-R"] if reverse else [])
            r = _run(_ns_cmd(self.client, argv), timeout=self.seconds + 30, check=False)
            srv.wait(10)
            try:
                gbps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
                what = "server -> client" if reverse else "client -> server"
                _say(f"iperf3 {what}, {self.seconds} s, one TCP stream: {gbps:.2f} Gbit/s")
            except (ValueError, KeyError):
                _say(f"iperf3 failed: {r.stderr.strip()[:200]}")

    def status(self) -> None:
        for role, ns in (("client", self.client), ("server", self.server)):
            r = _run(_ns_cmd(ns, self.vpn + ["status"]), check=False)
            _say(f"--- vpn status ({role}) ---\n{r.stdout.rstrip()}")

    def teardown(self) -> None:
        for ns in reversed(self.up):
            _run(_ns_cmd(ns, self.vpn + ["down"]), check=False)
        for p in self.procs:  # the server first gets SIGTERM: it undoes its changes
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for ns in (self.client, self.server):
            _run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        _say("torn down: namespaces, daemons and keys removed")


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("vpn demo needs root (it creates network namespaces and TUN devices)", file=sys.stderr)
        return 1
    demo = Demo(args.transport, args.seconds, manual=args.manual)
    what = "a manually keyed ESP tunnel" if args.manual else "IKEv2 + ESP (PSK, virtual address from a pool)"
    _say(f"vpn demo: {what} over {args.transport.upper()}"
         + (" (RFC 9329 TCP encapsulation)" if args.transport == "tcp" else "") + ", in two network namespaces")
    try:
        demo.setup()
        demo.configure()
        demo.start()
        demo.ping()
        demo.throughput()
        demo.status()
        return 0
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        demo.teardown()
