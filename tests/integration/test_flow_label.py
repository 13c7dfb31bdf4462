"""RFC 9329 §6.1 (T38): over IPv6 the TCP Originator keeps one flow label on every
connection it opens for an IKE SA, so that a reconnect takes the same ECMP path.
Linux would otherwise derive a new label from each connection's 5-tuple.

Checked on the wire: a namespace's loopback, packets read with an AF_PACKET socket.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .netns import Lab

pytestmark = pytest.mark.netns

REPO = str(Path(__file__).resolve().parents[2])

# Opens three connections with open_connection and reports the flow label of each
# connection's packets from the client side (keyed by source port).
SCRIPT = r"""
import asyncio, json, socket, sys, threading, time
sys.path.insert(0, sys.argv[1])
from vpn.io.stream import open_connection
label = int(sys.argv[2])
with open("/proc/sys/net/ipv6/auto_flowlabels", "w") as f:  # this namespace's default, made sure
    f.write("1")
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
cap.settimeout(0.2)
seen, stop = {}, threading.Event()
def sniff():
    while not stop.is_set():
        try:
            p = cap.recv(2000)
        except TimeoutError:
            continue
        ip6 = p[14:]
        if len(ip6) >= 44 and ip6[6] == 6:
            sport = int.from_bytes(ip6[40:42], "big")
            if sport != port:
                seen.setdefault(sport, set()).add(int.from_bytes(ip6[1:4], "big") & 0xFFFFF)
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.bind(("::1", 0)); srv.listen(); srv.settimeout(5)
port = srv.getsockname()[1]
t = threading.Thread(target=sniff); t.start()
async def main():
    for _ in range(3):
        s = await open_connection("::1", port, flow_label=label)
        c, _ = srv.accept()
        s.send(b"IKETCP")
        c.recv(6)
        c.close(); s.close()
asyncio.run(main())
time.sleep(0.3); stop.set(); t.join()
print(json.dumps({str(k): sorted(v) for k, v in seen.items()}))
"""


@pytest.mark.parametrize("label", [0x2A5C1, 0])
def test_one_flow_label_across_connections(lab: Lab, label: int) -> None:
    ns = lab.add("fl")
    ns.ip("link", "set", "lo", "up")
    r = ns.run([sys.executable, "-c", SCRIPT, REPO, str(label)], timeout=30)
    seen = {int(k): v for k, v in json.loads(r.stdout.decode().strip().splitlines()[-1]).items()}
    assert len(seen) == 3, seen  # three connections, three source ports
    labels = {x for v in seen.values() for x in v}
    if label:
        assert labels == {label}, seen
    else:  # without: the kernel's per-connection labels (what the option fixes)
        assert len(labels) == 3 and 0 not in labels, seen
