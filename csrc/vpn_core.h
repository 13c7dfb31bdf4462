/* vpn_core.h: build identity of the C fast path. */
#ifndef VPN_CORE_H
#define VPN_CORE_H
#include <stdint.h>
#include <stddef.h>

/* cdef-begin */
#define VPN_FAST_ABI 1
int vpn_fast_abi(void);
const char *vpn_fast_openssl_version(void);
/* cdef-end */

#endif
