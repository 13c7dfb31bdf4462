"""Configuration errors name the file, the key and the fix; secrets files must be private."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vpn import config
from vpn.config import ConfigError

K1 = "11" * 32 + "a1a2a3a4"
K2 = "22" * 32 + "b1b2b3b4"

BASE = f"""
name = "lab0"
mode = "manual"

[tunnel]
mtu = 1400
addresses = ["10.99.0.1/30", "fd99::1/64"]
routes = ["10.98.0.0/24"]

[transport]
protocol = "tcp"
role = "connect"
remote = "192.0.2.1"

[manual]
state_dir = "/tmp/x"
[manual.outbound]
spi = "0x1001"
key = "{K1}"
[manual.inbound]
spi = 0x2002
key = "{K2}"
"""


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_valid_manual_config(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, BASE))
    assert cfg.name == "lab0" and cfg.tunnel.device == "lab0" and cfg.tunnel.mtu == 1400
    assert cfg.transport.port == 4500 and cfg.transport.protocol == "tcp"
    assert cfg.manual is not None
    assert cfg.manual.outbound.spi == 0x1001 and cfg.manual.inbound.spi == 0x2002
    assert cfg.manual.outbound.keymat == bytes.fromhex(K1)
    assert cfg.manual.esn and cfg.manual.replay_window == 1024
    assert [str(a) for a in cfg.tunnel.addresses] == ["10.99.0.1/30", "fd99::1/64"]
    assert K1 not in repr(cfg) and "keymat=<36 bytes>" in repr(cfg.manual.outbound)


def test_world_readable_inline_secret_refused(tmp_path: Path) -> None:
    p = write(tmp_path, BASE, mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600") as e:
        config.load(p)
    assert str(p) in str(e.value)


def test_separate_key_file(tmp_path: Path) -> None:
    keys = f'[outbound]\nspi = 4097\nkey = "{K1}"\n[inbound]\nspi = 8194\nkey = "{K2}"\n'
    kp = write(tmp_path, keys, mode=0o644, name="lab.keys")
    text = BASE.split("[manual]")[0] + '[manual]\nkey_file = "lab.keys"\n'
    cfg_path = write(tmp_path, text, mode=0o644)
    with pytest.raises(ConfigError) as e:
        config.load(cfg_path)
    assert e.value.path == str(kp)
    os.chmod(kp, 0o600)
    cfg = config.load(cfg_path)  # the config itself holds no secret and may be 0644
    assert cfg.manual is not None and cfg.manual.inbound.spi == 8194


@pytest.mark.parametrize(
    "old,new,key,words",
    [
        ("mtu = 1400", "mtu = 900", "[tunnel] mtu", "1280"),
        ('protocol = "tcp"', 'protocol = "sctp"', "[transport] protocol", "tcp, udp"),
        ('remote = "192.0.2.1"', "", "[transport] remote", "required"),
        ("mtu = 1400", "mtu = 1400\ncolour = 1", "[tunnel] colour", "unknown key"),
        ('spi = "0x1001"', 'spi = "0x10"', "[manual.outbound] spi", "reserved"),
        (f'key = "{K2}"', f'key = "{K1[:-2]}"', "[manual.inbound] key", "35 bytes"),
        (f'key = "{K2}"', f'key = "{K1[:-8]}c1c2c3c4"', "[manual.inbound] key", "different key"),
        ("mtu = 1400", 'mtu = "big"', "[tunnel] mtu", "must be an integer"),
        ('addresses = ["10.99.0.1/30", "fd99::1/64"]', 'addresses = ["10.99.0.300/30"]',
         "[tunnel] addresses", "not an address"),
        ('name = "lab0"', 'name = "a/b"', "name", "valid name"),
    ],
)
def test_errors_name_key_and_fix(tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    assert old in BASE
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, BASE.replace(old, new, 1)))
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "c.toml")), msg
    assert e.value.key == key, msg
    assert words in msg, msg


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "name = = 1"))
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


IKE_CLIENT = """
name = "work"
mode = "ike"

[transport]
protocol = "auto"
remote = "vpn.example"

[tunnel]
full_tunnel = true
kill_switch = true

[ike]
identity = "alice@example"
remote_identity = "vpn.example"
psk_file = "alice.psk"
"""

IKE_SERVER = """
name = "srv"
mode = "ike"

[tunnel]
addresses = ["10.10.0.1/24"]

[server]
identity = "vpn.example"
psk_file = "alice.psk"
tls_port = 0
pool4 = "10.10.0.0/24"
dns = ["10.10.0.1"]

[[client]]
identity = "alice@example"
psk_file = "alice.psk"

