/* vpn_esp.c: ESP with AES-GCM (RFC 4303, RFC 4106): SAs, seal/open, replay, SA table.
 *
 * Flow of one packet:
 *   seal: lifetime/counter check -> seq + 1 -> header SPI|seq|IV -> AES-GCM(salt||IV,
 *         AAD SPI|[seq_hi|]seq_lo) over inner|pad|pl|nh -> ICV -> lifetime update.
 *   open: SPI -> seq_hi inferred (RFC 4303 App. A2.2) -> replay check -> decrypt and
 *         verify ICV -> window update -> padding check -> Next Header.
 * The Python reference in vpn/esp/ reads the same and must give the same bytes.
 */
#include "vpn_esp.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

struct vpn_esp_sa {
    EVP_CIPHER_CTX *ctx;      /* keyed once; per packet only the nonce changes */
    EVP_CIPHER *cipher;       /* fetched once per SA */
    uint32_t spi;
    uint32_t dir;
    uint32_t esn;
    uint8_t salt[VPN_ESP_SALT_LEN];
    uint64_t seq;             /* out: last sent; in: highest authenticated (window top) */
    uint64_t seq_max;         /* 2^32-1 or 2^64-1 */
    uint64_t seq_ceiling;     /* outbound: highest number persisted as reserved; 0 = none */
    uint64_t soft_packets, hard_packets, soft_bytes, hard_bytes;
    vpn_esp_sa_stats st;
    uint32_t window;          /* replay window size in packets */
    uint32_t nwords;          /* bitmap words, a power of two, 64 * nwords >= window + 64 */
    uint64_t bitmap[];        /* ring: bit (seq mod 64*nwords) set = seq received */
};

static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int ranges_overlap(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return alen && blen && x < y + blen && y < x + alen;
}

const char *vpn_status_name(int s) {
    static const char *names[VPN_ST_COUNT] = {
        "ok", "too_short", "bad_length", "unknown_spi", "replay", "icv", "bad_padding",
        "dummy", "bad_inner", "seq_exhausted", "hard_expired", "no_space", "too_big",
        "keepalive", "empty", "fatal_length", "bad_prefix", "close", "bad_arg", "wrong_sa",
    };
    if (s < 0 || s >= VPN_ST_COUNT) return "unknown";
    return names[s];
}

/* ------------------------------------------------------------------------------ SA */

vpn_esp_sa *vpn_esp_sa_new(const vpn_esp_sa_params *p, const uint8_t *key, size_t key_len,
                           const uint8_t *salt, int *status) {
    int dummy;
    if (!status) status = &dummy;
    *status = VPN_ST_BAD_ARG;
    if (!p || !key || !salt || (key_len != 16 && key_len != 32)) return NULL;
    /* RFC 4303 §2.1: SPI 0 is reserved, 1..255 are reserved by IANA. */
    if (p->spi < 256 || (p->direction != VPN_ESP_DIR_IN && p->direction != VPN_ESP_DIR_OUT) || p->esn > 1)
        return NULL;
    uint32_t window = p->replay_window ? p->replay_window : VPN_REPLAY_DEFAULT;
    if (window < VPN_REPLAY_MIN || window > VPN_REPLAY_MAX) return NULL;

    uint32_t nwords = 1;
    while ((uint64_t)nwords * 64 < (uint64_t)window + 64) nwords <<= 1;
    if (p->direction == VPN_ESP_DIR_OUT) nwords = 0;

    vpn_esp_sa *sa = calloc(1, sizeof(*sa) + (size_t)nwords * sizeof(uint64_t));
    if (!sa) { *status = VPN_ST_NO_SPACE; return NULL; }
    sa->spi = p->spi;
    sa->dir = p->direction;
    sa->esn = p->esn;
    memcpy(sa->salt, salt, VPN_ESP_SALT_LEN);
    sa->seq_max = p->esn ? UINT64_MAX : UINT32_MAX;
    sa->soft_packets = p->soft_packets;
    sa->hard_packets = p->hard_packets;
    sa->soft_bytes = p->soft_bytes;
    sa->hard_bytes = p->hard_bytes;
    sa->window = window;
    sa->nwords = nwords;
    sa->st.spi = p->spi;

    sa->cipher = EVP_CIPHER_fetch(NULL, key_len == 16 ? "AES-128-GCM" : "AES-256-GCM", NULL);
    sa->ctx = EVP_CIPHER_CTX_new();
    int enc = p->direction == VPN_ESP_DIR_OUT;
    if (!sa->cipher || !sa->ctx || !EVP_CipherInit_ex2(sa->ctx, sa->cipher, key, NULL, enc, NULL)) {
        vpn_esp_sa_free(sa);
        *status = VPN_ST_BAD_ARG;
        return NULL;
    }
    *status = VPN_OK;
    return sa;
}

