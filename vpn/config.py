"""TOML configuration -> validated, typed objects.

One schema for the whole project: `mode = "manual"` (static keys, a lab and benchmark
mode) or `mode = "ike"` (IKEv2). Every error names the file, the key and the fix, e.g.

    client.toml: [tunnel] mtu = 900: must be between 1280 and 65000 (IPv6 needs 1280)

Secrets (keys, PSKs) may live inline or in separate files; any file that holds a secret
must not be readable by group or others (refused with the chmod to run), because a
leaked manual key or PSK lets anyone decrypt or join the tunnel.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vpn.ike.policy import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, EspProposal, IkeProposal
from vpn.proposals import ProposalError, parse_esp_proposals, parse_ike_proposals

T = TypeVar("T")

MIN_MTU = 1280  # RFC 8200 §5: IPv6 inside the tunnel needs 1280
MAX_MTU = 65000
DEFAULT_MTU = 1400
DEFAULT_PORT = 4500  # RFC 9329 §2 (TCP), RFC 3948 (UDP)
DEFAULT_TLS_PORT = 443
DEFAULT_REPLAY_WINDOW = 1024
MAX_REPLAY_WINDOW = 65536
MIN_REKEY_S = 60  # Child SA rekey time: below a minute rekeys would dominate
MIN_REKEY_BYTES = 1 << 20
NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")  # also a Linux interface name (IFNAMSIZ-1)
IFNAME_RE = re.compile(r"^[a-zA-Z0-9_.@+-]{1,15}$")  # an interface named in nftables rules


class ConfigError(Exception):
    """A configuration problem, phrased for the person who edits the file."""

    def __init__(self, path: Path | str, key: str, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        self.fix = fix
        text = f"{self.path}: {key}: {problem}" if key else f"{self.path}: {problem}"
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class _Section:
    """Reads one TOML table, remembering which keys were used so unknown ones are errors."""

    def __init__(self, path: Path, name: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.name = name
        self.data = data
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"[{self.name}] {k}" if self.name else k

    def error(self, k: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.path, self.key(k), problem, fix)

    def get(self, k: str, kind: type[T], default: T | None = None, *, required: bool = False) -> T:
        self.used.add(k)
        if k not in self.data:
            if required:
                raise self.error(k, "is required", f"add `{k} = ...` to the [{self.name}] table"
                                 if self.name else f"add `{k} = ...` at the top of the file")
            return default  # type: ignore[return-value]
        value = self.data[k]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(k, f"must be {_kind_name(kind)}, not {_kind_name(type(value))}")
        return value

    def choice(self, k: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.get(k, str, default, required=default is None)
        if value not in choices:
            raise self.error(k, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def int_range(self, k: str, lo: int, hi: int, default: int | None = None, why: str = "") -> int:
        value = self.get(k, int, default, required=default is None)
        if not lo <= value <= hi:
            raise self.error(k, f"{value} is out of range", f"use {lo}..{hi}{'; ' + why if why else ''}")
        return value

    def str_list(self, k: str) -> list[str]:
        value = self.get(k, list, [])
        for item in value:
            if not isinstance(item, str):
                raise self.error(k, "must be a list of strings")
        return list(value)

    def sub(self, k: str, required: bool = False) -> _Section:
        value = self.get(k, dict, {}, required=required)
        return _Section(self.path, f"{self.name}.{k}" if self.name else k, value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used)) or "none"
            raise self.error(unknown[0], "unknown key", f"known keys here: {known}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_kind_name(k) for k in kind)
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list", dict: "a table"}.get(kind, kind.__name__)


def check_secret_file(path: Path) -> None:
    """Refuse a secret-holding file that group or others can read."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(path, "", "holds secrets but is readable by group or others",
                          f"run `chmod 600 {path}`")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except PermissionError:
        raise ConfigError(path, "", "permission denied", "run as root or fix the file mode") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None


def _parse(sec: _Section, k: str, text: str, parser: Callable[[str], T], what: str) -> T:
    try:
        return parser(text)
    except ValueError:
        raise sec.error(k, f"{text!r} is not {what}") from None


