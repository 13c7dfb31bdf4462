"""Build the C fast path `vpn._fast` with cffi in out-of-line API mode.

Every `csrc/vpn_*.h` header contributes its declarations to the cdef: the part between
the `/* cdef-begin */` and `/* cdef-end */` markers must be plain C that cffi can parse
(no #include, no macros other than integer #defines). Every `csrc/*.c` file is compiled
into the one extension, linked against the system OpenSSL libcrypto.

Environment:
  VPN_SANITIZE=1   build with AddressSanitizer and UBSan (see `make asan`)
  VPN_DEBUG=1      build with -O0 -g
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CDEF_BEGIN = "/* cdef-begin */"
CDEF_END = "/* cdef-end */"


def _fail(msg: str) -> None:
    sys.stderr.write(f"\nvpn build error: {msg}\n\n")
    raise SystemExit(1)


def _check_toolchain() -> None:
    """Fail early with a message that names the Debian package to install."""
    cc = (sysconfig.get_config_var("CC") or "gcc").split()[0]
    if shutil.which(cc) is None and shutil.which("gcc") is None:
        _fail(f"no C compiler ({cc}) found: install it with `apt-get install gcc`")
    include = sysconfig.get_paths().get("include", "")
    if not (Path(include) / "Python.h").exists():
        _fail(f"Python.h not found in {include}: install `python3-dev` (Debian)")
    candidates = [Path("/usr/include/openssl/evp.h"), Path("/usr/local/include/openssl/evp.h")]
    extra = os.environ.get("OPENSSL_INCLUDE")
    if extra:
        candidates.insert(0, Path(extra) / "openssl" / "evp.h")
    if not any(p.exists() for p in candidates):
        _fail("OpenSSL headers (openssl/evp.h) not found: install `libssl-dev` (Debian)")


def _headers() -> list[Path]:
    """All vpn_*.h, each after the vpn_*.h headers it includes (cdef needs types first)."""
    headers = {h.name: h for h in sorted(HERE.glob("vpn_*.h"))}
    ordered: list[Path] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in seen:
            raise RuntimeError(f"include cycle: {' -> '.join(seen + (name,))}")
        if headers[name] in ordered:
            return
        for dep in re.findall(r'#include "(vpn_[a-z0-9_]+\.h)"', headers[name].read_text()):
            if dep in headers:
                visit(dep, seen + (name,))
        ordered.append(headers[name])

    for name in headers:
        visit(name, ())
    return ordered


def _cdef_text() -> str:
    parts = []
    for header in _headers():
        text = header.read_text()
        if CDEF_BEGIN not in text or CDEF_END not in text:
            raise RuntimeError(f"{header.name}: missing cdef markers")
        parts.append(text.split(CDEF_BEGIN, 1)[1].split(CDEF_END, 1)[0])
    return "\n".join(parts)


def _make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(_cdef_text())
    headers = "".join(f'#include "{h.name}"\n' for h in _headers())
    sources = [str(p.relative_to(HERE.parent)) for p in sorted(HERE.glob("*.c"))]
    cflags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
    ldflags: list[str] = []
    if os.environ.get("VPN_DEBUG"):
        cflags = [f for f in cflags if f != "-O2"] + ["-O0", "-g"]
    if os.environ.get("VPN_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        cflags += san + ["-g"]
        ldflags += san
    ffi.set_source(
        "vpn._fast",
        headers,
        sources=sources,
        include_dirs=[str(HERE.relative_to(HERE.parent))],
        libraries=["crypto"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    return ffi


if "sdist" not in sys.argv:
    _check_toolchain()
ffibuilder = _make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
