/* vpn_esp.h: ESP (RFC 4303) with AES-GCM (RFC 4106): SAs, seal/open, replay, SA table.
 *
 * Usable from any C file of the extension (the TUN dataplane) and, through cffi, from
 * vpn/fastpath.py. Every function returns a status code (VPN_OK or a VPN_ST_* reason)
 * or a count; nothing aborts, nothing allocates per packet.
 *
 * Wire layout of one ESP packet (RFC 4303 §2, RFC 4106 §3):
 *
 *   0      4      8              16                                    n-16     n
 *   | SPI  | seq  | IV (8 octets) | inner packet | pad 1,2,3 | pl | nh | ICV (16) |
 *   \__ VPN_ESP_HDR_LEN (16) ____/ \__ ciphertext (4-octet aligned) ___/
 *
 * Buffer layout for sealing without a copy: put the inner packet at
 *   slot + VPN_ESP_HEADROOM (2 + 16: room for the RFC 9329 Length and the ESP header)
 * and keep VPN_ESP_TAILROOM (pad up to 3 + 2 + ICV 16 = 21) free behind it. Then
 *   vpn_esp_seal(sa, slot + 18, len, 0, slot + 2, cap - 2, &esp_len)
 * seals in place (in == out + VPN_ESP_HDR_LEN is the one overlap allowed) and
 *   vpn_frame_put_len(slot, esp_len)  (vpn_frame.h)
 * turns it into a TCP frame. Opening is the mirror: vpn_esp_open(sa, esp, n, esp + 16,
 * ...) leaves the inner packet at esp + VPN_ESP_HDR_LEN.
 *
 * Sequence numbers and IV (RFC 4106 §3.1, RFC 4303 §2.2): the IV is the 64-bit packet
 * counter, nonce = salt || IV. With ESN the AAD is SPI || seq_hi || seq_lo (12 octets),
 * without it SPI || seq (8 octets) (RFC 4106 §5). The counter never wraps: after 2^32-1
 * (2^64-1 with ESN) vpn_esp_seal returns VPN_ST_SEQ_EXHAUSTED.
 *
 * Threading: an SA and a table are used by one thread at a time (the event loop). The
 * control plane inserts/removes SAs between batches; a removed SA stays valid until its
 * owner frees it, so a batch never sees a dangling pointer.
 */
#ifndef VPN_ESP_H
#define VPN_ESP_H
#include <stdint.h>
#include <stddef.h>

/* cdef-begin */
/* --- layout -------------------------------------------------------------------- */
#define VPN_ESP_SPI_LEN 4
#define VPN_ESP_SEQ_LEN 4
#define VPN_ESP_IV_LEN 8
#define VPN_ESP_HDR_LEN 16          /* SPI + seq + IV, in front of the ciphertext */
#define VPN_ESP_ICV_LEN 16          /* RFC 4106 §6: 16-octet ICV (transform 20) */
#define VPN_ESP_SALT_LEN 4          /* RFC 4106 §8.1: last 4 octets of the KEYMAT slice */
#define VPN_ESP_TRAILER_MAX 21      /* pad (0..3) + pad length + next header + ICV */
#define VPN_ESP_OVERHEAD_MAX 37     /* HDR + TRAILER_MAX */
#define VPN_ESP_MIN_LEN 34          /* HDR + pad length + next header + ICV */
#define VPN_FRAME_LEN_LEN 2         /* RFC 9329 §3: 16-bit Length before each message */
#define VPN_ESP_HEADROOM 18         /* FRAME_LEN_LEN + HDR: room in front of an inner packet */
#define VPN_ESP_TAILROOM 21         /* room behind an inner packet for an in-place seal */
#define VPN_FRAME_MAX_MSG 65533     /* RFC 9329 §3: Length <= 65535 counts itself */
#define VPN_ESP_MAX_INNER 65496     /* largest inner packet whose frame fits: 65533 - 37 */

