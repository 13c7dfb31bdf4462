/* vpn_dp.h: the dataplane, one C call per batch (DESIGN.md, "Hot path rules").
 *
 * Send (TUN -> network), vpn_dp_tun_to_net():
 *   1. read up to `batch` frames from the TUN fd (virtio_net_hdr + IP packet)
 *   2. finish NEEDS_CSUM and segment GSO super-packets into MTU-sized packets
 *   3. route each packet by inner destination to a peer (longest prefix; a client has
 *      one default peer)
 *   4. seal it with the peer's outbound SA straight into the peer's connection: TCP
 *      frames into the connection's ordered output queue, UDP datagrams into a staging
 *      arena sent with sendmmsg
 *   5. flush the queues; a connection whose queue stays above its high-water mark
 *      makes the call report backpressure (stop reading the TUN until it drains)
 *
 * Receive (network -> TUN), vpn_dp_conn_rx() / vpn_dp_conn_feed() / vpn_dp_udp_rx():
 *   1. read the stream (recv until EAGAIN or a budget) or a batch of datagrams
 *      (recvmmsg), or take plaintext bytes from Python (TLS)
 *   2. deframe, find the inbound SA by SPI, replay check, decrypt (vpn_frame.c)
 *   3. drop inner packets whose source lies outside the SA's traffic selectors
 *      (RFC 4301 §5.2), count them per peer
 *   4. coalesce TCP segments of a flow (GRO) and write the batch to the TUN
 *   5. hand IKE messages (Non-ESP marker stripped) up to Python in a caller buffer
 *   The peer's return path follows the connection or address on which its traffic
 *   last authenticated (RFC 9329 §6.1, RFC 7296 §2.23) when following is enabled.
 */
#ifndef VPN_DP_H
#define VPN_DP_H
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include "vpn_esp.h"
#include "vpn_frame.h"
#include "vpn_outq.h"
#include "vpn_gso.h"

/* cdef-begin */
#define VPN_DP_CONN_TCP 0           /* a stream: RFC 9329 frames, own output queue */
#define VPN_DP_CONN_UDP 1           /* a UDP socket: one ESP packet per datagram */
#define VPN_DP_CONN_FEED 2          /* a stream whose bytes Python moves (TLS) */

/* vpn_dp_tun_to_net() result flags */
#define VPN_DP_TUN_EMPTY 1          /* the TUN had nothing more to read (EAGAIN) */
#define VPN_DP_BACKPRESSURE 2       /* a connection is above its high-water mark */
#define VPN_DP_BLOCKED 4            /* a connection has unsent bytes: wait for writable */
#define VPN_DP_CONN_ERROR 8         /* a connection failed: see vpn_dp_conn_error() */
#define VPN_DP_TUN_ERROR 16         /* reading the TUN failed (errno in err) */

/* vpn_dp_conn_rx() statuses */
#define VPN_DP_RX_OK 0              /* read until EAGAIN (or the budget); keep going */
#define VPN_DP_RX_EOF 1             /* the peer closed the stream */
#define VPN_DP_RX_CLOSE 2           /* RFC 9329 §3/§6.1: the stream must be closed */
#define VPN_DP_RX_ERROR 3           /* recv failed (errno in err) */
#define VPN_DP_RX_IKE_FULL 4        /* the IKE buffer filled: call again after reading it */

#define VPN_DP_MAX_TS 8             /* traffic-selector ranges per inbound SA */

typedef struct vpn_dp vpn_dp;
typedef struct vpn_dp_conn vpn_dp_conn;
typedef struct vpn_dp_peer vpn_dp_peer;

/* Dataplane-wide counters (add-only). */
typedef struct vpn_dp_counters {
    uint64_t tun_reads;             /* frames read from the TUN */
    uint64_t tun_read_bytes;
    uint64_t tx_packets;            /* inner packets sealed and queued */
    uint64_t tx_bytes;              /* their inner bytes */
    uint64_t no_route;              /* inner packets with no peer for their destination */
    uint64_t no_sa;                 /* the peer had no outbound SA (or it refused) */
    uint64_t queue_full;            /* dropped: the connection's queue had no room */
    uint64_t udp_send_drop;         /* datagrams the socket refused (EAGAIN, ENOBUFS) */
    uint64_t rx_packets;            /* inner packets written to the TUN */
    uint64_t rx_bytes;
    uint64_t ts_violation;          /* RFC 4301 §5.2: inner source outside the SA's TS */
    uint64_t bad_next_header;       /* opened, but Next Header was not 4 or 41 */
    uint64_t tun_write_fail;        /* records the kernel refused */
    uint64_t tun_writes;            /* records written (coalesced super-packets count once) */
    uint64_t ike_dropped;           /* IKE messages dropped: the Python buffer was full */
    uint64_t udp_truncated;         /* datagrams larger than a receive slot */
    uint64_t peer_moves;            /* return paths moved to a new connection/address */
} vpn_dp_counters;

/* Per-peer counters (add-only). */
typedef struct vpn_dp_peer_counters {
    uint64_t tx_packets;
    uint64_t tx_bytes;
    uint64_t rx_packets;
    uint64_t rx_bytes;
    uint64_t ts_violation;
    uint64_t moves;
} vpn_dp_peer_counters;

/* One traffic-selector address range (RFC 7296 §3.13.1), addresses in network order;
 * IPv4 uses the first 4 octets. */