def _hex_bytes(sec: _Section, k: str, sizes: tuple[int, ...]) -> bytes:
    text = sec.get(k, str, required=True).replace(":", "").replace(" ", "")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise sec.error(k, "is not hexadecimal", "write the key as hex digits") from None
    if len(raw) not in sizes:
        allowed = " or ".join(str(s) for s in sizes)
        raise sec.error(k, f"has {len(raw)} bytes", f"use {allowed} bytes: key + 4-byte salt, RFC 4106 §8.1")
    return raw


def _spi(sec: _Section, k: str) -> int:
    value: int | str = sec.get(k, (int, str), required=True)  # type: ignore[arg-type]
    if isinstance(value, str):
        value = _parse(sec, k, value, lambda s: int(s, 0), "a number (e.g. 0x1000)")
    if not 256 <= value <= 0xFFFFFFFF:
        raise sec.error(k, f"{value:#x} is reserved or too large", "use 0x100..0xffffffff (RFC 4303 §2.1)")
    return int(value)


# ---------------------------------------------------------------------------------------
# The objects


@dataclass(frozen=True)
class TunnelConfig:
    """The TUN device and what is routed into it."""

    device: str
    mtu: int
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    routes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(frozen=True)
class TransportConfig:
    """How the outer packets travel: TCP (RFC 9329), TLS around it, UDP, or auto."""

    protocol: str  # tcp | udp | tls | auto
    role: str  # connect | listen
    remote: str | None
    port: int
    local: str | None
    local_port: int | None
    fallback_after_s: float
    tls: TlsConfig | None = None
    mobike_wait_s: float = 3.0  # MOBIKE: UDP gets this long to answer before TCP/TLS is tried
    udp_probe_s: float = 30.0  # MOBIKE on TCP/TLS: try UDP again this often (0: never)


@dataclass(frozen=True)
class TlsConfig:
    """TLS around the stream (RFC 9329 Appendix A)."""

    server_name: str | None = None  # client: name checked against the certificate
    cafile: Path | None = None  # client: CA that signs the server certificate
    pin_sha256: bytes | None = None  # client: or the SHA-256 of the server certificate
    certfile: Path | None = None  # server: certificate chain (PEM)
    keyfile: Path | None = None  # server: private key (PEM, mode 0600)


@dataclass(frozen=True, repr=False)
class ManualSa:
    """One direction of a manually keyed ESP SA."""

    spi: int
    keymat: bytes  # AES key followed by the 4-byte salt (RFC 4106 §8.1)

    def __repr__(self) -> str:  # never print key material
        return f"ManualSa(spi={self.spi:#010x}, keymat=<{len(self.keymat)} bytes>)"


@dataclass(frozen=True)
class ManualConfig:
    """Static keys: a lab and benchmark mode (RFC 4106 §2 wants automated keying)."""

    outbound: ManualSa
    inbound: ManualSa
    esn: bool
    replay_window: int
    state_dir: Path


@dataclass(frozen=True, repr=False)
class Credentials:
    """How this side authenticates (RFC 7296 §2.15): a PSK, or a certificate and key.
    `ca` is what the peer's certificate must chain to."""

    psk: bytes | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def __repr__(self) -> str:  # never print the PSK
        return (f"Credentials(psk={'<set>' if self.psk else None}, cert={self.cert}, key={self.key}, "
                f"ca={self.ca})")


@dataclass(frozen=True)
class IkeConfig:
    """The IKE side of a client (`vpn up`)."""

    identity: str
    remote_identity: str | None
    credentials: Credentials
    ipv6: bool
    dpd_s: float
    child_rekey_s: float
    ike_rekey_s: float
    fallback: str  # auto: "tcp" or "tls"
    peer_timeout_s: float = 165.0  # an unanswered request (e.g. DPD) ends the IKE SA after this
    mobike: bool = True  # RFC 4555: move the IKE SA between addresses and transports
    ike_proposals: tuple[IkeProposal, ...] = DEFAULT_IKE_PROPOSALS  # RFC 7296 §3.3 (K06)
    esp_proposals: tuple[EspProposal, ...] = DEFAULT_ESP_PROPOSALS