/* --- directions, next headers ------------------------------------------------- */
#define VPN_ESP_DIR_IN 0            /* opens packets (decrypt ctx, replay window) */
#define VPN_ESP_DIR_OUT 1           /* seals packets (encrypt ctx, sequence counter) */
#define VPN_NH_AUTO 0               /* seal: Next Header from the IP version nibble */
#define VPN_NH_IPV4 4
#define VPN_NH_IPV6 41
#define VPN_NH_DUMMY 59             /* RFC 4303 §2.6: dummy packet, dropped on receive */

#define VPN_REPLAY_DEFAULT 1024     /* packets */
#define VPN_REPLAY_MIN 32           /* RFC 4303 §3.4.3: at least 32 */
#define VPN_REPLAY_MAX 65536

/* --- status codes: VPN_OK or one drop reason (vpn_status_name gives the name) --- */
#define VPN_OK 0
#define VPN_ST_TOO_SHORT 1          /* shorter than the smallest valid packet/frame */
#define VPN_ST_BAD_LENGTH 2         /* a length that cannot be (e.g. over the frame max) */
#define VPN_ST_UNKNOWN_SPI 3        /* no inbound SA with this SPI */
#define VPN_ST_REPLAY 4             /* duplicate or left of the window (RFC 4303 §3.4.3) */
#define VPN_ST_ICV 5                /* authentication failed */
#define VPN_ST_BAD_PADDING 6        /* pad length too big or pad bytes not 1,2,3,... */
#define VPN_ST_DUMMY 7              /* Next Header 59: dropped (RFC 4303 §2.6) */
#define VPN_ST_BAD_INNER 8          /* seal: empty packet or IP version not 4 or 6 */
#define VPN_ST_SEQ_EXHAUSTED 9      /* seal: the counter would wrap; rekey */
#define VPN_ST_HARD_EXPIRED 10      /* the SA reached a hard lifetime limit; rekey */
#define VPN_ST_NO_SPACE 11          /* the output buffer or descriptor array is full */
#define VPN_ST_TOO_BIG 12           /* inner packet too big for one frame */
#define VPN_ST_KEEPALIVE 13         /* NAT keepalive 0xFF: dropped silently (RFC 9329 §6.6) */
#define VPN_ST_EMPTY 14             /* Length 2: empty message, ignored (RFC 9329 §3) */
#define VPN_ST_FATAL_LENGTH 15      /* Length 0 or 1: close the stream (RFC 9329 §3) */
#define VPN_ST_BAD_PREFIX 16        /* stream did not start with "IKETCP": close */
#define VPN_ST_CLOSE 17             /* stream must be closed (fatal, or too many bad frames) */
#define VPN_ST_BAD_ARG 18           /* caller error (wrong direction, bad key size, ...) */
#define VPN_ST_WRONG_SA 19          /* per-packet open: the packet's SPI is not this SA's */
#define VPN_ST_COUNT 20

/* --- SA flags (vpn_esp_sa_stats.flags) ------------------------------------------ */
#define VPN_SA_SOFT_EXPIRED 1       /* a soft packet/byte limit was reached: rekey now */
#define VPN_SA_HARD_EXPIRED 2       /* a hard limit was reached: the SA refuses packets */
#define VPN_SA_SEQ_EXHAUSTED 4      /* outbound counter at its maximum */

/* Parameters of one SA direction. Limits of 0 mean "no limit". */
typedef struct vpn_esp_sa_params {
    uint32_t spi;                   /* network SPI (host order here), never 0 */
    uint32_t direction;             /* VPN_ESP_DIR_IN or VPN_ESP_DIR_OUT */
    uint32_t esn;                   /* 1: 64-bit extended sequence numbers (RFC 4303 §2.2.1) */
    uint32_t replay_window;         /* inbound window in packets; 0 = VPN_REPLAY_DEFAULT */
    uint64_t soft_packets;
    uint64_t hard_packets;
    uint64_t soft_bytes;            /* inner (plaintext) bytes */
    uint64_t hard_bytes;
} vpn_esp_sa_params;

/* What the control plane reads to decide on a rekey, plus per-SA drop counters. */
typedef struct vpn_esp_sa_stats {
    uint32_t spi;
    uint32_t flags;                 /* VPN_SA_* */
    uint64_t seq;                   /* out: last sequence number sent; in: window top */
    uint64_t packets;               /* lifetime use: packets sealed / opened and authenticated */
    uint64_t bytes;                 /* lifetime use: inner bytes */
    uint64_t replay;                /* inbound drops by reason */
    uint64_t icv;
    uint64_t bad_padding;
    uint64_t dummy;
    uint64_t refused;               /* seal/open refused: hard expired or seq exhausted */
} vpn_esp_sa_stats;

