/* vpn_dp.c: the dataplane batch loop; see vpn_dp.h for the numbered flow. */
#define _GNU_SOURCE
#include "vpn_dp.h"
#include "vpn_tun.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#include <unistd.h>

#define DP_MAX_BATCH 256
#define DP_SEG_SLOTS 1024           /* segments of one call's chunk (64 KiB / MSS 64) */
#define DP_RX_BUF (256 * 1024)      /* one recv() of stream bytes */
#define DP_OUT_CAP (DP_RX_BUF + 65536)
#define DP_MAX_PKTS 2048            /* items one feed call may deliver */
#define DP_UDP_SLOTS 64             /* datagrams per recvmmsg */
#define DP_UDP_SLOT 16384           /* larger datagrams are dropped (IKE fragments instead) */
#define DP_STAGE_SLOTS 256          /* sealed datagrams staged for one sendmmsg */
#define DP_BIND_BUCKETS 1024
#define DP_GSO_MAX_SEGS 44          /* UDP_SEGMENT: at most 64 segments in one send */
#define DP_GSO_MAX_BYTES 63000      /* and the whole send within one IP datagram */
#define DP_MAX_ROUTES 4096          /* prefixes shorter than a host's, searched in order */
#define DP_HOST_BUCKETS 4096        /* host routes (/32, /128: one per client address) */
#define DP_MAX_HOSTS 65536

struct vpn_dp_conn {
    vpn_dp *dp;
    struct vpn_dp_conn *next;       /* dp->conns list */
    int kind;
    int fd;
    int error;                      /* errno of the last failed write, 0 if none */
    int dirty;                      /* queued bytes since the last flush */
    struct vpn_outq *outq;          /* TCP and FEED */
    vpn_stream_rx *rx;              /* TCP and FEED */
    vpn_counters rxc;
};

struct vpn_dp_peer {
    vpn_dp *dp;
    struct vpn_dp_peer *next;       /* dp->peers list */
    uint32_t id;
    vpn_esp_sa *out_sa;
    vpn_dp_conn *conn;
    struct sockaddr_storage addr;   /* UDP destination */
    socklen_t addr_len;
    int follow;                     /* move the return path to where traffic authenticates */
    vpn_dp_peer_counters ctr;
};

struct dp_binding {
    struct dp_binding *next;
    uint32_t spi;
    vpn_dp_peer *peer;
    uint32_t n_ranges;
    vpn_dp_range ranges[VPN_DP_MAX_TS];     /* inner sources (the peer's selectors) */
    uint32_t n_dst;                         /* 0: any destination */
    vpn_dp_range dst[VPN_DP_MAX_TS];        /* inner destinations (our selectors) */
};

struct dp_route {
    int family;
    int plen;
    uint8_t addr[16];
    vpn_dp_peer *peer;
};

/* A full-length route in a hash table: a server's per-client virtual addresses are
 * found in constant time however many clients it has. */
struct dp_host {
    struct dp_host *next;
    int family;
    uint8_t addr[16];
    vpn_dp_peer *peer;
};

union dp_gso_ctl {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
};

struct dp_stage {
    vpn_dp_peer *peer;
    uint32_t len;
};

struct vpn_dp {
    int tun_fd;
    uint32_t mtu;
    uint32_t batch;
    vpn_sa_table *table;
    vpn_dp_conn *conns;
    vpn_dp_peer *peers;
    vpn_dp_peer *default_peer;
    struct dp_route *routes;
    uint32_t n_routes;
    struct dp_host *hosts[DP_HOST_BUCKETS];
    uint32_t n_hosts;
    struct dp_binding *bind[DP_BIND_BUCKETS];
    vpn_dp_counters ctr;
    struct vpn_gso_stats gso;
    int udp_gso;                    /* UDP_SEGMENT works on our sockets (cleared on EIO) */

    /* send side */
    uint8_t *tun_arena;             /* batch x VPN_TUN_SLOT_BYTES */
    uint32_t tun_lens[DP_MAX_BATCH];
    uint8_t *seg;                   /* DP_SEG_SLOTS x seg_stride */
    size_t seg_stride;
    uint32_t seg_lens[DP_SEG_SLOTS];
    uint8_t *stage;                 /* DP_STAGE_SLOTS x stage_stride (UDP) */
    size_t stage_stride;
    struct dp_stage stage_meta[DP_STAGE_SLOTS];
    uint32_t n_stage;
    struct mmsghdr tx_msgs[DP_STAGE_SLOTS];
    struct iovec tx_iov[DP_STAGE_SLOTS];
    union dp_gso_ctl tx_ctl[DP_STAGE_SLOTS];
    vpn_dp_conn *dirty[64];
    uint32_t n_dirty;
    int dirty_overflow;

    /* receive side */
    uint8_t *rx_buf;
    uint8_t *out;                   /* opened packets */
    vpn_pkt pkts[DP_MAX_PKTS];
    uint8_t *gro;                   /* coalesced records */
    uint32_t w_offs[DP_MAX_PKTS], w_lens[DP_MAX_PKTS];
    uint32_t g_offs[DP_MAX_PKTS], g_lens[DP_MAX_PKTS];
    uint32_t n_write;
    uint8_t *udp_arena;             /* DP_UDP_SLOTS x DP_UDP_SLOT */
    struct sockaddr_storage udp_addr[DP_UDP_SLOTS];
    vpn_pkt udp_dgrams[DP_UDP_SLOTS], udp_out[DP_UDP_SLOTS];
};

