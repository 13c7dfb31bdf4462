"""Interop over UDP with strongSwan 5.9 (charon with kernel-libipsec, one per namespace).

client <-> router <-> server (tests/integration/netns.py):

- our client (`vpn up`, mode = "ike", udp) against a strongSwan server: it asks for a
  virtual IP (configuration payload) and strongSwan leases one from its pool;
- a strongSwan client (vips = 0.0.0.0) against our server (`vpn serve`);

each with a PSK, ECDSA certificates and RSA certificates (an RSA IKE_AUTH does not fit
one datagram: IKE fragmentation, RFC 7383). Every case pings both ways and moves a small
byte-exact TCP transfer each way through the tunnel; the PSK cases also rekey the Child
SA (strongSwan's `swanctl --rekey --child`, and in one case our side's own rekey) and
check that traffic flows on the new SPIs.

strongSwan side: kernel-libipsec only does ESP in UDP, so charon fakes NAT detection and
moves to port 4500 (our side does the same); it has no ESN; the ESP proposals are
AES-GCM-16 only since our dataplane needs it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import strongswan
from .certs import Pki, write_pem
from .manual import VPN, TransferRun, VpnSide
from .netns import Netns, Topology
from .strongswan import Charon, ChildSaInfo, IkeSaInfo, wait_for

pytestmark = pytest.mark.skipif(strongswan.missing() is not None, reason=strongswan.missing() or "")

PSK = "interop-test-psk-only-0123456789abcdef"
SERVER_ID, CLIENT_ID = "server.vpn.test", "client.vpn.test"
ESP_PROPOSALS = "aes256gcm16, aes128gcm16"  # our dataplane does AES-GCM-16 only

# strongSwan server: its own inner address (on lo, inside its TS) and its pool
SWAN_NET, SWAN_INNER, SWAN_POOL, SWAN_DNS = "10.77.0.0/24", "10.77.0.1", "10.88.0.0/24", "10.77.0.53"
# our server: its TUN address, pool and pushed DNS
OUR_NET, OUR_INNER, OUR_DNS = "10.66.0.0/24", "10.66.0.1", "10.66.0.53"

TRANSFER_BYTES = 3 << 20
UP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Creds:
    """Both sides' credentials for one case, as files in the test directory."""

    kind: str  # psk | ecdsa | rsa
    psk: Path | None = None
    ca: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def make_creds(kind: str, d: Path) -> Creds:
    d.mkdir(mode=0o700, exist_ok=True)
    if kind == "psk":
        psk = d / "client.psk"
        psk.write_text(PSK + "\n")
        psk.chmod(0o600)
        return Creds(kind, psk=psk)
    pki = Pki.create(kind)
    ca = pki.write_ca(d / "ca.pem")
    server_cert, server_key = write_pem(d / "server", *pki.issue(SERVER_ID))
    client_cert, client_key = write_pem(d / "client", *pki.issue(CLIENT_ID))
    return Creds(kind, ca=ca, server_cert=server_cert, server_key=server_key, client_cert=client_cert,
                 client_key=client_key)


# --------------------------------------------------------------------------- strongSwan


def swan_auth(creds: Creds, role: str, local_id: str, remote_id: str) -> tuple[str, str]:
    """The local/remote auth sections and secrets of a swanctl connection."""
    if creds.kind == "psk":
        local = f"auth = psk\nid = {local_id}"
        remote = f"auth = psk\nid = {remote_id}"
    else:
        assert creds.ca is not None
        cert = creds.server_cert if role == "server" else creds.client_cert
        assert cert is not None
        local = f"auth = pubkey\nid = {local_id}\ncerts = {cert.name}"
        remote = f"auth = pubkey\nid = {remote_id}\ncacerts = {creds.ca.name}"
    return local, remote


def _indent(text: str, n: int) -> str:
    return textwrap.indent(text, " " * n)


def swanctl_conf(creds: Creds, *, role: str, local_addr: str, remote_addr: str, proposals: str) -> str:
    """A remote-access server (pool, FAILED_CP_REQUIRED to clients without a CP request)
    or a client asking for a virtual IP."""
    if role == "server":
        local, remote = swan_auth(creds, "server", SERVER_ID, CLIENT_ID)
        extra = "pools = pool4\n"
        child = f"local_ts = {SWAN_NET}\n"
        tail = f"pools {{\n    pool4 {{\n        addrs = {SWAN_POOL}\n        dns = {SWAN_DNS}\n    }}\n}}\n"
    else:
        local, remote = swan_auth(creds, "client", CLIENT_ID, SERVER_ID)
        extra = f"remote_addrs = {remote_addr}\nvips = 0.0.0.0\n"
        child = f"remote_ts = {OUR_NET}\nstart_action = none\n"
        tail = ""
    if creds.kind == "psk":
        tail += (f"secrets {{\n    ike-1 {{\n        id-1 = {CLIENT_ID}\n        id-2 = {SERVER_ID}\n"
                 f'        secret = "{PSK}"\n    }}\n}}\n')
    return (
        "connections {\n    vpn {\n        version = 2\n"
        f"        local_addrs = {local_addr}\n"
        + _indent(extra, 8)
        + f"        proposals = {proposals}\n"
        "        fragmentation = yes\n"
        "        rekey_time = 0\n"
        "        dpd_delay = 0\n"
        "        local {\n" + _indent(local, 12) + "\n        }\n"
        "        remote {\n" + _indent(remote, 12) + "\n        }\n"
        "        children {\n            net {\n"
        + _indent(child, 16)
        + f"                esp_proposals = {ESP_PROPOSALS}\n"
        "                rekey_time = 0\n"
        "                dpd_action = clear\n"
        "            }\n        }\n    }\n}\n" + tail
    )


