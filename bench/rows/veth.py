"""`veth`: no tunnel, the ceiling. The inner addresses go straight onto the veth."""

from __future__ import annotations

import contextlib

from bench.rows.base import Row, RowEnv, RowError, Side


def _addresses(env: RowEnv) -> list[tuple[Side, str, str, str]]:
    p, i = env.pair, env.inner
    return [
        ("client", p.client_if, f"{i.client4}/{i.prefix4}", f"{i.client6}/{i.prefix6}"),
        ("server", p.server_if, f"{i.server4}/{i.prefix4}", f"{i.server6}/{i.prefix6}"),
    ]


class Veth(Row):
    name = "veth"
    tunnel = False

    def up(self, env: RowEnv) -> list[int]:
        for side, dev, a4, a6 in _addresses(env):
            env.run(side, ["ip", "addr", "add", a4, "dev", dev])
            env.run(side, ["ip", "addr", "add", a6, "dev", dev, "nodad"])
        return []

    def down(self, env: RowEnv) -> None:
        # Each address separately: one left behind would route later rows around their tunnel
        # (the harness checks that too).
        for side, dev, a4, a6 in _addresses(env):
            for addr in (a4, a6):
                with contextlib.suppress(RowError):
                    env.run(side, ["ip", "addr", "del", addr, "dev", dev])