/* --- helpers ------------------------------------------------------------------- */

static uint32_t bucket_of(uint32_t spi) { return (spi * 2654435761u) % DP_BIND_BUCKETS; }

static struct dp_binding *binding_find(const vpn_dp *dp, uint32_t spi)
{
    for (struct dp_binding *b = dp->bind[bucket_of(spi)]; b; b = b->next)
        if (b->spi == spi)
            return b;
    return NULL;
}

static int addr_in_range(const vpn_dp_range *r, int family, const uint8_t *a)
{
    size_t n = family == 4 ? 4 : 16;
    if (r->family != family)
        return 0;
    return memcmp(a, r->start, n) >= 0 && memcmp(a, r->end, n) <= 0;
}

static int prefix_match(const uint8_t *a, const uint8_t *p, int plen)
{
    int full = plen / 8, rem = plen % 8;
    if (full && memcmp(a, p, (size_t)full) != 0)
        return 0;
    if (rem) {
        uint8_t mask = (uint8_t)(0xff << (8 - rem));
        if ((a[full] & mask) != (p[full] & mask))
            return 0;
    }
    return 1;
}

/* The inner packet's version and a pointer to its source or destination address. */
static int inner_addr(const uint8_t *pkt, size_t len, int want_dst, const uint8_t **addr)
{
    if (len < 1)
        return 0;
    int v = pkt[0] >> 4;
    if (v == 4 && len >= 20) {
        *addr = pkt + (want_dst ? 16 : 12);
        return 4;
    }
    if (v == 6 && len >= 40) {
        *addr = pkt + (want_dst ? 24 : 8);
        return 6;
    }
    return 0;
}

static uint32_t host_bucket(int family, const uint8_t *addr)
{
    uint32_t h = 2166136261u;  /* FNV-1a */
    for (size_t i = 0; i < (family == 4 ? 4u : 16u); i++) {
        h ^= addr[i];
        h *= 16777619u;
    }
    return h & (DP_HOST_BUCKETS - 1);
}

/* The link that points at the host route for addr (or at the NULL ending its chain). */
static struct dp_host **host_link(vpn_dp *dp, int family, const uint8_t *addr)
{
    struct dp_host **pp = &dp->hosts[host_bucket(family, addr)];
    while (*pp && !((*pp)->family == family && memcmp((*pp)->addr, addr, family == 4 ? 4 : 16) == 0))
        pp = &(*pp)->next;
    return pp;
}

static vpn_dp_peer *route_lookup(vpn_dp *dp, const uint8_t *pkt, size_t len)
{
    if (dp->n_routes == 0 && dp->n_hosts == 0)
        return dp->default_peer;
    const uint8_t *dst;
    int fam = inner_addr(pkt, len, 1, &dst);
    if (!fam)
        return NULL;
    if (dp->n_hosts) {  /* a host route is the longest prefix there is */
        struct dp_host *h = *host_link(dp, fam, dst);
        if (h)
            return h->peer;
    }
    for (uint32_t i = 0; i < dp->n_routes; i++) {  /* sorted by prefix length, longest first */
        const struct dp_route *r = &dp->routes[i];
        if (r->family == fam && prefix_match(dst, r->addr, r->plen))
            return r->peer;
    }
    return dp->default_peer;
}

static void mark_dirty(vpn_dp *dp, vpn_dp_conn *c)
{
    if (c->dirty)
        return;
    c->dirty = 1;
    if (dp->n_dirty < sizeof(dp->dirty) / sizeof(dp->dirty[0]))
        dp->dirty[dp->n_dirty++] = c;
    else
        dp->dirty_overflow = 1;
}

static int sockaddr_equal(const struct sockaddr_storage *a, socklen_t alen,
                          const struct sockaddr_storage *b, socklen_t blen)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* --- lifecycle ------------------------------------------------------------------ */

vpn_dp *vpn_dp_new(int tun_fd, uint32_t mtu, uint32_t batch)
{
    if (mtu < 576 || mtu > 65535 || batch == 0)
        return NULL;
    if (batch > DP_MAX_BATCH)
        batch = DP_MAX_BATCH;
    vpn_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    dp->tun_fd = tun_fd;
    dp->udp_gso = 1;
    dp->mtu = mtu;
    dp->batch = batch;
    dp->seg_stride = (mtu + 63) & ~(size_t)63;
    dp->stage_stride = (mtu + VPN_ESP_OVERHEAD_MAX + 63) & ~(size_t)63;
    dp->table = vpn_sa_table_new(64);
    dp->routes = calloc(DP_MAX_ROUTES, sizeof(*dp->routes));
    dp->tun_arena = malloc((size_t)batch * VPN_TUN_SLOT_BYTES);
    dp->seg = malloc(DP_SEG_SLOTS * dp->seg_stride);
    dp->stage = malloc(DP_STAGE_SLOTS * dp->stage_stride);
    dp->rx_buf = malloc(DP_RX_BUF);
    dp->out = malloc(DP_OUT_CAP);
    dp->gro = malloc(DP_OUT_CAP + (size_t)DP_MAX_PKTS * VPN_VNET_HDR_LEN);
    dp->udp_arena = malloc((size_t)DP_UDP_SLOTS * DP_UDP_SLOT);
    if (!dp->table || !dp->routes || !dp->tun_arena || !dp->seg || !dp->stage || !dp->rx_buf ||
        !dp->out || !dp->gro || !dp->udp_arena) {
        vpn_dp_free(dp);
        return NULL;
    }
    return dp;
}

