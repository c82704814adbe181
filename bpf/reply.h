/* SPDX-License-Identifier: GPL-2.0 */
/* Turns the request frame into an OFFER or ACK, in place.
 *
 * The frame is resized to the reply's length first, then written whole, every byte of it,
 * with direct stores: what the reply keeps of the request (VLAN tags, xid, flags, giaddr,
 * chaddr) is read beforehand. The fields match what the slow path's codec writes
 * (brushtaild/engine/server.py, Server._reply), so both paths answer byte for byte the
 * same; tests/bpf compares them. The options are the template userspace rendered, option
 * 61 echoed (RFC 6842) if the request carried it, option 82 echoed (RFC 3046: last), the
 * end option and zero padding to the 300-byte BOOTP minimum.
 *
 * Nothing here may fail after the frame has started to change: everything that can fail
 * (sizes, option 57, copying options 61 and 82 out) is done first, by the caller's order.
 */
#ifndef BRUSHTAIL_REPLY_H
#define BRUSHTAIL_REPLY_H

#include "shared.h"
#include "maps.h"
#include "parsing.h"
#include "csum.h"

#define BOOTREPLY 2
#define DHCP_OFFER 2
#define DHCP_ACK 5
#define BOOTP_BROADCAST 0x8000
#define BOOTP_MIN_LEN 300      /* RFC 951: replies are padded to this */
#define OPTIONS_MIN (BOOTP_MIN_LEN - sizeof(struct bootp_hdr))
#define MIN_IP_DATAGRAM 576    /* RFC 2131: every client accepts this much */
#define REPLY_TTL 64
#define UDP_IP_HLEN (sizeof(struct iphdr) + sizeof(struct udphdr))
/* Offsets from the IPv4 header of a reply (which never has IP options). */
#define R_UDP sizeof(struct iphdr)
#define R_BOOTP UDP_IP_HLEN
#define R_OPTIONS (R_BOOTP + sizeof(struct bootp_hdr))
/* The options' offset within the UDP checksum's data (UDP header + BOOTP): even. */
#define CSUM_OPTIONS_OFF (sizeof(struct udphdr) + sizeof(struct bootp_hdr))
#define L2_MAX (ETH_HLEN + VLAN_MAX_DEPTH * sizeof(struct vlan_hdr))
#define L2_MASK 31 /* masks an offset <= L2_MAX for the verifier */
#define L2_KEPT 12 /* bytes after the MACs kept: the tags and EtherType (L2_MAX - 12 <= 12) */
#define BOOTP_SUMMED 44 /* BOOTP bytes before sname: sname and file are zero in a reply */
#define RELAY_COPY_MAX (2 + 255) /* option 82 with its code and length */
#define CLIENT_ID_COPY_MAX (2 + BT_MAX_CLIENT_ID) /* option 61 with its code and length */


struct reply_addr {
	__be32 ip;
	__be16 port;
	__u8 mac[ETH_ALEN];
};

/* What the reply keeps of the request, read before the frame moves. */
struct kept_fields {
	__u32 l2[L2_KEPT / 4]; /* the frame's bytes 12-23: VLAN tags, EtherType, then IPv4 */
	__be32 xid;
	__be16 flags;
	__be32 giaddr;
	__u8 chaddr[16];
};

/* Everything about a reply, decided before the frame is touched. */
struct reply_plan {
	__u32 l3_off;     /* where the IPv4 header starts (after Ethernet and VLAN tags) */
	__u32 frame_len;  /* of the request */
	__u32 tpl_len;
	__u32 client_id_len; /* option 61 with its code and length, or 0 (echoed: the lease's) */
	__u32 relay_len;  /* option 82 with its code and length, or 0 */
	__u32 opt_len;    /* tpl_len + client_id_len + relay_len */
	__u32 bootp_len;
	struct reply_addr to;
	__be32 server_id;
	__be32 yiaddr;
	__be32 ciaddr;
	__u64 server_mac; /* low 6 bytes */
	struct kept_fields kept;
};

/* Reads what the reply keeps of the request. Returns 0, or -1 if the frame is too short
 * (it never is: a request has a BOOTP header). */
static __always_inline int keep_fields(void *data, void *end, struct bootp_hdr *b,
				       struct kept_fields *kept)
{
	__u32 *l2 = data + ETH_ALEN * 2;

