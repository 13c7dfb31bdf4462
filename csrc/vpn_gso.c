/* vpn_gso.c: GSO segmentation and GRO coalescing of TUN packets (see vpn_gso.h).
 *
 * Checksums follow RFC 1071: the one's-complement sum is computed over native-order
 * words and stored with memcpy, which gives the network-order result on any host.
 * Every function mirrors vpn/io/offload.py step for step; the tests hold the bytes equal.
 */
#include "vpn_gso.h"

#include <string.h>

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80

/* ---- small helpers ------------------------------------------------------------------ */

static inline uint16_t rd16be(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32be(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr16be(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint16_t rd16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline void wr16le(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

/* One's-complement partial sum of len bytes, native word order, 64-bit accumulator with
 * end-around carry (2^64 = 1 mod 0xffff, so folding later gives the RFC 1071 sum). */
static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t len)
{
    uint64_t v;
    while (len >= 8) {
        memcpy(&v, p, 8);
        sum += v;
        sum += (sum < v);
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        sum += w;
        sum += (sum < w);
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        sum += w;
        sum += (sum < w);
        p += 2;
        len -= 2;
    }
    if (len) {
        uint16_t w = 0; /* the odd byte is the high-order byte of a zero-padded word */
        memcpy(&w, p, 1);
        sum += w;
        sum += (sum < w);
    }
    return sum;
}

/* A 16-bit value given in host order, added as the network-order word it stands for. */
static inline uint64_t csum_add_be16(uint64_t sum, uint16_t v)
{
    uint8_t b[2];
    wr16be(b, v);
    return csum_add(sum, b, 2);
}

static inline uint16_t csum_fold(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* Store a native-order 16-bit sum or checksum at p (yields network byte order). */
static inline void csum_store(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* Pseudo-header sum (RFC 793 §3.1, RFC 768, RFC 8200 §8.1) for a packet of IP version
 * ver whose L4 part is l4_len bytes. */
static uint64_t pseudo_sum(const uint8_t *ip, int ver, uint8_t proto, uint32_t l4_len)
{
    uint64_t s = 0;
    if (ver == 4) {
        s = csum_add(s, ip + 12, 8);
        s = csum_add_be16(s, proto);
        s = csum_add_be16(s, (uint16_t)l4_len);
    } else {
        s = csum_add(s, ip + 8, 32);
        s = csum_add_be16(s, (uint16_t)(l4_len >> 16));
        s = csum_add_be16(s, (uint16_t)l4_len);
        s = csum_add_be16(s, proto);
    }
    return s;
}

static void ipv4_set_csum(uint8_t *ip, size_t ihl)
{
    ip[10] = ip[11] = 0;
    csum_store(ip + 10, (uint16_t)~csum_fold(csum_add(0, ip, ihl)));
}

static struct vpn_gso_stats dummy_stats; /* sink when the caller passes NULL */

/* ---- NEEDS_CSUM --------------------------------------------------------------------- */

int vpn_gso_finish_csum(uint8_t *pkt, size_t len, uint16_t csum_start, uint16_t csum_offset)
{
    if (!pkt || csum_start > len || (size_t)csum_offset + 2 > len - csum_start)
        return VPN_GSO_EHDR;
    /* The field already holds the pseudo-header sum, so it takes part in the sum. */
    uint16_t c = (uint16_t)~csum_fold(csum_add(0, pkt + csum_start, len - csum_start));
    if (c == 0)
        c = 0xffff; /* as the kernel's skb_checksum_help (CSUM_MANGLED_0); RFC 768 */
    csum_store(pkt + csum_start + csum_offset, c);
    return VPN_GSO_OK;
}

/* ---- segmentation ------------------------------------------------------------------- */

int vpn_gso_segment(const uint8_t *frame, size_t frame_len, uint8_t *out, size_t out_stride,
                    size_t out_cap, uint32_t *out_lens, uint32_t max_out)
{
    if (!frame || !out || !out_lens || (max_out > 1 && out_stride < out_cap))
        return VPN_GSO_EARG;
    if (frame_len < VPN_VNET_HDR_LEN + 1)
        return VPN_GSO_ESHORT;
    const uint8_t vflags = frame[0];
    const uint8_t gso = frame[1] & (uint8_t)~VPN_VNET_GSO_ECN; /* CWR handled per segment */
    const uint16_t gso_size = rd16le(frame + 4);
    const uint16_t csum_start = rd16le(frame + 6);
    const uint16_t csum_offset = rd16le(frame + 8);
    const uint8_t *pkt = frame + VPN_VNET_HDR_LEN;
    const size_t len = frame_len - VPN_VNET_HDR_LEN;
    if (len > VPN_GSO_MAX_PACKET)
        return VPN_GSO_ESHORT;

    if (gso == VPN_VNET_GSO_NONE) {
        if ((vflags & VPN_VNET_F_NEEDS_CSUM) &&
            (csum_start > len || (size_t)csum_offset + 2 > len - csum_start))
            return VPN_GSO_EHDR;
        if (len > out_cap)
            return VPN_GSO_ETOOBIG;
        if (max_out < 1)
            return VPN_GSO_ENOSPACE;
        memcpy(out, pkt, len);
        if (vflags & VPN_VNET_F_NEEDS_CSUM)
            vpn_gso_finish_csum(out, len, csum_start, csum_offset);
        out_lens[0] = (uint32_t)len;
        return 1;
    }
    if (gso != VPN_VNET_GSO_TCPV4 && gso != VPN_VNET_GSO_TCPV6 && gso != VPN_VNET_GSO_UDP_L4)
        return VPN_GSO_EHDR;

    /* IP header: version must match the GSO type; the L4 header starts at csum_start. */
    const int ver = pkt[0] >> 4;
    const int is_udp = gso == VPN_VNET_GSO_UDP_L4;
    size_t l4off;
    uint8_t proto;
    if (ver == 4 && gso != VPN_VNET_GSO_TCPV6) {
        if (len < 20)
            return VPN_GSO_EIP;
        l4off = (size_t)(pkt[0] & 0x0f) * 4;
        if (l4off < 20 || l4off > len || (rd16be(pkt + 6) & 0x3fff) != 0)
            return VPN_GSO_EIP; /* no fragments of a super-packet */
        proto = pkt[9];
    } else if (ver == 6 && gso != VPN_VNET_GSO_TCPV4) {
        if (len < 40)
            return VPN_GSO_EIP;
        l4off = 40; /* extension headers are not supported under GSO */
        proto = pkt[6];
    } else {
        return VPN_GSO_EIP;
    }
    if (proto != (is_udp ? IPPROTO_UDP_ : IPPROTO_TCP_))
        return VPN_GSO_EIP;
    if (csum_start != l4off)
        return VPN_GSO_EHDR;
    if ((vflags & VPN_VNET_F_NEEDS_CSUM) && csum_offset != (is_udp ? 6 : 16))
        return VPN_GSO_EHDR;

    /* L4 header length: TCP data offset (RFC 9293 §3.1), UDP 8. */
    size_t l4hl;
    if (is_udp) {
        l4hl = 8;
        if (l4off + l4hl > len)
            return VPN_GSO_EL4;
    } else {
        if (l4off + 20 > len)
            return VPN_GSO_EL4;
        l4hl = (size_t)(pkt[l4off + 12] >> 4) * 4;
        if (l4hl < 20 || l4off + l4hl > len)
            return VPN_GSO_EL4;
    }
    const size_t hdr_len = l4off + l4hl;
    const size_t payload = len - hdr_len;
    if (gso_size == 0)
        return VPN_GSO_ESIZE;
    const size_t nseg = payload == 0 ? 1 : (payload + gso_size - 1) / gso_size;
    const size_t first = payload < gso_size ? payload : gso_size;
    if (hdr_len + first > out_cap)
        return VPN_GSO_ETOOBIG;
    if (nseg > max_out)
        return VPN_GSO_ENOSPACE;

    const uint16_t id0 = ver == 4 ? rd16be(pkt + 4) : 0;
    const uint32_t seq0 = is_udp ? 0 : rd32be(pkt + l4off + 4);
    const uint8_t tflags = is_udp ? 0 : pkt[l4off + 13];
    for (size_t i = 0; i < nseg; i++) {
        uint8_t *o = out + i * out_stride;
        const size_t poff = i * gso_size;
        const size_t plen = payload - poff < gso_size ? payload - poff : gso_size;
        const size_t seg_len = hdr_len + plen;
        memcpy(o, pkt, hdr_len);
        memcpy(o + hdr_len, pkt + hdr_len + poff, plen);
        if (ver == 4) {
            wr16be(o + 2, (uint16_t)seg_len);
            wr16be(o + 4, (uint16_t)(id0 + i)); /* RFC 6864 §4.1: IDs of a burst increment */
            ipv4_set_csum(o, l4off);
        } else {
            wr16be(o + 4, (uint16_t)(seg_len - 40));
        }
        uint8_t *l4 = o + l4off;
        size_t csum_at;
        if (is_udp) {
            wr16be(l4 + 4, (uint16_t)(l4hl + plen));
            csum_at = 6;
        } else {
            wr32be(l4 + 4, seq0 + (uint32_t)poff);
            uint8_t f = tflags;
            if (i + 1 < nseg)
                f &= (uint8_t)~(TCP_FIN | TCP_PSH); /* only the last segment ends/pushes */
            if (i > 0)
                f &= (uint8_t)~TCP_CWR; /* RFC 3168 §6.1.2: CWR once, on the first */
            l4[13] = f;
            csum_at = 16;
        }
        l4[csum_at] = l4[csum_at + 1] = 0;
        uint64_t s = pseudo_sum(o, ver, proto, (uint32_t)(l4hl + plen));
        uint16_t c = (uint16_t)~csum_fold(csum_add(s, l4, l4hl + plen));
        if (is_udp && c == 0)
            c = 0xffff; /* RFC 768: a computed zero is sent as all ones */
        csum_store(l4 + csum_at, c);
        out_lens[i] = (uint32_t)seg_len;
    }
    return (int)nseg;
}

int vpn_gso_segment_batch(const uint8_t *in, size_t in_stride, const uint32_t *in_lens,
                          uint32_t n_in, uint8_t *out, size_t out_stride, size_t out_cap,
                          uint32_t *out_lens, uint32_t max_out, uint32_t *n_consumed,
                          struct vpn_gso_stats *stats)
{
    struct vpn_gso_stats *st = stats ? stats : &dummy_stats;
    uint32_t used = 0, i;
    if (!in || !in_lens || !out || !out_lens || (max_out > 1 && out_stride < out_cap)) {
        if (n_consumed)
            *n_consumed = 0;
        return 0;
    }
    for (i = 0; i < n_in; i++) {
        const uint8_t *frame = in + (size_t)i * in_stride;
        const size_t flen = in_lens[i];
        int r = vpn_gso_segment(frame, flen, out + (size_t)used * out_stride, out_stride,
                                out_cap, out_lens + used, max_out - used);
        if (r == VPN_GSO_ENOSPACE && used > 0)
            break; /* the rest of this frame goes into the next output batch */
        st->seg_in++;
        if (flen > VPN_VNET_HDR_LEN && frame[1] != VPN_VNET_GSO_NONE)
            st->seg_gso_in++;
        if (r == VPN_GSO_ETOOBIG || r == VPN_GSO_ENOSPACE) {
            st->seg_toobig++;
        } else if (r < 0) {
            st->seg_malformed++;
        } else {
            if ((frame[1] & (uint8_t)~VPN_VNET_GSO_ECN) == VPN_VNET_GSO_NONE &&
                (frame[0] & VPN_VNET_F_NEEDS_CSUM))
                st->seg_csum++;
            used += (uint32_t)r;
            st->seg_out += (uint32_t)r;
        }
    }
    if (n_consumed)
        *n_consumed = i;
    return (int)used;
}

/* ---- coalescing --------------------------------------------------------------------- */

/* What pass 1 learns about one packet. */
struct gro_pkt {
    uint32_t hash;     /* of the flow key, 0 if the packet has none */
    uint32_t seq;
    uint16_t payload;  /* TCP payload bytes */
    uint8_t  iphl;
    uint8_t  thl;
    uint8_t  ver;      /* 4 or 6; 0 when the packet is not TCP over IPv4/IPv6 */
    uint8_t  eligible; /* may be merged (checks below all passed) */
    uint8_t  psh;
    int16_t  next;     /* next packet of its merged group, -1 at the end */
    uint8_t  member;   /* appended to an earlier packet's group: not written by itself */
};

/* An open group: the head packet, its last member and where the next one must start. */
struct gro_flow {
    uint32_t hash;
    uint16_t head;
    uint16_t last;
    uint32_t next_seq;
    uint32_t total;    /* IP length of the merged packet so far */
    uint16_t next_id;  /* IPv4: the ID the next segment must carry */
};

static uint32_t hash_bytes(uint32_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u; /* FNV-1a */
    return h;
}

/* Classify one packet: flow key (TCP over IPv4/IPv6, ports readable) and, if every
 * check passes, eligibility to merge. Checksums are verified before anything merges. */
static void gro_parse(const uint8_t *p, size_t len, struct gro_pkt *g, struct vpn_gso_stats *st)
{
    memset(g, 0, sizeof(*g));
    g->next = -1;
    if (len < 20)
        return;
    size_t iphl;
    if ((p[0] >> 4) == 4) {
        iphl = (size_t)(p[0] & 0x0f) * 4;
        if (iphl < 20 || iphl + 20 > len || p[9] != IPPROTO_TCP_)
            return;
        g->ver = 4;
    } else if ((p[0] >> 4) == 6) {
        iphl = 40;
        if (len < 60 || p[6] != IPPROTO_TCP_)
            return;
        g->ver = 6;
    } else {
        return;
    }
    const uint8_t *t = p + iphl;
    g->hash = g->ver == 4 ? hash_bytes(2166136261u, p + 12, 8) : hash_bytes(2166136261u, p + 8, 32);
    g->hash = hash_bytes(g->hash, t, 4) | 1; /* never 0 */
    g->iphl = (uint8_t)iphl;

    /* Merge only plain segments (RFC 9293 §3.1 layout): no IPv4 options or fragments,
     * lengths consistent, flags ACK or ACK|PSH, some payload. */
    const size_t thl = (size_t)(t[12] >> 4) * 4;
    if (thl < 20 || iphl + thl > len)
        return;
    if (g->ver == 4) {
        if (iphl != 20 || rd16be(p + 2) != len || (rd16be(p + 6) & 0x3fff) != 0)
            return;
    } else if ((size_t)rd16be(p + 4) + 40 != len) {
        return;
    }
    const uint8_t fl = t[13];
    if (fl != TCP_ACK && fl != (TCP_ACK | TCP_PSH))
        return;
    if (len == iphl + thl)
        return;
    if ((g->ver == 4 && csum_fold(csum_add(0, p, 20)) != 0xffff) ||
        csum_fold(csum_add(pseudo_sum(p, g->ver, IPPROTO_TCP_, (uint32_t)(len - iphl)), t,
                           len - iphl)) != 0xffff) {
        st->gro_bad_csum++;
        return;
    }
    g->thl = (uint8_t)thl;
    g->seq = rd32be(t + 4);
    g->payload = (uint16_t)(len - iphl - thl);
    g->psh = (fl & TCP_PSH) != 0;
    g->eligible = 1;
}

static int gro_same_flow(const uint8_t *a, const uint8_t *b, const struct gro_pkt *ga,
                         const struct gro_pkt *gb)
{
    if (ga->hash != gb->hash || ga->ver != gb->ver)
        return 0;
    if (ga->ver == 4)
        return memcmp(a + 12, b + 12, 8) == 0 && memcmp(a + ga->iphl, b + gb->iphl, 4) == 0;
    return memcmp(a + 8, b + 8, 32) == 0 && memcmp(a + 40, b + 40, 4) == 0;
}

/* Can packet p (parsed gp) be appended to the group of head h (parsed gh)? */
static int gro_can_append(const uint8_t *h, const struct gro_pkt *gh, const struct gro_flow *f,
                          const uint8_t *p, const struct gro_pkt *gp, const struct gro_pkt *glast)
{
    if (!gp->eligible || glast->psh || glast->payload < gh->payload)
        return 0; /* nothing follows a PSH or a short segment */
    if (gp->payload > gh->payload || gp->seq != f->next_seq || gp->thl != gh->thl)
        return 0;
    if (f->total + gp->payload > VPN_GSO_MAX_PACKET)
        return 0;
    if (gh->ver == 4) {
        /* TOS, TTL, and the DF/reserved flag bits must be equal; IDs must increment by
         * one, as the kernel's resegmentation will restore them (RFC 6864 §4.1). */
        if (h[1] != p[1] || h[8] != p[8] || (h[6] >> 5) != (p[6] >> 5) ||
            rd16be(p + 4) != f->next_id)
            return 0;
    } else if (memcmp(h, p, 4) != 0 || h[7] != p[7]) {
        return 0; /* traffic class, flow label, hop limit */
    }
    const uint8_t *th = h + gh->iphl, *tp = p + gp->iphl;
    /* Same ACK number and identical options (timestamps included), as Linux GRO; the
     * same window too, so that resegmenting gives back exactly the packets received. */
    return memcmp(th + 8, tp + 8, 4) == 0 && memcmp(th + 14, tp + 14, 2) == 0 &&
           memcmp(th + 20, tp + 20, gh->thl - 20u) == 0;
}

static void gro_write_one(const uint8_t *p, size_t len, uint8_t *o)
{
    memset(o, 0, VPN_VNET_HDR_LEN);
    memcpy(o + VPN_VNET_HDR_LEN, p, len);
}

/* Write the merged packet of the group headed by packet hi; returns its record length. */
static size_t gro_write_group(const uint8_t *base, const uint32_t *offs, const uint32_t *lens,
                              const struct gro_pkt *gp, uint32_t hi, uint8_t *o)
{
    const uint8_t *h = base + offs[hi];
    const struct gro_pkt *gh = &gp[hi];
    const size_t hl = (size_t)gh->iphl + gh->thl;
    uint8_t *ip = o + VPN_VNET_HDR_LEN;
    memcpy(ip, h, hl);
    size_t at = hl;
    int last = (int)hi;
    for (int k = (int)hi; k >= 0; k = gp[k].next) {
        memcpy(ip + at, base + offs[k] + hl, gp[k].payload);
        at += gp[k].payload;
        last = k;
    }
    uint8_t *t = ip + gh->iphl;
    if (gp[last].psh)
        t[13] |= TCP_PSH;
    if (gh->ver == 4) {
        wr16be(ip + 2, (uint16_t)at);
        ipv4_set_csum(ip, gh->iphl);
    } else {
        wr16be(ip + 4, (uint16_t)(at - 40));
    }
    /* NEEDS_CSUM: the kernel expects the (uncomplemented) pseudo-header sum here. */
    csum_store(t + 16, csum_fold(pseudo_sum(ip, gh->ver, IPPROTO_TCP_, (uint32_t)(at - gh->iphl))));
    o[0] = VPN_VNET_F_NEEDS_CSUM;
    o[1] = gh->ver == 4 ? VPN_VNET_GSO_TCPV4 : VPN_VNET_GSO_TCPV6;
    wr16le(o + 2, (uint16_t)hl);
    wr16le(o + 4, gh->payload);
    wr16le(o + 6, gh->iphl);
    wr16le(o + 8, 16);
    return VPN_VNET_HDR_LEN + at;
}

/* Coalesce one chunk of at most VPN_GRO_MAX_BATCH packets. */
static uint32_t gro_chunk(const uint8_t *base, const uint32_t *offs, const uint32_t *lens,
                          uint32_t n, uint8_t *out, size_t *out_at, uint32_t *out_offs,
                          uint32_t *out_lens, struct vpn_gso_stats *st)
{
    struct gro_pkt gp[VPN_GRO_MAX_BATCH];
    struct gro_flow fl[VPN_GRO_MAX_FLOWS];
    uint32_t nfl = 0, nout = 0;

    /* Pass 1: decide the groups. */
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p = base + offs[i];
        gro_parse(p, lens[i], &gp[i], st);
        if (!gp[i].hash)
            continue;
        uint32_t k;
        for (k = 0; k < nfl; k++) {
            const uint8_t *h = base + offs[fl[k].head];
            if (gro_same_flow(h, p, &gp[fl[k].head], &gp[i]))
                break;
        }
        if (k < nfl) {
            struct gro_flow *f = &fl[k];
            if (gro_can_append(base + offs[f->head], &gp[f->head], f, p, &gp[i], &gp[f->last])) {
                gp[f->last].next = (int16_t)i;
                gp[i].member = 1;
                f->last = (uint16_t)i;
                f->next_seq += gp[i].payload;
                f->total += gp[i].payload;
                f->next_id++;
                continue;
            }
            /* Same flow, not appendable: close the group so order within a flow holds. */
            memmove(&fl[k], &fl[k + 1], (nfl - k - 1) * sizeof(fl[0]));
            nfl--;
        }
        if (!gp[i].eligible || gp[i].psh)
            continue; /* passes through alone */
        if (nfl == VPN_GRO_MAX_FLOWS) {
            memmove(&fl[0], &fl[1], (nfl - 1) * sizeof(fl[0])); /* close the oldest */
            nfl--;
        }
        fl[nfl].hash = gp[i].hash;
        fl[nfl].head = (uint16_t)i;
        fl[nfl].last = (uint16_t)i;
        fl[nfl].next_seq = gp[i].seq + gp[i].payload;
        fl[nfl].total = lens[i];
        fl[nfl].next_id = (uint16_t)(gp[i].ver == 4 ? rd16be(p + 4) + 1 : 0);
        nfl++;
    }

    /* Pass 2: write records in the order of their first packet. */
    for (uint32_t i = 0; i < n; i++) {
        if (gp[i].member)
            continue;
        uint8_t *o = out + *out_at;
        size_t rl;
        if (gp[i].next >= 0) {
            rl = gro_write_group(base, offs, lens, gp, i, o);
            st->gro_super++;
            for (int k = (int)i; k >= 0; k = gp[k].next)
                st->gro_merged++;
        } else {
            gro_write_one(base + offs[i], lens[i], o);
            rl = VPN_VNET_HDR_LEN + (size_t)lens[i];
        }
        out_offs[nout] = (uint32_t)*out_at;
        out_lens[nout] = (uint32_t)rl;
        *out_at += rl;
        nout++;
    }
    return nout;
}

int vpn_gro_coalesce(const uint8_t *base, const uint32_t *offs, const uint32_t *lens,
                     uint32_t n, uint8_t *out, size_t out_cap, uint32_t *out_offs,
                     uint32_t *out_lens, uint32_t max_out, struct vpn_gso_stats *stats)
{
    struct vpn_gso_stats *st = stats ? stats : &dummy_stats;
    if (!base || !offs || !lens || !out || !out_offs || !out_lens)
        return VPN_GSO_EARG;
    size_t need = 0;
    for (uint32_t i = 0; i < n; i++)
        need += (size_t)lens[i] + VPN_VNET_HDR_LEN;
    if (need > out_cap || max_out < n || need > UINT32_MAX)
        return VPN_GSO_ENOSPACE;
    size_t at = 0;
    uint32_t nout = 0;
    for (uint32_t i = 0; i < n; i += VPN_GRO_MAX_BATCH) {
        uint32_t m = n - i < VPN_GRO_MAX_BATCH ? n - i : VPN_GRO_MAX_BATCH;
        nout += gro_chunk(base, offs + i, lens + i, m, out, &at, out_offs + nout,
                          out_lens + nout, st);
    }
    st->gro_in += n;
    st->gro_out += nout;
    return (int)nout;
}
