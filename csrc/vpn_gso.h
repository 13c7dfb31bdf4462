/* vpn_gso.h: TUN offloads on buffers (virtio_net_hdr, GSO segmentation, GRO coalescing).
 *
 * Pure functions: no I/O, no allocation, every length checked before use. A malformed
 * packet is a negative status code (VPN_GSO_E*), never an out-of-bounds access.
 *
 * Flow (see vpn/io/offload.py for the readable reference that the tests hold equal):
 *   send:    TUN read -> frame = [virtio_net_hdr 10 B][IP packet]
 *            -> vpn_gso_segment(): MTU-sized IP packets with full checksums, one per slot
 *   receive: IP packets (offsets/lengths in an arena)
 *            -> vpn_gro_coalesce(): [virtio_net_hdr][IP packet] records packed in one
 *               buffer, one write() each; consecutive TCP segments of a flow merged into
 *               one super-packet flagged NEEDS_CSUM + GSO TCPV4/TCPV6.
 *
 * virtio_net_hdr (virtio spec 1.1 §5.1.6, little-endian, no num_buffers since the TUN is
 * set up with TUNSETVNETHDRSZ 10): flags u8, gso_type u8, hdr_len le16, gso_size le16,
 * csum_start le16, csum_offset le16.
 */
#ifndef VPN_GSO_H
#define VPN_GSO_H
#include <stdint.h>
#include <stddef.h>

/* cdef-begin */
#define VPN_VNET_HDR_LEN 10
#define VPN_VNET_F_NEEDS_CSUM 1
#define VPN_VNET_F_DATA_VALID 2
#define VPN_VNET_GSO_NONE 0
#define VPN_VNET_GSO_TCPV4 1
#define VPN_VNET_GSO_UDP 3
#define VPN_VNET_GSO_TCPV6 4
#define VPN_VNET_GSO_UDP_L4 5
#define VPN_VNET_GSO_ECN 128

/* Largest IP packet handled (IPv4 total length / TUN read slot without the header). */
#define VPN_GSO_MAX_PACKET 65535
/* Coalescing looks at most this many packets at a time (stack state, no allocation)
 * and keeps at most this many flows open at once (oldest closed first). */
#define VPN_GRO_MAX_BATCH 256
#define VPN_GRO_MAX_FLOWS 64

/* Status codes (negative; the Python reference raises GsoError with the same code). */
#define VPN_GSO_OK 0
#define VPN_GSO_ESHORT -1
#define VPN_GSO_EHDR -2
#define VPN_GSO_EIP -3
#define VPN_GSO_EL4 -4
#define VPN_GSO_ESIZE -5
#define VPN_GSO_ETOOBIG -6
#define VPN_GSO_ENOSPACE -7
#define VPN_GSO_EARG -8

/* Counters; the functions only add to them (zero the struct once, read it any time). */
struct vpn_gso_stats {
    uint64_t seg_in;         /* frames given to segmentation */
    uint64_t seg_gso_in;     /* ... of which were GSO super-packets (gso_type != NONE) */
    uint64_t seg_out;        /* packets produced by segmentation */
    uint64_t seg_csum;       /* non-GSO frames whose NEEDS_CSUM checksum was finished */
    uint64_t seg_malformed;  /* frames dropped: bad header, length or GSO parameters */
    uint64_t seg_toobig;     /* frames dropped: a segment exceeds the output slot */
    uint64_t gro_in;         /* packets given to coalescing */
    uint64_t gro_out;        /* records written by coalescing */
    uint64_t gro_super;      /* ... of which were merged super-packets */
    uint64_t gro_merged;     /* packets that went into a super-packet */
    uint64_t gro_bad_csum;   /* TCP packets passed through because a checksum failed */
};

/* Complete a NEEDS_CSUM packet in place: `pkt[csum_start + csum_offset]` holds the
 * pseudo-header sum; store the checksum over pkt[csum_start:len] (0 sent as 0xffff).
 * Returns VPN_GSO_OK or VPN_GSO_EHDR if the offsets do not fit in len. */
int vpn_gso_finish_csum(uint8_t *pkt, size_t len, uint16_t csum_start, uint16_t csum_offset);

/* Segment one frame read from the TUN (virtio_net_hdr + IP packet) into `out` slots:
 * slot i starts at out + i * out_stride and holds at most out_cap bytes; out_lens[i]
 * receives its length. A non-GSO frame yields one packet (NEEDS_CSUM finished).
 * Returns the number of packets (>= 1) or a negative VPN_GSO_E* status; on error the
 * slots hold garbage. VPN_GSO_ETOOBIG: a packet is larger than out_cap;
 * VPN_GSO_ENOSPACE: more than max_out packets would be needed. */
int vpn_gso_segment(const uint8_t *frame, size_t frame_len, uint8_t *out, size_t out_stride,
                    size_t out_cap, uint32_t *out_lens, uint32_t max_out);

/* Segment a batch of frames: frame i at in + i * in_stride, in_lens[i] bytes (as
 * vpn_tun_read_batch leaves them). Malformed and too-big frames are dropped and counted.
 * Stops before a frame whose packets do not fit in the remaining slots; *n_consumed
 * tells how many frames were handled (the caller continues from there).
 * Returns the number of packets written to the `out` slots. */
int vpn_gso_segment_batch(const uint8_t *in, size_t in_stride, const uint32_t *in_lens,
                          uint32_t n_in, uint8_t *out, size_t out_stride, size_t out_cap,
                          uint32_t *out_lens, uint32_t max_out, uint32_t *n_consumed,
                          struct vpn_gso_stats *stats);

/* Merge rules: TCP over IPv4 (no options, not a fragment) or IPv6 (no extension
 * headers); IP and TCP checksums verified first (a bad one passes through alone,
 * counted); same addresses and ports; IPv4 TOS, TTL, DF and IDs increasing by one, or
 * IPv6 traffic class, flow label and hop limit; same ACK number, window and TCP options;
 * flags ACK, or ACK|PSH on the last; seq contiguous; every payload equal to the first
 * (gso_size) but the last may be shorter; merged IP length <= 65535. A non-mergeable
 * packet of an open flow closes that flow's group, so a flow's packets keep their order.
 *
 * Coalesce IP packets (packet i at base + offs[i], lens[i] bytes) into records
 * [virtio_net_hdr][IP packet] packed into `out`: record j at out + out_offs[j],
 * out_lens[j] bytes, ready for one write() each. Output order is the order of each
 * record's first packet; packets of one flow keep their order.
 * out_cap must be >= sum(lens) + VPN_VNET_HDR_LEN * n and max_out >= n (VPN_GSO_ENOSPACE
 * otherwise, before anything is written). Returns the number of records. */
int vpn_gro_coalesce(const uint8_t *base, const uint32_t *offs, const uint32_t *lens,
                     uint32_t n, uint8_t *out, size_t out_cap, uint32_t *out_offs,
                     uint32_t *out_lens, uint32_t max_out, struct vpn_gso_stats *stats);
/* cdef-end */

#endif
