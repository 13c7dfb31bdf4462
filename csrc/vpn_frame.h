/* vpn_frame.h: RFC 9329 framing and the batch APIs of the ESP fast path.
 *
 * Send:    inner packets --vpn_esp_seal_batch--> Length || ESP frames (TCP) or ESP
 *          datagrams (UDP), all in one caller-owned output buffer.
 * Receive: stream chunk --vpn_stream_rx_feed--> deframe (partial frame kept inside the
 *          state), SA by SPI, replay, decrypt -> inner packets + IKE messages (kind
 *          VPN_PKT_IKE, marker stripped) described by vpn_pkt descriptors;
 *          datagrams  --vpn_udp_rx_batch--> the same for UDP 4500 (RFC 3948 demux).
 *
 * Stream rules (RFC 9329 §3, §4, §6.1, §6.6): Length counts itself, 0 or 1 is fatal,
 * 2 is an empty message (ignored), 00 03 FF is a NAT keepalive (dropped, no error),
 * four zero octets mark IKE, anything else is ESP. The accepting side waits for the
 * whole "IKETCP" prefix before parsing. Bad frames are counted; after
 * max_consecutive_bad of them in a row (T47/T48) the feed returns VPN_ST_CLOSE.
 */
#ifndef VPN_FRAME_H
#define VPN_FRAME_H
#include <stdint.h>
#include <stddef.h>
#include "vpn_esp.h"

/* cdef-begin */
#define VPN_PREFIX_LEN 6            /* "IKETCP" (RFC 9329 §4) */
#define VPN_MARKER_LEN 4            /* Non-ESP marker: four zero octets (RFC 9329 §3.1) */
#define VPN_MODE_TCP 0              /* each ESP packet as Length || ESP */
#define VPN_MODE_UDP 1              /* each ESP packet on its own (one datagram each) */
#define VPN_PKT_NONE 0              /* descriptor carries nothing (dropped: see status) */
#define VPN_PKT_INNER 1             /* an opened inner IP packet */
#define VPN_PKT_IKE 2               /* an IKE message, Non-ESP marker stripped */
#define VPN_PKT_ESP 3               /* a raw ESP packet (no SA table given) or a sealed one */
#define VPN_CONSECUTIVE_BAD_DEFAULT 32

/* One packet in a buffer: offset and length, what it is and what happened to it. */
typedef struct vpn_pkt {
    uint32_t off;
    uint32_t len;
    int32_t status;                 /* VPN_OK or a VPN_ST_* reason */
    uint32_t spi;                   /* the SA's SPI (inner packets), 0 otherwise */
    uint32_t kind;                  /* VPN_PKT_* */
    uint32_t next_header;           /* inner packets: 4 or 41 */
} vpn_pkt;

/* Per-reason counters, owned by the caller (one per stream or socket); add-only. */
typedef struct vpn_counters {
    uint64_t packets;               /* inner packets sealed or delivered */
    uint64_t bytes;                 /* their inner bytes */
    uint64_t ike;                   /* IKE messages handed up */
    uint64_t keepalive;             /* NAT keepalives dropped (not an error) */
    uint64_t empty;                 /* Length-2 frames ignored */
    uint64_t dummy;                 /* Next Header 59 dropped */
    uint64_t too_short;
    uint64_t bad_length;            /* Length 0/1 (fatal) or a length that cannot be */
    uint64_t unknown_spi;
    uint64_t replay;
    uint64_t icv;
    uint64_t bad_padding;
    uint64_t bad_inner;             /* seal: not an IPv4/IPv6 packet */
    uint64_t too_big;               /* seal: inner packet does not fit one frame */
    uint64_t refused;               /* SA hard-expired or sequence numbers exhausted */
    uint64_t no_space;              /* stopped early: output or descriptors full */
    uint64_t fatal;                 /* stream closed: Length 0/1, bad prefix, too many bad */
    uint64_t consecutive_bad;       /* current run of bad frames; reset by a good one */
} vpn_counters;

/* Write the 16-bit Length (msg_len + 2) at frame[0..2). Returns VPN_ST_TOO_BIG if
 * msg_len > VPN_FRAME_MAX_MSG. */
int vpn_frame_put_len(uint8_t *frame, size_t msg_len);

/* Seal in_pkts[0..n) (each at in + off, len; a descriptor outside in_len is dropped
 * with VPN_ST_BAD_ARG) with one outbound SA into out, back to
 * back: TCP mode as frames (Length || ESP), UDP mode as bare ESP packets. out_pkts[i]
 * (same index; may be NULL in TCP mode) gets the offset/length of what packet i
 * became, or len 0 and a status if it was dropped (bad inner, too big, refused).
 * Returns how many input packets were consumed (sealed or dropped); fewer than n means
 * out was full (counted in no_space): send what is there and call again with the rest.
 * *out_used = bytes written. */
size_t vpn_esp_seal_batch(vpn_esp_sa *sa, int mode, const uint8_t *in, size_t in_len,
                          const vpn_pkt *in_pkts, size_t n, uint8_t *out, size_t out_cap,
                          vpn_pkt *out_pkts, size_t *out_used, vpn_counters *c);

/* --- stream receive --------------------------------------------------------------- */
typedef struct vpn_stream_rx vpn_stream_rx;

/* expect_prefix: 1 on the accepting (TCP responder) side. max_consecutive_bad: 0 =
 * VPN_CONSECUTIVE_BAD_DEFAULT. Allocates its frame buffer (64 KiB) once. */
vpn_stream_rx *vpn_stream_rx_new(int expect_prefix, uint32_t max_consecutive_bad);
void vpn_stream_rx_free(vpn_stream_rx *st);
/* Bytes held for a partial prefix or frame (RFC 9329 §6.1: discarded on reconnect). */
size_t vpn_stream_rx_pending(const vpn_stream_rx *st);

/* Feed stream bytes. Every complete frame is deframed; ESP frames are opened with the
 * SA found by SPI in `table` (if table is NULL they are handed up raw, kind
 * VPN_PKT_ESP); IKE messages are copied out without the marker (kind VPN_PKT_IKE).
 * Only delivered items get a descriptor in pkts[0..*n_pkts), their bytes in out.
 * Returns VPN_OK (all of `in` consumed or kept as a partial frame), VPN_ST_NO_SPACE
 * (out or pkts full: *consumed < in_len, hand out what is there and feed the rest), or
 * VPN_ST_CLOSE (close the stream; the state stays closed and consumes nothing more).
 * *consumed is always set. */
int vpn_stream_rx_feed(vpn_stream_rx *st, vpn_sa_table *table, const uint8_t *in,
                       size_t in_len, size_t *consumed, uint8_t *out, size_t out_cap,
                       vpn_pkt *pkts, size_t max_pkts, size_t *n_pkts, vpn_counters *c);

/* --- UDP 4500 receive (RFC 3948 §2.2, §2.3) -------------------------------------- */
/* For each datagram dgrams[i] (in + off, len): 1-octet 0xFF keepalive -> dropped;
 * first 4 octets zero -> IKE (copied to out without the marker); else ESP opened with
 * the SA from `table` (raw copy if table is NULL). out_pkts[i] (same index) describes
 * the result (len 0 and a status when dropped). Returns datagrams consumed (< n when
 * out is full). */
size_t vpn_udp_rx_batch(vpn_sa_table *table, const uint8_t *in, size_t in_len,
                        const vpn_pkt *dgrams,
                        size_t n, uint8_t *out, size_t out_cap, vpn_pkt *out_pkts,
                        vpn_counters *c);
/* cdef-end */

#endif