def start_charon(ns: Netns, d: Path, creds: Creds, conf: str, role: str, *,
                 fragment_size: int = 1280) -> Charon:
    charon = Charon(ns, d, swanctl_conf=conf, fragment_size=fragment_size)
    if creds.kind != "psk":
        assert creds.ca is not None
        cert, key = ((creds.server_cert, creds.server_key) if role == "server"
                     else (creds.client_cert, creds.client_key))
        assert cert is not None and key is not None
        charon.add_ca(creds.ca)
        charon.add_cert(cert)
        charon.add_key(key)
    charon.start()
    charon.swanctl("--load-all")
    return charon


# --------------------------------------------------------------------------- our side


def our_client_conf(d: Path, creds: Creds, server: str, *, rekey: int) -> Path:
    if creds.kind == "psk":
        auth = f'psk_file = "{creds.psk}"'
    else:
        auth = f'cert = "{creds.client_cert}"\nkey = "{creds.client_key}"\nca = "{creds.ca}"'
    cfg = d / "client.toml"
    cfg.write_text(textwrap.dedent(f"""\
        name = "swc"
        mode = "ike"
        [transport]
        protocol = "udp"
        remote = "{server}"
        [tunnel]
        full_tunnel = false
        dns = false
        routes = ["{SWAN_NET}"]
        [ike]
        identity = "{CLIENT_ID}"
        remote_identity = "{SERVER_ID}"
        rekey = {rekey}
        dpd = 0
        """) + auth + "\n")
    return cfg


def our_server_conf(d: Path, creds: Creds) -> Path:
    if creds.kind == "psk":
        auth = f'psk_file = "{creds.psk}"'
        clients = f'[[client]]\nidentity = "{CLIENT_ID}"\npsk_file = "{creds.psk}"\n'
    else:
        auth = f'cert = "{creds.server_cert}"\nkey = "{creds.server_key}"\nca = "{creds.ca}"'
        clients = ""
    cfg = d / "server.toml"
    cfg.write_text(textwrap.dedent(f"""\
        name = "sws"
        mode = "ike"
        [tunnel]
        addresses = ["{OUR_INNER}/24"]
        [server]
        identity = "{SERVER_ID}"
        tcp_port = 0
        tls_port = 0
        pool4 = "{OUR_NET}"
        dns = ["{OUR_DNS}"]
        subnets = ["{OUR_NET}"]
        dpd = 0
        """) + auth + "\n" + clients)
    return cfg


class OurServer:
    """`vpn serve` in the foreground inside a namespace; status through the CLI."""

    def __init__(self, ns: Netns, cfg: Path, run_dir: Path) -> None:
        self.side = VpnSide(ns, "server", "sws", cfg, run_dir)
        self.log = run_dir.parent / "serve.log"
        run_dir.mkdir(exist_ok=True)
        with open(self.log, "wb") as fh:
            self.proc = ns.popen(["env", f"VPN_RUN_DIR={run_dir}", *VPN, "serve", str(cfg)],
                                 stdout=fh, stderr=subprocess.STDOUT)
        wait_for(lambda: b"sws: serving" in self.log.read_bytes() or self.proc.poll() is not None,
                 "vpn serve to start")
        assert self.proc.poll() is None, f"vpn serve exited:\n{self.log_tail()}"

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = json.loads(self.side.cli("status", "sws", "--json").stdout)
        return st

    def log_tail(self, lines: int = 40) -> str:
        return "--- vpn serve log ---\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --------------------------------------------------------------------------- traffic


def ping(ns: Netns, dst: str, why: str, *, count: int = 3) -> None:
    argv = ["ping", "-4", "-n", "-c", str(count), "-i", "0.2", "-w", "10", dst]
    r = ns.run(argv, timeout=20, check=False)
    assert r.returncode == 0, f"{why}: {ns.role} cannot ping {dst}:\n{r.stdout.decode(errors='replace')}"


