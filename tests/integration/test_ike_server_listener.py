"""The TCP listener of `vpn serve` defends itself (RFC 9329 §6.1, §6.3, §10; vpn/io/
stream.py ListenerLimits), and no connection holds up another's handshake.

- A connection that sends nothing, only part of the "IKETCP" prefix, or nothing over
  TLS, is closed about 10 s after it opened (the prefix and a first message must come).
- A partial frame that stalls is discarded with its connection 10 s after its last
  byte (well before the 30 s handshake limit).
- A connection that carries no IKE SA is closed after a few seconds (T34): one whose
  only message had unknown SPIs, and one whose IKE SA was deleted while the initiator
  kept the connection open.
- A second IKE SA on a connection that carries one (RFC 9329 §6.1, T42) is refused:
  its IKE_SA_INIT is dropped and counted, the first IKE SA goes on.
- At most 64 connections may be unauthenticated: the oldest is evicted, an
  authenticated client is never touched.
- Handshakes do not wait for each other: many clients at once, next to stalled and
  dribbling connections, each complete in about the time of one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .ike_server_helpers import SERVER_INNER, build_ike_topology, ike_lab, ping
from .ike_tcp_peer import argv_for
from .netns import Lab

pytestmark = pytest.mark.netns

REPO = str(Path(__file__).resolve().parents[2])

# Opens the probe connections at once and reports when the server closed each one.
PROBE = r"""
import json, os, select, socket, sys, time
host = sys.argv[1]
def conn(port, data=b""):
    s = socket.create_connection((host, port), timeout=5)
    if data:
        s.sendall(data)
    return s
hdr = os.urandom(16) + bytes([0, 0x20, 37, 0x08]) + (7).to_bytes(4, "big") + (28).to_bytes(4, "big")
probes = {
    "silent": conn(4500),
    "partial_prefix": conn(4500, b"IKE"),
    "silent_tls": conn(443),
    "unknown_spi": conn(4500, b"IKETCP" + (34).to_bytes(2, "big") + bytes(4) + hdr),
}
t0, closed, got = time.monotonic(), {}, {k: b"" for k in probes}
while len(closed) < len(probes) and time.monotonic() - t0 < 25:
    socks = [s for k, s in probes.items() if k not in closed]
    ready, _, _ = select.select(socks, [], [], 0.1)
    for s in ready:
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        name = next(k for k, v in probes.items() if v is s)
        got[name] += data
        if not data:
            closed[name] = round(time.monotonic() - t0, 2)
print(json.dumps({"closed": {k: closed.get(k) for k in probes}, "got": {k: v.hex() for k, v in got.items()},
                  "sent_header": hdr.hex()}), flush=True)
"""

# Opens N silent connections, one every few ms; reports which closed within 2 s.
CROWD = r"""
import json, select, socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    socks.append(socket.create_connection((host, 4500), timeout=5))
    time.sleep(0.005)
t0, closed = time.monotonic(), []
while time.monotonic() - t0 < 2:
    ready, _, _ = select.select([s for s in socks if socks.index(s) not in closed], [], [], 0.1)
    for s in ready:
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:
            closed.append(socks.index(s))
print(json.dumps(sorted(closed)), flush=True)
"""

# Dribbles a valid-looking frame one byte per `gap` seconds for `seconds`.
DRIBBLE = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 4500), timeout=5)
s.sendall(b"IKETCP")
end = time.monotonic() + float(sys.argv[2])
for b in b"\x01\x00" + bytes(254):
    if time.monotonic() > end:
        break
    try:
        s.send(bytes([b]))
    except OSError:
        break
    time.sleep(float(sys.argv[3]))
"""


