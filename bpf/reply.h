/* SPDX-License-Identifier: GPL-2.0 */
/* Turns the request frame into an OFFER or ACK, in place.
 *
 * The BOOTP header stays where it is: xid, flags, giaddr and chaddr are already right, and
 * the rest is rewritten. The fields match what the slow path's codec writes
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
#define L2_BUF 32 /* a power of two >= L2_MAX */
#define RELAY_COPY_MAX (2 + 255) /* option 82 with its code and length */
#define CLIENT_ID_COPY_MAX (2 + BT_MAX_CLIENT_ID) /* option 61 with its code and length */

struct reply_addr {
	__be32 ip;
	__be16 port;
	__u8 mac[ETH_ALEN];
};

/* Everything about a reply, decided before the frame is touched. */
struct reply_plan {
	__u32 l3_off;     /* where the IPv4 header starts (after Ethernet and VLAN tags) */
	__u32 ip_extra;   /* bytes of IP options in the request */
	__u32 frame_len;  /* of the request */
	__u32 tpl_len;
	__u32 client_id_len; /* option 61 with its code and length, or 0 */
	__u32 relay_len;  /* option 82 with its code and length, or 0 */
	__u32 opt_len;    /* tpl_len + client_id_len + relay_len */
	__u32 bootp_len;
	struct reply_addr to;
	__be32 server_id;
	__be32 yiaddr;
	__be32 ciaddr;
	__u64 server_mac; /* low 6 bytes */
};

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

/* Writes option 61 as the request carried it into buf (BT_SCRATCH_ID_SIZE bytes, zero after
 * the option, so the whole buffer can be summed): the request's identity is the lease's
 * (identity_matches). Returns its length, or 0. */