void vpn_dp_free(vpn_dp *dp)
{
    if (!dp)
        return;
    for (uint32_t i = 0; i < DP_BIND_BUCKETS; i++) {
        struct dp_binding *b = dp->bind[i];
        while (b) {
            struct dp_binding *n = b->next;
            free(b);
            b = n;
        }
    }
    for (uint32_t i = 0; i < DP_HOST_BUCKETS; i++) {
        struct dp_host *h = dp->hosts[i];
        while (h) {
            struct dp_host *n = h->next;
            free(h);
            h = n;
        }
    }
    /* connections and peers are owned (and freed) by their Python wrappers */
    for (vpn_dp_conn *c = dp->conns; c; c = c->next)
        c->dp = NULL;
    for (vpn_dp_peer *p = dp->peers; p; p = p->next)
        p->dp = NULL;
    vpn_sa_table_free(dp->table);
    free(dp->routes);
    free(dp->tun_arena);
    free(dp->seg);
    free(dp->stage);
    free(dp->rx_buf);
    free(dp->out);
    free(dp->gro);
    free(dp->udp_arena);
    free(dp);
}

vpn_sa_table *vpn_dp_sa_table(vpn_dp *dp) { return dp->table; }
void vpn_dp_get_counters(const vpn_dp *dp, vpn_dp_counters *out) { *out = dp->ctr; }
void vpn_dp_get_gso_stats(const vpn_dp *dp, struct vpn_gso_stats *out) { *out = dp->gso; }

vpn_dp_conn *vpn_dp_conn_new(vpn_dp *dp, int kind, int fd, int expect_prefix,
                             size_t capacity, size_t high_water)
{
    if (kind != VPN_DP_CONN_TCP && kind != VPN_DP_CONN_UDP && kind != VPN_DP_CONN_FEED)
        return NULL;
    vpn_dp_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->dp = dp;
    c->kind = kind;
    c->fd = fd;
    if (kind != VPN_DP_CONN_UDP) {
        c->outq = vpn_outq_new(capacity, high_water);
        c->rx = vpn_stream_rx_new(expect_prefix, 0);
        if (!c->outq || !c->rx) {
            vpn_outq_free(c->outq);
            vpn_stream_rx_free(c->rx);
            free(c);
            return NULL;
        }
    }
    c->next = dp->conns;
    dp->conns = c;
    return c;
}

void vpn_dp_conn_free(vpn_dp_conn *c)
{
    if (!c)
        return;
    vpn_dp *dp = c->dp;
    if (dp) {
        for (vpn_dp_conn **pp = &dp->conns; *pp; pp = &(*pp)->next) {
            if (*pp == c) {
                *pp = c->next;
                break;
            }
        }
        for (uint32_t i = 0; i < dp->n_dirty; i++)
            if (dp->dirty[i] == c)
                dp->dirty[i] = dp->dirty[--dp->n_dirty];
        for (vpn_dp_peer *p = dp->peers; p; p = p->next)
            if (p->conn == c)
                p->conn = NULL;
    }
    vpn_outq_free(c->outq);
    vpn_stream_rx_free(c->rx);
    free(c);
}

struct vpn_outq *vpn_dp_conn_outq(vpn_dp_conn *c) { return c->outq; }
int vpn_dp_conn_fd(const vpn_dp_conn *c) { return c->fd; }
int vpn_dp_conn_error(const vpn_dp_conn *c) { return c->error; }
void vpn_dp_conn_get_rx_counters(const vpn_dp_conn *c, vpn_counters *out) { *out = c->rxc; }
size_t vpn_dp_conn_rx_pending(const vpn_dp_conn *c) { return c->rx ? vpn_stream_rx_pending(c->rx) : 0; }

ssize_t vpn_dp_conn_flush(vpn_dp_conn *c)
{
    if (c->kind != VPN_DP_CONN_TCP || !c->outq)
        return 0;
    ssize_t n = vpn_outq_flush_fd(c->outq, c->fd);
    if (n < 0)
        c->error = (int)-n;
    return n;
}

vpn_dp_peer *vpn_dp_peer_new(vpn_dp *dp, uint32_t id)
{
    vpn_dp_peer *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->dp = dp;
    p->id = id;
    p->next = dp->peers;
    dp->peers = p;
    return p;
}

void vpn_dp_peer_free(vpn_dp_peer *p)
{
    if (!p)
        return;
    vpn_dp *dp = p->dp;
    if (dp) {
        for (vpn_dp_peer **pp = &dp->peers; *pp; pp = &(*pp)->next) {
            if (*pp == p) {
                *pp = p->next;
                break;
            }
        }
        if (dp->default_peer == p)
            dp->default_peer = NULL;
        uint32_t j = 0;
        for (uint32_t i = 0; i < dp->n_routes; i++)
            if (dp->routes[i].peer != p)
                dp->routes[j++] = dp->routes[i];
        dp->n_routes = j;
        for (uint32_t i = 0; i < DP_HOST_BUCKETS; i++) {
            struct dp_host **pp = &dp->hosts[i];
            while (*pp) {
                if ((*pp)->peer == p) {
                    struct dp_host *h = *pp;
                    *pp = h->next;
                    free(h);
                    dp->n_hosts--;
                } else {
                    pp = &(*pp)->next;
                }
            }
        }
        for (uint32_t i = 0; i < DP_BIND_BUCKETS; i++) {
            struct dp_binding **pp = &dp->bind[i];
            while (*pp) {
                if ((*pp)->peer == p) {
                    struct dp_binding *b = *pp;
                    *pp = b->next;
                    free(b);
                } else {
                    pp = &(*pp)->next;
                }
            }
        }
    }
    free(p);
}

