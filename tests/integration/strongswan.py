"""strongSwan's charon as a test peer inside a namespace of tests/integration/netns.py.

    charon = Charon(topo.server, tmp_path / "swan", swanctl_conf=text)
    charon.add_cert(d / "server.pem"); charon.add_key(d / "server.key"); charon.add_ca(d / "ca.pem")
    charon.start()                      # own STRONGSWAN_CONF, vici socket and /run
    charon.swanctl("--load-all")
    charon.wait_child()                 # -> ChildSaInfo of the first installed Child SA

This kernel has no XFRM ESP, so charon uses kernel-libipsec (ESP in user space through
a TUN device, always in UDP: charon fakes NAT detection and moves to port 4500). Each
charon gets its own strongswan.conf (STRONGSWAN_CONF), swanctl directory (SWANCTL_DIR),
vici socket in its work directory, and a private /run through a mount namespace:
charon's pidfile path (/var/run/charon.pid) is compiled in, and two charons (or the
machine's own) would otherwise refuse to start. Lab cleanup stops it by PID.

kernel-libipsec routes a Child SA's remote selectors into its TUN with a source
address inside the local selectors, so the namespace needs such an address (on lo)
unless the local selector is a virtual IP.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import Netns, wait_until

CHARON = Path("/usr/lib/ipsec/charon")
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
# kernel-libipsec: ESP in user space; openssl: ECDSA, ECP groups, AES-GCM; curve25519;
# pkcs8/pem/x509 for the test PKI's files. No `resolve` plugin: it would write DNS
# servers a peer pushes into /etc/resolv.conf.
PLUGINS = (
    "random nonce openssl kdf x509 revocation constraints pubkey pkcs1 pkcs8 pem curve25519 "
    "kernel-libipsec kernel-netlink socket-default vici"
)
WAIT_S = 20.0  # bound on every wait for charon

STRONGSWAN_CONF = """\
# strongswan.conf of one test charon (tests/integration/strongswan.py)
charon {{
    load_modular = no
    load = {plugins}
    install_routes = yes
    install_virtual_ip = yes
    retransmit_tries = 3
    retransmit_timeout = 1.0
    fragment_size = {fragment_size}
    rsa_pss = {rsa_pss}
    send_vendor_id = no
    plugins {{
        vici {{
            socket = unix://{dir}/charon.vici
        }}
    }}
    filelog {{
        test {{
            path = {dir}/charon.log
            time_format = %H:%M:%S
            time_add_ms = yes
            ike_name = yes
            append = no
            flush_line = yes
            default = 1
            ike = 2
            chd = 2
            cfg = 2
            knl = 2
            esp = 1
        }}
    }}
}}
swanctl {{
    socket = unix://{dir}/charon.vici
}}
"""


def missing() -> str | None:
    """Why charon cannot run here (for pytest.skip), or None."""
    if not os.access(CHARON, os.X_OK):
        return f"needs strongSwan's charon ({CHARON}: `apt-get install strongswan-charon`)"
    if shutil.which("swanctl") is None:
        return "needs swanctl (`apt-get install strongswan-swanctl`)"
    for plugin, package in (
        ("kernel-libipsec", "libcharon-extra-plugins"),
        ("openssl", "libstrongswan-standard-plugins"),
        ("curve25519", "libstrongswan-extra-plugins"),
    ):
        if not (PLUGIN_DIR / f"libstrongswan-{plugin}.so").exists():
            return f"needs charon's {plugin} plugin (`apt-get install {package}`)"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun (kernel-libipsec)"
    return None


def wait_for(pred: Callable[[], Any], what: str, timeout: float = WAIT_S, step: float = 0.1) -> Any:
    """Poll `pred` until it returns something truthy (returned); TimeoutError after `timeout`."""
    return wait_until(pred, what, timeout, step, error=TimeoutError)


# --------------------------------------------------------------------------- vici output


def parse_raw(text: str) -> list[tuple[str, dict[str, Any]]]:
    """`swanctl ... --raw` output: one `name {k=v sec {..} list=[a b]}` per line."""
    out: list[tuple[str, dict[str, Any]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or "{" not in line:
            continue
        name, _, body = line.partition(" {")
        tokens = re.findall(r"\[|\]|\{|\}|[^\s\[\]{}]+", "{" + body)
        value, _ = _parse_section(tokens, 1)
        out.append((name.strip(), value))
    return out


def _parse_section(tokens: list[str], i: int) -> tuple[dict[str, Any], int]:
    section: dict[str, Any] = {}
    while i < len(tokens):
        tok = tokens[i]
        if tok == "}":
            return section, i + 1
        if i + 1 < len(tokens) and tokens[i + 1] == "{":
            section[tok], i = _parse_section(tokens, i + 2)
        elif tok.endswith("=") and i + 1 < len(tokens) and tokens[i + 1] == "[":
            items, i = [], i + 2
            while i < len(tokens) and tokens[i] != "]":
                items.append(tokens[i])
                i += 1
            section[tok[:-1]] = items
            i += 1
        else:
            key, _, val = tok.partition("=")
            section[key] = val
            i += 1
    return section, i


@dataclass(frozen=True)
class ChildSaInfo:
    """One installed Child SA as charon lists it (SPIs as 8 hex digits)."""

    name: str
    uniqueid: str
    state: str
    spi_in: str
    spi_out: str
    encr: str
    encr_keysize: str
    esn: bool
    dh: str | None
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int

    @property
    def algorithms(self) -> str:
        dh = f"/{self.dh}" if self.dh else ""
        return f"ESP {self.encr}_{self.encr_keysize}{dh}{'/ESN' if self.esn else ''}"


@dataclass(frozen=True)
class IkeSaInfo:
    """One IKE SA as charon lists it, with its Child SAs."""

    name: str
    uniqueid: str
    state: str
    spi_i: str  # 16 hex digits
    spi_r: str
    local: str  # host[port]
    remote: str
    local_id: str
    remote_id: str
    initiator: bool
    nat_remote: bool
    nat_local: bool
    nat_fake: bool
    algorithms: str
    local_vips: tuple[str, ...]
    remote_vips: tuple[str, ...]
    children: tuple[ChildSaInfo, ...]


def _child(d: dict[str, Any]) -> ChildSaInfo:
    return ChildSaInfo(
        name=d.get("name", ""),
        uniqueid=d.get("uniqueid", ""),
        state=d.get("state", ""),
        spi_in=d.get("spi-in", ""),
        spi_out=d.get("spi-out", ""),
        encr=d.get("encr-alg", ""),
        encr_keysize=d.get("encr-keysize", ""),
        esn=d.get("esn") == "1",
        dh=d.get("dh-group"),
        local_ts=tuple(d.get("local-ts", ())),
        remote_ts=tuple(d.get("remote-ts", ())),
        bytes_in=int(d.get("bytes-in", 0)),
        bytes_out=int(d.get("bytes-out", 0)),
        packets_in=int(d.get("packets-in", 0)),
        packets_out=int(d.get("packets-out", 0)),
    )


def ike_sas(text: str) -> list[IkeSaInfo]:
    """The IKE SAs in `swanctl --list-sas --raw` output."""
    sas = []
    for _event, body in parse_raw(text):
        for name, d in body.items():
            if not isinstance(d, dict):
                continue
            alg = [d.get("encr-alg", "")]
            if d.get("encr-keysize"):
                alg[0] += f"_{d['encr-keysize']}"
            alg += [d.get(k, "") for k in ("integ-alg", "prf-alg", "dh-group") if d.get(k)]
            children = d.get("child-sas") or {}
            sas.append(
                IkeSaInfo(
                    name=name,
                    uniqueid=d.get("uniqueid", ""),
                    state=d.get("state", ""),
                    spi_i=d.get("initiator-spi", ""),
                    spi_r=d.get("responder-spi", ""),
                    local=f"{d.get('local-host')}[{d.get('local-port')}]",
                    remote=f"{d.get('remote-host')}[{d.get('remote-port')}]",
                    local_id=d.get("local-id", ""),
                    remote_id=d.get("remote-id", ""),
                    initiator=d.get("initiator") == "yes",
                    nat_remote=d.get("nat-remote") == "yes",
                    nat_local=d.get("nat-local") == "yes",
                    nat_fake=d.get("nat-fake") == "yes",
                    algorithms="IKE " + "/".join(alg),
                    local_vips=tuple(d.get("local-vips", ())),
                    remote_vips=tuple(d.get("remote-vips", ())),
                    children=tuple(_child(c) for c in children.values() if isinstance(c, dict)),
                )
            )
    return sas


# --------------------------------------------------------------------------- charon


class Charon:
    """One charon in `ns`, configured and run from `workdir`; see the module docstring."""

    def __init__(
        self,
        ns: Netns,
        workdir: Path,
        *,
        swanctl_conf: str,
        fragment_size: int = 1280,
        rsa_pss: bool = False,
    ) -> None:
        self.ns = ns
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("run", "swanctl/x509", "swanctl/x509ca", "swanctl/private"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "strongswan.conf").write_text(
            STRONGSWAN_CONF.format(
                plugins=PLUGINS,
                dir=workdir,
                fragment_size=fragment_size,
                rsa_pss="yes" if rsa_pss else "no",
            )
        )
        (workdir / "swanctl" / "swanctl.conf").write_text(swanctl_conf)
        self.env = dict(
            os.environ, STRONGSWAN_CONF=str(workdir / "strongswan.conf"), SWANCTL_DIR=str(workdir / "swanctl")
        )

    # -- credentials (loaded by `swanctl --load-all`)
    def add_cert(self, path: Path) -> None:
        shutil.copy(path, self.dir / "swanctl" / "x509" / path.name)

    def add_ca(self, path: Path) -> None:
        shutil.copy(path, self.dir / "swanctl" / "x509ca" / path.name)

    def add_key(self, path: Path) -> None:
        shutil.copy(path, self.dir / "swanctl" / "private" / path.name)

    # -- process
    def start(self) -> None:
        """charon in its own mount namespace with `workdir/run` as /run."""
        script = f'mount --bind "{self.dir}/run" /run && exec {CHARON}'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        stderr = self.dir / "stderr.log"  # a file, not a pipe nobody drains
        with open(stderr, "wb") as err:
            self.proc = proc = self.ns.popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        vici = self.dir / "charon.vici"
        wait_for(lambda: vici.exists() or proc.poll() is not None, "charon to start")
        if proc.poll() is not None:
            text = stderr.read_text(errors="replace")
            raise RuntimeError(f"charon exited with {proc.returncode}: {text}\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (charon deletes its SAs), SIGKILL if it lingers. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def swanctl(self, *args: str, timeout: float = WAIT_S) -> str:
        r = subprocess.run(
            ["swanctl", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if r.returncode != 0:
            raise AssertionError(
                f"swanctl {' '.join(args)} exited {r.returncode}: "
                f"{r.stdout[-1500:]}{r.stderr[-1500:]}\n{self.log_tail()}"
            )
        return r.stdout

    # -- state
    def ike_sas(self) -> list[IkeSaInfo]:
        return ike_sas(self.swanctl("--list-sas", "--raw"))

    def installed_children(self) -> list[ChildSaInfo]:
        return [c for sa in self.ike_sas() if sa.state == "ESTABLISHED" for c in sa.children if c.state == "INSTALLED"]

    def wait_child(self, *, exclude: tuple[str, ...] = (), timeout: float = WAIT_S) -> ChildSaInfo:
        """The first INSTALLED Child SA whose inbound SPI is not in `exclude`."""

        def find() -> ChildSaInfo | None:
            return next((c for c in self.installed_children() if c.spi_in not in exclude), None)

        child: ChildSaInfo = wait_for(find, "an installed Child SA", timeout)
        return child

    def log(self) -> str:
        path = self.dir / "charon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "--- charon log ---\n" + "\n".join(self.log().splitlines()[-lines:])