typedef struct vpn_esp_sa vpn_esp_sa;

/* Create one SA direction. key_len is 16 or 32 (AES-128/256-GCM); salt is 4 octets.
 * Returns NULL on a bad argument or if OpenSSL fails (*status says which; may be NULL).
 * The key is copied into the OpenSSL context only; the caller wipes its copy. */
vpn_esp_sa *vpn_esp_sa_new(const vpn_esp_sa_params *params, const uint8_t *key,
                           size_t key_len, const uint8_t *salt, int *status);
void vpn_esp_sa_free(vpn_esp_sa *sa);
void vpn_esp_sa_get_stats(const vpn_esp_sa *sa, vpn_esp_sa_stats *out);
uint32_t vpn_esp_sa_spi(const vpn_esp_sa *sa);
/* Outbound: the next packet gets seq + 1. Inbound: seq becomes the window top and the
 * window is cleared. For tests (crossing 2^32) and benchmarks. */
void vpn_esp_sa_set_seq(vpn_esp_sa *sa, uint64_t seq);
/* Outbound: never send a sequence number above `ceiling` (0 = no ceiling); sealing
 * beyond it is refused (VPN_ST_SEQ_EXHAUSTED, counted as refused, no flag set). Manual
 * keying persists reservations and raises the ceiling as they are written (RFC 4106 §2). */
void vpn_esp_sa_set_seq_ceiling(vpn_esp_sa *sa, uint64_t ceiling);

/* Seal one inner packet: writes SPI | seq | IV | ciphertext | ICV to out and the ESP
 * packet length to *out_len. next_header VPN_NH_AUTO takes it from the IP version
 * nibble (4 -> 4, 6 -> 41; else VPN_ST_BAD_INNER); VPN_NH_DUMMY (59) seals a dummy
 * packet (in_len may be 0). `in` may be out + VPN_ESP_HDR_LEN (in place); otherwise the
 * two buffers must not overlap. out_cap must hold in_len + VPN_ESP_OVERHEAD_MAX. */
int vpn_esp_seal(vpn_esp_sa *sa, const uint8_t *in, size_t in_len, int next_header,
                 uint8_t *out, size_t out_cap, size_t *out_len);

/* Open one ESP packet (esp, esp_len) with an inbound SA: replay check, decrypt and
 * verify, padding check, window update. The plaintext is written to out, which may be
 * esp + VPN_ESP_HDR_LEN (in place) or a separate buffer of at least esp_len - 32
 * octets. On VPN_OK the inner packet is out[0 .. *inner_len) and *next_header is set.
 * VPN_ST_DUMMY: authenticated dummy packet, nothing to deliver. */
int vpn_esp_open(vpn_esp_sa *sa, const uint8_t *esp, size_t esp_len, uint8_t *out,
                 size_t out_cap, size_t *inner_len, uint8_t *next_header);

/* --- SA table: inbound SAs by SPI ----------------------------------------------- */
typedef struct vpn_sa_table vpn_sa_table;

vpn_sa_table *vpn_sa_table_new(uint32_t capacity_hint);
/* Frees the table, not the SAs in it (their owner frees them). */
void vpn_sa_table_free(vpn_sa_table *t);
/* VPN_OK, VPN_ST_BAD_ARG (NULL, outbound SA or SPI already present), VPN_ST_NO_SPACE. */
int vpn_sa_table_insert(vpn_sa_table *t, vpn_esp_sa *sa);
/* Returns the removed SA (still owned by the caller) or NULL. */
vpn_esp_sa *vpn_sa_table_remove(vpn_sa_table *t, uint32_t spi);
vpn_esp_sa *vpn_sa_table_lookup(const vpn_sa_table *t, uint32_t spi);
uint32_t vpn_sa_table_count(const vpn_sa_table *t);

const char *vpn_status_name(int status);
/* cdef-end */

#endif