	if ((void *)(l2 + L2_KEPT / 4) > end)
		return -1;
	kept->l2[0] = l2[0];
	kept->l2[1] = l2[1];
	kept->l2[2] = l2[2];
	kept->xid = b->xid;
	kept->flags = b->flags;
	kept->giaddr = b->giaddr;
	__builtin_memcpy(kept->chaddr, b->chaddr, sizeof(kept->chaddr));
	return 0;
}

/* RFC 2131 section 4.1, in brushtaild/engine/addressing.py's order (NAKs never come here).
 * `relay` is the request's relay, NULL when giaddr is 0. */
static __always_inline void reply_destination(struct ethhdr *eth, struct bootp_hdr *req,
					      struct bt_relay *relay, __be32 yiaddr,
					      struct reply_addr *to)
{
	if (relay) {
		to->ip = req->giaddr;
		to->port = htons(DHCP_SERVER_PORT);
		__builtin_memcpy(to->mac, relay->next_hop, ETH_ALEN);
	} else if (req->ciaddr) {
		to->ip = req->ciaddr;
		to->port = htons(DHCP_CLIENT_PORT);
		__builtin_memcpy(to->mac, eth->h_source, ETH_ALEN);
	} else if (req->flags & htons(BOOTP_BROADCAST)) {
		to->ip = 0xffffffff;
		to->port = htons(DHCP_CLIENT_PORT);
		__builtin_memset(to->mac, 0xff, ETH_ALEN);
	} else {
		to->ip = yiaddr;
		to->port = htons(DHCP_CLIENT_PORT);
		__builtin_memcpy(to->mac, req->chaddr, ETH_ALEN);
	}
}

static __always_inline __u32 reply_bootp_len(__u32 opt_len)
{
	__u32 len = sizeof(struct bootp_hdr) + opt_len + 1; /* + the end option */

	return len < BOOTP_MIN_LEN ? BOOTP_MIN_LEN : len;
}

/* Copies option 82 (code and length included) into buf, zero-padded to a multiple of 4
 * for bpf_csum_diff: it must be read before the frame is resized. Returns its length, or 0
 * if it cannot be copied. */
static __always_inline __u32 save_relay_info(struct xdp_md *ctx, __u8 *buf,
					     struct dhcp_request *req)
{
	__u32 rlen = req->relay_len;

	if (rlen == 0 || rlen > 255)
		return 0;
	buf[0] = OPT_RELAY_AGENT_INFO;
	buf[1] = rlen;
	/* Written so the verifier sees a length in [1, 256]. */
	if (bpf_xdp_load_bytes(ctx, req->relay_off, buf + 2, ((rlen - 1) & 0xff) + 1) < 0)
		return 0;
	*(__u32 *)(buf + 2 + rlen) = 0;
	return 2 + rlen;
}

/* Moves the frame's edges so it is `delta` bytes longer (shorter, if negative); its content
 * is written afterwards. A frame grows at its front: a driver in native mode, generic XDP
 * and BPF_PROG_TEST_RUN all leave XDP_PACKET_HEADROOM before a frame, while the room after
 * it depends on how it came in (a veth hands on a forwarded skb with little tailroom), so
 * the end is moved only when the front cannot be. Returns 0, or -1 with the frame as it
 * was. */
static __always_inline int resize(struct xdp_md *ctx, int delta)
{
	if (!delta || bpf_xdp_adjust_head(ctx, -delta) == 0)
		return 0;
	return bpf_xdp_adjust_tail(ctx, delta) == 0 ? 0 : -1;
}

/* Copies `n` bytes (8 <= n <= max) of `src` (a buffer of at least `max` bytes) to
 * frame offset `off`: whole words, then the word that ends at n (which may overlap the last
 * whole one), so nothing past n is written. Returns 0, or -1 if the frame ends first. */
static __always_inline int copy_to_frame(void *data, void *end, __u32 off, const __u8 *src,
					 __u32 n, const __u32 max)
{
	__u32 at;
	__u8 *p;
	int i;

	if (n < 8 || n > max)
		return -1;
#pragma unroll
	for (i = 0; i < max / 8; i++) {
		if (i * 8 + 8 > n)
			break;
		p = data + ((off + i * 8) & MAX_FRAME_OFFSET);
		if ((void *)(p + 8) > end)
			return -1;
		*(__u64 *)p = *(const __u64 *)(src + i * 8);
	}
	at = n - 8;
	verifier_keep(at); /* the compiler can tell the check below holds; the verifier not */
	if (at > max - 8)
		return -1;
	p = data + ((off + at) & MAX_FRAME_OFFSET);
	if ((void *)(p + 8) > end)
		return -1;
	*(__u64 *)p = *(const __u64 *)(src + at);
	return 0;
}

