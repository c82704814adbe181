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