void vpn_esp_sa_free(vpn_esp_sa *sa) {
    if (!sa) return;
    EVP_CIPHER_CTX_free(sa->ctx);   /* cleanses the key schedule */
    EVP_CIPHER_free(sa->cipher);
    OPENSSL_cleanse(sa->salt, sizeof(sa->salt));
    free(sa);
}

void vpn_esp_sa_get_stats(const vpn_esp_sa *sa, vpn_esp_sa_stats *out) {
    if (!sa || !out) return;
    *out = sa->st;
    out->seq = sa->seq;
}

uint32_t vpn_esp_sa_spi(const vpn_esp_sa *sa) { return sa ? sa->spi : 0; }

void vpn_esp_sa_set_seq(vpn_esp_sa *sa, uint64_t seq) {
    if (!sa) return;
    if (seq > sa->seq_max) seq = sa->seq_max;
    sa->seq = seq;
    if (sa->dir == VPN_ESP_DIR_OUT) {
        sa->st.flags &= ~(uint32_t)VPN_SA_SEQ_EXHAUSTED;
        if (seq == sa->seq_max) sa->st.flags |= VPN_SA_SEQ_EXHAUSTED;
        return;
    }
    memset(sa->bitmap, 0, (size_t)sa->nwords * sizeof(uint64_t));
    if (seq) {  /* as if `seq` had just been received */
        uint64_t bit = seq & ((uint64_t)sa->nwords * 64 - 1);
        sa->bitmap[bit >> 6] |= (uint64_t)1 << (bit & 63);
    }
}

void vpn_esp_sa_set_seq_ceiling(vpn_esp_sa *sa, uint64_t ceiling) {
    if (sa) sa->seq_ceiling = ceiling;
}

/* Lifetime (RFC 4301 §4.4.2.1): soft limit -> flag for the control plane to rekey;
 * hard limit -> the SA refuses further packets. */
static void account(vpn_esp_sa *sa, size_t inner_len) {
    sa->st.packets++;
    sa->st.bytes += inner_len;
    if ((sa->soft_packets && sa->st.packets >= sa->soft_packets) ||
        (sa->soft_bytes && sa->st.bytes >= sa->soft_bytes))
        sa->st.flags |= VPN_SA_SOFT_EXPIRED;
    if ((sa->hard_packets && sa->st.packets >= sa->hard_packets) ||
        (sa->hard_bytes && sa->st.bytes >= sa->hard_bytes))
        sa->st.flags |= VPN_SA_HARD_EXPIRED | VPN_SA_SOFT_EXPIRED;
}

/* Nonce = salt || IV and the AAD (RFC 4106 §4, §5); sets the nonce on the keyed ctx. */
static int start_packet(vpn_esp_sa *sa, const uint8_t *iv, uint32_t seq_lo, uint64_t seq) {
    uint8_t nonce[12], aad[12];
    int l, aad_len;
    memcpy(nonce, sa->salt, 4);
    memcpy(nonce + 4, iv, 8);
    put32(aad, sa->spi);
    if (sa->esn) {
        put32(aad + 4, (uint32_t)(seq >> 32));
        put32(aad + 8, seq_lo);
        aad_len = 12;
    } else {
        put32(aad + 4, seq_lo);
        aad_len = 8;
    }
    if (!EVP_CipherInit_ex2(sa->ctx, NULL, NULL, nonce, -1, NULL)) return 0;
    return EVP_CipherUpdate(sa->ctx, NULL, &l, aad, aad_len);
}