/* Writes option 61 (code, length, then the lease's identity, which is the request's:
 * identity_matches) at frame offset `off`, after the template. It is copied from `buf`
 * (BT_SCRATCH_ID_SIZE bytes), laid out as the frame's 8 bytes before the option and the
 * option, so that copy_to_frame() has the 8 bytes its last word may reach back over and
 * writes nothing past the option. Returns 0, or -1 if the frame is too short. */
static __always_inline int write_client_id(void *data, void *end, __u32 off, __u8 *buf,
					   struct bt_lease *lease)
{
	__u8 *before = data + ((off - 8) & MAX_FRAME_OFFSET);

	if ((void *)(before + 8) > end)
		return -1;
	*(__u64 *)buf = *(__u64 *)before;
	buf[8] = OPT_CLIENT_ID;
	buf[9] = lease->id_len;
	__builtin_memcpy(buf + 10, lease->client_id, BT_MAX_CLIENT_ID);
	return copy_to_frame(data, end, off - 8, buf, 8 + 2 + lease->id_len,
			     8 + CLIENT_ID_COPY_MAX);
}

/* The partial sum of option 61 as write_client_id() writes it: its code and length, then
 * the identity (zero after its length) from an even offset. */
static __always_inline __u64 csum_client_id(struct bt_lease *lease)
{
	return OPT_CLIENT_ID + ((__u32)lease->id_len << 8) +
	       csum_words(lease->client_id, BT_MAX_CLIENT_ID / 4);
}

/* The frame once it holds the reply: its start and end in `data` and `end`, its IPv4
 * header returned; NULL if the frame is shorter than a reply (never, once resized). */
static __always_inline struct iphdr *reply_ip(struct xdp_md *ctx, __u32 l3_off, void **data,
					      void **end)
{
	void *start = (void *)(long)ctx->data;
	struct iphdr *ip = start + l3_off;

	*end = (void *)(long)ctx->data_end;
	verifier_keep(ip);
	verifier_keep(start);
	if (start + ETH_ALEN * 2 + L2_KEPT > *end || (void *)ip + R_OPTIONS + OPTIONS_MIN > *end)
		return NULL;
	*data = start;
	return ip;
}

/* Writes the link-layer, IPv4 and UDP headers and the fixed BOOTP fields of the reply at
 * `eth` (the frame's start), with the IPv4 header at `ip`. */
static __always_inline void write_headers(struct ethhdr *eth, struct iphdr *ip,
					  struct reply_plan *plan)
{
	__u32 *l2 = (void *)eth + ETH_ALEN * 2;
	struct udphdr *udp = (void *)ip + R_UDP;
	struct bootp_hdr *rep = (void *)ip + R_BOOTP;

	__builtin_memcpy(eth->h_dest, plan->to.mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, &plan->server_mac, ETH_ALEN);
	/* The tags and EtherType; what this writes past them the IPv4 header overwrites. */
	l2[0] = plan->kept.l2[0];
	l2[1] = plan->kept.l2[1];
	l2[2] = plan->kept.l2[2];

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = htons(UDP_IP_HLEN + plan->bootp_len);
	ip->id = 0;
	ip->frag_off = 0; /* as the slow path: DF off, a smaller MTU on the way may fragment */
	ip->ttl = REPLY_TTL;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = plan->server_id;
	ip->daddr = plan->to.ip;

	udp->source = htons(DHCP_SERVER_PORT);
	udp->dest = plan->to.port;
	udp->len = htons(sizeof(*udp) + plan->bootp_len);
	udp->check = 0;

	rep->op = BOOTREPLY;
	rep->htype = HTYPE_ETHER;
	rep->hlen = ETH_ALEN;
	rep->hops = 0;
	rep->xid = plan->kept.xid;
	rep->secs = 0;
	rep->flags = plan->kept.flags;
	rep->ciaddr = plan->ciaddr;
	rep->yiaddr = plan->yiaddr;
	rep->siaddr = 0;
	rep->giaddr = plan->kept.giaddr;
	__builtin_memcpy(rep->chaddr, plan->kept.chaddr, sizeof(rep->chaddr));
	__builtin_memset(rep->sname, 0, sizeof(rep->sname) + sizeof(rep->file));
	rep->cookie = htonl(DHCP_MAGIC_COOKIE);
}

