"""IKEv2 (RFC 7296), sans-IO: bytes and time in; bytes, events and the next timer out."""
