/* vpn_tun.c: batched TUN reads and writes (see vpn_tun.h). */
#include "vpn_tun.h"

#include <errno.h>
#include <unistd.h>

int vpn_tun_read_batch(int fd, uint8_t *arena, size_t stride, uint32_t *lens, uint32_t max,
                       int *err)
{
    int dummy;
    int *e = err ? err : &dummy;
    *e = 0;
    if (fd < 0 || !arena || !lens || stride < VPN_TUN_SLOT_BYTES) {
        *e = EINVAL;
        return -1;
    }
    uint32_t i = 0;
    while (i < max) {
        ssize_t r = read(fd, arena + (size_t)i * stride, VPN_TUN_SLOT_BYTES);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                *e = errno;
            break;
        }
        if (r == 0)
            break; /* not produced by a TUN; treat like "nothing more" */
        lens[i++] = (uint32_t)r;
    }
    return (int)i;
}

int vpn_tun_write_batch(int fd, const uint8_t *base, const uint32_t *offs,
                        const uint32_t *lens, uint32_t n, uint32_t *n_failed, int *err)
{
    int dummy_e;
    uint32_t dummy_f = 0;
    int *e = err ? err : &dummy_e;
    uint32_t *failed = n_failed ? n_failed : &dummy_f;
    *e = 0;
    if (fd < 0 || (n && (!base || !offs || !lens))) {
        *e = EINVAL;
        return -1;
    }
    uint32_t i = 0;
    while (i < n) {
        ssize_t w = write(fd, base + offs[i], lens[i]);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            *e = errno;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS ||
                errno == ENOMEM || errno == EBADF)
                break;
            (*failed)++; /* the kernel refused this packet: drop it, keep the rest */
        }
        i++;
    }
    return (int)i;
}
