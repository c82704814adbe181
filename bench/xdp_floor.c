/* SPDX-License-Identifier: GPL-2.0 */
/* Reference XDP programs for bench/fastpath.py, compiled by BCC (one object, four programs):
 *
 * xdp_floor  the least a fast-path reply can cost: look the source MAC up in a hash map (as
 *            the fast path looks up the client), swap the MACs and return XDP_TX; a MAC not
 *            in the map is passed. Timed in BPF_PROG_TEST_RUN it is the floor; attached to
 *            the server veth it is the minimal responder, the ceiling of the live harness.
 * xdp_gen    the load generator: writes the frame from gen_frames and returns XDP_TX, so
 *            BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES sends it out of
 *            ctx->ingress_ifindex.
 * xdp_count  on the client veth: counts each frame by DHCP message type, then drops it.
 * xdp_pass   on the server veth in front of Kea: a veth delivers frames sent with XDP_TX
 *            by its peer only while an XDP program runs on it. Timed, it is the cost of
 *            the measurement itself; xdp_clock adds one clock read to it.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#ifndef FLOOR_ENTRIES
#define FLOOR_ENTRIES 1048576
#endif

/* The fast path's key (bpf/shared.h struct bt_client_key): MAC, two VLAN IDs, pad. */
struct floor_key {
	__u8 mac[6];
	__u16 outer_vlan;
	__u16 inner_vlan;
	__u16 pad;
};

/* Not preallocated, like the fast path's leases map. */
BPF_F_TABLE("hash", struct floor_key, __u64, floor_clients, FLOOR_ENTRIES, 1);

/* Counter slots: 0 not DHCP, 1-8 replies (op 2) by message type, 9 requests (op 1, as the
 * minimal responder reflects them), 10 BOOTP without a message type. */
#define SLOT_OTHER 0
#define SLOT_REQUEST 9
#define SLOT_UNTYPED 10
#define SLOTS 16
#define BOOTP_FIXED 236
#define DHCP_COOKIE 0x63825363
#define OPTIONS_WALKED 16
BPF_PERCPU_ARRAY(counts, __u64, SLOTS);

int xdp_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct floor_key key = {};
	__u8 tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(key.mac, eth->h_source, ETH_ALEN);
	if (!floor_clients.lookup(&key))
		return XDP_PASS;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

/* The frame xdp_gen sends. BPF_F_TEST_XDP_LIVE_FRAMES initialises a page with the frame
 * only when its page pool allocates it, and recycles the page after the peer is done with
 * it: whatever the server's program wrote in place (a reply, swapped MACs) would be sent
 * again. So each frame is rewritten here from the map. The test run's own frame is longer
 * than this one, so the kernel always rebuilds the frame's length from the context. */
#define GEN_MAX 1024
struct gen_frame {
	__u32 len;
	__u8 data[GEN_MAX];
};
BPF_ARRAY(gen_frames, struct gen_frame, 1);

int xdp_gen(struct xdp_md *ctx)
{
	struct gen_frame *f;
	__u32 zero = 0, len;
	int have;

	f = gen_frames.lookup(&zero);
	if (!f)
		return XDP_ABORTED;
	len = f->len;
	if (len < ETH_ZLEN || len > GEN_MAX)
		return XDP_ABORTED;
	have = bpf_xdp_get_buff_len(ctx);
	if (bpf_xdp_adjust_tail(ctx, (int)len - have) < 0)
		return XDP_ABORTED;
	/* Written so the verifier sees a length in [1, GEN_MAX]; the same for 1 <= len <= GEN_MAX. */
	if (bpf_xdp_store_bytes(ctx, 0, f->data, ((len - 1) & (GEN_MAX - 1)) + 1) < 0)
		return XDP_ABORTED;
	return XDP_TX;
}

int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* xdp_pass plus one clock read, as the fast path reads it: what a clock read costs here. */
BPF_PERCPU_ARRAY(clock_sink, __u64, 1);

int xdp_clock(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *sink = clock_sink.lookup(&zero);

	if (sink)
		*sink = bpf_ktime_get_boot_ns();
	return XDP_PASS;
}

static __always_inline __u32 dhcp_slot(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp;
	__u8 *bootp, *p;
	__u32 off;
	int i;

	if ((void *)(ip + 1) > data_end || eth->h_proto != htons(ETH_P_IP))
		return SLOT_OTHER;
	if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return SLOT_OTHER;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return SLOT_OTHER;
	if (udp->source != htons(67) && udp->dest != htons(67))
		return SLOT_OTHER;
	bootp = (void *)(udp + 1);
	if ((void *)(bootp + BOOTP_FIXED + 4) > data_end)
		return SLOT_OTHER;
	if (*(__be32 *)(bootp + BOOTP_FIXED) != htonl(DHCP_COOKIE))
		return SLOT_OTHER;
	if (bootp[0] == 1)
		return SLOT_REQUEST;
	off = BOOTP_FIXED + 4;
#pragma unroll
	for (i = 0; i < OPTIONS_WALKED; i++) {
		p = bootp + (off & 0x3ff);
		if ((void *)(p + 3) > data_end)
			break;
		if (p[0] == 255)
			break;
		if (p[0] == 0) {
			off += 1;
			continue;
		}
		if (p[0] == 53 && p[1] == 1)
			return p[2] >= 1 && p[2] <= 8 ? p[2] : SLOT_UNTYPED;
		off += 2 + p[1];
	}
	return SLOT_UNTYPED;
}

int xdp_count(struct xdp_md *ctx)
{
	__u32 slot = dhcp_slot((void *)(long)ctx->data, (void *)(long)ctx->data_end);
	__u64 *n = counts.lookup(&slot);

	if (n)
		*n += 1;
	return XDP_DROP;
}
