/* vpn_frame.c: RFC 9329 framing, the stream receive state and the ESP batch APIs.
 *
 * Receive flow of one chunk (vpn_stream_rx_feed):
 *   1. accepting side: wait for all of "IKETCP" (RFC 9329 §4, §6.1); a mismatch closes.
 *   2. a partial frame kept from the last call is completed first (copied into st->buf);
 *      then complete frames are used straight from the chunk, the tail is kept.
 *   3. each message: Length 0/1 -> close; 2 -> empty; 00 03 FF -> keepalive;
 *      4 zero octets -> IKE (marker stripped, copied out); else ESP: SA by SPI,
 *      vpn_esp_open straight into the output arena.
 * Output space is checked before a message is touched, so a VPN_ST_NO_SPACE return
 * changes no counter and the message is processed again on the next call.
 */
#include "vpn_frame.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t PREFIX[VPN_PREFIX_LEN] = {'I', 'K', 'E', 'T', 'C', 'P'};

struct vpn_stream_rx {
    uint32_t expect_prefix;
    uint32_t prefix_got;      /* octets of the prefix seen so far */
    uint32_t closed;
    uint32_t max_bad;
    uint32_t have;            /* octets of the current partial frame in buf */
    uint8_t buf[65536];       /* one frame, Length included (<= 65535) */
};

int vpn_frame_put_len(uint8_t *frame, size_t msg_len) {
    if (!frame) return VPN_ST_BAD_ARG;
    if (msg_len > VPN_FRAME_MAX_MSG) return VPN_ST_TOO_BIG;
    size_t l = msg_len + VPN_FRAME_LEN_LEN;   /* RFC 9329 §3: the Length counts itself */
    frame[0] = (uint8_t)(l >> 8);
    frame[1] = (uint8_t)l;
    return VPN_OK;
}

static inline uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void count_status(vpn_counters *c, int st) {
    switch (st) {
        case VPN_ST_TOO_SHORT: c->too_short++; break;
        case VPN_ST_BAD_LENGTH: c->bad_length++; break;
        case VPN_ST_UNKNOWN_SPI: c->unknown_spi++; break;
        case VPN_ST_REPLAY: c->replay++; break;
        case VPN_ST_ICV: c->icv++; break;
        case VPN_ST_BAD_PADDING: c->bad_padding++; break;
        case VPN_ST_DUMMY: c->dummy++; break;
        case VPN_ST_BAD_INNER: c->bad_inner++; break;
        case VPN_ST_TOO_BIG: c->too_big++; break;
        case VPN_ST_SEQ_EXHAUSTED:
        case VPN_ST_HARD_EXPIRED: c->refused++; break;
        case VPN_ST_KEEPALIVE: c->keepalive++; break;
        case VPN_ST_EMPTY: c->empty++; break;
        default: break;
    }
}

/* A frame that is neither IKE nor ESP of a known SPI, or fails authentication, is
 * "bad" for the close-after-many rule (RFC 9329 §6.1, checklist T47/T48). */
static int is_bad(int st) {
    return st == VPN_ST_TOO_SHORT || st == VPN_ST_UNKNOWN_SPI || st == VPN_ST_ICV ||
           st == VPN_ST_BAD_PADDING || st == VPN_ST_WRONG_SA || st == VPN_ST_BAD_LENGTH;
}

/* Bytes that message m could need in the output arena, so the check comes first. */
static size_t out_need(const vpn_sa_table *table, const uint8_t *m, size_t mlen) {
    if (mlen < VPN_MARKER_LEN) return 0;
    if (get32(m) == 0) return mlen - VPN_MARKER_LEN;
    if (!table) return mlen;
    return mlen >= VPN_ESP_MIN_LEN ? mlen - VPN_ESP_HDR_LEN - VPN_ESP_ICV_LEN : 0;
}

/* Classify and process one message (an RFC 9329 frame body or a UDP 4500 datagram).
 * Fills *d when something is delivered (returns VPN_OK); else returns the drop reason.
 * The caller made sure out has out_need() octets. */
