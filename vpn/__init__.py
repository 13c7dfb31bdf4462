"""vpn: IKEv2 and ESP over UDP, TCP and TLS (RFC 7296, RFC 4303, RFC 9329)."""

__version__ = "0.1.0"