@dataclass(frozen=True)
class ClientEntry:
    """One client a server accepts: its identity and PSK (or a certificate, via the CA)."""

    identity: str
    psk: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ServerConfig:
    """`vpn serve`: listeners, pools, forwarding, the clients it accepts."""

    identity: str
    credentials: Credentials
    listen: str | None
    udp: bool
    tcp_port: int
    tls_port: int
    tls_cert: Path | None
    tls_key: Path | None
    pool4: ipaddress.IPv4Network | None
    pool6: ipaddress.IPv6Network | None
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    uplink: str | None
    mss_clamp: bool
    clients: tuple[ClientEntry, ...]
    dpd_s: float
    child_rekey_s: float = 3600.0  # Child SA rekey time (RFC 7296 §2.8)
    child_rekey_bytes: int = 0  # rekey after this many inner bytes in one direction (0: off)
    peer_timeout_s: float = 300.0  # an unanswered request (DPD) ends a client's IKE SA after this
    ike_proposals: tuple[IkeProposal, ...] = DEFAULT_IKE_PROPOSALS  # RFC 7296 §3.3 (K06)
    esp_proposals: tuple[EspProposal, ...] = DEFAULT_ESP_PROPOSALS


@dataclass(frozen=True)
class ClientNetConfig:
    """What a client does with its tunnel: full or split routing, DNS, kill switch."""

    full_tunnel: bool
    dns: bool
    kill_switch: bool


