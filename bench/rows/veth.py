"""`veth`: no tunnel, the ceiling. The inner addresses go straight onto the veth."""

from __future__ import annotations

from bench.rows.base import Row, RowEnv


class Veth(Row):
    name = "veth"
    tunnel = False

    def up(self, env: RowEnv) -> list[int]:
        pair, inner = env.pair, env.inner
        for side, dev, a4, a6 in (("client", pair.client_if, inner.client4, inner.client6),
                                  ("server", pair.server_if, inner.server4, inner.server6)):
            env.run(side, ["ip", "addr", "add", f"{a4}/{inner.prefix4}", "dev", dev])
            env.run(side, ["ip", "addr", "add", f"{a6}/{inner.prefix6}", "dev", dev, "nodad"])
        return []

    def down(self, env: RowEnv) -> None:
        pair, inner = env.pair, env.inner
        for side, dev, a4, a6 in (("client", pair.client_if, inner.client4, inner.client6),
                                  ("server", pair.server_if, inner.server4, inner.server6)):
            env.run(side, ["ip", "addr", "del", f"{a4}/{inner.prefix4}", "dev", dev])
            env.run(side, ["ip", "addr", "del", f"{a6}/{inner.prefix6}", "dev", dev])