static int process_msg(vpn_sa_table *table, const uint8_t *m, size_t mlen, uint8_t *out,
                       size_t out_cap, vpn_pkt *d) {
    memset(d, 0, sizeof(*d));
    if (mlen == 0) return VPN_ST_EMPTY;                                   /* RFC 9329 §3 */
    if (mlen == 1 && m[0] == 0xFF) return VPN_ST_KEEPALIVE;    /* RFC 3948 §2.3, 9329 §6.6 */
    if (mlen < VPN_MARKER_LEN) return VPN_ST_TOO_SHORT;
    if (get32(m) == 0) {                        /* Non-ESP marker: IKE (RFC 9329 §3.1) */
        memcpy(out, m + VPN_MARKER_LEN, mlen - VPN_MARKER_LEN);
        d->len = (uint32_t)(mlen - VPN_MARKER_LEN);
        d->kind = VPN_PKT_IKE;
        return VPN_OK;
    }
    uint32_t spi = get32(m);
    if (!table) {
        memcpy(out, m, mlen);
        d->len = (uint32_t)mlen;
        d->kind = VPN_PKT_ESP;
        d->spi = spi;
        return VPN_OK;
    }
    if (mlen < VPN_ESP_MIN_LEN) return VPN_ST_TOO_SHORT;
    vpn_esp_sa *sa = vpn_sa_table_lookup(table, spi);
    if (!sa) return VPN_ST_UNKNOWN_SPI;
    size_t ilen = 0;
    uint8_t nh = 0;
    int st = vpn_esp_open(sa, m, mlen, out, out_cap, &ilen, &nh);
    if (st == VPN_ST_DUMMY) d->spi = spi;  /* authenticated: the dataplane may follow it */
    if (st != VPN_OK) return st;
    d->len = (uint32_t)ilen;
    d->kind = VPN_PKT_INNER;
    d->spi = spi;
    d->next_header = nh;
    return VPN_OK;
}

static void count_delivered(vpn_counters *c, const vpn_pkt *d) {
    if (d->kind == VPN_PKT_IKE) {
        c->ike++;
    } else if (d->kind == VPN_PKT_INNER) {
        c->packets++;
        c->bytes += d->len;
    }
}

/* ------------------------------------------------------------------------- sending */

size_t vpn_esp_seal_batch(vpn_esp_sa *sa, int mode, const uint8_t *in, size_t in_len,
                          const vpn_pkt *in_pkts, size_t n, uint8_t *out, size_t out_cap,
                          vpn_pkt *out_pkts, size_t *out_used, vpn_counters *c) {
    vpn_counters dummy_c;
    if (!c) { memset(&dummy_c, 0, sizeof(dummy_c)); c = &dummy_c; }
    size_t pos = 0, i;
    if (out_used) *out_used = 0;
    if (!sa || !in_pkts || !out || (mode != VPN_MODE_TCP && mode != VPN_MODE_UDP) ||
        (mode == VPN_MODE_UDP && !out_pkts))
        return 0;
    size_t hdr = mode == VPN_MODE_TCP ? VPN_FRAME_LEN_LEN : 0;
    for (i = 0; i < n; i++) {
        const vpn_pkt *p = &in_pkts[i];
        vpn_pkt r = {.off = (uint32_t)pos, .len = 0, .status = VPN_OK, .spi = vpn_esp_sa_spi(sa),
                     .kind = VPN_PKT_NONE, .next_header = 0};
        int st;
        if (!in || (uint64_t)p->off + p->len > in_len) {
            st = VPN_ST_BAD_ARG;
        } else if (p->len > VPN_ESP_MAX_INNER) {
            st = VPN_ST_TOO_BIG;
        } else {
            size_t esp_len = VPN_ESP_HDR_LEN + ((p->len + 2 + 3) & ~(size_t)3) + VPN_ESP_ICV_LEN;
            if (pos + hdr + esp_len > out_cap) { c->no_space++; break; }
            size_t el = 0;
            st = vpn_esp_seal(sa, in + p->off, p->len, VPN_NH_AUTO, out + pos + hdr,
                              out_cap - pos - hdr, &el);
            if (st == VPN_OK) {
                if (hdr) vpn_frame_put_len(out + pos, el);
                r.len = (uint32_t)(hdr + el);
                r.kind = VPN_PKT_ESP;
                pos += hdr + el;
                c->packets++;
                c->bytes += p->len;
            }
        }
        r.status = st;
        if (st != VPN_OK) count_status(c, st);
        if (out_pkts) out_pkts[i] = r;
    }
    if (out_used) *out_used = pos;
    return i;
}