@dataclass(frozen=True)
class Config:
    """A whole validated configuration file."""

    path: Path
    name: str
    mode: str
    tunnel: TunnelConfig
    transport: TransportConfig
    manual: ManualConfig | None = None
    ike: IkeConfig | None = None
    server: ServerConfig | None = None
    net: ClientNetConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Loading


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate one configuration file; raises ConfigError."""
    p = Path(path)
    top = _Section(p, "", read_toml(p))
    name = top.get("name", str, required=True)
    if not NAME_RE.match(name):
        raise top.error("name", f"{name!r} is not a valid name", "use 1-15 of a-z A-Z 0-9 _ . -")
    mode = top.choice("mode", ("manual", "ike"))
    is_server = mode == "ike" and "server" in top.data
    tunnel_sec = top.sub("tunnel", required=mode == "manual")
    net = None
    if mode == "ike" and not is_server:
        net = ClientNetConfig(full_tunnel=tunnel_sec.get("full_tunnel", bool, True),
                              dns=tunnel_sec.get("dns", bool, True),
                              kill_switch=tunnel_sec.get("kill_switch", bool, False))
    tunnel = _tunnel(tunnel_sec, name)
    manual = ike = server = None
    if is_server:
        server = _server(top.sub("server", required=True), top, p)
        transport = TransportConfig(protocol="any", role="listen", remote=None, port=server.tcp_port,
                                    local=server.listen, local_port=None, fallback_after_s=0.0)
        if "transport" in top.data:
            raise top.error("transport", "is not used by a server",
                            "set listen, udp, tcp_port and tls_port in [server]")
    else:
        transport = _transport(top.sub("transport", required=True), mode)
    if mode == "manual":
        manual = _manual(top.sub("manual", required=True), p)
        if transport.protocol == "auto":
            raise top.error("transport.protocol", "\"auto\" needs mode = \"ike\"",
                            "manual mode supports tcp, tls and udp")
    elif not is_server:
        if transport.role != "connect":
            raise top.error("transport.role", "an IKE client connects",
                            "use `vpn serve` with a [server] table for the server side")
        ike = _ike(top.sub("ike", required=True))
    top.finish()
    return Config(path=p, name=name, mode=mode, tunnel=tunnel, transport=transport, manual=manual,
                  ike=ike, server=server, net=net)


def _secret_bytes(sec: _Section, inline_key: str, file_key: str) -> bytes | None:
    """A secret given inline (the config file must then be private) or in a file."""
    inline = sec.get(inline_key, str)
    path = _path_key(sec, file_key, secret=True)
    if inline is not None and path is not None:
        raise sec.error(inline_key, f"and {file_key} are both set", "keep one of them")
    if inline is not None:
        check_secret_file(sec.path)
        value = inline.encode()
    elif path is not None:
        value = path.read_bytes().strip()
    else:
        return None
    if len(value) < 16:
        raise sec.error(inline_key if inline is not None else file_key, "is shorter than 16 bytes",
                        "use a long random secret, e.g. `openssl rand -base64 32`")
    return value


def _credentials(sec: _Section, *, need_ca: bool) -> Credentials:
    psk = _secret_bytes(sec, "psk", "psk_file")
    cert, key = _path_key(sec, "cert"), _path_key(sec, "key", secret=True)
    ca = _path_key(sec, "ca")
    if (cert is None) != (key is None):
        raise sec.error("key" if key is None else "cert", "is missing", "give both cert and key")
    if psk is None and cert is None and need_ca and ca is None:
        raise sec.error("psk", "no credentials", "set psk_file (or psk), or cert + key + ca")
    return Credentials(psk=psk, cert=cert, key=key, ca=ca)


def _ike(sec: _Section) -> IkeConfig:
    identity = sec.get("identity", str, required=True)
    creds = _credentials(sec, need_ca=True)
    if creds.psk is None and creds.ca is None:
        raise sec.error("ca", "is required to check the server's certificate",
                        "give the CA certificate (PEM) that signed the server's certificate")
    fallback = sec.choice("fallback", ("tcp", "tls"), "tcp")
    ike = IkeConfig(
        identity=identity,
        remote_identity=sec.get("remote_identity", str),
        credentials=creds,
        ipv6=sec.get("ipv6", bool, False),
        dpd_s=float(sec.int_range("dpd", 0, 3600, 30, why="0 turns liveness checks off")),
        child_rekey_s=float(sec.int_range("rekey", 60, 86400, 3600)),
        ike_rekey_s=float(sec.int_range("ike_rekey", 300, 7 * 86400, 4 * 3600)),
        fallback=fallback,
        peer_timeout_s=float(sec.int_range("peer_timeout", 2, 3600, 165,
                                           why="seconds an unanswered request (e.g. DPD) may take")),
        mobike=sec.get("mobike", bool, True),
        ike_proposals=_proposals(sec, "ike_proposals", parse_ike_proposals, DEFAULT_IKE_PROPOSALS),
        esp_proposals=_proposals(sec, "esp_proposals", parse_esp_proposals, DEFAULT_ESP_PROPOSALS),
    )
    sec.finish()
    return ike


def _server(sec: _Section, top: _Section, path: Path) -> ServerConfig:
    identity = sec.get("identity", str, required=True)
    creds = _credentials(sec, need_ca=False)
    pool4 = sec.get("pool4", str)
    pool6 = sec.get("pool6", str)
    p4 = _parse(sec, "pool4", pool4, lambda t: ipaddress.IPv4Network(t), "an IPv4 prefix") if pool4 else None
    p6 = _parse(sec, "pool6", pool6, lambda t: ipaddress.IPv6Network(t), "an IPv6 prefix") if pool6 else None
    if p4 is None and p6 is None:
        raise sec.error("pool4", "no address pool", "set pool4 (and/or pool6), e.g. pool4 = \"10.10.0.0/24\"")
    tls_port = sec.int_range("tls_port", 0, 65535, 443, why="0 turns TLS off")
    tls_cert, tls_key = _path_key(sec, "tls_cert"), _path_key(sec, "tls_key", secret=True)
    if tls_port and (tls_cert is None or tls_key is None):
        tls_cert, tls_key = tls_cert or creds.cert, tls_key or creds.key
        if tls_cert is None or tls_key is None:
            raise sec.error("tls_cert", "is required while tls_port is on",
                            "give tls_cert and tls_key (PEM), or set tls_port = 0")
    clients = []
    for i, entry in enumerate(top.get("client", list, [])):
        if not isinstance(entry, dict):
            raise top.error("client", "must be an array of tables", "write [[client]] sections")
        csec = _Section(path, f"client.{i}", entry)
        clients.append(ClientEntry(identity=csec.get("identity", str, required=True),
                                   psk=_secret_bytes(csec, "psk", "psk_file")))
        csec.finish()
    if creds.psk is None and creds.cert is None:
        raise sec.error("cert", "the server needs credentials", "set cert + key (or psk_file)")
    server = ServerConfig(
        identity=identity,
        credentials=creds,
        listen=sec.get("listen", str),
        udp=sec.get("udp", bool, True),
        tcp_port=sec.int_range("tcp_port", 0, 65535, DEFAULT_PORT, why="0 turns TCP off"),
        tls_port=tls_port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        pool4=p4,
        pool6=p6,
        dns=tuple(_parse(sec, "dns", d, lambda t: ipaddress.ip_address(t), "an IP address")
                  for d in sec.str_list("dns")),
        subnets=tuple(_parse(sec, "subnets", n, lambda t: ipaddress.ip_network(t), "a prefix")
                      for n in sec.str_list("subnets")) or (ipaddress.ip_network("0.0.0.0/0"),
                                                            ipaddress.ip_network("::/0")),
        uplink=_ifname(sec, "uplink"),
        mss_clamp=sec.get("mss_clamp", bool, True),
        clients=tuple(clients),
        dpd_s=float(sec.int_range("dpd", 0, 3600, 60)),
        child_rekey_s=float(sec.int_range("rekey", MIN_REKEY_S, 86400, 3600)),
        child_rekey_bytes=_rekey_bytes(sec),
        peer_timeout_s=float(sec.int_range("peer_timeout", 2, 3600, 300,
                                           why="seconds an unanswered request (e.g. DPD) may take")),
        ike_proposals=_proposals(sec, "ike_proposals", parse_ike_proposals, DEFAULT_IKE_PROPOSALS),
        esp_proposals=_proposals(sec, "esp_proposals", parse_esp_proposals, DEFAULT_ESP_PROPOSALS),
    )
    sec.finish()
    return server


def _proposals(sec: _Section, k: str, parse: Callable[[list[str]], tuple[T, ...]], default: tuple[T, ...]
               ) -> tuple[T, ...]:
    """strongSwan-style proposals (vpn/proposals.py): a list of strings, or one string
    with commas as strongSwan writes it; absent: the built-in defaults."""
    sec.used.add(k)
    if k not in sec.data:
        return default
    value = sec.data[k]
    texts = value.split(",") if isinstance(value, str) else sec.str_list(k)
    try:
        return parse(texts)
    except ProposalError as exc:
        raise sec.error(k, exc.problem, exc.fix) from None


def _ifname(sec: _Section, k: str) -> str | None:
    """An interface name (it goes into the nftables ruleset as a quoted string)."""
    name = sec.get(k, str)
    if name is not None and not IFNAME_RE.match(name):
        raise sec.error(k, f"{name!r} is not an interface name", "use the name `ip link` shows, e.g. \"eth0\"")
    return name


def _rekey_bytes(sec: _Section) -> int:
    value = sec.int_range("rekey_bytes", 0, 1 << 62, 0, why="0 turns volume rekeying off")
    if 0 < value < MIN_REKEY_BYTES:
        raise sec.error("rekey_bytes", f"{value} is too small",
                        f"use 0 (off) or at least {MIN_REKEY_BYTES} (1 MiB): each rekey is an exchange")
    return value


def _tunnel(sec: _Section, name: str) -> TunnelConfig:
    device = sec.get("device", str, name)
    if not NAME_RE.match(device):
        raise sec.error("device", f"{device!r} is not a valid interface name", "use 1-15 of a-z 0-9 _ . -")
    mtu = sec.int_range("mtu", MIN_MTU, MAX_MTU, DEFAULT_MTU, why="IPv6 inside needs >= 1280")
    addresses = tuple(_parse(sec, "addresses", a, lambda s: ipaddress.ip_interface(s), "an address/prefix")
                      for a in sec.str_list("addresses"))
    routes = tuple(_parse(sec, "routes", r, lambda s: ipaddress.ip_network(s, strict=False), "a prefix")
                   for r in sec.str_list("routes"))
    sec.finish()
    return TunnelConfig(device=device, mtu=mtu, addresses=addresses, routes=routes)


def _transport(sec: _Section, mode: str) -> TransportConfig:
    # An IKE client tries UDP first and falls back to TCP by itself (RFC 9329 §5.1, §9:
    # UDP is preferred); a manually keyed tunnel has no handshake to detect UDP with.
    protocol = sec.choice("protocol", ("tcp", "udp", "tls", "auto"), "auto" if mode == "ike" else "tcp")
    role = sec.choice("role", ("connect", "listen"), "connect")
    remote = sec.get("remote", str)
    if role == "connect" and not remote:
        raise sec.error("remote", "is required when role = \"connect\"", "set the server's address or name")
    default_port = DEFAULT_TLS_PORT if protocol == "tls" else DEFAULT_PORT
    port = sec.int_range("port", 1, 65535, default_port)
    local = sec.get("local", str)
    for k, v in (("remote", remote), ("local", local)):
        if v is not None and not v:
            raise sec.error(k, "is empty")
    local_port = sec.get("local_port", int)
    if local_port is not None and not 0 <= local_port <= 65535:
        raise sec.error("local_port", f"{local_port} is out of range", "use 0..65535")
    fallback = sec.get("fallback_after", float, 4.0)
    if not 0.5 <= fallback <= 120:
        raise sec.error("fallback_after", f"{fallback} s is out of range", "use 0.5..120 seconds")
    tls = _tls(sec, role, remote) if protocol in ("tls", "auto") or (protocol == "udp" and role == "connect") else None
    mobike_wait = sec.get("mobike_wait", float, 3.0)
    if not 0.5 <= mobike_wait <= 60:
        raise sec.error("mobike_wait", f"{mobike_wait} s is out of range", "use 0.5..60 seconds")
    udp_probe = sec.get("udp_probe", float, 30.0)
    if udp_probe != 0 and not 2 <= udp_probe <= 3600:
        raise sec.error("udp_probe", f"{udp_probe} s is out of range", "use 2..3600 seconds, or 0 to never probe")
    sec.finish()
    return TransportConfig(protocol=protocol, role=role, remote=remote, port=port, local=local,
                           local_port=local_port, fallback_after_s=fallback, tls=tls,
                           mobike_wait_s=mobike_wait, udp_probe_s=udp_probe)


def _path_key(sec: _Section, k: str, *, secret: bool = False) -> Path | None:
    text = sec.get(k, str)
    if text is None:
        return None
    p = Path(text) if os.path.isabs(text) else sec.path.parent / text
    if not p.exists():
        raise sec.error(k, f"{p} does not exist", "give the path of an existing file")
    if secret:
        check_secret_file(p)
    return p


def _tls(sec: _Section, role: str, remote: str | None) -> TlsConfig:
    if role == "listen":
        cert, key = _path_key(sec, "tls_cert"), _path_key(sec, "tls_key", secret=True)
        if cert is None or key is None:
            missing = "tls_cert" if cert is None else "tls_key"
            raise sec.error(missing, "is required for a TLS server", "give the PEM certificate and key")
        return TlsConfig(certfile=cert, keyfile=key)
    pin_text = sec.get("tls_pin_sha256", str)
    pin = None
    if pin_text is not None:
        try:
            pin = bytes.fromhex(pin_text.replace(":", ""))
        except ValueError:
            pin = b""
        if len(pin) != 32:
            raise sec.error("tls_pin_sha256", "is not a SHA-256 in hex",
                            "use `openssl x509 -in cert.pem -outform der | sha256sum`")
    return TlsConfig(server_name=sec.get("tls_server_name", str, remote), cafile=_path_key(sec, "tls_ca"),
                     pin_sha256=pin)


def _manual(sec: _Section, cfg_path: Path) -> ManualConfig:
    key_file = sec.get("key_file", str)
    if key_file is not None:
        kpath = (cfg_path.parent / key_file) if not os.path.isabs(key_file) else Path(key_file)
        check_secret_file(kpath)
        keys = _Section(kpath, "", read_toml(kpath))
    else:
        check_secret_file(cfg_path)  # inline keys: the config file itself holds secrets
        keys = sec
    sizes = (16 + 4, 32 + 4)
    out_sec, in_sec = keys.sub("outbound", required=True), keys.sub("inbound", required=True)
    outbound = ManualSa(spi=_spi(out_sec, "spi"), keymat=_hex_bytes(out_sec, "key", sizes))
    inbound = ManualSa(spi=_spi(in_sec, "spi"), keymat=_hex_bytes(in_sec, "key", sizes))
    out_sec.finish()
    in_sec.finish()
    if key_file is not None:
        keys.finish()
    if outbound.keymat[:-4] == inbound.keymat[:-4]:
        raise in_sec.error("key", "is the same key as outbound",
                         "use a different key per direction: one key in both directions reuses GCM nonces")
    if outbound.spi == inbound.spi:
        raise in_sec.error("spi", "equals outbound.spi", "use a different SPI per direction")
    esn = sec.get("esn", bool, True)
    window = sec.int_range("replay_window", 32, MAX_REPLAY_WINDOW, DEFAULT_REPLAY_WINDOW,
                           why="RFC 4303 §3.4.3 requires at least 32")
    state_dir = Path(sec.get("state_dir", str, "/var/lib/vpn"))
    sec.finish()
    return ManualConfig(outbound=outbound, inbound=inbound, esn=esn, replay_window=window,
                        state_dir=state_dir)
