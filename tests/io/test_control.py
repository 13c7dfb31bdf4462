"""The per-namespace control socket answers commands and refuses a second instance."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from vpn.io import control


def test_request_reply_and_duplicate_name() -> None:
    name = f"t{os.getpid() % 100000}"

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "echo": req.get("cmd"), "n": req.get("n")}

    async def main() -> None:
        server = control.ControlServer(name, handler)
        await server.start()
        try:
            with pytest.raises(control.ControlError, match="already running"):
                await control.ControlServer(name, handler).start()
            assert name in control.running_instances()
            reply = await asyncio.to_thread(control.request, name, "status", n=3)
            assert reply == {"ok": True, "echo": "status", "n": 3}
        finally:
            await server.close()
        with pytest.raises(control.ControlError, match="no instance"):
            await asyncio.to_thread(control.request, name, "status")

    asyncio.run(main())


def test_garbage_request_gets_error_reply() -> None:
    import socket

    name = f"g{os.getpid() % 100000}"

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    async def main() -> None:
        server = control.ControlServer(name, handler)
        await server.start()
        try:
            def raw() -> bytes:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(control.socket_address(name))
                s.sendall(b"[1,2]\n")
                data = s.recv(1000)
                s.close()
                return data

            assert b'"bad request"' in await asyncio.to_thread(raw)
        finally:
            await server.close()

    asyncio.run(main())