/* ------------------------------------------------------------------- stream receive */

vpn_stream_rx *vpn_stream_rx_new(int expect_prefix, uint32_t max_consecutive_bad) {
    vpn_stream_rx *st = calloc(1, sizeof(*st));
    if (!st) return NULL;
    st->expect_prefix = expect_prefix ? 1 : 0;
    st->max_bad = max_consecutive_bad ? max_consecutive_bad : VPN_CONSECUTIVE_BAD_DEFAULT;
    return st;
}

void vpn_stream_rx_free(vpn_stream_rx *st) { free(st); }

size_t vpn_stream_rx_pending(const vpn_stream_rx *st) {
    if (!st) return 0;
    size_t p = st->have;
    if (st->expect_prefix && st->prefix_got < VPN_PREFIX_LEN) p += st->prefix_got;
    return p;
}

static int close_stream(vpn_stream_rx *st, vpn_counters *c) {
    st->closed = 1;
    c->fatal++;
    return VPN_ST_CLOSE;
}

/* One complete frame body. Returns VPN_OK (handled), VPN_ST_NO_SPACE (untouched) or
 * VPN_ST_CLOSE (too many bad frames in a row). */
static int stream_msg(vpn_stream_rx *st, vpn_sa_table *table, const uint8_t *m, size_t mlen,
                      uint8_t *out, size_t out_cap, size_t *opos, vpn_pkt *pkts,
                      size_t max_pkts, size_t *np, vpn_counters *c) {
    /* Anything of 4 octets or more may be delivered (even an empty IKE message). */
    if (mlen >= VPN_MARKER_LEN && (*np >= max_pkts || out_cap - *opos < out_need(table, m, mlen)))
        return VPN_ST_NO_SPACE;
    vpn_pkt d;
    int s = process_msg(table, m, mlen, out + *opos, out_cap - *opos, &d);
    if (s == VPN_OK) {
        d.off = (uint32_t)*opos;
        *opos += d.len;
        pkts[(*np)++] = d;
        count_delivered(c, &d);
        c->consecutive_bad = 0;
        return VPN_OK;
    }
    count_status(c, s);
    if (s == VPN_ST_DUMMY) c->consecutive_bad = 0;   /* authenticated: the stream is fine */
    if (is_bad(s) && ++c->consecutive_bad >= st->max_bad) return close_stream(st, c);
    return VPN_OK;
}