def transfer(src: Netns, dst: Netns, dst_addr: str) -> None:
    run = TransferRun(src, dst, dst_addr, TRANSFER_BYTES, timeout=60)
    run.finish().assert_intact(TRANSFER_BYTES)


def our_children(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Our side's Child SAs by inbound SPI (client status, or the one server client)."""
    rows = status.get("child_sas")
    if rows is None:
        rows = [r for c in status["clients"] for r in c["child_sas"]]
    return {r["spi_in"]: r for r in rows}


def assert_pair(ours: dict[str, Any], swan: ChildSaInfo) -> None:
    """The same Child SA seen from both ends: SPIs crossed."""
    assert ours["spi_in"] == swan.spi_out and ours["spi_out"] == swan.spi_in, (ours, swan)


@contextlib.contextmanager
def diagnostics(*sources: Any) -> Iterator[None]:
    """On failure, append the logs of charon and our daemons to the assertion."""
    try:
        yield
    except (AssertionError, TimeoutError) as exc:
        tails = "\n".join(s.log_tail() for s in sources if s is not None)
        raise AssertionError(f"{exc}\n{tails}") from exc


# --------------------------------------------------------------------------- the cases


@dataclass
class SwanServerCase:
    """Our client up against a strongSwan server; everything needed to check it."""

    topo: Topology
    charon: Charon
    client: VpnSide

    def ike_sa(self) -> IkeSaInfo:
        sas = [sa for sa in self.charon.ike_sas() if sa.state == "ESTABLISHED"]
        assert len(sas) == 1, sas
        return sas[0]


@contextlib.contextmanager
def swan_server(topo: Topology, tmp: Path, kind: str, *, proposals: str = "default",
                fragment_size: int = 1280, rekey: int = 3600) -> Iterator[SwanServerCase]:
    creds = make_creds(kind, tmp / "creds")
    topo.server.ip("addr", "add", f"{SWAN_INNER}/32", "dev", "lo")
    conf = swanctl_conf(creds, role="server", local_addr=topo.server_v4, remote_addr="%any",
                        proposals=proposals)
    charon = start_charon(topo.server, tmp / "swan", creds, conf, "server", fragment_size=fragment_size)
    run_dir = tmp / "run-client"
    client = VpnSide(topo.client, "client", "swc", our_client_conf(tmp, creds, topo.server_v4, rekey=rekey),
                     run_dir)
    try:
        with diagnostics(charon, client):
            client.up()
        yield SwanServerCase(topo, charon, client)
    finally:
        client.stop()
        charon.stop()


def test_our_client_strongswan_server_psk(topology: Topology, tmp_path: Path) -> None:
    with swan_server(topology, tmp_path, "psk") as case:
        with diagnostics(case.charon, case.client):
            sa = case.ike_sa()
            print(sa)
            st = case.client.status()
            print(json.dumps(st, indent=1))
            ping(topology.client, SWAN_INNER, "client -> strongSwan server")
            vip = sa.remote_vips[0]
            ping(topology.server, vip, "strongSwan server -> client")
            transfer(topology.client, topology.server, SWAN_INNER)
            transfer(topology.server, topology.client, vip)


@dataclass
class OurServerCase:
    """A strongSwan client up against our server."""

    topo: Topology
    charon: Charon
    server: OurServer

    def ike_sa(self) -> IkeSaInfo:
        sas = [sa for sa in self.charon.ike_sas() if sa.state == "ESTABLISHED"]
        assert len(sas) == 1, sas
        return sas[0]


@contextlib.contextmanager
def our_server(topo: Topology, tmp: Path, kind: str, *, proposals: str = "default",
               fragment_size: int = 1280) -> Iterator[OurServerCase]:
    creds = make_creds(kind, tmp / "creds")
    server = OurServer(topo.server, our_server_conf(tmp, creds), tmp / "run-server")
    charon = None
    try:
        conf = swanctl_conf(creds, role="client", local_addr=topo.client_v4, remote_addr=topo.server_v4,
                            proposals=proposals)
        charon = start_charon(topo.client, tmp / "swan", creds, conf, "client", fragment_size=fragment_size)
        with diagnostics(charon, server):
            charon.swanctl("--initiate", "--child", "net", "--timeout", "20", timeout=30)
        yield OurServerCase(topo, charon, server)
    finally:
        if charon is not None:
            charon.stop()
        server.stop()


def test_strongswan_client_our_server_psk(topology: Topology, tmp_path: Path) -> None:
    with our_server(topology, tmp_path, "psk") as case:
        with diagnostics(case.charon, case.server):
            sa = case.ike_sa()
            print(sa)
            st = case.server.status()
            print(json.dumps(st["clients"], indent=1))
            vip = sa.local_vips[0]
            ping(topology.client, OUR_INNER, "strongSwan client -> our server")
            ping(topology.server, vip, "our server -> strongSwan client")
            transfer(topology.client, topology.server, OUR_INNER)
            transfer(topology.server, topology.client, vip)
