"""Interop over UDP with strongSwan 5.9 (charon with kernel-libipsec, one per namespace).

client <-> router <-> server (tests/integration/netns.py):

- our client (`vpn up`, mode = "ike", udp) against a strongSwan remote-access server:
  it asks for a virtual IP (configuration payload) and gets one from charon's pool;
- a strongSwan client (vips = 0.0.0.0) against our server (`vpn serve`);

each with a PSK, ECDSA certificates, RSA certificates and RSA with charon signing
RSASSA-PSS (an RSA IKE_AUTH does not fit one datagram: IKE fragmentation, RFC 7383, is
checked both ways), and with charon's IKE proposals varied (its defaults, AES-GCM with
ECP_384, AES-CBC with MODP_2048: our client's first KE is refused and retried). Every
case pings both ways, moves a byte-exact TCP transfer each way, then strongSwan rekeys
the Child SA and the IKE SA and traffic must flow on the new SPIs with equal packet
counts at both ends. Our client's own Child SA rekey (its shortest rekey time, 60 s)
runs under a ping. A forged message must not move our server's return path.

strongSwan side: kernel-libipsec only does ESP in UDP, so a charon fakes NAT detection
(so does our side) and everything after IKE_SA_INIT travels on port 4500; it has no ESN;
its ESP proposals are AES-GCM-16 only since our dataplane needs it. `pytest -s` prints
what each case negotiated.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import signal
import subprocess
import sys
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
OUR_REKEY_WAIT_S = 75.0  # our client's shortest Child SA rekey time is 60 s


@dataclass(frozen=True)
class Kind:
    """One authentication setup, and what charon must report for it."""

    name: str
    pki: str | None  # key type of the test PKI ("ecdsa", "rsa"); None: PSK
    proposals: str  # charon's IKE proposals
    peer_auth: str  # how charon names the method it verified our AUTH with
    own_auth: str  # ... and the one it signed with
    rsa_pss: bool = False  # charon signs with RSASSA-PSS
    fragmented: bool = False  # IKE_AUTH in RFC 7383 fragments, both ways
    ke_retry: str | None = None  # charon as server refuses our first KE, asks for this group


KINDS = {
    k.name: k
    for k in (
        Kind("psk", None, "default", "pre-shared key", "pre-shared key"),
        # ECP_384 only: our first KE (Curve25519) gets INVALID_KE_PAYLOAD, we retry
        Kind(
            "ecdsa",
            "ecdsa",
            "aes256gcm16-prfsha384-ecp384",
            "ECDSA_WITH_SHA256_DER",
            "ECDSA_WITH_SHA256_DER",
            ke_retry="ECP_384",
        ),
        # AES-CBC + HMAC, MODP_2048 (INVALID_KE again); RSA IKE_AUTH needs fragments
        Kind(
            "rsa",
            "rsa",
            "aes256-sha256-modp2048",
            "RSA_EMSA_PKCS1_SHA2_256",
            "RSA_EMSA_PKCS1_SHA2_256",
            fragmented=True,
            ke_retry="MODP_2048",
        ),
        Kind(
            "rsa-pss",
            "rsa",
            "default",
            "RSA_EMSA_PKCS1_SHA2_256",
            "RSA_EMSA_PSS_SHA2_256",
            rsa_pss=True,
            fragmented=True,
        ),
    )
}


@dataclass(frozen=True)
class Creds:
    """Both sides' credentials for one case, as files in the test directory."""

    kind: Kind
    psk: Path | None = None
    ca: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def make_creds(kind: Kind, d: Path) -> Creds:
    d.mkdir(mode=0o700, exist_ok=True)
    if kind.pki is None:
        psk = d / "client.psk"
        psk.write_text(PSK + "\n")
        psk.chmod(0o600)
        return Creds(kind, psk=psk)
    pki = Pki.create(kind.pki)
    ca = pki.write_ca(d / "ca.pem")
    server_cert, server_key = write_pem(d / "server", *pki.issue(SERVER_ID))
    client_cert, client_key = write_pem(d / "client", *pki.issue(CLIENT_ID))
    return Creds(
        kind, ca=ca, server_cert=server_cert, server_key=server_key, client_cert=client_cert, client_key=client_key
    )


# --------------------------------------------------------------------------- strongSwan


