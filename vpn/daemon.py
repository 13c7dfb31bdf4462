"""The daemon process behind `vpn up` and `vpn serve`.

1. Load the config and pick the tunnel: manual keys (manual.py), an IKE client
   (client.py) or an IKE server (server.py).
2. Bind the control socket of this network namespace first: a second instance of the
   same name fails before touching anything.
3. `start()` the tunnel; report readiness (or why it failed) on the pipe `vpn up` waits
   on; serve `status` and `down` on the control socket.
4. On `down`, SIGTERM or SIGINT: `stop()` undoes every change, then the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from vpn import config
from vpn.io import control
from vpn.io.host import StartupError


class Tunnel(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def status(self) -> dict[str, Any]: ...


def make_tunnel(cfg: config.Config, *, new_key: bool = False, export_keys: Path | None = None) -> Tunnel:
    if cfg.mode == "manual":
        from vpn.manual import ManualTunnel

        return ManualTunnel(cfg, new_key=new_key, export_keys=export_keys)
    if cfg.server is not None:
        from vpn.server import IkeServer

        return IkeServer(cfg)
    from vpn.client import IkeClient

    return IkeClient(cfg, export_keys=export_keys)


async def serve_daemon(make: Callable[[], Tunnel], name: str, ready: Callable[[str], None]) -> int:
    stop = asyncio.Event()
    tunnel: Tunnel | None = None

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return tunnel.status() if tunnel is not None else {"ok": True, "state": "starting"}
        if cmd == "down":
            stop.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    server = control.ControlServer(name, handler)
    try:
        await server.start()
    except control.ControlError as exc:
        ready(f"error: {exc}")
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        tunnel = make()
        try:
            await tunnel.start()
        except (StartupError, config.ConfigError, OSError) as exc:
            ready(f"error: {exc}")
            return 1
        ready("ok")
        await stop.wait()
        return 0
    finally:
        if tunnel is not None:
            await tunnel.stop()
        await server.close()


def _ready_writer(fd: int | None) -> Callable[[str], None]:
    def ready(line: str) -> None:
        nonlocal fd
        if fd is None:
            print(line, file=sys.stderr)
            return
        try:
            os.write(fd, line.encode() + b"\n")
            os.close(fd)
        except OSError:
            pass
        fd = None

    return ready


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vpn.daemon")
    p.add_argument("config")
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--export-keys")
    p.add_argument("--new-key", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("VPN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ready = _ready_writer(args.ready_fd)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        ready(f"error: {exc}")
        return 2
    export = Path(args.export_keys) if args.export_keys else None

    async def run() -> int:
        return await serve_daemon(lambda: make_tunnel(cfg, new_key=args.new_key, export_keys=export),
                                  cfg.name, ready)

    return run_loop(run())


def run_loop(coro: Awaitable[int]) -> int:
    """Run the daemon on uvloop (asyncio's own loop if uvloop is missing)."""
    try:
        import uvloop

        return int(uvloop.run(coro))  # type: ignore[arg-type]
    except ImportError:
        return int(asyncio.run(coro))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