static __always_inline __u32 save_client_id(__u8 *buf, struct bt_lease *lease)
{
	__u32 len = lease->id_len;

	if (len == 0 || len > BT_MAX_CLIENT_ID)
		return 0;
	__builtin_memset(buf, 0, BT_SCRATCH_ID_SIZE);
	buf[0] = OPT_CLIENT_ID;
	buf[1] = len;
	/* The lease's identity is zero after its length, as identity_matches relies on too. */
	__builtin_memcpy(buf + 2, lease->client_id, BT_MAX_CLIENT_ID);
	return 2 + len;
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

/* Drops the request's IP options by moving the link-layer header over them, so the
 * BOOTP message stays in place behind a 20-byte IPv4 header. */
static __always_inline int strip_ip_options(struct xdp_md *ctx, __u32 l3_off, __u32 extra)
{
	__u8 l2[L2_BUF];
	__u32 len = ((l3_off - 1) & (L2_BUF - 1)) + 1; /* l3_off, as the verifier can bound it */

	if (l3_off < ETH_HLEN || l3_off > L2_MAX)
		return -1;
	if (bpf_xdp_load_bytes(ctx, 0, l2, len) < 0 || bpf_xdp_store_bytes(ctx, extra, l2, len) < 0)
		return -1;
	return bpf_xdp_adjust_head(ctx, extra);
}

/* Writes the IPv4 and UDP headers and the BOOTP fields a reply changes. */
static __always_inline void write_headers(struct iphdr *ip, __u32 bootp_len, __be32 server_id,
					  struct reply_addr *to, __be32 yiaddr, __be32 ciaddr)
{
	struct udphdr *udp = (void *)ip + R_UDP;
	struct bootp_hdr *rep = (void *)ip + R_BOOTP;

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = htons(UDP_IP_HLEN + bootp_len);
	ip->id = 0;
	ip->frag_off = 0; /* as the slow path: DF off, a smaller MTU on the way may fragment */
	ip->ttl = REPLY_TTL;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = server_id;
	ip->daddr = to->ip;

	udp->source = htons(DHCP_SERVER_PORT);
	udp->dest = to->port;
	udp->len = htons(sizeof(*udp) + bootp_len);
	udp->check = 0;

	rep->op = BOOTREPLY;
	rep->hops = 0;
	rep->secs = 0;
	rep->ciaddr = ciaddr;
	rep->yiaddr = yiaddr;
	rep->siaddr = 0;
	__builtin_memset(rep->sname, 0, sizeof(rep->sname) + sizeof(rep->file));
	rep->cookie = htonl(DHCP_MAGIC_COOKIE);
}

/**
 * write_reply - turn the request frame into the planned reply
 * @client_id: option 61 as save_client_id() wrote it, if plan->client_id_len
 * @relay: option 82 as save_relay_info() copied it, if plan->relay_len
 *
 * Returns XDP_TX, or XDP_PASS if the frame could not be resized (it is then untouched),
 * or XDP_DROP if it failed half-way: a half-written frame must never reach the stack.
 */
static __always_inline int write_reply(struct xdp_md *ctx, struct reply_plan *plan,
				       struct bt_template *tpl, __u8 *client_id, __u8 *relay)
{
	__u32 l3_off = plan->l3_off & (L2_BUF - 1); /* <= L2_MAX: masked for the verifier */
	__u32 opt_off = l3_off + R_OPTIONS;
	__u32 tpl_copy = plan->tpl_len < OPTIONS_MIN ? OPTIONS_MIN : plan->tpl_len;
	__u32 client_id_len = plan->client_id_len;
	__u32 relay_len = plan->relay_len;
	__u32 relay_at = plan->tpl_len + client_id_len; /* within the options */
	__u8 end_option = OPT_END;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u64 csum;

	/* The caller guarantees both; checked again here, where the copies use them, so the
	 * verifier bounds them on any kernel however the compiler spills them. */
	if (tpl_copy > BT_TEMPLATE_MAX || client_id_len > CLIENT_ID_COPY_MAX ||
	    relay_len > RELAY_COPY_MAX)
		return XDP_PASS;
	if (plan->ip_extra && strip_ip_options(ctx, l3_off, plan->ip_extra) < 0)
		return XDP_DROP;
	if (bpf_xdp_adjust_tail(ctx, (int)(l3_off + UDP_IP_HLEN + plan->bootp_len) -
					  (int)(plan->frame_len - plan->ip_extra)) < 0)
		return plan->ip_extra ? XDP_DROP : XDP_PASS;
	/* The template is zero after its length: copying at least OPTIONS_MIN bytes also
	 * writes the padding up to the BOOTP minimum. */
	if (bpf_xdp_store_bytes(ctx, opt_off, tpl->options, tpl_copy) < 0)
		return XDP_DROP;
	/* Masked as well: the compiler may merge the check above with the others. */
	if (client_id_len &&
	    bpf_xdp_store_bytes(ctx, opt_off + plan->tpl_len, client_id,
				((client_id_len - 1) & (BT_SCRATCH_ID_SIZE - 1)) + 1) < 0)
		return XDP_DROP;
	if (relay_len && bpf_xdp_store_bytes(ctx, opt_off + relay_at, relay, relay_len) < 0)
		return XDP_DROP;
	if (bpf_xdp_store_bytes(ctx, opt_off + plan->opt_len, &end_option, 1) < 0)
		return XDP_DROP;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = data + l3_off;
	if ((void *)(eth + 1) > data_end || (void *)ip + R_OPTIONS > data_end)
		return XDP_DROP;
	write_headers(ip, plan->bootp_len, plan->server_id, &plan->to, plan->yiaddr,
		      plan->ciaddr);
	ip->check = ipv4_csum(ip);
	/* UDP: the pseudo-header's addresses (the IPv4 header's last 8 bytes), the UDP header
	 * and the fixed BOOTP fields from the frame, then the options' partial sums (the
	 * buffers are zero past their options: summed whole). */
	csum = (__u32)bpf_csum_diff(0, 0, (__be32 *)&ip->saddr, R_OPTIONS - R_UDP + 8,
				    htons(IPPROTO_UDP) +
					    htons(sizeof(struct udphdr) + plan->bootp_len));
	csum += tpl->csum;
	if (client_id_len)
		csum += csum_at(csum_fold16((__u32)bpf_csum_diff(0, 0, (__be32 *)client_id,
								 BT_SCRATCH_ID_SIZE, 0)),
				CSUM_OPTIONS_OFF + plan->tpl_len);
	if (relay_len)
		csum += csum_at(csum_fold16((__u32)bpf_csum_diff(0, 0, (__be32 *)relay,
								 (relay_len + 3) & 0x1fc, 0)),
				CSUM_OPTIONS_OFF + relay_at);
	csum += csum_at(OPT_END, CSUM_OPTIONS_OFF + plan->opt_len);
	((struct udphdr *)((void *)ip + R_UDP))->check = udp_csum_final(csum);
	__builtin_memcpy(eth->h_dest, plan->to.mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, &plan->server_mac, ETH_ALEN);
	return XDP_TX;
}

#endif