void vpn_dp_peer_set_sa(vpn_dp_peer *p, vpn_esp_sa *out_sa) { p->out_sa = out_sa; }
void vpn_dp_peer_set_conn(vpn_dp_peer *p, vpn_dp_conn *c) { p->conn = c; }
vpn_dp_conn *vpn_dp_peer_conn(const vpn_dp_peer *p) { return p->conn; }
void vpn_dp_peer_set_follow(vpn_dp_peer *p, int follow) { p->follow = follow; }
void vpn_dp_peer_get_counters(const vpn_dp_peer *p, vpn_dp_peer_counters *out) { *out = p->ctr; }

int vpn_dp_peer_set_addr(vpn_dp_peer *p, const uint8_t *addr, uint32_t addr_len)
{
    if (addr_len > sizeof(p->addr))
        return VPN_ST_BAD_ARG;
    memset(&p->addr, 0, sizeof(p->addr));
    memcpy(&p->addr, addr, addr_len);
    p->addr_len = addr_len;
    return VPN_OK;
}

uint32_t vpn_dp_peer_get_addr(const vpn_dp_peer *p, uint8_t *addr, uint32_t cap)
{
    uint32_t n = p->addr_len < cap ? p->addr_len : cap;
    memcpy(addr, &p->addr, n);
    return p->addr_len;
}

/* --- routing and inbound policy -------------------------------------------------- */

int vpn_dp_route_add(vpn_dp *dp, int family, const uint8_t *addr, int prefix_len, vpn_dp_peer *p)
{
    int maxlen = family == 4 ? 32 : family == 6 ? 128 : -1;
    if (maxlen < 0 || prefix_len < 0 || prefix_len > maxlen || !p)
        return VPN_ST_BAD_ARG;
    if (prefix_len == maxlen) {
        struct dp_host **pp = host_link(dp, family, addr);
        if (*pp) {
            (*pp)->peer = p;  /* replaced */
            return VPN_OK;
        }
        if (dp->n_hosts >= DP_MAX_HOSTS)
            return VPN_ST_NO_SPACE;
        struct dp_host *h = calloc(1, sizeof(*h));
        if (!h)
            return VPN_ST_NO_SPACE;
        h->family = family;
        memcpy(h->addr, addr, family == 4 ? 4 : 16);
        h->peer = p;
        *pp = h;
        dp->n_hosts++;
        return VPN_OK;
    }
    vpn_dp_route_del(dp, family, addr, prefix_len);
    if (dp->n_routes >= DP_MAX_ROUTES)
        return VPN_ST_NO_SPACE;
    struct dp_route r = {.family = family, .plen = prefix_len, .peer = p};
    memcpy(r.addr, addr, family == 4 ? 4 : 16);
    uint32_t i = dp->n_routes;
    while (i > 0 && dp->routes[i - 1].plen < prefix_len) {  /* keep longest first */
        dp->routes[i] = dp->routes[i - 1];
        i--;
    }
    dp->routes[i] = r;
    dp->n_routes++;
    return VPN_OK;
}

int vpn_dp_route_del(vpn_dp *dp, int family, const uint8_t *addr, int prefix_len)
{
    size_t n = family == 4 ? 4 : 16;
    if ((family == 4 && prefix_len == 32) || (family == 6 && prefix_len == 128)) {
        struct dp_host **pp = host_link(dp, family, addr);
        if (!*pp)
            return VPN_ST_BAD_ARG;
        struct dp_host *h = *pp;
        *pp = h->next;
        free(h);
        dp->n_hosts--;
        return VPN_OK;
    }
    for (uint32_t i = 0; i < dp->n_routes; i++) {
        struct dp_route *r = &dp->routes[i];
        if (r->family == family && r->plen == prefix_len && memcmp(r->addr, addr, n) == 0) {
            memmove(r, r + 1, (dp->n_routes - i - 1) * sizeof(*r));
            dp->n_routes--;
            return VPN_OK;
        }
    }
    return VPN_ST_BAD_ARG;
}

void vpn_dp_set_default_peer(vpn_dp *dp, vpn_dp_peer *p) { dp->default_peer = p; }

int vpn_dp_bind_spi(vpn_dp *dp, uint32_t spi, vpn_dp_peer *p, const vpn_dp_range *ranges,
                    uint32_t n_ranges)
{
    if (!p || n_ranges > VPN_DP_MAX_TS)
        return VPN_ST_BAD_ARG;
    for (uint32_t i = 0; i < n_ranges; i++)
        if (ranges[i].family != 4 && ranges[i].family != 6)
            return VPN_ST_BAD_ARG;
    struct dp_binding *b = binding_find(dp, spi);
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (!b)
            return VPN_ST_NO_SPACE;
        b->spi = spi;
        b->next = dp->bind[bucket_of(spi)];
        dp->bind[bucket_of(spi)] = b;
    }
    b->peer = p;
    b->n_ranges = n_ranges;
    memcpy(b->ranges, ranges, n_ranges * sizeof(*ranges));
    return VPN_OK;
}

