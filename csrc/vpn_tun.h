/* vpn_tun.h: batched reads and writes on a non-blocking TUN fd opened with IFF_VNET_HDR.
 *
 * Every packet read or written carries the 10-byte virtio_net_hdr in front (see
 * vpn_gso.h). The TUN gives one packet per read(2) and takes one per write(2); these
 * functions loop in C so that Python pays one call per batch.
 */
#ifndef VPN_TUN_H
#define VPN_TUN_H
#include <stdint.h>
#include <stddef.h>

/* cdef-begin */
/* One read slot: virtio_net_hdr + the largest IP packet (65535 bytes). */
#define VPN_TUN_SLOT_BYTES 65545

/* Read packets until the fd has none left (EAGAIN), max packets were read or an error
 * occurs. Packet i lands at arena + i * stride (stride >= VPN_TUN_SLOT_BYTES), its length
 * (header included) in lens[i]. Returns the number read (>= 0); *err is 0 when the batch
 * ended normally (EAGAIN or full) and an errno value otherwise (packets read before the
 * error are still returned). Returns -1 with *err = EINVAL for bad arguments. */
int vpn_tun_read_batch(int fd, uint8_t *arena, size_t stride, uint32_t *lens, uint32_t max,
                       int *err);

/* Write n records (record i at base + offs[i], lens[i] bytes, header included), one
 * write(2) each. A record the kernel refuses (EINVAL, EIO, ...) is dropped and counted
 * in *n_failed; the batch stops early only on EAGAIN/ENOBUFS/ENOMEM (retry the rest
 * later) or EBADF. Returns the number of records consumed (written or dropped); *err is
 * the last errno seen (0 if none). */
int vpn_tun_write_batch(int fd, const uint8_t *base, const uint32_t *offs,
                        const uint32_t *lens, uint32_t n, uint32_t *n_failed, int *err);
/* cdef-end */

#endif
