"""The control socket between `vpn` commands and a running daemon.

An abstract unix socket (`@vpn/<name>`) lives in the network namespace that created
it, so two instances in two namespaces never collide and nothing is left on disk after
a crash. Abstract sockets have no file mode, so the server checks the peer's
credentials (SO_PEERCRED): only root (or the daemon's own uid) may talk to it.

Protocol: one JSON object per line each way: {"cmd": "status"} -> {"ok": true, ...}.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

MAX_REQUEST_BYTES = 64 * 1024  # a command is a short JSON line; bigger is abuse
CLIENT_TIMEOUT_S = 10.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_address(name: str) -> str:
    """The abstract address of instance `name` (leading NUL = abstract namespace)."""
    return f"\0vpn/{name}"


class ControlError(Exception):
    """No daemon answers, or it answered with an error."""


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """Serves commands for one daemon; `handler` maps a request dict to a reply dict."""

    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the abstract socket; fails if another daemon of that name runs here."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(socket_address(self.name))
        except OSError:
            sock.close()
            raise ControlError(f"an instance named {self.name!r} is already running in this "
                               f"network namespace (stop it with `vpn down {self.name}`)") from None
        sock.listen(16)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = _peer_uid(sock) if sock is not None else -1
            if uid not in (0, os.getuid()):
                writer.write(b'{"ok": false, "error": "permission denied"}\n')
                return
            line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT_S)
            if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
                return
            try:
                request = json.loads(line)
            except ValueError:
                request = None
            if not isinstance(request, dict):
                reply: dict[str, Any] = {"ok": False, "error": "bad request"}
            else:
                reply = await self.handler(request)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def request(name: str, cmd: str, timeout: float = CLIENT_TIMEOUT_S, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon `name` in this namespace and return its reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(socket_address(name))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no instance named {name!r} is running in this network namespace") from None
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > 16 * MAX_REQUEST_BYTES:
                raise ControlError("reply too large")
    except TimeoutError:
        raise ControlError(f"instance {name!r} did not answer within {timeout:.0f} s") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"instance {name!r} closed the control connection") from None
    if not isinstance(reply, dict):
        raise ControlError("malformed reply")
    return reply


def running_instances() -> list[str]:
    """Names of the daemons whose control sockets exist in this network namespace."""
    names = []
    try:
        with open("/proc/net/unix") as fh:
            for line in fh:
                path = line.split()[-1] if len(line.split()) >= 8 else ""
                if path.startswith("@vpn/"):
                    names.append(path[len("@vpn/"):])
    except OSError:
        pass
    return sorted(set(names))