int vpn_dp_bind_spi_dst(vpn_dp *dp, uint32_t spi, const vpn_dp_range *ranges, uint32_t n_ranges)
{
    if (n_ranges > VPN_DP_MAX_TS)
        return VPN_ST_BAD_ARG;
    for (uint32_t i = 0; i < n_ranges; i++)
        if (ranges[i].family != 4 && ranges[i].family != 6)
            return VPN_ST_BAD_ARG;
    struct dp_binding *b = binding_find(dp, spi);
    if (!b)
        return VPN_ST_UNKNOWN_SPI;
    b->n_dst = n_ranges;
    memcpy(b->dst, ranges, n_ranges * sizeof(*ranges));
    return VPN_OK;
}

int vpn_dp_unbind_spi(vpn_dp *dp, uint32_t spi)
{
    for (struct dp_binding **pp = &dp->bind[bucket_of(spi)]; *pp; pp = &(*pp)->next) {
        if ((*pp)->spi == spi) {
            struct dp_binding *b = *pp;
            *pp = b->next;
            free(b);
            return VPN_OK;
        }
    }
    return VPN_ST_BAD_ARG;
}

/* --- send ------------------------------------------------------------------------ */

/* Send the staged datagrams. Runs of equal-sized datagrams to one peer go out as one
 * UDP GSO send (UDP_SEGMENT: the kernel splits them, one syscall and one route lookup
 * for up to DP_GSO_MAX_SEGS datagrams); sendmmsg ships all the runs of one socket at once.
 * On the wire nothing changes: ordinary UDP datagrams, one ESP packet each (RFC 3948). */
static void stage_flush(vpn_dp *dp)
{
    struct mmsghdr *msgs = dp->tx_msgs;
    struct iovec *iov = dp->tx_iov;
    union dp_gso_ctl *ctl = dp->tx_ctl;
    uint32_t i = 0;
    while (i < dp->n_stage) {
        int fd = dp->stage_meta[i].peer->conn->fd;
        uint32_t nmsg = 0, first_of_fd = i;
        while (i < dp->n_stage && dp->stage_meta[i].peer->conn->fd == fd) {
            vpn_dp_peer *p = dp->stage_meta[i].peer;
            uint32_t seg = dp->stage_meta[i].len, j = i, total = 0;
            /* one run: same peer, same size (the last one may be shorter) */
            while (j < dp->n_stage && dp->stage_meta[j].peer == p && j - i < DP_GSO_MAX_SEGS &&
                   total + dp->stage_meta[j].len <= DP_GSO_MAX_BYTES && (dp->udp_gso || j == i)) {
                uint32_t len = dp->stage_meta[j].len;
                if (len > seg)
                    break;
                iov[j].iov_base = dp->stage + (size_t)j * dp->stage_stride;
                iov[j].iov_len = len;
                total += len;
                j++;
                if (len < seg)
                    break;
            }
            struct msghdr *h = &msgs[nmsg].msg_hdr;
            memset(&msgs[nmsg], 0, sizeof(msgs[nmsg]));
            h->msg_iov = &iov[i];
            h->msg_iovlen = j - i;
            if (p->addr_len) {
                h->msg_name = &p->addr;
                h->msg_namelen = p->addr_len;
            }
            if (j - i > 1) {
                h->msg_control = ctl[nmsg].buf;
                h->msg_controllen = sizeof(ctl[nmsg].buf);
                struct cmsghdr *cm = CMSG_FIRSTHDR(h);
                cm->cmsg_level = SOL_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t gso = (uint16_t)seg;
                memcpy(CMSG_DATA(cm), &gso, sizeof(gso));
            }
            nmsg++;
            i = j;
        }
        uint32_t k = 0;
        while (k < nmsg) {
            int r = sendmmsg(fd, &msgs[k], nmsg - k, MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if ((errno == EIO || errno == EINVAL) && dp->udp_gso) {
                    /* no UDP GSO on this path (e.g. a device without checksum offload):
                     * stage the rest again without it */
                    dp->udp_gso = 0;
                    dp->ctr.udp_send_drop += msgs[k].msg_hdr.msg_iovlen;
                    k++;
                    continue;
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS)
                    dp->stage_meta[first_of_fd].peer->conn->error = errno;
                for (uint32_t m = k; m < nmsg; m++)  /* UDP: a full socket drops */
                    dp->ctr.udp_send_drop += msgs[m].msg_hdr.msg_iovlen;
                break;
            }
            k += (uint32_t)r;
        }
    }
    dp->n_stage = 0;
}

