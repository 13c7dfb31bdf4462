"""The wire is standard: what crosses the router is an RFC 9329 stream of ordinary ESP.

The router captures the outer TCP connection; the test reassembles both directions
itself, checks that the client's half starts with "IKETCP" and that both halves are
clean sequences of length-prefixed frames, each one ESP of the expected SPI with
consecutive sequence numbers. Then the frames become plain ESP packets (IP protocol
50) in a new pcap, and tshark decrypts them with nothing but the file that
`vpn up --export-keys` wrote (as the user would: ~/.config/wireshark/esp_sa), finding
the inner ICMP echo requests and replies with the pattern ping put in them.

Debian 12's tshark 4.0 misreads the TCP-encapsulation Length field, so its own
RFC 9329 dissector is not the judge of the stream; only of ESP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .manual import PORT, Capture, ManualKeys, esp_seq, manual_tunnel, split_frames, tcp_payload
from .netns import Topology

pytestmark = pytest.mark.netns

PATTERN = "5ca1ab1e"
PINGS = 3
FIELDS = ["esp.spi", "esp.sequence", "esp.icv_good", "icmp.type", "data.data"]


def esp_pcap(frames: list[bytes], src: str, dst: str, path: Path) -> None:
    """Each ESP message as a plain IPv4/IPv6 packet, protocol 50 (RFC 4303 §2)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    if ":" in src:
        wrpcap(str(path), [IPv6(src=src, dst=dst, nh=50) / Raw(f) for f in frames])
    else:
        wrpcap(str(path), [IP(src=src, dst=dst, proto=50) / Raw(f) for f in frames])


def tshark_decrypt(pcap: Path, esp_sa: Path, home: Path) -> list[dict[str, str]]:
    """tshark's view of each packet, with `esp_sa` as the user's ESP SA table."""
    conf = home / ".config" / "wireshark"
    conf.mkdir(parents=True)
    shutil.copy(esp_sa, conf / "esp_sa")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    argv = ["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE", "-T", "fields", "-E", "occurrence=f"]
    for f in FIELDS:
        argv += ["-e", f]
    r = subprocess.run(argv, capture_output=True, timeout=60, env=env, check=False)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return [dict(zip(FIELDS, line.split("\t"), strict=True))
            for line in r.stdout.decode().splitlines()]


@pytest.mark.parametrize(("outer", "esn"), [
    pytest.param(4, True, id="v4outer-esn"),
    pytest.param(6, False, id="v6outer-no-esn"),
])
def test_stream_is_iketcp_frames_of_esp_that_tshark_decrypts(topology: Topology, tmp_path: Path,
                                                             outer: int, esn: bool) -> None:
    manual_extra = "" if esn else "esn = false\n"
    with manual_tunnel(topology, tmp_path, protocol="tcp", outer=outer,
                       manual_extra=manual_extra) as tun:
        cap = Capture(topology.router, "r-s", f"tcp port {PORT}", tmp_path / "wire.pcap")
        export = tmp_path / "client.esp_sa"
        tun.server.up("--new-key")
        tun.client.up("--new-key", "--export-keys", str(export))
        tun.ping("client", 4, PINGS, pattern=PATTERN)
        packets = cap.stop()
        tun.down()

    assert export.stat().st_mode & 0o077 == 0, "the exported keys are readable by others"
    keys = ManualKeys.load(tun.keys_dir / "client.keys")
    client_addr, server_addr = ((topology.client_v4, topology.server_v4) if outer == 4
                                else (topology.client_v6, topology.server_v6))
    for from_server, spi, src, dst in ((False, keys.out_spi, client_addr, server_addr),
                                       (True, keys.in_spi, server_addr, client_addr)):
        stream = tcp_payload(packets, PORT, from_server=from_server)
        # the TCP Originator's half starts with "IKETCP", the responder's does not (§4)
        frames, rest = split_frames(stream, prefix=not from_server)
        assert rest == b"", f"{len(rest)} bytes after the last whole frame"
        assert all(int.from_bytes(f[:4], "big") == spi for f in frames), "a frame is not our ESP"
        seqs = [esp_seq(f) for f in frames]
        assert seqs == list(range(1, len(seqs) + 1)), f"sequence numbers {seqs}"

        pcap = tmp_path / f"esp-{int(from_server)}.pcap"
        esp_pcap(frames, src, dst, pcap)
        rows = tshark_decrypt(pcap, export, tmp_path / f"home{int(from_server)}")
        assert len(rows) == len(frames)
        assert all(int(r["esp.spi"], 0) == spi for r in rows)
        echo_type = "0" if from_server else "8"
        echoes = [r for r in rows if r["icmp.type"] == echo_type]
        assert len(echoes) == PINGS, f"tshark found {len(echoes)} ICMP echoes in {rows}"
        assert all(PATTERN * 4 in r["data.data"] for r in echoes), echoes
        if not esn:
            # without ESN Wireshark 4.0 also checks every ICV (RFC 4106 §5 AAD)
            assert all(r["esp.icv_good"] == "1" for r in rows), rows