[[client]]
identity = "bob@example"
psk = "bob-secret-bob-secret-0123"
"""


def test_ike_client_config(tmp_path: Path) -> None:
    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    cfg = config.load(write(tmp_path, IKE_CLIENT, mode=0o644))
    assert cfg.mode == "ike" and cfg.ike is not None and cfg.net is not None
    assert cfg.ike.credentials.psk == b"0123456789abcdef0123"
    assert cfg.transport.protocol == "auto" and cfg.ike.fallback == "tcp"
    assert cfg.net.full_tunnel and cfg.net.kill_switch and cfg.net.dns
    assert "0123456789" not in repr(cfg)


def test_ike_client_tries_udp_first_by_default(tmp_path: Path) -> None:
    """RFC 9329 §9: UDP is preferred; TCP is the fallback. Manual mode stays on TCP."""
    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    cfg = config.load(write(tmp_path, IKE_CLIENT.replace('protocol = "auto"\n', "")))
    assert cfg.transport.protocol == "auto" and cfg.transport.port == 4500


def test_ike_server_config(tmp_path: Path) -> None:
    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    cfg = config.load(write(tmp_path, IKE_SERVER))
    assert cfg.server is not None and cfg.ike is None
    assert [c.identity for c in cfg.server.clients] == ["alice@example", "bob@example"]
    assert cfg.server.clients[1].psk == b"bob-secret-bob-secret-0123"
    assert str(cfg.server.pool4) == "10.10.0.0/24" and cfg.server.tcp_port == 4500
    assert cfg.server.udp and cfg.server.tls_port == 0
    assert cfg.server.peer_timeout_s == 300  # RFC 4555 §3.11: long enough for a client to move
    assert "bob-secret" not in repr(cfg)


@pytest.mark.parametrize(
    "text,old,new,key,words",
    [
        (IKE_CLIENT, 'psk_file = "alice.psk"', 'psk = "short"', "[ike] psk", "16 bytes"),
        (IKE_CLIENT, 'psk_file = "alice.psk"', "", "[ike] psk", "no credentials"),
        (IKE_CLIENT, 'psk_file = "alice.psk"', 'psk_file = "nope.psk"', "[ike] psk_file", "does not exist"),
        (IKE_CLIENT, 'protocol = "auto"', 'protocol = "tcp"\nrole = "listen"', "transport.role", "vpn serve"),
        (IKE_SERVER, 'pool4 = "10.10.0.0/24"', "", "[server] pool4", "no address pool"),
        (IKE_SERVER, "tls_port = 0", "tls_port = 443", "[server] tls_cert", "tls_port"),
        (IKE_SERVER, 'identity = "bob@example"', 'identiy = "bob@example"', "[client.1] identity",
         "required"),
    ],
)
def test_ike_errors(tmp_path: Path, text: str, old: str, new: str, key: str, words: str) -> None:
    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    assert old in text
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text.replace(old, new, 1)))
    assert e.value.key == key, str(e.value)
    assert words in str(e.value)


def test_world_readable_psk_file_refused(tmp_path: Path) -> None:
    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk", mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        config.load(write(tmp_path, IKE_CLIENT))


# --------------------------------------------------------------------------- proposals (K06)


def test_proposals_default_to_the_built_in_sets(tmp_path: Path) -> None:
    from vpn.ike.policy import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS
    from vpn.policies import client_policy, server_policy

    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    client = config.load(write(tmp_path, IKE_CLIENT, name="client.toml"))
    server = config.load(write(tmp_path, IKE_SERVER, name="server.toml"))
    assert client.ike is not None and server.server is not None
    assert client.ike.ike_proposals == server.server.ike_proposals == DEFAULT_IKE_PROPOSALS
    assert client.ike.esp_proposals == server.server.esp_proposals == DEFAULT_ESP_PROPOSALS
    c_pol = client_policy(client)
    s_pol, _ = server_policy(server)
    for pol in (c_pol, s_pol):
        assert pol.ike_proposals == DEFAULT_IKE_PROPOSALS
        assert pol.child.proposals == DEFAULT_ESP_PROPOSALS and not pol.child.require_pfs


def test_proposals_are_parsed_and_reach_the_session_policy(tmp_path: Path) -> None:
    from vpn.ike.constants import DhId, EsnId
    from vpn.ike.payloads import TrafficSelector
    from vpn.policies import client_policy, server_policy
    from vpn.proposals import parse_esp_proposals, parse_ike_proposals

    ike = ["aes256gcm16-prfsha384-ecp384", "aes256-sha384-modp3072"]
    esp = ["aes256gcm16-ecp384-esn"]
    keys = 'ike_proposals = ["aes256gcm16-prfsha384-ecp384", "aes256-sha384-modp3072"]\n' \
           'esp_proposals = ["aes256gcm16-ecp384-esn"]\n'
    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    client = config.load(write(tmp_path, IKE_CLIENT + keys, name="client.toml"))
    server = config.load(write(tmp_path, IKE_SERVER.replace("[[client]]", keys + "\n[[client]]", 1),
                               name="server.toml"))
    assert client.ike is not None and server.server is not None
    assert client.ike.ike_proposals == server.server.ike_proposals == parse_ike_proposals(ike)
    assert client.ike.esp_proposals == server.server.esp_proposals == parse_esp_proposals(esp)
    c_pol = client_policy(client)
    s_pol, _ = server_policy(server)
    for pol in (c_pol, s_pol):
        assert pol.ike_proposals[0].dh == (DhId.ECP384,)
        assert pol.child.proposals[0].dh == (DhId.ECP384,) and pol.child.proposals[0].esn == (EsnId.ESN,)
        assert pol.child.require_pfs  # every ESP proposal names a group: PFS is mandatory
    # the server's subnets still become its TSr next to the proposals
    assert s_pol.child.local_ts == tuple(TrafficSelector.from_network(n) for n in ("0.0.0.0/0", "::/0"))


def test_proposals_as_one_comma_separated_string(tmp_path: Path) -> None:
    """strongSwan writes `proposals = a, b`; the same string form is accepted here."""
    from vpn.proposals import parse_ike_proposals

    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    text = IKE_CLIENT + 'ike_proposals = "aes256gcm16-prfsha384-ecp384, default"\n'
    cfg = config.load(write(tmp_path, text))
    assert cfg.ike is not None
    assert cfg.ike.ike_proposals == parse_ike_proposals(["aes256gcm16-prfsha384-ecp384", "default"])


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        (IKE_CLIENT, 'ike_proposals = ["aes256gcm16-prfsha384-ecp385"]', "[ike] ike_proposals",
         ["'ecp385'", "use one of"]),
        (IKE_CLIENT, 'ike_proposals = ["aes256gcm16-prfsha384"]', "[ike] ike_proposals",
         ["no Diffie-Hellman group", "ecp384"]),
        (IKE_CLIENT, 'ike_proposals = ["aes256gcm16-sha256-ecp256"]', "[ike] ike_proposals",
         ["'sha256'", "separate proposal"]),
        (IKE_CLIENT, "ike_proposals = []", "[ike] ike_proposals", ["empty", "leave the key out"]),
        (IKE_CLIENT, "ike_proposals = [1]", "[ike] ike_proposals", ["list of strings"]),
        (IKE_CLIENT, 'esp_proposals = ["aes256-sha256"]', "[ike] esp_proposals", ["AES-GCM-16 only"]),
        (IKE_SERVER, 'esp_proposals = ["aes256-sha256"]', "[server] esp_proposals",
         ["'aes256'", "AES-GCM-16 only", "use aes256gcm16"]),
        (IKE_SERVER, 'esp_proposals = ["aes256gcm16-prfsha256"]', "[server] esp_proposals",
         ["'prfsha256'", "ike_proposals"]),
        (IKE_SERVER, 'ike_proposals = ["aes256-ecp256"]', "[server] ike_proposals",
         ["no integrity keyword", "add sha256"]),
        (IKE_SERVER, 'ike_proposals = "aes256gcm16-ecp256,"', "[server] ike_proposals", ["empty proposal"]),
    ],
)
def test_bad_proposals_name_file_key_and_fix(tmp_path: Path, text: str, line: str, key: str,
                                             words: list[str]) -> None:
    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    if text is IKE_SERVER:
        text = text.replace("[[client]]", line + "\n\n[[client]]", 1)
    else:
        text = text + line + "\n"
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text))
    msg = str(e.value)
    assert e.value.key == key, msg
    assert msg.startswith(f"{tmp_path / 'c.toml'}: {key}: "), msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize(("extra", "seconds"), [("", 300), ("peer_timeout = 600\n", 600)])
def test_server_peer_timeout_reaches_the_session_policy(tmp_path: Path, extra: str, seconds: int) -> None:
    """RFC 4555 §3.11 (M06): the server waits long for a silent client (5 min default)."""
    from vpn.policies import server_policy

    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    text = IKE_SERVER.replace("[server]\n", "[server]\n" + extra, 1)
    policy, _pool = server_policy(config.load(write(tmp_path, text)))
    assert policy.retransmit.stream_timeout() == seconds
    assert seconds * 0.8 <= policy.retransmit.total() <= seconds * 1.01


def test_server_selectors_keep_its_own_and_dns_addresses(tmp_path: Path) -> None:
    """`subnets` narrows what clients may reach (TSr); the server's tunnel address and
    the DNS servers it pushes are added where no subnet covers them."""
    from vpn.policies import server_policy

    write(tmp_path, "0123456789abcdef0123\n", name="alice.psk")
    text = IKE_SERVER.replace('dns = ["10.10.0.1"]', 'dns = ["10.10.0.1", "192.0.2.53"]\nsubnets = ["198.51.100.0/24"]')
    policy, _pool = server_policy(config.load(write(tmp_path, text)))
    got = [f"{t.start}-{t.end}" for t in policy.child.local_ts]
    assert got == ["198.51.100.0-198.51.100.255", "10.10.0.1-10.10.0.1", "192.0.2.53-192.0.2.53"]
    default, _pool = server_policy(config.load(write(tmp_path, IKE_SERVER)))
    assert [f"{t.start}-{t.end}" for t in default.child.local_ts] == [
        "0.0.0.0-255.255.255.255", "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
