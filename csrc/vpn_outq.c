/* vpn_outq.c: bounded, ordered byte queue of whole frames; see vpn_outq.h. */
#include "vpn_outq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct vpn_outq {
    uint8_t *buf;
    size_t cap;
    size_t high_water;
    size_t head; /* first unsent byte */
    size_t tail; /* end of queued bytes */
};

struct vpn_outq *vpn_outq_new(size_t capacity, size_t high_water)
{
    if (capacity < 4096 || high_water > capacity)
        return NULL;
    struct vpn_outq *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->buf = malloc(capacity);
    if (!q->buf) {
        free(q);
        return NULL;
    }
    q->cap = capacity;
    q->high_water = high_water;
    return q;
}

void vpn_outq_free(struct vpn_outq *q)
{
    if (!q)
        return;
    free(q->buf);
    free(q);
}

size_t vpn_outq_pending(const struct vpn_outq *q) { return q->tail - q->head; }
size_t vpn_outq_capacity(const struct vpn_outq *q) { return q->cap; }
int vpn_outq_above_high_water(const struct vpn_outq *q) { return q->tail - q->head >= q->high_water; }

/* Contiguous space for n bytes at the tail, compacting if needed; NULL if full.
 * Nothing is queued until vpn_outq_commit(). */
uint8_t *vpn_outq_reserve(struct vpn_outq *q, size_t n)
{
    if (n > q->cap - (q->tail - q->head))
        return NULL;
    if (q->cap - q->tail < n) {
        size_t pending = q->tail - q->head;
        memmove(q->buf, q->buf + q->head, pending);
        q->head = 0;
        q->tail = pending;
    }
    return q->buf + q->tail;
}

void vpn_outq_commit(struct vpn_outq *q, size_t n)
{
    if (n <= q->cap - q->tail)
        q->tail += n;
}

/* Append a whole frame or nothing: returns 0, or -1 when it does not fit. */
int vpn_outq_push(struct vpn_outq *q, const uint8_t *data, size_t n)
{
    return vpn_outq_push_frame(q, NULL, 0, data, n);
}

int vpn_outq_push_frame(struct vpn_outq *q, const uint8_t *prefix, size_t prefix_len,
                        const uint8_t *data, size_t n)
{
    if (prefix_len > SIZE_MAX - n)
        return -1;
    uint8_t *dst = vpn_outq_reserve(q, prefix_len + n);
    if (!dst)
        return -1;
    if (prefix_len)
        memcpy(dst, prefix, prefix_len);
    if (n)
        memcpy(dst + prefix_len, data, n);
    vpn_outq_commit(q, prefix_len + n);
    return 0;
}

/* Send until the queue is empty or the socket would block. Returns the bytes written,
 * or -errno on a hard error (the connection is then dead; the caller closes it). */
ssize_t vpn_outq_flush_fd(struct vpn_outq *q, int fd)
{
    size_t total = 0;
    while (q->head < q->tail) {
        ssize_t w = send(fd, q->buf + q->head, q->tail - q->head, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -errno;
        }
        q->head += (size_t)w;
        total += (size_t)w;
    }
    if (q->head == q->tail)
        q->head = q->tail = 0;
    return (ssize_t)total;
}

const uint8_t *vpn_outq_peek(const struct vpn_outq *q, size_t *n)
{
    *n = q->tail - q->head;
    return q->buf + q->head;
}

void vpn_outq_consume(struct vpn_outq *q, size_t n)
{
    if (n > q->tail - q->head)
        n = q->tail - q->head;
    q->head += n;
    if (q->head == q->tail)
        q->head = q->tail = 0;
}

/* Drop everything queued: a broken connection discards partial frames (RFC 9329 §6.1). */
void vpn_outq_clear(struct vpn_outq *q) { q->head = q->tail = 0; }
