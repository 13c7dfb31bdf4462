/* vpn_outq.h: one ordered output queue per stream (RFC 9329 §3 frames never torn).
 *
 * ESP frames sealed in C and IKE frames handed down from Python are appended whole to
 * the same queue; a short write leaves the remainder at the head, so frames are never
 * interleaved. The queue is bounded: above the high-water mark the caller stops reading
 * the TUN (backpressure) until a flush drains it.
 */
#ifndef VPN_OUTQ_H
#define VPN_OUTQ_H
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

/* cdef-begin */
struct vpn_outq;

struct vpn_outq *vpn_outq_new(size_t capacity, size_t high_water);
void vpn_outq_free(struct vpn_outq *q);
size_t vpn_outq_pending(const struct vpn_outq *q);
size_t vpn_outq_capacity(const struct vpn_outq *q);
int vpn_outq_above_high_water(const struct vpn_outq *q);
uint8_t *vpn_outq_reserve(struct vpn_outq *q, size_t n);
void vpn_outq_commit(struct vpn_outq *q, size_t n);
int vpn_outq_push(struct vpn_outq *q, const uint8_t *data, size_t n);
int vpn_outq_push_frame(struct vpn_outq *q, const uint8_t *prefix, size_t prefix_len,
                        const uint8_t *data, size_t n);
ssize_t vpn_outq_flush_fd(struct vpn_outq *q, int fd);
const uint8_t *vpn_outq_peek(const struct vpn_outq *q, size_t *n);
void vpn_outq_consume(struct vpn_outq *q, size_t n);
void vpn_outq_clear(struct vpn_outq *q);
/* cdef-end */

#endif
