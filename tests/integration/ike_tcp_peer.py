"""A bare RFC 9329 IKE initiator for the listener tests: one IkeSession (PSK) over a
plain TCP socket, no TUN, no dataplane. Run inside a client namespace:

    python -c "...; from tests.integration.ike_tcp_peer import main; main()" \\
        HOST IDENTITY PSK_FILE ACTION [ARGS]

Actions (each prints one JSON line and exits 0, or a JSON line with "error"):
  handshake            IKE_SA_INIT + IKE_AUTH; {"seconds": time from connect to established}
  delete-and-wait      handshake, delete the IKE SA, keep the socket open and report
                       when the server closed it: {"closed_after_delete": seconds}
  init-then-partial D  send IKE_SA_INIT, wait D seconds, send 3 bytes of a frame and
                       stall: {"closed_after_last_byte": seconds}
  second-sa            handshake, then start a second IKE SA on the same connection
                       (RFC 9329 §6.1 forbids it) and wait 3 s for an answer; then a
                       liveness check on the first: {"second_answered": bool,
                       "first_alive": bool}
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from vpn.framing import NON_ESP_MARKER, PREFIX
from vpn.ike.credentials import PskAuthenticator
from vpn.ike.events import IkeSaClosed, IkeSaEstablished
from vpn.ike.policy import Identity, SessionPolicy, VirtualIpRequest
from vpn.ike.session import IkeSession

PORT = 4500
TIMEOUT_S = 20.0


class Peer:
    def __init__(self, host: str, identity: str, psk: bytes) -> None:
        self.t0 = time.monotonic()
        self.sock = socket.create_connection((host, PORT), timeout=5)
        self.sock.sendall(PREFIX)
        policy = SessionPolicy(local_id=Identity.parse(identity), authenticator=PskAuthenticator(psk),
                               remote_id=None, virtual_ip=VirtualIpRequest(ipv4=True, dns=False),
                               force_udp_encapsulation=True)
        local = self.sock.getsockname()
        self.session = IkeSession(policy, initiator=True, rng=os.urandom, stream=True,
                                  local_addr=(local[0], local[1]), remote_addr=(host, PORT))
        self.buf = b""
        self.events: list[object] = []

    def now(self) -> float:
        return time.monotonic()

    def flush(self) -> None:
        for out in self.session.messages_to_send():
            body = NON_ESP_MARKER + out.data
            self.sock.sendall((len(body) + 2).to_bytes(2, "big") + body)
        while (e := self.session.next_event()) is not None:
            self.events.append(e)

    def read(self, timeout: float, *, feed: bool = True) -> bool:
        """Feed whatever arrives within `timeout`; False once the server closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        except ConnectionResetError:
            return False
        if not data:
            return False
        if not feed:
            return True
        self.buf += data
        while len(self.buf) >= 2:
            n = int.from_bytes(self.buf[:2], "big")
            if n < 2 or len(self.buf) < n:
                break
            frame, self.buf = self.buf[2:n], self.buf[n:]
            if frame[:4] == NON_ESP_MARKER:
                self.session.receive_message(frame[4:], self.now())
        self.flush()
        return True

    def until(self, kind: type, timeout: float = TIMEOUT_S) -> bool:
        deadline = self.now() + timeout
        while not any(isinstance(e, kind) for e in self.events):
            if self.now() > deadline or not self.read(0.2):
                return False
        return True

    def wait_closed(self, timeout: float = 60.0, *, feed: bool = True) -> float | None:
        """Seconds until the server closes the connection (None: it did not)."""
        start = self.now()
        while self.now() - start < timeout:
            if not self.read(0.2, feed=feed):
                return self.now() - start
        return None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    host, identity, psk_file, action = args[:4]
    psk = open(psk_file, "rb").read().strip()
    peer = Peer(host, identity, psk)
    peer.session.initiate(peer.now())
    if action == "init-then-partial":
        peer.flush()
        time.sleep(float(args[4]))
        peer.sock.sendall(b"\x00\x40\x00")  # a frame of 64 bytes, 1 of them sent
        print(json.dumps({"closed_after_last_byte": peer.wait_closed(feed=False)}), flush=True)
        return
    peer.flush()
    if not peer.until(IkeSaEstablished):
        print(json.dumps({"error": f"no IKE SA: {peer.events}"}), flush=True)
        return
    result: dict[str, object] = {"seconds": round(peer.now() - peer.t0, 3)}
    if action == "second-sa":
        first = peer.session
        local = peer.sock.getsockname()
        second = IkeSession(first.policy, initiator=True, rng=os.urandom, stream=True,
                            local_addr=(local[0], local[1]), remote_addr=(host, PORT))
        peer.session = second
        second.initiate(peer.now())
        peer.flush()
        deadline = peer.now() + 3.0
        while peer.now() < deadline and peer.read(0.2):
            pass
        result["second_answered"] = second.state.name != "INIT_SENT"
        peer.session, peer.events = first, []
        first.check_liveness(peer.now())
        peer.flush()
        result["first_alive"] = _answered(peer, first)
    if action == "delete-and-wait":
        peer.session.close(peer.now())
        peer.flush()
        if not peer.until(IkeSaClosed, timeout=10):
            print(json.dumps({"error": "the delete was not answered"}), flush=True)
            return
        result["closed_after_delete"] = peer.wait_closed()
    print(json.dumps(result), flush=True)


def _answered(peer: Peer, session: IkeSession, timeout: float = 5.0) -> bool:
    """Did the outstanding request of `session` get its answer in time?"""
    deadline = peer.now() + timeout
    while session.times().outstanding is not None and peer.now() < deadline:
        if not peer.read(0.2):
            return False
    return session.times().outstanding is None


def argv_for(repo: str) -> list[str]:
    """The interpreter command that runs `main` with the repository importable."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {repo!r}); "
            "from tests.integration.ike_tcp_peer import main; main()"]