def test_listener_closes_silent_partial_and_orphaned_connections(lab: Lab, tmp_path: Path) -> None:
    topo = build_ike_topology(lab)
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(clients=["alice@test", "carol@test"])
        carol = str(ik.psk_file("carol@test"))
        probe = topo.client.popen([sys.executable, "-c", PROBE, topo.server_v4],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        partial = topo.client.popen([*argv_for(REPO), topo.server_v4, "carol@test", carol, "init-then-partial", "3"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deleted = topo.client.popen([*argv_for(REPO), topo.server_v4, "alice@test", str(ik.psk_file("alice@test")),
                                     "delete-and-wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        results = {}
        for name, proc in (("probe", probe), ("partial", partial), ("deleted", deleted)):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{name}: {err.decode(errors='replace')}"
            results[name] = json.loads(out.decode().strip().splitlines()[-1])
        closed, got = results["probe"]["closed"], results["probe"]["got"]
        for name in ("silent", "partial_prefix", "silent_tls"):
            assert closed[name] is not None and 9.5 <= closed[name] <= 12.5, (name, closed)
            assert got[name] == "", (name, got[name])
        assert closed["unknown_spi"] is not None and 4.5 <= closed["unknown_spi"] <= 7.5, closed
        # RFC 7296 §2.21.4: the request for an unknown IKE SA got an unprotected
        # INVALID_IKE_SPI answer with its SPIs and message ID (one frame, Non-ESP marker)
        answer, sent = bytes.fromhex(got["unknown_spi"]), bytes.fromhex(results["probe"]["sent_header"])
        assert int.from_bytes(answer[:2], "big") == len(answer) and answer[2:6] == bytes(4), answer.hex()
        msg = answer[6:]
        assert msg[:16] == sent[:16] and msg[18] == 37 and msg[19] == 0x20 and msg[20:24] == sent[20:24]
        assert msg[16] == 41 and int.from_bytes(msg[28 + 6:28 + 8], "big") == 4  # N(INVALID_IKE_SPI)
        after = results["partial"]["closed_after_last_byte"]
        assert after is not None and 9.5 <= after <= 12.5, results["partial"]
        assert "error" not in results["deleted"], results["deleted"]
        gone = results["deleted"]["closed_after_delete"]
        assert gone is not None and 4.5 <= gone <= 7.5, results["deleted"]
        rules = srv.status()["listener"]["closed"]
        assert rules == {"no_first_message": 3, "orphan": 2, "partial_frame": 1}, rules
        assert srv.status()["listener"]["unauthenticated"] == 0


def test_a_second_ike_sa_on_one_connection_is_refused(lab: Lab, tmp_path: Path) -> None:
    topo = build_ike_topology(lab)
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(clients=["alice@test"])
        r = topo.client.run([*argv_for(REPO), topo.server_v4, "alice@test", str(ik.psk_file("alice@test")),
                             "second-sa"], timeout=60)
        res = json.loads(r.stdout.decode().strip().splitlines()[-1])
        assert res == {"seconds": res["seconds"], "second_answered": False, "first_alive": True}, res
        st = srv.status()
        assert st["listener"]["dropped"] == {"other_ike_sa": 1}, st["listener"]
        assert len(srv.clients()) == 1 and st["half_open"] == 0


def test_unauthenticated_cap_evicts_the_oldest(lab: Lab, tmp_path: Path) -> None:
    topo = build_ike_topology(lab)
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server()
        cli = ik.client(topo.client, "alice@test", protocol="tcp")
        cli.up()
        r = topo.client.run([sys.executable, "-c", CROWD, topo.server_v4, "66"], timeout=30)
        evicted = json.loads(r.stdout.decode().strip().splitlines()[-1])
        assert evicted == [0, 1], evicted  # 66 silent connections, 64 kept: the 2 oldest go
        assert srv.status()["listener"]["closed"].get("evicted") == 2
        ping(topo.client, SERVER_INNER)  # the authenticated client kept its connection
        assert srv.client("alice@test")["connected"]  # type: ignore[index]
        cli.down()


HANDSHAKES = 8
STALLED = 12


def test_handshakes_do_not_wait_for_each_other(lab: Lab, tmp_path: Path) -> None:
    topo = build_ike_topology(lab, second_client=True)
    assert topo.client2 is not None
    names = [f"peer{i}@test" for i in range(HANDSHAKES)]
    with ike_lab(topo, tmp_path) as ik:
        srv = ik.server(clients=["alice@test", *names])
        # stalled and dribbling connections from another client first...
        stalled = [topo.client2.popen([sys.executable, "-c", DRIBBLE, topo.server_v4, "25", "0.5" if i % 2 else "60"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(STALLED)]
        time.sleep(1.0)
        assert srv.status()["listener"]["unauthenticated"] == STALLED
        # ...then many handshakes at once, each from its own process
        peers = [topo.client.popen([*argv_for(REPO), topo.server_v4, n, str(ik.psk_file(n)), "handshake"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in names]
        started = time.monotonic()
        cli = ik.client(topo.client, "alice@test", protocol="tcp")
        cli.up()  # the real client too
        up_s = time.monotonic() - started
        seconds: list[float] = []
        for n, p in zip(names, peers, strict=True):
            out, err = p.communicate(timeout=60)
            res: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1]) if out else {
                "error": err.decode()[-500:]}
            assert "error" not in res, (n, res)
            seconds.append(float(res["seconds"]))
        # one handshake is a few ms of work; on 2 cores with the processes starting
        # they take a little longer, but none waits for the stalled connections (which
        # hold out for 10 s until the listener closes them)
        assert max(seconds) < 5.0, seconds
        assert up_s < 10.0
        assert len(srv.clients()) == HANDSHAKES + 1
        ping(topo.client, SERVER_INNER)
        for p in stalled:
            p.kill()
        cli.down()
