"""The only module that imports the compiled `vpn._fast`; typed wrappers around it.

Everything else in the package calls these wrappers, never `ffi` or `lib` directly.
"""

from __future__ import annotations

from vpn import _fast  # type: ignore[attr-defined]

ffi = _fast.ffi
lib = _fast.lib


def abi() -> int:
    """ABI number of the compiled module (bumped when the C interface changes)."""
    return int(lib.vpn_fast_abi())


def openssl_version() -> str:
    """The OpenSSL libcrypto version the fast path runs on."""
    return str(ffi.string(lib.vpn_fast_openssl_version()).decode())
