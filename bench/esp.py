"""ESP seal/open throughput: the C batch path, the Python reference, and openssl.

    python -m bench.esp [--json] [--seconds S] [--sizes 64,512,...]

For each inner size and op (seal, open) it measures, on one core with AES-256-GCM:
  c       the C batch path as the dataplane uses it: vpn_esp_seal_batch of a batch of
          inner packets into TCP frames (one C call per batch); vpn_stream_rx_feed of a
          chunk of such frames with an SA table (deframe, SPI lookup, replay, decrypt);
  py      the Python reference (vpn.esp.sa), one packet at a time;
  openssl `openssl speed -elapsed -evp aes-256-gcm -bytes N` (-decrypt for open), run in
          the same go: the bulk-cipher ceiling without any ESP work around it.
--json prints one JSON object per (op, size) with op, size, c_gbps, c_pps, py_gbps,
openssl_gbps, c_over_openssl. Goal (issue 2): c_over_openssl >= 0.8 at 1400 bytes for
both ops, and c_pps >= 1.5 M at 64 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from collections.abc import Callable

from vpn import fastpath
from vpn.esp.sa import InboundSa, OutboundSa, SaParams

SIZES = (64, 512, 1400, 8192, 65000)
BATCH_BYTES = 1 << 18  # at most 256 KiB of inner packets per batch (stays in L2)
BATCH_MAX = 64  # packets per C call, like a TUN read batch


def _params() -> SaParams:
    return SaParams(0x0B0E0C01, os.urandom(32), os.urandom(4), esn=True)


def _inner(size: int) -> bytes:
    return b"\x45" + os.urandom(size - 1)


def _timed(step: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Run step() (returns packets done) until `seconds` elapsed: (packets, elapsed)."""
    step()  # warm up
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        done += step()
        now = time.perf_counter()
        if now >= deadline:
            return done, now - start


def bench_c(size: int, seconds: float) -> dict[str, tuple[int, float]]:
    params = _params()
    batch = max(1, min(BATCH_MAX, BATCH_BYTES // size))
    packets = [_inner(size) for _ in range(batch)]
    out_sa = fastpath.FastSa(params, outbound=True)
    batcher = fastpath.SealBatcher(max_packets=batch, arena_size=batch * size + 64)
    batcher.load(packets)

    def seal() -> int:
        n, _ = batcher.seal_loaded(out_sa, fastpath.MODE_TCP)
        return n

    results = {"seal": _timed(seal, seconds)}

    # open: one chunk of `batch` frames, fed again and again; the window is reset
    # before each feed so that the same sequence numbers are new every time.
    in_sa = fastpath.FastSa(params, outbound=False)
    table = fastpath.FastSaTable()
    table.insert(in_sa)
    out_sa.set_seq(0)
    n, used = batcher.seal_loaded(out_sa, fastpath.MODE_TCP)
    assert n == batch
    chunk = fastpath.ffi.new("uint8_t[]", used)
    fastpath.ffi.memmove(chunk, batcher.out_buf, used)
    rx = fastpath.StreamReceiver(table, out_size=used + 64, max_items=batch)
    set_seq, handle = fastpath.lib.vpn_esp_sa_set_seq, in_sa.handle

    def open_() -> int:
        set_seq(handle, 0)
        _status, _consumed, items = rx.feed_raw(chunk, used)
        return items

    results["open"] = _timed(open_, seconds)
    assert rx.counters.replay == 0 and rx.counters.icv == 0
    return results


def bench_py(size: int, seconds: float) -> dict[str, tuple[int, float]]:
    params = _params()
    out_sa, in_sa = OutboundSa(params), InboundSa(params)
    inner = _inner(size)

    def seal() -> int:
        out_sa.seal(inner)
        return 1

    sender = OutboundSa(params)
    sealed = [sender.seal(inner) for _ in range(256)]
    pos = [0]

    def open_() -> int:
        if pos[0] == len(sealed):
            in_sa.set_seq(0)
            pos[0] = 0
        in_sa.open(sealed[pos[0]])
        pos[0] += 1
        return 1

    return {"seal": _timed(seal, seconds), "open": _timed(open_, seconds)}


def bench_openssl(size: int, decrypt: bool, seconds: float) -> float:
    """Gbit/s of `openssl speed -elapsed -evp aes-256-gcm -bytes N` (0.0 if it failed)."""
    cmd = [
        "openssl",
        "speed",
        "-elapsed",
        "-evp",
        "aes-256-gcm",
        "-bytes",
        str(size),
        "-seconds",
        str(max(1, round(seconds))),
    ]
    if decrypt:
        cmd.append("-decrypt")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60 + 3 * seconds).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0.0
    m = re.search(r"^aes-256-gcm\s+([\d.]+)k\s*$", out, re.IGNORECASE | re.MULTILINE)
    return float(m.group(1)) * 1000 * 8 / 1e9 if m else 0.0


def run(sizes: tuple[int, ...], seconds: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for size in sizes:
        c = bench_c(size, seconds)
        py = bench_py(size, min(seconds, 0.5))
        for op in ("seal", "open"):
            n, t = c[op]
            pn, pt = py[op]
            c_gbps = n * size * 8 / t / 1e9
            ossl = bench_openssl(size, op == "open", seconds)
            rows.append({
                "op": op,
                "size": size,
                "c_gbps": round(c_gbps, 3),
                "c_pps": round(n / t),
                "py_gbps": round(pn * size * 8 / pt / 1e9, 4),
                "openssl_gbps": round(ossl, 3),
                "c_over_openssl": round(c_gbps / ossl, 3) if ossl else None,
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per (op, size)")
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    a = ap.parse_args(argv)
    sizes = tuple(int(s) for s in a.sizes.split(","))
    rows = run(sizes, a.seconds)
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(
        f"{'op':5} {'size':>6} {'C Gbit/s':>9} {'C pkt/s':>10} {'py Gbit/s':>9} "
        f"{'openssl':>8} {'C/openssl':>9}   ({fastpath.openssl_version()}, AES-256-GCM)"
    )
    for r in rows:
        ratio = r["c_over_openssl"]
        print(
            f"{r['op']:5} {r['size']:>6} {r['c_gbps']:>9} {r['c_pps']:>10} {r['py_gbps']:>9} "
            f"{r['openssl_gbps']:>8} {ratio if ratio is not None else '-':>9}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