int vpn_esp_seal(vpn_esp_sa *sa, const uint8_t *in, size_t in_len, int next_header,
                 uint8_t *out, size_t out_cap, size_t *out_len) {
    if (!sa || sa->dir != VPN_ESP_DIR_OUT || !out || !out_len || (in_len && !in))
        return VPN_ST_BAD_ARG;
    *out_len = 0;
    int nh = next_header;
    if (nh == VPN_NH_AUTO) {
        /* RFC 4303 §2.6 tunnel mode: the inner packet's IP version gives Next Header. */
        if (in_len == 0) return VPN_ST_BAD_INNER;
        switch (in[0] >> 4) {
            case 4: nh = VPN_NH_IPV4; break;
            case 6: nh = VPN_NH_IPV6; break;
            default: return VPN_ST_BAD_INNER;
        }
    } else if (nh < 0 || nh > 255) {
        return VPN_ST_BAD_ARG;
    }
    if (in_len > VPN_ESP_MAX_INNER) return VPN_ST_TOO_BIG;
    if (sa->st.flags & VPN_SA_HARD_EXPIRED) { sa->st.refused++; return VPN_ST_HARD_EXPIRED; }
    if (sa->seq_ceiling && sa->seq >= sa->seq_ceiling) {  /* manual keys: not yet reserved */
        sa->st.refused++;
        return VPN_ST_SEQ_EXHAUSTED;
    }
    if (sa->seq >= sa->seq_max) {  /* RFC 4303 §3.3.3: the counter MUST NOT cycle */
        sa->st.flags |= VPN_SA_SEQ_EXHAUSTED;
        sa->st.refused++;
        return VPN_ST_SEQ_EXHAUSTED;
    }
    /* RFC 4303 §2.4: pad so that the ciphertext ends on a 4-octet boundary. */
    size_t pad = (4 - ((in_len + 2) & 3)) & 3;
    size_t ct_len = in_len + pad + 2;
    size_t total = VPN_ESP_HDR_LEN + ct_len + VPN_ESP_ICV_LEN;
    if (out_cap < total) return VPN_ST_NO_SPACE;
    uint8_t *ct = out + VPN_ESP_HDR_LEN;
    if (in != ct && ranges_overlap(in, in_len, out, total)) return VPN_ST_BAD_ARG;

    uint64_t seq = sa->seq + 1;
    uint8_t trailer[5];
    int l;
    for (size_t i = 0; i < pad; i++) trailer[i] = (uint8_t)(i + 1);   /* RFC 4303 §2.4: 1, 2, 3 */
    trailer[pad] = (uint8_t)pad;
    trailer[pad + 1] = (uint8_t)nh;

    put32(out, sa->spi);
    put32(out + 4, (uint32_t)seq);
    put32(out + 8, (uint32_t)(seq >> 32));    /* IV = the 64-bit counter (RFC 4106 §3.1) */
    put32(out + 12, (uint32_t)seq);
    if (!start_packet(sa, out + 8, (uint32_t)seq, seq)) return VPN_ST_BAD_ARG;
    if (in_len && !EVP_EncryptUpdate(sa->ctx, ct, &l, in, (int)in_len)) return VPN_ST_BAD_ARG;
    if (!EVP_EncryptUpdate(sa->ctx, ct + in_len, &l, trailer, (int)(pad + 2))) return VPN_ST_BAD_ARG;
    if (!EVP_EncryptFinal_ex(sa->ctx, ct + ct_len, &l)) return VPN_ST_BAD_ARG;
    if (!EVP_CIPHER_CTX_ctrl(sa->ctx, EVP_CTRL_GCM_GET_TAG, VPN_ESP_ICV_LEN, ct + ct_len))
        return VPN_ST_BAD_ARG;
    sa->seq = seq;
    if (seq == sa->seq_max) sa->st.flags |= VPN_SA_SEQ_EXHAUSTED;
    account(sa, in_len);
    *out_len = total;
    return VPN_OK;
}

/* RFC 4303 Appendix A2.2: the high 32 bits of an ESN from the low bits received and
 * the window (top T = Th:Tl, size W). Wraps mod 2^32 like the RFC's arithmetic. */
