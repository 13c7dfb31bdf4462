"""ESP (RFC 4303, AES-GCM per RFC 4106), sans-IO: the readable reference of the C path.

- `sa`: SA parameters, `OutboundSa.seal`, `InboundSa.open`, drop reasons, lifetime flags.
- `replay`: the anti-replay window and ESN high-bit inference (RFC 4303 §3.4.3, App. A2).
- `receiver`: messages/datagrams -> SA by SPI -> inner packets, with per-reason counters.

The hot path runs in C (csrc/vpn_esp.c, csrc/vpn_frame.c via vpn.fastpath); tests hold
both to identical bytes.
"""

from vpn.esp.receiver import Counters, Delivered, EspReceiver
from vpn.esp.replay import REPLAY_WINDOW_DEFAULT, ReplayWindow, infer_seq
from vpn.esp.sa import (
    DropReason,
    EspDropped,
    InboundSa,
    Opened,
    OutboundSa,
    SaFlags,
    SaParams,
)

__all__ = [
    "Counters",
    "Delivered",
    "DropReason",
    "EspDropped",
    "EspReceiver",
    "InboundSa",
    "Opened",
    "OutboundSa",
    "REPLAY_WINDOW_DEFAULT",
    "ReplayWindow",
    "SaFlags",
    "SaParams",
    "infer_seq",
]
