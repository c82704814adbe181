/* SPDX-License-Identifier: GPL-2.0 */
/* Builds an OFFER or ACK in the per-CPU scratch buffer, then writes it over the request.
 *
 * The reply is assembled apart from the frame because it is laid out differently from the
 * request (the request may carry IP options; the reply never does) and because option 82
 * must be read from the request before the frame is resized. The fields match what the
 * slow path's codec writes (brushtaild/engine/server.py, Server._reply), so both paths
 * answer byte for byte the same; tests/bpf compares them.
 */
#ifndef BRUSHTAIL_REPLY_H
#define BRUSHTAIL_REPLY_H

#include "parsing.h"
#include "csum.h"

#define BOOTREPLY 2
#define DHCP_OFFER 2
#define DHCP_ACK 5
#define BOOTP_BROADCAST 0x8000
#define BOOTP_MIN_LEN 300      /* RFC 951: replies are padded to this */
#define MIN_IP_DATAGRAM 576    /* RFC 2131: every client accepts this much */
#define REPLY_TTL 64
/* Offsets in the scratch buffer: IPv4 header, UDP header, BOOTP, options. */
#define R_IP 0
#define R_UDP 20
#define R_BOOTP 28
#define R_OPTIONS (R_BOOTP + sizeof(struct bootp_hdr))

struct reply_addr {
	__be32 ip;
	__be16 port;
	__u8 mac[ETH_ALEN];
};

/* RFC 2131 section 4.1, in brushtaild/engine/addressing.py's order (NAKs never come here). */
static __always_inline void reply_destination(struct ethhdr *eth, struct bootp_hdr *req,
					      __be32 yiaddr, struct reply_addr *to)
{
	if (req->giaddr) {
		to->ip = req->giaddr;
		to->port = htons(DHCP_SERVER_PORT);
		__builtin_memcpy(to->mac, eth->h_source, ETH_ALEN);
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

/**
 * build_reply - assemble IPv4 + UDP + BOOTP + options in @buf
 *
 * Returns the IPv4 datagram's length, or 0 if the reply would exceed what the client
 * accepts (option 57) or option 82 cannot be copied.
 */
static __always_inline __u32 build_reply(struct xdp_md *ctx, __u8 *buf, struct bootp_hdr *req,
					 struct dhcp_request *dreq, struct bt_lease *lease,
					 struct bt_template *tpl, __u8 mtype, __be32 server_id,
					 struct reply_addr *to)
{
	struct iphdr *ip = (void *)(buf + R_IP);
	struct udphdr *udp = (void *)(buf + R_UDP);
	struct bootp_hdr *rep = (void *)(buf + R_BOOTP);
	__u32 opt_len = tpl->len;
	__u32 bootp_len, limit;

	if (opt_len > BT_TEMPLATE_MAX)
		return 0;

	rep->op = BOOTREPLY;
	rep->htype = req->htype;
	rep->hlen = req->hlen;
	rep->hops = 0;
	rep->xid = req->xid;
	rep->secs = 0;
	rep->flags = req->flags;
	rep->ciaddr = mtype == DHCP_ACK ? req->ciaddr : 0;
	rep->yiaddr = lease->address;
	rep->siaddr = 0;
	rep->giaddr = req->giaddr;
	__builtin_memcpy(rep->chaddr, req->chaddr, sizeof(rep->chaddr));
	/* sname and file are never written: zero since the map was created. */
	rep->cookie = htonl(DHCP_MAGIC_COOKIE);

	/* The whole template, zero padding included, so the bytes after the options are 0. */
	__builtin_memcpy(buf + R_OPTIONS, tpl->options, BT_TEMPLATE_MAX);
	if (dreq->seen & SEEN_RELAY) {
		__u32 rlen = dreq->relay_len;

		/* RFC 3046 2.2: echoed verbatim, after every other option. */
		buf[R_OPTIONS + opt_len] = OPT_RELAY_AGENT_INFO;
		buf[R_OPTIONS + opt_len + 1] = rlen;
		if (rlen == 0 || bpf_xdp_load_bytes(ctx, dreq->relay_off,
						    buf + R_OPTIONS + opt_len + 2,
						    ((rlen - 1) & 0xff) + 1) < 0)
			return 0;
		opt_len += 2 + rlen;
	}
	/* The end option, and zeros up to the next multiple of 4 for the checksum. */
	*(__u32 *)(buf + R_OPTIONS + opt_len) = OPT_END;
	bootp_len = sizeof(struct bootp_hdr) + opt_len + 1;
	if (bootp_len < BOOTP_MIN_LEN)
		bootp_len = BOOTP_MIN_LEN;
	limit = dreq->max_size > MIN_IP_DATAGRAM ? dreq->max_size : MIN_IP_DATAGRAM;
	if (sizeof(*ip) + sizeof(*udp) + bootp_len > limit)
		return 0;

	udp->source = htons(DHCP_SERVER_PORT);
	udp->dest = to->port;
	udp->len = htons(sizeof(*udp) + bootp_len);
	udp->check = 0;

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = htons(sizeof(*ip) + sizeof(*udp) + bootp_len);
	ip->id = 0;
	ip->frag_off = 0; /* as the slow path: DF off, a smaller MTU on the way may fragment */
	ip->ttl = REPLY_TTL;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = server_id;
	ip->daddr = to->ip;
	ip->check = ipv4_csum(ip);
	udp->check = udp_csum(buf, sizeof(*udp) + bootp_len);
	return sizeof(*ip) + sizeof(*udp) + bootp_len;
}

#endif