/* Seal one inner packet for its peer into the peer's connection. */
static void send_one(vpn_dp *dp, const uint8_t *pkt, size_t len)
{
    vpn_dp_peer *p = route_lookup(dp, pkt, len);
    if (!p || !p->conn) {
        dp->ctr.no_route++;
        return;
    }
    if (!p->out_sa) {
        dp->ctr.no_sa++;
        return;
    }
    vpn_dp_conn *c = p->conn;
    size_t esp_len = 0;
    int st;
    if (c->kind == VPN_DP_CONN_UDP) {
        if (dp->n_stage == DP_STAGE_SLOTS)
            stage_flush(dp);
        uint8_t *dst = dp->stage + (size_t)dp->n_stage * dp->stage_stride;
        if (len + VPN_ESP_OVERHEAD_MAX > dp->stage_stride) {
            dp->ctr.no_sa++;
            return;
        }
        st = vpn_esp_seal(p->out_sa, pkt, len, VPN_NH_AUTO, dst, dp->stage_stride, &esp_len);
        if (st != VPN_OK) {
            dp->ctr.no_sa++;
            return;
        }
        dp->stage_meta[dp->n_stage].peer = p;
        dp->stage_meta[dp->n_stage].len = (uint32_t)esp_len;
        dp->n_stage++;
    } else {
        size_t need = VPN_FRAME_LEN_LEN + len + VPN_ESP_OVERHEAD_MAX;
        uint8_t *dst = vpn_outq_reserve(c->outq, need);
        if (!dst) {
            dp->ctr.queue_full++;
            return;
        }
        st = vpn_esp_seal(p->out_sa, pkt, len, VPN_NH_AUTO, dst + VPN_FRAME_LEN_LEN,
                          need - VPN_FRAME_LEN_LEN, &esp_len);
        if (st != VPN_OK) {
            dp->ctr.no_sa++;
            return;
        }
        vpn_frame_put_len(dst, esp_len);
        vpn_outq_commit(c->outq, VPN_FRAME_LEN_LEN + esp_len);
        mark_dirty(dp, c);
    }
    p->ctr.tx_packets++;
    p->ctr.tx_bytes += len;
    dp->ctr.tx_packets++;
    dp->ctr.tx_bytes += len;
}

static int any_backpressure(const vpn_dp *dp)
{
    for (const vpn_dp_conn *c = dp->conns; c; c = c->next)
        if (c->outq && vpn_outq_above_high_water(c->outq))
            return 1;
    return 0;
}

/* Flush the connections written in this batch; returns VPN_DP_* flags. */
static int flush_dirty(vpn_dp *dp)
{
    int flags = 0;
    if (dp->n_stage)
        stage_flush(dp);
    if (dp->dirty_overflow) {  /* more than fit the list: walk them all */
        for (vpn_dp_conn *c = dp->conns; c; c = c->next)
            mark_dirty(dp, c);
        dp->dirty_overflow = 0;
    }
    for (vpn_dp_conn *c = dp->conns; c; c = c->next) {
        if (c->kind == VPN_DP_CONN_UDP && c->error)
            flags |= VPN_DP_CONN_ERROR;
    }
    for (uint32_t i = 0; i < dp->n_dirty; i++) {
        vpn_dp_conn *c = dp->dirty[i];
        c->dirty = 0;
        if (c->kind == VPN_DP_CONN_TCP && !c->error)
            vpn_dp_conn_flush(c);
        if (c->error)
            flags |= VPN_DP_CONN_ERROR;
        if (c->outq && vpn_outq_pending(c->outq))
            flags |= VPN_DP_BLOCKED;
        if (c->outq && vpn_outq_above_high_water(c->outq))
            flags |= VPN_DP_BACKPRESSURE;
    }
    dp->n_dirty = 0;
    return flags;
}

int vpn_dp_tun_to_net(vpn_dp *dp, int *err)
{
    *err = 0;
    if (any_backpressure(dp))
        return VPN_DP_BACKPRESSURE;
    int flags = 0;
    int rerr = 0;
    int n = vpn_tun_read_batch(dp->tun_fd, dp->tun_arena, VPN_TUN_SLOT_BYTES, dp->tun_lens,
                               dp->batch, &rerr);
    if (n < 0 || rerr) {
        *err = rerr ? rerr : EINVAL;
        flags |= VPN_DP_TUN_ERROR;
        if (n < 0)
            return flags;
    }
    if ((uint32_t)n < dp->batch)
        flags |= VPN_DP_TUN_EMPTY;
    dp->ctr.tun_reads += (uint64_t)n;
    uint32_t done = 0;
    while (done < (uint32_t)n) {
        uint32_t consumed = 0;
        int nseg = vpn_gso_segment_batch(dp->tun_arena + (size_t)done * VPN_TUN_SLOT_BYTES,
                                         VPN_TUN_SLOT_BYTES, dp->tun_lens + done, (uint32_t)n - done,
                                         dp->seg, dp->seg_stride, dp->mtu, dp->seg_lens,
                                         DP_SEG_SLOTS, &consumed, &dp->gso);
        for (int i = 0; i < nseg; i++)
            send_one(dp, dp->seg + (size_t)i * dp->seg_stride, dp->seg_lens[i]);
        if (consumed == 0) {  /* one frame needs more segments than we have slots: drop it */
            dp->gso.seg_toobig++;
            consumed = 1;
        }
        done += consumed;
    }
    for (int i = 0; i < n; i++)
        dp->ctr.tun_read_bytes += dp->tun_lens[i];
    return flags | flush_dirty(dp);
}

/* --- receive --------------------------------------------------------------------- */

/* RFC 9329 §6.1 (T44), RFC 7296 §2.23: the return path is where the peer's traffic
 * last authenticated (only for peers that follow; a client behind NAT does not). */
static void follow_peer(vpn_dp *dp, vpn_dp_peer *p, vpn_dp_conn *via,
                        const struct sockaddr_storage *from, socklen_t from_len)
{
    if (!p->follow)
        return;
    int moved = 0;
    if (p->conn != via) {
        p->conn = via;
        moved = 1;
    }
    if (from && (p->addr_len != from_len || !sockaddr_equal(&p->addr, p->addr_len, from, from_len))) {
        memcpy(&p->addr, from, from_len);
        p->addr_len = from_len;
        moved = 1;
    }
    if (moved) {
        p->ctr.moves++;
        dp->ctr.peer_moves++;
    }
}