static uint64_t infer_seq(const vpn_esp_sa *sa, uint32_t seq_lo) {
    uint32_t th = (uint32_t)(sa->seq >> 32), tl = (uint32_t)sa->seq;
    uint32_t w = sa->window, bottom = tl - w + 1;
    uint32_t seq_hi;
    if (tl >= w - 1) {         /* Case A: the window lies within one subspace */
        seq_hi = seq_lo >= bottom ? th : th + 1;
    } else {                   /* Case B: the window spans two subspaces */
        seq_hi = seq_lo >= bottom ? th - 1 : th;
    }
    return ((uint64_t)seq_hi << 32) | seq_lo;
}

/* RFC 4303 §3.4.3: accept a new right edge or an unseen number inside the window. */
static int replay_ok(const vpn_esp_sa *sa, uint64_t seq) {
    if (seq == 0) return 0;
    if (seq > sa->seq) return 1;
    if (sa->seq - seq >= sa->window) return 0;
    uint64_t bit = seq & ((uint64_t)sa->nwords * 64 - 1);
    return !((sa->bitmap[bit >> 6] >> (bit & 63)) & 1);
}

static void replay_update(vpn_esp_sa *sa, uint64_t seq) {
    uint64_t mask = sa->nwords - 1;
    if (seq > sa->seq) {
        uint64_t from = sa->seq >> 6, to = seq >> 6;
        if (to - from >= sa->nwords) {
            memset(sa->bitmap, 0, (size_t)sa->nwords * sizeof(uint64_t));
        } else {
            for (uint64_t w = from + 1; w <= to; w++) sa->bitmap[w & mask] = 0;
        }
        sa->seq = seq;
    }
    uint64_t bit = seq & ((uint64_t)sa->nwords * 64 - 1);
    sa->bitmap[bit >> 6] |= (uint64_t)1 << (bit & 63);
}

int vpn_esp_open(vpn_esp_sa *sa, const uint8_t *esp, size_t esp_len, uint8_t *out,
                 size_t out_cap, size_t *inner_len, uint8_t *next_header) {
    if (!sa || sa->dir != VPN_ESP_DIR_IN || !esp || !out || !inner_len || !next_header)
        return VPN_ST_BAD_ARG;
    *inner_len = 0;
    *next_header = 0;
    if (esp_len < VPN_ESP_MIN_LEN) return VPN_ST_TOO_SHORT;
    if (esp_len > VPN_FRAME_MAX_MSG) return VPN_ST_BAD_LENGTH;
    if (get32(esp) != sa->spi) return VPN_ST_WRONG_SA;
    size_t ct_len = esp_len - VPN_ESP_HDR_LEN - VPN_ESP_ICV_LEN;
    const uint8_t *ct = esp + VPN_ESP_HDR_LEN;
    if (out_cap < ct_len) return VPN_ST_NO_SPACE;
    if (out != ct && ranges_overlap(out, ct_len, esp, esp_len)) return VPN_ST_BAD_ARG;
    if (sa->st.flags & VPN_SA_HARD_EXPIRED) { sa->st.refused++; return VPN_ST_HARD_EXPIRED; }

    uint32_t seq_lo = get32(esp + 4);
    uint64_t seq = sa->esn ? infer_seq(sa, seq_lo) : seq_lo;
    if (!replay_ok(sa, seq)) { sa->st.replay++; return VPN_ST_REPLAY; }   /* before the ICV */

    uint8_t tag[VPN_ESP_ICV_LEN];
    int l;
    memcpy(tag, esp + esp_len - VPN_ESP_ICV_LEN, VPN_ESP_ICV_LEN);
    if (!start_packet(sa, esp + 8, seq_lo, seq) ||
        !EVP_DecryptUpdate(sa->ctx, out, &l, ct, (int)ct_len) ||
        !EVP_CIPHER_CTX_ctrl(sa->ctx, EVP_CTRL_GCM_SET_TAG, VPN_ESP_ICV_LEN, tag) ||
        EVP_DecryptFinal_ex(sa->ctx, out + ct_len, &l) <= 0) {
        sa->st.icv++;
        return VPN_ST_ICV;
    }
    replay_update(sa, seq);   /* only after the ICV verified (RFC 4303 §3.4.3) */

    size_t pad = out[ct_len - 2];
    uint8_t nh = out[ct_len - 1];
    /* RFC 4303 §2.4: the receiver checks the pad length and the 1, 2, 3, ... bytes. */
    if (pad > ct_len - 2) { sa->st.bad_padding++; return VPN_ST_BAD_PADDING; }
    size_t ilen = ct_len - 2 - pad;
    for (size_t i = 0; i < pad; i++) {
        if (out[ilen + i] != (uint8_t)(i + 1)) { sa->st.bad_padding++; return VPN_ST_BAD_PADDING; }
    }
    account(sa, ilen);
    if (nh == VPN_NH_DUMMY) { sa->st.dummy++; return VPN_ST_DUMMY; }   /* RFC 4303 §2.6 */
    *inner_len = ilen;
    *next_header = nh;
    return VPN_OK;
}

