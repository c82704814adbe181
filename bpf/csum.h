/* SPDX-License-Identifier: GPL-2.0 */
/* Internet checksums (RFC 1071) over a reply assembled in the scratch buffer. */
#ifndef BRUSHTAIL_CSUM_H
#define BRUSHTAIL_CSUM_H

/* bpf_csum_diff takes at most 512 bytes a call, in multiples of 4. */
#define CSUM_CHUNK 256

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

#define IP_MAX_HDR 60
#define IP_HDR_COPY 64 /* a power of two above IP_MAX_HDR, for the verifier's length mask */

/* Whether a request's IPv4 header checksum holds: the slow path drops a frame whose does
 * not, so the program must not answer it either. The header is copied out first (the
 * verifier cannot bound a variable-length read of the packet); the zeros after it add
 * nothing to the sum, and a valid header sums to 0xffff. */
static __always_inline int ipv4_csum_valid(struct xdp_md *ctx, __u32 l3_off, __u32 hdr_len)
{
	__u32 words[IP_HDR_COPY / 4] = {};
	__s64 sum;

	if (hdr_len < sizeof(struct iphdr) || hdr_len > IP_MAX_HDR)
		return 0;
	if (bpf_xdp_load_bytes(ctx, l3_off, words, ((hdr_len - 1) & (IP_HDR_COPY - 1)) + 1) < 0)
		return 0;
	sum = bpf_csum_diff(0, 0, (__be32 *)words, sizeof(words), 0);
	return sum >= 0 && csum_fold((__u32)sum) == 0;
}

static __always_inline __u16 ipv4_csum(struct iphdr *ip)
{
	return csum_fold((__u32)bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
}

/**
 * udp_csum - checksum of a UDP datagram that follows its IPv4 header in @buf
 * @buf: the IPv4 header (20 bytes, no options), then the datagram
 * @udp_len: UDP length; the bytes after it, up to a multiple of 4, must be zero
 *
 * The pseudo-header's addresses are the last 8 bytes of the IPv4 header, so one sum runs
 * from there; protocol and length are added to the seed.
 */
static __always_inline __u16 udp_csum(__u8 *buf, __u32 udp_len)
{
	__u32 from = offsetof(struct iphdr, saddr);
	__u32 fixed = 8 + CSUM_CHUNK; /* saddr, daddr and the first bytes of the datagram */
	__u32 rest = ((udp_len + 3) & ~3u) - CSUM_CHUNK;
	__s64 sum;
	__u16 csum;

	sum = bpf_csum_diff(0, 0, (__be32 *)(buf + from), fixed,
			    htons(IPPROTO_UDP) + htons((__u16)udp_len));
	if (sum < 0)
		return 0;
	rest &= 0x1fc;
	if (rest) {
		sum = bpf_csum_diff(0, 0, (__be32 *)(buf + from + fixed), rest, (__u32)sum);
		if (sum < 0)
			return 0;
	}
	csum = csum_fold((__u32)sum);
	return csum ? csum : 0xffff; /* 0 means "no checksum" in UDP over IPv4 */
}

#endif