/* Take one opened inner packet: policy check, follow the peer, queue for the TUN. */
static void accept_inner(vpn_dp *dp, const vpn_pkt *pk, vpn_dp_conn *via,
                         const struct sockaddr_storage *from, socklen_t from_len)
{
    const uint8_t *pkt = dp->out + pk->off;
    if (pk->next_header != VPN_NH_IPV4 && pk->next_header != VPN_NH_IPV6) {
        dp->ctr.bad_next_header++;
        return;
    }
    struct dp_binding *b = binding_find(dp, pk->spi);
    const uint8_t *src, *dst;
    int fam = inner_addr(pkt, pk->len, 0, &src);
    int ok = 0;
    if (b && fam) {
        for (uint32_t i = 0; i < b->n_ranges && !ok; i++)
            ok = addr_in_range(&b->ranges[i], fam, src);
        if (ok && b->n_dst) {  /* RFC 4301 §5.2: the destination must be ours too */
            inner_addr(pkt, pk->len, 1, &dst);
            ok = 0;
            for (uint32_t i = 0; i < b->n_dst && !ok; i++)
                ok = addr_in_range(&b->dst[i], fam, dst);
        }
    }
    if (!ok) {
        dp->ctr.ts_violation++;
        if (b)
            b->peer->ctr.ts_violation++;
        return;
    }
    vpn_dp_peer *p = b->peer;
    p->ctr.rx_packets++;
    p->ctr.rx_bytes += pk->len;
    follow_peer(dp, p, via, from, from_len);
    if (dp->n_write < DP_MAX_PKTS) {
        dp->w_offs[dp->n_write] = pk->off;
        dp->w_lens[dp->n_write] = pk->len;
        dp->n_write++;
    }
}

static void take_ike(vpn_dp *dp, const vpn_pkt *pk, uint8_t *ike_buf, size_t ike_cap,
                     size_t *ike_used, vpn_pkt *ike, size_t max_ike, size_t *n_ike)
{
    if (*n_ike >= max_ike || pk->len > ike_cap - *ike_used) {
        dp->ctr.ike_dropped++;
        return;
    }
    memcpy(ike_buf + *ike_used, dp->out + pk->off, pk->len);
    ike[*n_ike] = *pk;
    ike[*n_ike].off = (uint32_t)*ike_used;
    *ike_used += pk->len;
    (*n_ike)++;
}

/* Coalesce the queued inner packets and write them to the TUN. */
static void write_tun(vpn_dp *dp)
{
    if (!dp->n_write)
        return;
    int nrec = vpn_gro_coalesce(dp->out, dp->w_offs, dp->w_lens, dp->n_write, dp->gro,
                                DP_OUT_CAP + (size_t)DP_MAX_PKTS * VPN_VNET_HDR_LEN,
                                dp->g_offs, dp->g_lens, DP_MAX_PKTS, &dp->gso);
    if (nrec > 0) {
        uint32_t done = 0;
        int tries = 0;
        while (done < (uint32_t)nrec && tries++ < 4) {
            uint32_t failed = 0;
            int werr = 0;
            int w = vpn_tun_write_batch(dp->tun_fd, dp->gro, dp->g_offs + done, dp->g_lens + done,
                                        (uint32_t)nrec - done, &failed, &werr);
            if (w <= 0)
                break;
            dp->ctr.tun_write_fail += failed;
            dp->ctr.tun_writes += (uint64_t)w - failed;
            done += (uint32_t)w;
        }
        dp->ctr.tun_write_fail += (uint32_t)nrec - done;
    }
    for (uint32_t i = 0; i < dp->n_write; i++) {
        dp->ctr.rx_packets++;
        dp->ctr.rx_bytes += dp->w_lens[i];
    }
    dp->n_write = 0;
}

static int feed_stream(vpn_dp_conn *c, const uint8_t *data, size_t len, size_t *taken,
                       uint8_t *ike_buf, size_t ike_cap, size_t *ike_used, vpn_pkt *ike,
                       size_t max_ike, size_t *n_ike)
{
    vpn_dp *dp = c->dp;
    size_t off = 0;
    int result = VPN_DP_RX_OK;
    while (off < len) {
        size_t consumed = 0, npk = 0;
        int st = vpn_stream_rx_feed(c->rx, dp->table, data + off, len - off, &consumed, dp->out,
                                    DP_OUT_CAP, dp->pkts, DP_MAX_PKTS, &npk, &c->rxc);
        for (size_t i = 0; i < npk; i++) {
            if (dp->pkts[i].kind == VPN_PKT_INNER)
                accept_inner(dp, &dp->pkts[i], c, NULL, 0);
            else if (dp->pkts[i].kind == VPN_PKT_IKE)
                take_ike(dp, &dp->pkts[i], ike_buf, ike_cap, ike_used, ike, max_ike, n_ike);
        }
        write_tun(dp);
        off += consumed;
        if (st == VPN_ST_CLOSE) {
            result = VPN_DP_RX_CLOSE;
            break;
        }
        if (st != VPN_ST_NO_SPACE)
            break;
    }
    *taken = off;
    return result;
}