int vpn_stream_rx_feed(vpn_stream_rx *st, vpn_sa_table *table, const uint8_t *in,
                       size_t in_len, size_t *consumed, uint8_t *out, size_t out_cap,
                       vpn_pkt *pkts, size_t max_pkts, size_t *n_pkts, vpn_counters *c) {
    vpn_counters dummy_c;
    if (!c) { memset(&dummy_c, 0, sizeof(dummy_c)); c = &dummy_c; }
    size_t pos = 0, opos = 0, np = 0;
    int rc = VPN_OK;
    if (consumed) *consumed = 0;
    if (n_pkts) *n_pkts = 0;
    if (!st || !consumed || !n_pkts || (in_len && !in) || (!out && out_cap) || (!pkts && max_pkts))
        return VPN_ST_BAD_ARG;
    if (st->closed) return VPN_ST_CLOSE;

    /* 1. The accepting side parses nothing before the whole prefix (RFC 9329 §6.1). */
    while (st->expect_prefix && st->prefix_got < VPN_PREFIX_LEN && pos < in_len) {
        if (in[pos] != PREFIX[st->prefix_got]) {
            rc = close_stream(st, c);
            goto done;
        }
        st->prefix_got++;
        pos++;
    }
    if (st->expect_prefix && st->prefix_got < VPN_PREFIX_LEN) goto done;

    for (;;) {
        /* 2a. Complete the partial frame kept in buf. */
        if (st->have > 0) {
            size_t avail = in_len - pos, take;
            if (st->have < VPN_FRAME_LEN_LEN) {
                take = VPN_FRAME_LEN_LEN - st->have;
                if (take > avail) take = avail;
                memcpy(st->buf + st->have, in + pos, take);
                st->have += (uint32_t)take;
                pos += take;
                avail -= take;
                if (st->have < VPN_FRAME_LEN_LEN) break;
            }
            size_t flen = ((size_t)st->buf[0] << 8) | st->buf[1];
            if (flen < VPN_FRAME_LEN_LEN) {   /* RFC 9329 §3: Length 0 or 1 is fatal */
                c->bad_length++;
                st->have = 0;
                rc = close_stream(st, c);
                break;
            }
            take = flen - st->have;
            if (take > avail) take = avail;
            memcpy(st->buf + st->have, in + pos, take);
            st->have += (uint32_t)take;
            pos += take;
            if (st->have < flen) break;
            rc = stream_msg(st, table, st->buf + VPN_FRAME_LEN_LEN, flen - VPN_FRAME_LEN_LEN,
                            out, out_cap, &opos, pkts, max_pkts, &np, c);
            if (rc == VPN_ST_NO_SPACE) break;   /* stays complete in buf for the next call */
            st->have = 0;
            if (rc == VPN_ST_CLOSE) break;
            continue;
        }
        /* 2b. Frames straight from the chunk. */
        size_t avail = in_len - pos;
        if (avail == 0) break;
        if (avail < VPN_FRAME_LEN_LEN) {
            st->buf[0] = in[pos];
            st->have = 1;
            pos = in_len;
            break;
        }
        size_t flen = ((size_t)in[pos] << 8) | in[pos + 1];
        if (flen < VPN_FRAME_LEN_LEN) {
            c->bad_length++;
            rc = close_stream(st, c);
            break;
        }
        if (avail < flen) {   /* keep the tail for the next call */
            memcpy(st->buf, in + pos, avail);
            st->have = (uint32_t)avail;
            pos = in_len;
            break;
        }
        rc = stream_msg(st, table, in + pos + VPN_FRAME_LEN_LEN, flen - VPN_FRAME_LEN_LEN, out,
                        out_cap, &opos, pkts, max_pkts, &np, c);
        if (rc == VPN_ST_NO_SPACE) break;
        pos += flen;
        if (rc == VPN_ST_CLOSE) break;
    }
    if (rc == VPN_ST_NO_SPACE) c->no_space++;
done:
    *consumed = pos;
    *n_pkts = np;
    return rc;
}

/* ---------------------------------------------------------------- UDP 4500 receive */

size_t vpn_udp_rx_batch(vpn_sa_table *table, const uint8_t *in, size_t in_len,
                        const vpn_pkt *dgrams, size_t n, uint8_t *out, size_t out_cap,
                        vpn_pkt *out_pkts, vpn_counters *c) {
    vpn_counters dummy_c;
    if (!c) { memset(&dummy_c, 0, sizeof(dummy_c)); c = &dummy_c; }
    size_t opos = 0, i;
    if (!dgrams || !out_pkts || (!out && out_cap)) return 0;
    for (i = 0; i < n; i++) {
        const vpn_pkt *g = &dgrams[i];
        vpn_pkt d;
        int s;
        if (!in || (uint64_t)g->off + g->len > in_len) {
            memset(&d, 0, sizeof(d));
            s = VPN_ST_BAD_ARG;
        } else {
            const uint8_t *m = in + g->off;
            if (out_cap - opos < out_need(table, m, g->len)) { c->no_space++; break; }
            s = process_msg(table, m, g->len, out + opos, out_cap - opos, &d);
        }
        d.off = (uint32_t)opos;
        d.status = s;
        if (s == VPN_OK) {
            opos += d.len;
            count_delivered(c, &d);
        } else {
            count_status(c, s);
        }
        out_pkts[i] = d;
    }
    return i;
}
