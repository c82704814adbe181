/* SPDX-License-Identifier: GPL-2.0 */
/* Internet checksums (RFC 1071), as partial sums in the CPU's byte order (what
 * bpf_csum_diff returns), added up and folded once at the end. */
#ifndef BRUSHTAIL_CSUM_H
#define BRUSHTAIL_CSUM_H

/* Folds a sum of partial sums to 16 bits, without the final complement. */
static __always_inline __u16 csum_fold16(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* A partial sum of bytes that start at an odd offset of the summed data counts with its
 * bytes swapped (RFC 1071 section 2(B)). */
static __always_inline __u16 csum_at(__u16 partial, __u32 offset)
{
	return offset & 1 ? (__u16)((partial << 8) | (partial >> 8)) : partial;
}

/* The partial sum of `n` 32-bit words at `p` (n a constant: the loop unrolls). */
static __always_inline __u64 csum_words(const void *p, int n)
{
	const __u32 *w = p;
	__u64 sum = 0;
	int i;

#pragma unroll
	for (i = 0; i < n; i++)
		sum += w[i];
	return sum;
}

#define IP_MAX_HDR 60
#define IP_HDR_COPY 64 /* a power of two above IP_MAX_HDR, for the verifier's length mask */

/* Whether a request's IPv4 header checksum holds: the slow path drops a frame whose does
 * not, so the program must not answer it either. The header is copied out first (the
 * verifier cannot bound a variable-length read of the packet); the zeros after it add
 * nothing to the sum, and a valid header sums to 0xffff. */
static __always_inline int ipv4_csum_valid(struct xdp_md *ctx, struct iphdr *ip, __u32 l3_off,
					   __u32 hdr_len)
{
	__u32 words[IP_HDR_COPY / 4] = {};
	__s64 sum;

	if (hdr_len == sizeof(struct iphdr)) /* the usual case: sum it where it is */
		return csum_fold16(csum_words(ip, sizeof(*ip) / 4)) == 0xffff;
	if (hdr_len < sizeof(struct iphdr) || hdr_len > IP_MAX_HDR)
		return 0;
	if (bpf_xdp_load_bytes(ctx, l3_off, words, ((hdr_len - 1) & (IP_HDR_COPY - 1)) + 1) < 0)
		return 0;
	sum = bpf_csum_diff(0, 0, (__be32 *)words, sizeof(words), 0);
	return sum >= 0 && csum_fold16((__u32)sum) == 0xffff;
}

static __always_inline __u16 ipv4_csum(struct iphdr *ip)
{
	return ~csum_fold16(csum_words(ip, sizeof(*ip) / 4));
}

/* A UDP checksum as sent: 0 means "no checksum" in UDP over IPv4, so it becomes 0xffff. */
static __always_inline __u16 udp_csum_final(__u64 sum)
{
	__u16 csum = ~csum_fold16(sum);

	return csum ? csum : 0xffff;
}

#endif