def swan_auth(creds: Creds, role: str, local_id: str, remote_id: str) -> tuple[str, str]:
    """The local and remote auth sections of a swanctl connection."""
    if creds.psk is not None:
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


def swanctl_conf(creds: Creds, *, role: str, local_addr: str, remote_addr: str) -> str:
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
    if creds.psk is not None:
        tail += (
            f"secrets {{\n    ike-1 {{\n        id-1 = {CLIENT_ID}\n        id-2 = {SERVER_ID}\n"
            f'        secret = "{PSK}"\n    }}\n}}\n'
        )
    return (
        "connections {\n    vpn {\n        version = 2\n"
        f"        local_addrs = {local_addr}\n" + _indent(extra, 8) + f"        proposals = {creds.kind.proposals}\n"
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


def start_charon(ns: Netns, d: Path, creds: Creds, conf: str, role: str) -> Charon:
    charon = Charon(ns, d, swanctl_conf=conf, rsa_pss=creds.kind.rsa_pss)
    if creds.psk is None:
        assert creds.ca is not None
        cert, key = (creds.server_cert, creds.server_key) if role == "server" else (creds.client_cert, creds.client_key)
        assert cert is not None and key is not None
        charon.add_ca(creds.ca)
        charon.add_cert(cert)
        charon.add_key(key)
    charon.start()
    charon.swanctl("--load-all")
    return charon


# --------------------------------------------------------------------------- our side


def our_auth(creds: Creds, role: str) -> str:
    """The credential keys of our [ike] or [server] table (vpn/config.py)."""
    if creds.psk is not None:
        return f'psk_file = "{creds.psk}"\n'
    cert, key = (creds.client_cert, creds.client_key) if role == "client" else (creds.server_cert, creds.server_key)
    return f'cert = "{cert}"\nkey = "{key}"\nca = "{creds.ca}"\n'


def our_client_conf(d: Path, creds: Creds, server: str, *, rekey: int) -> Path:
    cfg = d / "client.toml"
    cfg.write_text(
        textwrap.dedent(f"""\
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
        """)
        + our_auth(creds, "client")
    )
    return cfg


def our_server_conf(d: Path, creds: Creds) -> Path:
    # certificate clients need no [[client]] entry: the CA vouches for them
    clients = f'[[client]]\nidentity = "{CLIENT_ID}"\npsk_file = "{creds.psk}"\n' if creds.psk else ""
    cfg = d / "server.toml"
    cfg.write_text(
        textwrap.dedent(f"""\
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
        """)
        + our_auth(creds, "server")
        + clients
    )
    return cfg


class OurServer:
    """`vpn serve` in the foreground inside a namespace; status through the CLI."""

    def __init__(self, ns: Netns, cfg: Path, run_dir: Path) -> None:
        self.side = VpnSide(ns, "server", "sws", cfg, run_dir)
        self.log = run_dir.parent / "serve.log"
        run_dir.mkdir(exist_ok=True)
        with open(self.log, "wb") as fh:
            self.proc = ns.popen(
                ["env", f"VPN_RUN_DIR={run_dir}", *VPN, "serve", str(cfg)], stdout=fh, stderr=subprocess.STDOUT
            )
        wait_for(lambda: b"sws: serving" in self.log.read_bytes() or self.proc.poll() is not None, "vpn serve to start")
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
class Case:
    """One tunnel between strongSwan and our side, and how to reach each end inside it."""

    charon: Charon
    ours: VpnSide | OurServer
    swan_ns: Netns
    our_ns: Netns
    swan_addr: str  # strongSwan's address inside the tunnel
    our_addr: str  # ours

    def our_status(self) -> dict[str, Any]:
        return self.ours.status()

    def ike_sa(self) -> IkeSaInfo:
        sas = [sa for sa in self.charon.ike_sas() if sa.state == "ESTABLISHED"]
        assert len(sas) == 1, sas
        return sas[0]

    def child(self) -> ChildSaInfo:
        """The one installed Child SA (a rekeyed one may linger, deleted, for a moment)."""
        children = [c for c in self.ike_sa().children if c.state == "INSTALLED"]
        assert len(children) == 1, children
        return children[0]

    def log_tails(self) -> Any:
        return diagnostics(self.charon, self.ours)


@contextlib.contextmanager
def swan_server(topo: Topology, tmp: Path, kind: Kind, *, rekey: int = 3600) -> Iterator[Case]:
    """A strongSwan remote-access server (pool, its own address on lo inside its TS) and
    our client, up."""
    creds = make_creds(kind, tmp / "creds")
    topo.server.ip("addr", "add", f"{SWAN_INNER}/32", "dev", "lo")
    conf = swanctl_conf(creds, role="server", local_addr=topo.server_v4, remote_addr="%any")
    charon = start_charon(topo.server, tmp / "swan", creds, conf, "server")
    client = VpnSide(
        topo.client, "client", "swc", our_client_conf(tmp, creds, topo.server_v4, rekey=rekey), tmp / "run-client"
    )
    try:
        with diagnostics(charon, client):
            client.up()
            (vip,) = wait_for(lambda: client.status()["virtual_ip"], "our client's virtual IP")
        yield Case(charon, client, topo.server, topo.client, SWAN_INNER, vip.split("/")[0])
    finally:
        client.stop()
        charon.stop()


@contextlib.contextmanager
def our_server(topo: Topology, tmp: Path, kind: Kind) -> Iterator[Case]:
    """Our server and a strongSwan client (vips = 0.0.0.0), up."""
    creds = make_creds(kind, tmp / "creds")
    server = OurServer(topo.server, our_server_conf(tmp, creds), tmp / "run-server")
    charon = None
    try:
        conf = swanctl_conf(creds, role="client", local_addr=topo.client_v4, remote_addr=topo.server_v4)
        charon = start_charon(topo.client, tmp / "swan", creds, conf, "client")
        with diagnostics(charon, server):
            charon.swanctl("--initiate", "--child", "net", "--timeout", "20", timeout=30)
            vips = [sa.local_vips for sa in charon.ike_sas()]
            assert vips and len(vips[0]) == 1, f"strongSwan got no virtual IP: {vips}"
        yield Case(charon, server, topo.client, topo.server, vips[0][0], OUR_INNER)
    finally:
        if charon is not None:
            charon.stop()
        server.stop()


def check_child(case: Case) -> ChildSaInfo:
    """Both ends hold the same one Child SA: SPIs crossed, AES-GCM-16, no ESN."""
    swan = case.child()
    ours = our_children(case.our_status())
    assert list(ours) == [swan.spi_out], (ours, swan)
    assert_pair(ours[swan.spi_out], swan)
    assert swan.encr == "AES_GCM_16" and not swan.esn, swan
    assert ours[swan.spi_out]["algorithms"] == f"AES_GCM_16_{swan.encr_keysize}"
    return swan


def check_traffic(case: Case, *, transfers: bool = True) -> None:
    """Ping both ways; a byte-exact TCP transfer each way."""
    ping(case.our_ns, case.swan_addr, "ours -> strongSwan")
    ping(case.swan_ns, case.our_addr, "strongSwan -> ours")
    if transfers:
        transfer(case.our_ns, case.swan_ns, case.swan_addr)
        transfer(case.swan_ns, case.our_ns, case.our_addr)


def check_counts(case: Case, child: ChildSaInfo, *, exact: bool) -> None:
    """Traffic went through this Child SA, on both ends and in both directions. `exact`
    (light traffic): what one end sent, the other received; under load a UDP socket may
    drop a datagram (TCP inside recovers), so only at most."""
    swan = next(c for c in case.ike_sa().children if c.spi_in == child.spi_in)
    ours = our_children(case.our_status())[swan.spi_out]
    assert swan.packets_in > 0 and swan.packets_out > 0, swan
    assert ours["in_packets"] > 0 and ours["out_packets"] > 0, ours
    pairs = ((ours["out_packets"], swan.packets_in), (swan.packets_out, ours["in_packets"]))
    for sent, received in pairs:
        assert (sent == received) if exact else (sent >= received), (ours, swan)


def wait_rekeyed(case: Case, old: ChildSaInfo, timeout: float = strongswan.WAIT_S, *,
                 counts: bool = True) -> ChildSaInfo:
    """The new Child SA is the only one left on both ends; traffic flows on it.
    `counts`: compare both ends' packet counters (only when no other traffic runs: the
    two ends are read one after the other)."""

    def settled() -> ChildSaInfo | None:
        children = [c for c in case.ike_sa().children if c.state == "INSTALLED"]
        if len(children) != 1 or children[0].spi_in == old.spi_in:
            return None
        new = children[0]
        return new if list(our_children(case.our_status())) == [new.spi_out] else None

    new: ChildSaInfo = wait_for(settled, "the rekeyed Child SA alone on both ends", timeout, step=0.5)
    assert new.spi_out != old.spi_out
    check_traffic(case, transfers=False)
    if counts:
        check_counts(case, new, exact=True)
    return new


def our_ike_spis(case: Case) -> tuple[str, str]:
    st = case.our_status()
    sa = st["ike_sa"] if "ike_sa" in st else st["clients"][0]
    return sa["spi_i"], sa["spi_r"]


def rekey_ike(case: Case) -> None:
    """strongSwan rekeys the IKE SA (CREATE_CHILD_SA with a new SPI and KE): both ends
    continue on the new one, the Child SA moves over and keeps carrying traffic."""
    old = case.ike_sa()
    child = case.child()
    case.charon.swanctl("--rekey", "--ike", "vpn")

    def settled() -> IkeSaInfo | None:
        sas = case.charon.ike_sas()
        if len(sas) != 1 or sas[0].state != "ESTABLISHED" or sas[0].spi_i == old.spi_i:
            return None
        return sas[0] if our_ike_spis(case) == (sas[0].spi_i, sas[0].spi_r) else None

    new: IkeSaInfo = wait_for(settled, "the new IKE SA on both ends", step=0.5)
    assert [c.spi_in for c in new.children if c.state == "INSTALLED"] == [child.spi_in]
    check_traffic(case, transfers=False)
    check_counts(case, child, exact=True)


def check_auth(case: Case, kind: Kind, our_id: str) -> str:
    """charon verified our AUTH, and signed its own, with the expected methods; RSA
    IKE_AUTH messages went in fragments both ways. Returns a summary for the report."""
    log = case.charon.log()
    peer = f"authentication of '{our_id}' with {kind.peer_auth} successful"
    own = f"(myself) with {kind.own_auth}"  # PSK: no "successful" on this line
    assert peer in log and own in log, f"expected in charon's log: {peer!r} and {own!r}"
    if kind.fragmented:
        assert "reassembled fragmented IKE message" in log, "our IKE_AUTH was not fragmented"
        assert "splitting IKE message" in log, "charon's IKE_AUTH was not fragmented"
    sa, child = case.ike_sa(), case.child()
    frags = ", IKE_AUTH fragmented both ways" if kind.fragmented else ""
    return f"{sa.algorithms}, {child.algorithms}, charon verified {kind.peer_auth}, signed {kind.own_auth}{frags}"


def rekeys(case: Case, child: ChildSaInfo) -> None:
    """strongSwan rekeys the Child SA, then the IKE SA; traffic on the new SAs."""
    case.charon.swanctl("--rekey", "--child", "net")
    wait_rekeyed(case, child)
    rekey_ike(case)


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_our_client_strongswan_server(topology: Topology, tmp_path: Path, kind: Kind) -> None:
    with swan_server(topology, tmp_path, kind) as case, case.log_tails():
        sa = case.ike_sa()
        assert sa.remote_id == CLIENT_ID and sa.local_id == SERVER_ID
        assert sa.remote_vips == (case.our_addr,)  # leased from strongSwan's pool by CP
        assert ipaddress.ip_address(case.our_addr) in ipaddress.ip_network(SWAN_POOL)
        # our faked NAT-D: charon sees us behind a NAT; all IKE after IKE_SA_INIT on 4500
        assert sa.nat_remote and sa.local.endswith("[4500]") and not sa.remote.endswith("[500]")
        st = case.our_status()
        assert st["dns_pushed"] == [SWAN_DNS]  # INTERNAL_IP4_DNS from the pool (dns = false: not applied)
        # no IPv6 link-local on our TUN: nothing outside the selectors enters the tunnel
        addrs = case.our_ns.run(["ip", "-6", "addr", "show", "dev", st["device"]]).stdout.decode()
        assert "fe80" not in addrs, addrs
        child = check_child(case)
        assert child.local_ts == (SWAN_NET,) and child.remote_ts == (f"{case.our_addr}/32",)
        summary = check_auth(case, kind, CLIENT_ID)
        if kind.ke_retry:  # RFC 7296 §1.2: INVALID_KE_PAYLOAD, our client retried with that group
            assert f"DH group CURVE_25519 unacceptable, requesting {kind.ke_retry}" in case.charon.log()
            assert sa.algorithms.endswith(kind.ke_retry), sa.algorithms
        check_traffic(case)
        check_counts(case, child, exact=False)
        rekeys(case, child)
        print(f"\n[{kind.name}] our client -> strongSwan server: {summary}")


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_strongswan_client_our_server(topology: Topology, tmp_path: Path, kind: Kind) -> None:
    with our_server(topology, tmp_path, kind) as case, case.log_tails():
        sa = case.ike_sa()
        assert sa.local_id == CLIENT_ID and sa.remote_id == SERVER_ID
        assert ipaddress.ip_address(case.swan_addr) in ipaddress.ip_network(OUR_NET)
        # our responder's faked NAT-D moved charon to 4500 (kernel-libipsec needs it)
        assert sa.nat_remote and sa.remote.endswith("[4500]")
        (client,) = case.our_status()["clients"]
        assert client["identity"] == CLIENT_ID and client["virtual_ip"] == [case.swan_addr]
        child = check_child(case)
        assert child.local_ts == (f"{case.swan_addr}/32",) and child.remote_ts == (OUR_NET,)
        summary = check_auth(case, kind, SERVER_ID)
        check_traffic(case)
        check_counts(case, child, exact=False)
        rekeys(case, child)
        print(f"\n[{kind.name}] strongSwan client -> our server: {summary}")


def test_our_client_rekeys_the_child_sa(topology: Topology, tmp_path: Path) -> None:
    """Our client's own Child SA rekey (`rekey = 60`: at 54..60 s, RFC 7296 §2.8.1
    jitter) with strongSwan as responder; a ping runs across it without a loss."""
    with swan_server(topology, tmp_path, KINDS["psk"], rekey=60) as case, case.log_tails():
        child = check_child(case)
        argv = ["ping", "-4", "-n", "-i", "0.5", "-W", "2", case.swan_addr]
        pinger = case.our_ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        new = wait_rekeyed(case, child, timeout=OUR_REKEY_WAIT_S, counts=False)
        time.sleep(1.0)
        pinger.send_signal(signal.SIGINT)
        out = pinger.communicate(timeout=10)[0].decode(errors="replace")
        time.sleep(0.5)  # the last reply has arrived: both ends' counters are final
        check_counts(case, new, exact=True)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m and int(m.group(1)) > 50 and int(m.group(1)) - int(m.group(2)) <= 1, out
        assert "parsed CREATE_CHILD_SA request" in case.charon.log()  # we asked, charon answered
        assert new.spi_in != child.spi_in


FORGE = r"""
import os, socket, struct, sys
spi_i, spi_r, dst = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
body = os.urandom(8 + 32 + 16)  # IV, ciphertext, ICV: does not authenticate
sk = struct.pack("!BBH", 0, 0, 4 + len(body)) + body
hdr = spi_i + spi_r + struct.pack("!BBBBII", 46, 0x20, 37, 0x08, 2, 28 + len(sk))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 4500))
s.sendto(bytes(4) + hdr + sk, (dst, 4500))
"""


def test_our_server_keeps_the_path_on_a_forged_message(topology: Topology, tmp_path: Path) -> None:
    """An INFORMATIONAL with the client's IKE SPIs but no valid ICV, from another
    address, does not move the client's return path (RFC 7296 §2.23: only an
    authenticated message does); the tunnel keeps working."""
    with our_server(topology, tmp_path, KINDS["psk"]) as case, case.log_tails():
        sa = case.ike_sa()
        before = case.our_status()["clients"][0]["remote"]
        assert before == f"{topology.client_v4}:4500"
        topology.router.run([sys.executable, "-c", FORGE, sa.spi_i, sa.spi_r, topology.server_v4])
        time.sleep(0.5)
        (client,) = case.our_status()["clients"]
        assert client["remote"] == before and client["state"] == "established", client
        check_traffic(case, transfers=False)
