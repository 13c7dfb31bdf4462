"""The RFC 9329 stream inside TLS: pinned certificate, reconnect after a reset, and TLS
session resumption on the new connection (RFC 9329 Appendix B.3)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.netns import Netns, Topology

VPN = [sys.executable, "-m", "vpn.cli"]


def make_cert(d: Path) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("server.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (d / "srv.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp = d / "srv.key"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    os.chmod(kp, 0o600)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def write_configs(d: Path, t: Topology, pin: str) -> None:
    subprocess.run(VPN + ["genkey", "--out-dir", str(d)], check=True, capture_output=True)
    for role, addr, extra in (
        ("server", "10.98.0.1/24", 'role = "listen"\ntls_cert = "srv.pem"\ntls_key = "srv.key"'),
        ("client", "10.98.0.2/24", f'role = "connect"\nremote = "{t.server_v4}"\ntls_pin_sha256 = "{pin}"'),
    ):
        (d / f"{role}.toml").write_text(textwrap.dedent(f"""\
            name = "tls{role[0]}"
            mode = "manual"
            [tunnel]
            addresses = ["{addr}"]
            [transport]
            protocol = "tls"
            {{extra}}
            [manual]
            key_file = "{role}.keys"
            state_dir = "{d}/state-{role}"
            """).replace("{extra}", extra))


def status(ns: Netns) -> dict[str, object]:
    r = ns.run(VPN + ["status", "--json"], check=False)
    out = r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout
    return dict(json.loads(out))


def ping(ns: Netns, addr: str) -> bool:
    return ns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", addr], check=False).returncode == 0


def up(ns: Netns, cfg: Path) -> None:
    r = ns.run(VPN + ["up", str(cfg), "--new-key"], check=False, timeout=60)
    assert r.returncode == 0, r.stderr


def test_tls_reconnect_resumes_session(topology: Topology, tmp_path: Path) -> None:
    t = topology
    pin = make_cert(tmp_path)
    write_configs(tmp_path, t, pin)
    up(t.server, tmp_path / "server.toml")
    up(t.client, tmp_path / "client.toml")
    try:
        assert ping(t.client, "10.98.0.1")
        st = status(t.client)
        assert st["tls"] == {"handshakes": 1, "resumed": 0}
        # a middlebox resets the TLS connection (both directions), then lets traffic pass
        t.router.nft("add table inet rst\n"
                     "add chain inet rst filt { type filter hook forward priority 0; }\n"
                     "add rule inet rst filt tcp dport 443 reject with tcp reset\n"
                     "add rule inet rst filt tcp sport 443 reject with tcp reset\n")
        t.client.run(["ping", "-c", "1", "-W", "1", "10.98.0.1"], check=False)
        t.router.nft("delete table inet rst")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = status(t.client)
            tls = st["tls"]
            assert isinstance(tls, dict)
            if tls["handshakes"] >= 2:
                break
            time.sleep(0.3)
        assert isinstance(st["tls"], dict) and st["tls"]["handshakes"] >= 2, st["events"]
        assert st["tls"]["resumed"] >= 1, "the reconnect did not resume the TLS session"
        assert ping(t.client, "10.98.0.1")
        assert any("session resumed" in e for e in st["events"])  # type: ignore[union-attr]
    finally:
        t.client.run(VPN + ["down"], check=False)
        t.server.run(VPN + ["down"], check=False)


def test_tls_wrong_pin_is_refused(topology: Topology, tmp_path: Path) -> None:
    t = topology
    make_cert(tmp_path)
    write_configs(tmp_path, t, "00" * 32)
    up(t.server, tmp_path / "server.toml")
    try:
        r = t.client.run(VPN + ["up", str(tmp_path / "client.toml"), "--new-key"], check=False, timeout=60)
        assert r.returncode != 0
        err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
        assert "pinned SHA-256" in err, err
    finally:
        t.client.run(VPN + ["down"], check=False)
        t.server.run(VPN + ["down"], check=False)