/**
 * write_reply - turn the request frame into the planned reply
 * @lease: the lease answered (its identity is option 61, if plan->client_id_len)
 * @client_id: room to lay option 61 out (BT_SCRATCH_ID_SIZE bytes)
 * @relay: option 82 as save_relay_info() copied it, if plan->relay_len
 *
 * Returns XDP_TX, or XDP_PASS if the frame could not be resized (it is then untouched),
 * or XDP_DROP if it failed half-way: a half-written frame must never reach the stack.
 */
static __always_inline int write_reply(struct xdp_md *ctx, struct reply_plan *plan,
				       struct bt_template *tpl, struct bt_lease *lease,
				       __u8 *client_id, __u8 *relay)
{
	__u32 l3_off = plan->l3_off & L2_MASK;
	__u32 opt_off = l3_off + R_OPTIONS;
	__u32 tpl_copy = plan->tpl_len < OPTIONS_MIN ? OPTIONS_MIN : plan->tpl_len;
	__u32 relay_at = plan->tpl_len + plan->client_id_len; /* within the options */
	__u32 reply_len = l3_off + UDP_IP_HLEN + plan->bootp_len;
	void *data, *data_end;
	struct iphdr *ip;
	__u8 *end_option;
	__u64 csum;

	/* The caller guarantees these; checked again here, where they bound the writes. */
	if (l3_off < ETH_HLEN || l3_off > L2_MAX || tpl_copy > BT_TEMPLATE_MAX ||
	    plan->client_id_len > CLIENT_ID_COPY_MAX || plan->relay_len > RELAY_COPY_MAX)
		return XDP_PASS;
	if (resize(ctx, (int)reply_len - (int)plan->frame_len) < 0)
		return XDP_PASS;

	/* From here on the frame is the reply's length, and every byte of it is written: the
	 * headers, the template (zero after its length: copying at least OPTIONS_MIN bytes
	 * also writes the padding up to the BOOTP minimum), options 61 and 82, the end. */
	ip = reply_ip(ctx, l3_off, &data, &data_end);
	if (!ip)
		return XDP_DROP;
	write_headers(data, ip, plan);
	if (copy_to_frame(data, data_end, opt_off, tpl->options, tpl_copy, BT_TEMPLATE_MAX) < 0)
		return XDP_DROP;
	if (plan->client_id_len &&
	    write_client_id(data, data_end, opt_off + plan->tpl_len, client_id, lease) < 0)
		return XDP_DROP;
	if (plan->relay_len) {
		/* Long, and only behind relays: the helper writes it, and the frame must be
		 * found again for the verifier. */
		if (bpf_xdp_store_bytes(ctx, opt_off + relay_at, relay, plan->relay_len) < 0)
			return XDP_DROP;
		ip = reply_ip(ctx, l3_off, &data, &data_end);
		if (!ip)
			return XDP_DROP;
	}
	end_option = data + ((opt_off + plan->opt_len) & MAX_FRAME_OFFSET);
	if ((void *)(end_option + 1) > data_end)
		return XDP_DROP;
	*end_option = OPT_END;

	ip->check = ipv4_csum(ip);
	/* UDP: the pseudo-header (the IPv4 header's addresses, protocol, length), the UDP
	 * header and the BOOTP fields up to sname (sname and file are zero and add nothing),
	 * the cookie, then the options' partial sums. */
	csum = csum_words(&ip->saddr, 2) + htons(IPPROTO_UDP) +
	       htons(sizeof(struct udphdr) + plan->bootp_len) +
	       csum_words((void *)ip + R_UDP, (sizeof(struct udphdr) + BOOTP_SUMMED) / 4) +
	       ((struct bootp_hdr *)((void *)ip + R_BOOTP))->cookie + tpl->csum;
	if (plan->client_id_len)
		csum += csum_at(csum_fold16(csum_client_id(lease)),
				CSUM_OPTIONS_OFF + plan->tpl_len);
	if (plan->relay_len)
		csum += csum_at(csum_fold16((__u32)bpf_csum_diff(0, 0, (__be32 *)relay,
								 (plan->relay_len + 3) & 0x1fc, 0)),
				CSUM_OPTIONS_OFF + relay_at);
	csum += csum_at(OPT_END, CSUM_OPTIONS_OFF + plan->opt_len);
	((struct udphdr *)((void *)ip + R_UDP))->check = udp_csum_final(csum);
	return XDP_TX;
}

#endif
