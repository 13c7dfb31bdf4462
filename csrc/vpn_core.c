/* vpn_core.c: build identity of the C fast path. */
#include "vpn_core.h"
#include <openssl/crypto.h>

int vpn_fast_abi(void) { return VPN_FAST_ABI; }

const char *vpn_fast_openssl_version(void) { return OpenSSL_version(OPENSSL_VERSION); }