int vpn_dp_conn_feed(vpn_dp_conn *c, const uint8_t *data, size_t len, size_t *consumed,
                     uint8_t *ike_buf, size_t ike_cap, vpn_pkt *ike, size_t max_ike,
                     size_t *n_ike)
{
    size_t used = 0;
    *n_ike = 0;
    *consumed = 0;
    if (!c->dp || !c->rx)
        return VPN_DP_RX_ERROR;
    return feed_stream(c, data, len, consumed, ike_buf, ike_cap, &used, ike, max_ike, n_ike);
}

int vpn_dp_conn_rx(vpn_dp_conn *c, size_t budget, uint8_t *ike_buf, size_t ike_cap,
                   vpn_pkt *ike, size_t max_ike, size_t *n_ike, int *err)
{
    *n_ike = 0;
    *err = 0;
    if (!c->dp || c->kind != VPN_DP_CONN_TCP)
        return VPN_DP_RX_ERROR;
    vpn_dp *dp = c->dp;
    size_t total = 0, used = 0;
    while (total < budget) {
        ssize_t r = recv(c->fd, dp->rx_buf, DP_RX_BUF, MSG_DONTWAIT);
        if (r == 0)
            return VPN_DP_RX_EOF;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return VPN_DP_RX_OK;
            *err = errno;
            return VPN_DP_RX_ERROR;
        }
        total += (size_t)r;
        size_t taken = 0;
        int st = feed_stream(c, dp->rx_buf, (size_t)r, &taken, ike_buf, ike_cap, &used, ike,
                             max_ike, n_ike);
        if (st != VPN_DP_RX_OK)
            return st;
        if ((size_t)r < DP_RX_BUF)
            break;  /* the socket is most likely drained: let the loop breathe */
    }
    return VPN_DP_RX_OK;
}

int vpn_dp_udp_rx(vpn_dp_conn *c, uint8_t *ike_buf, size_t ike_cap, vpn_pkt *ike,
                  size_t max_ike, size_t *n_ike, uint8_t *addrs, size_t addr_stride,
                  uint32_t *addr_lens, int *err)
{
    *n_ike = 0;
    *err = 0;
    if (!c->dp || c->kind != VPN_DP_CONN_UDP || addr_stride < sizeof(struct sockaddr_storage))
        return VPN_DP_RX_ERROR;
    vpn_dp *dp = c->dp;
    struct mmsghdr msgs[DP_UDP_SLOTS];
    struct iovec iov[DP_UDP_SLOTS];
    for (int i = 0; i < DP_UDP_SLOTS; i++) {
        iov[i].iov_base = dp->udp_arena + (size_t)i * DP_UDP_SLOT;
        iov[i].iov_len = DP_UDP_SLOT;
        memset(&msgs[i], 0, sizeof(msgs[i]));
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &dp->udp_addr[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(dp->udp_addr[i]);
    }
    int n;
    do {
        n = recvmmsg(c->fd, msgs, DP_UDP_SLOTS, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return VPN_DP_RX_OK;
        *err = errno;
        return VPN_DP_RX_ERROR;
    }
    uint32_t nd = 0;
    uint32_t slot_of[DP_UDP_SLOTS];
    for (int i = 0; i < n; i++) {
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
            dp->ctr.udp_truncated++;
            continue;
        }
        dp->udp_dgrams[nd].off = (uint32_t)((size_t)i * DP_UDP_SLOT);
        dp->udp_dgrams[nd].len = msgs[i].msg_len;
        dp->udp_dgrams[nd].status = VPN_OK;
        dp->udp_dgrams[nd].spi = 0;
        slot_of[nd] = (uint32_t)i;  /* for the source address */
        dp->udp_dgrams[nd].kind = VPN_PKT_NONE;
        dp->udp_dgrams[nd].next_header = 0;
        nd++;
    }
    size_t used = 0;
    uint32_t start = 0;
    while (start < nd) {
        size_t k = vpn_udp_rx_batch(dp->table, dp->udp_arena, (size_t)DP_UDP_SLOTS * DP_UDP_SLOT,
                                    dp->udp_dgrams + start, nd - start, dp->out, DP_OUT_CAP,
                                    dp->udp_out + start, &c->rxc);
        for (size_t j = start; j < start + k; j++) {
            vpn_pkt *pk = &dp->udp_out[j];
            uint32_t slot = slot_of[j];
            socklen_t alen = msgs[slot].msg_hdr.msg_namelen;
            if (pk->kind == VPN_PKT_INNER) {
                accept_inner(dp, pk, c, &dp->udp_addr[slot], alen);
            } else if (pk->status == VPN_ST_DUMMY && pk->spi) {  /* authenticated dummy */
                struct dp_binding *b = binding_find(dp, pk->spi);
                if (b)
                    follow_peer(dp, b->peer, c, &dp->udp_addr[slot], alen);
            } else if (pk->kind == VPN_PKT_IKE) {
                size_t before = *n_ike;
                take_ike(dp, pk, ike_buf, ike_cap, &used, ike, max_ike, n_ike);
                if (*n_ike > before) {
                    memcpy(addrs + before * addr_stride, &dp->udp_addr[slot], alen);
                    addr_lens[before] = alen;
                }
            }
        }
        write_tun(dp);
        if (k == 0)
            break;
        start += (uint32_t)k;
    }
    return VPN_DP_RX_OK;
}
