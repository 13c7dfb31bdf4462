"""ESP (RFC 4303, AES-GCM per RFC 4106), sans-IO: the readable reference of the C path."""