/* ------------------------------------------------------------------------ SA table */
/* Open addressing, linear probing, backward-shift deletion (no tombstones). Inbound
 * SPIs are chosen by us at random, so the probe sequences stay short. */

struct vpn_sa_table {
    uint32_t cap;             /* power of two */
    uint32_t count;
    vpn_esp_sa **slots;
};

static inline uint32_t slot_of(uint32_t spi, uint32_t cap) {
    uint32_t h = spi * 0x9E3779B1u;
    h ^= h >> 15;
    return h & (cap - 1);
}

vpn_sa_table *vpn_sa_table_new(uint32_t hint) {
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)hint && cap < (1u << 30)) cap <<= 1;
    vpn_sa_table *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->slots = calloc(cap, sizeof(*t->slots));
    if (!t->slots) { free(t); return NULL; }
    t->cap = cap;
    return t;
}

void vpn_sa_table_free(vpn_sa_table *t) {
    if (!t) return;
    free(t->slots);
    free(t);
}

vpn_esp_sa *vpn_sa_table_lookup(const vpn_sa_table *t, uint32_t spi) {
    if (!t) return NULL;
    for (uint32_t i = slot_of(spi, t->cap);; i = (i + 1) & (t->cap - 1)) {
        vpn_esp_sa *sa = t->slots[i];
        if (!sa) return NULL;
        if (sa->spi == spi) return sa;
    }
}

static void place(vpn_esp_sa **slots, uint32_t cap, vpn_esp_sa *sa) {
    uint32_t i = slot_of(sa->spi, cap);
    while (slots[i]) i = (i + 1) & (cap - 1);
    slots[i] = sa;
}

int vpn_sa_table_insert(vpn_sa_table *t, vpn_esp_sa *sa) {
    if (!t || !sa || sa->dir != VPN_ESP_DIR_IN || vpn_sa_table_lookup(t, sa->spi)) return VPN_ST_BAD_ARG;
    if ((uint64_t)(t->count + 1) * 2 > t->cap) {   /* keep the load at most 1/2 */
        if (t->cap >= (1u << 30)) return VPN_ST_NO_SPACE;
        uint32_t ncap = t->cap * 2;
        vpn_esp_sa **ns = calloc(ncap, sizeof(*ns));
        if (!ns) return VPN_ST_NO_SPACE;
        for (uint32_t i = 0; i < t->cap; i++)
            if (t->slots[i]) place(ns, ncap, t->slots[i]);
        free(t->slots);
        t->slots = ns;
        t->cap = ncap;
    }
    place(t->slots, t->cap, sa);
    t->count++;
    return VPN_OK;
}

vpn_esp_sa *vpn_sa_table_remove(vpn_sa_table *t, uint32_t spi) {
    if (!t) return NULL;
    uint32_t mask = t->cap - 1, i = slot_of(spi, t->cap);
    while (t->slots[i] && t->slots[i]->spi != spi) i = (i + 1) & mask;
    vpn_esp_sa *found = t->slots[i];
    if (!found) return NULL;
    t->slots[i] = NULL;
    t->count--;
    /* Backward shift: move later entries of the cluster into the hole when their home
     * slot does not lie cyclically in (hole, j]. */
    for (uint32_t j = (i + 1) & mask; t->slots[j]; j = (j + 1) & mask) {
        uint32_t home = slot_of(t->slots[j]->spi, t->cap);
        int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            t->slots[j] = NULL;
            i = j;
        }
    }
    return found;
}

uint32_t vpn_sa_table_count(const vpn_sa_table *t) { return t ? t->count : 0; }
