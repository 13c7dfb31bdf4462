"""Errors of the IKE layer, in two directions (as h11 does).

`RemoteProtocolError` and its subclasses mean the peer sent something bad; they never
escape `IkeSession.receive_message`: the session turns them into a Notify, a dropped
message or a closed SA. `LocalProtocolError` means this side misused the API.
Each remote error carries the RFC 7296 §3.10.1 notify type to answer with, if any.
"""

from __future__ import annotations

from vpn.ike.constants import NotifyType


class IkeError(Exception):
    """Base of every error raised by vpn.ike."""


class LocalProtocolError(IkeError):
    """The caller misused the API (a bug on this side, not the peer's)."""


class RemoteProtocolError(IkeError):
    """The peer sent something that violates the protocol."""

    notify: NotifyType | None = None


class MalformedMessage(RemoteProtocolError):
    """A message or payload does not parse (bad lengths, truncation, bad values).

    RFC 7296 §2.21.3: answered with INVALID_SYNTAX when it arrived in an
    authenticated request, otherwise dropped.
    """

    notify = NotifyType.INVALID_SYNTAX


class UnsupportedCriticalPayload(RemoteProtocolError):
    """An unknown payload had the critical bit set (RFC 7296 §2.5)."""

    notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unsupported critical payload type {payload_type}")
        self.payload_type = payload_type


class IntegrityError(RemoteProtocolError):
    """The SK/SKF payload failed its integrity check (RFC 7296 §2.21.1: drop silently)."""


class AuthenticationFailed(RemoteProtocolError):
    """The peer's AUTH payload, certificate or identity did not verify (RFC 7296 §2.15)."""

    notify = NotifyType.AUTHENTICATION_FAILED


class InvalidKePayload(RemoteProtocolError):
    """A Diffie-Hellman public value is malformed or fails its validity checks."""

    notify = NotifyType.INVALID_SYNTAX
