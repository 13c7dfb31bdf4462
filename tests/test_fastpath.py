"""The compiled fast path is importable and linked against OpenSSL 3."""

from vpn import fastpath


def test_abi_matches_python_side() -> None:
    assert fastpath.abi() == 1


def test_linked_against_openssl3() -> None:
    assert fastpath.openssl_version().startswith("OpenSSL 3.")