typedef struct vpn_dp_range {
    uint8_t family;                 /* 4 or 6 */
    uint8_t start[16];
    uint8_t end[16];
} vpn_dp_range;

vpn_dp *vpn_dp_new(int tun_fd, uint32_t mtu, uint32_t batch);
void vpn_dp_free(vpn_dp *dp);
vpn_sa_table *vpn_dp_sa_table(vpn_dp *dp);
void vpn_dp_get_counters(const vpn_dp *dp, vpn_dp_counters *out);
void vpn_dp_get_gso_stats(const vpn_dp *dp, struct vpn_gso_stats *out);

/* Connections. high_water/capacity size the TCP output queue (ignored for UDP). */
vpn_dp_conn *vpn_dp_conn_new(vpn_dp *dp, int kind, int fd, int expect_prefix,
                             size_t capacity, size_t high_water);
void vpn_dp_conn_free(vpn_dp_conn *c);
struct vpn_outq *vpn_dp_conn_outq(vpn_dp_conn *c);
int vpn_dp_conn_fd(const vpn_dp_conn *c);
int vpn_dp_conn_error(const vpn_dp_conn *c);
void vpn_dp_conn_get_rx_counters(const vpn_dp_conn *c, vpn_counters *out);
/* Bytes held for a partial prefix or frame of a stream (0 for UDP): a server closes a
 * connection whose partial frame stalls. */
size_t vpn_dp_conn_rx_pending(const vpn_dp_conn *c);
ssize_t vpn_dp_conn_flush(vpn_dp_conn *c);

/* Read from a TCP connection's fd until EAGAIN or ~budget bytes; opened packets go to
 * the TUN, IKE messages into ike_buf (descriptors in ike[0..*n_ike)). */
int vpn_dp_conn_rx(vpn_dp_conn *c, size_t budget, uint8_t *ike_buf, size_t ike_cap,
                   vpn_pkt *ike, size_t max_ike, size_t *n_ike, int *err);
/* The same for bytes Python read (TLS plaintext); *consumed tells how much was taken
 * (less than len only with VPN_DP_RX_IKE_FULL or VPN_DP_RX_CLOSE). */
int vpn_dp_conn_feed(vpn_dp_conn *c, const uint8_t *data, size_t len, size_t *consumed,
                     uint8_t *ike_buf, size_t ike_cap, vpn_pkt *ike, size_t max_ike,
                     size_t *n_ike);
/* Read a batch of datagrams from a UDP connection (recvmmsg). IKE messages come up
 * with their source address in addrs[i] (sockaddr_storage-sized slots of addr_stride
 * bytes) and its length in addr_lens[i]. */
int vpn_dp_udp_rx(vpn_dp_conn *c, uint8_t *ike_buf, size_t ike_cap, vpn_pkt *ike,
                  size_t max_ike, size_t *n_ike, uint8_t *addrs, size_t addr_stride,
                  uint32_t *addr_lens, int *err);

/* Peers: a remote end with one outbound SA and its current connection. */
vpn_dp_peer *vpn_dp_peer_new(vpn_dp *dp, uint32_t id);
void vpn_dp_peer_free(vpn_dp_peer *p);
void vpn_dp_peer_set_sa(vpn_dp_peer *p, vpn_esp_sa *out_sa);
void vpn_dp_peer_set_conn(vpn_dp_peer *p, vpn_dp_conn *c);
vpn_dp_conn *vpn_dp_peer_conn(const vpn_dp_peer *p);
int vpn_dp_peer_set_addr(vpn_dp_peer *p, const uint8_t *addr, uint32_t addr_len);
uint32_t vpn_dp_peer_get_addr(const vpn_dp_peer *p, uint8_t *addr, uint32_t cap);
void vpn_dp_peer_set_follow(vpn_dp_peer *p, int follow);
void vpn_dp_peer_get_counters(const vpn_dp_peer *p, vpn_dp_peer_counters *out);

/* Routing: inner destination -> peer (longest prefix; full-length host routes, one per
 * client address, are hashed); the default peer is for a client. */
int vpn_dp_route_add(vpn_dp *dp, int family, const uint8_t *addr, int prefix_len,
                     vpn_dp_peer *p);
int vpn_dp_route_del(vpn_dp *dp, int family, const uint8_t *addr, int prefix_len);
void vpn_dp_set_default_peer(vpn_dp *dp, vpn_dp_peer *p);

/* Inbound SA policy: which peer an inbound SPI belongs to and the inner source
 * ranges it may carry (RFC 4301 §5.2). An opened packet whose SPI has no binding is
 * dropped (counted as ts_violation). */
int vpn_dp_bind_spi(vpn_dp *dp, uint32_t spi, vpn_dp_peer *p, const vpn_dp_range *ranges,
                    uint32_t n_ranges);
/* The inner destination ranges the same SPI may carry (our side's traffic selectors,
 * RFC 4301 §5.2); none set (n_ranges 0) means any destination. The SPI must be bound. */
int vpn_dp_bind_spi_dst(vpn_dp *dp, uint32_t spi, const vpn_dp_range *ranges, uint32_t n_ranges);
int vpn_dp_unbind_spi(vpn_dp *dp, uint32_t spi);

/* Send: read the TUN and seal. Returns VPN_DP_* flags; *err is an errno for
 * VPN_DP_TUN_ERROR. */
int vpn_dp_tun_to_net(vpn_dp *dp, int *err);
/* cdef-end */

#endif
