/* SPDX-License-Identifier: GPL-2.0 */
/* Header parsing, in the style of xdp-tutorial's parsing_helpers.h.
 *
 * Each parse_* helper checks bounds once, advances the cursor past what it parsed and
 * returns 0 on success, -1 on anything it does not fully understand: the caller then
 * hands the packet to the slow path, which knows the whole protocol.
 */
#ifndef BRUSHTAIL_PARSING_H
#define BRUSHTAIL_PARSING_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/in.h>

#define VLAN_MAX_DEPTH 2  /* 802.1Q, or QinQ (802.1ad outer + 802.1Q inner) */
#define VLAN_VID_MASK 0x0fff
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define DHCP_SERVER_PORT 67
#define DHCP_CLIENT_PORT 68
#define BOOTREQUEST 1
#define HTYPE_ETHER 1
#define DHCP_MAGIC_COOKIE 0x63825363
#define DHCP_MAX_OPTIONS 48      /* options walked per request; more: slow path */
#define RELAY_MAX_SUBOPTIONS 16
#define PRL_MAX 64
#define MAX_FRAME_OFFSET 0x3fff /* bounds an offset for the verifier */

/* DHCP option codes (RFC 2132, 3046, 3011). */
#define OPT_PAD 0
#define OPT_REQUESTED_ADDRESS 50
#define OPT_OVERLOAD 52
#define OPT_MESSAGE_TYPE 53
#define OPT_SERVER_ID 54
#define OPT_PARAMETER_LIST 55
#define OPT_MAX_MESSAGE_SIZE 57
#define OPT_CLIENT_ID 61
#define OPT_RELAY_AGENT_INFO 82
#define OPT_SUBNET_SELECTION 118
#define OPT_END 255
#define RAI_CIRCUIT_ID 1
#define RAI_LINK_SELECTION 5
#define RAI_SERVER_ID_OVERRIDE 11

/* Hides `x`'s value from the compiler, which can then neither rebuild a pointer the
 * verifier has seen checked (the rebuilt one would be unchecked) nor drop or rewrite a
 * check the verifier needs. */
#define verifier_keep(x) asm volatile("" : "+r"(x))

struct cursor {
	void *pos;
	void *end;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* The fixed BOOTP header and the magic cookie: 240 bytes (RFC 2131 figure 1). */
struct bootp_hdr {
	__u8 op;
	__u8 htype;
	__u8 hlen;
	__u8 hops;
	__be32 xid;
	__be16 secs;
	__be16 flags;
	__be32 ciaddr;
	__be32 yiaddr;
	__be32 siaddr;
	__be32 giaddr;
	__u8 chaddr[16];
	__u8 sname[64];
	__u8 file[128];
	__be32 cookie;
};

/* What the option walk found. Offsets are from the start of the frame, so the reply
 * builder can copy option 82 with bpf_xdp_load_bytes once the frame is rewritten. */
struct dhcp_request {
	__u8 msg_type;
	__u8 client_id_len;
	__u8 prl_len;
	__u8 relay_len;
	__u8 circuit_len;        /* option 82's circuit-id sub-option, or 0 */
	__u16 client_id_off;
	__u16 prl_off;
	__u16 relay_off;
	__u16 circuit_off;
	__u16 max_size;          /* option 57, or 0 */
	__be32 requested;        /* option 50, or 0 */
	__be32 server_id;        /* option 54, or 0 */
	__be32 subnet_selection; /* option 118, or 82 sub-option 5 (see SEEN_SELECTOR) */
	__u32 seen;              /* bit per recorded option: a repeat is an RFC 3396 split */
	__u32 walk;              /* offset of the option being parsed */
	__u32 walk_ok;           /* the walk reached the end of the options */
};

#define SEEN_MESSAGE_TYPE (1u << 0)
#define SEEN_REQUESTED (1u << 1)
#define SEEN_SERVER_ID (1u << 2)
#define SEEN_PRL (1u << 3)
#define SEEN_MAX_SIZE (1u << 4)
#define SEEN_CLIENT_ID (1u << 5)
#define SEEN_RELAY (1u << 6)
#define SEEN_SUBNET_SELECTION (1u << 7)
#define SEEN_LINK_SELECTION (1u << 8)
/* Option 82 sub-option 11 (RFC 5107): the reply's option 54 is the relay's, not ours. */
#define SEEN_SERVER_ID_OVERRIDE (1u << 9)
/* Either selects the client's subnet, even as 0.0.0.0 (which selects none). */
#define SEEN_SELECTOR (SEEN_SUBNET_SELECTION | SEEN_LINK_SELECTION)

static __always_inline int proto_is_vlan(__be16 proto)
{
	return proto == htons(ETH_P_8021Q) || proto == htons(ETH_P_8021AD);
}

/* Ethernet and up to two VLAN tags; their nonzero IDs go to outer/inner, in order (0: none),
 * as the slow path reads them (packet_io.vlan_ids). Returns the number of tags. */
static __always_inline int parse_ethhdr_vlan(struct cursor *c, struct ethhdr **eth,
					     __u16 *outer, __u16 *inner, __be16 *proto)
{
	struct ethhdr *e = c->pos;
	struct vlan_hdr *vlh;
	__be16 p;
	__u16 vid;
	int i;

	if ((void *)(e + 1) > c->end)
		return -1;
	*eth = e;
	p = e->h_proto;
	vlh = (void *)(e + 1);
	*outer = 0;
	*inner = 0;
#pragma unroll
	for (i = 0; i < VLAN_MAX_DEPTH; i++) {
		if (!proto_is_vlan(p))
			break;
		if ((void *)(vlh + 1) > c->end)
			return -1;
		vid = ntohs(vlh->tci) & VLAN_VID_MASK;
		/* A priority tag (VID 0) names no VLAN: the next tag, if any, is the outer one. */
		if (vid && !*outer)
			*outer = vid;
		else if (vid)
			*inner = vid;
		p = vlh->encap_proto;
		vlh++;
	}
	if (proto_is_vlan(p))
		return -1; /* a third tag */
	c->pos = vlh;
	*proto = p;
	return i;
}

/* IPv4 with or without options. A fragment after the first has no UDP header, so it is no
 * DHCP request to judge; a first fragment is, and is malformed (datagram_well_formed). */
static __always_inline int parse_iphdr(struct cursor *c, struct iphdr **iph)
{
	struct iphdr *ip = c->pos;
	__u32 hdrsize;

	if ((void *)(ip + 1) > c->end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	if (ip->frag_off & htons(IP_OFFSET))
		return -1;
	hdrsize = ip->ihl * 4;
	if (c->pos + hdrsize > c->end)
		return -1;
	c->pos += hdrsize;
	*iph = ip;
	return 0;
}

static __always_inline int parse_udphdr(struct cursor *c, struct udphdr **udph)
{
	struct udphdr *udp = c->pos;

	if ((void *)(udp + 1) > c->end)
		return -1;
	c->pos = udp + 1;
	*udph = udp;
	return 0;
}

/* A well-formed request (docs/DESIGN.md, "Well-formed requests"; the slow path's
 * parse_frame in brushtaild/net/packet_io.py applies the same datagram rules, its codec
 * the BOOTP ones) is one unfragmented
 * datagram whose IPv4 and UDP lengths both end exactly where the frame ends: every bounds
 * check against the frame's end is then one against the payload's, and bytes after the
 * datagram are never walked as options. A DHCP request is far longer than Ethernet's
 * minimum frame, so it never carries link-layer padding. */
static __always_inline int datagram_well_formed(struct iphdr *ip, struct udphdr *udp,
						__u32 l3_off, __u32 frame_len)
{
	__u32 udp_off = l3_off + ip->ihl * 4;

	return !(ip->frag_off & htons(IP_MF)) && l3_off + ntohs(ip->tot_len) == frame_len &&
	       udp_off + ntohs(udp->len) == frame_len;
}

/* The BOOTP header of a well-formed request: a BOOTREQUEST from Ethernet (htype 1, hlen 6),
 * with the magic cookie. */
static __always_inline int parse_bootp(struct cursor *c, struct bootp_hdr **bootp)
{
	struct bootp_hdr *b = c->pos;

	if ((void *)(b + 1) > c->end)
		return -1;
	if (b->op != BOOTREQUEST || b->htype != HTYPE_ETHER || b->hlen != ETH_ALEN)
		return -1;
	if (b->cookie != htonl(DHCP_MAGIC_COOKIE))
		return -1;
	c->pos = b + 1;
	*bootp = b;
	return 0;
}

static __always_inline __be32 load_be32(const __u8 *p)
{
	__be32 v;

	__builtin_memcpy(&v, p, sizeof(v));
	return v;
}

/* Reads the `n` bytes (1 to 8) at frame offset `off` as a little-endian word, zero above
 * them, straight from the packet: the walk checked they lie inside the frame, but the
 * verifier needs each read checked on its own. The 8 bytes from `off` are read where the
 * frame has them; a value that ends in the frame's last 7 bytes is read as the frame's
 * last 8 bytes, shifted down. Returns 0, or -1 if the frame is shorter than 8 bytes. */
static __always_inline int frame_word(void *data, void *end, __u32 off, __u32 n, __u64 *word)
{
	__u8 *p = data + (off & MAX_FRAME_OFFSET);
	__u32 last;
	__u64 v;

	if ((void *)(p + 8) <= end) {
		v = *(__u64 *)p;
	} else {
		last = (end - data) - 8;
		p = data + (last & MAX_FRAME_OFFSET);
		if ((void *)(p + 8) > end || off <= last || off - last > 7)
			return -1;
		v = *(__u64 *)p >> (8 * (off - last));
	}
	if (n < 8)
		v &= (1ull << (8 * n)) - 1;
	*word = v;
	return 0;
}

/* Marks an option seen; a second one is an RFC 3396 split, which only the slow path
 * concatenates. */
static __always_inline int mark_seen(volatile struct dhcp_request *req, __u32 bit)
{
	if (req->seen & bit)
		return -1;
	req->seen |= bit;
	return 0;
}

/* Records one option whose value lies inside the frame. Returns -1 for a length we
 * cannot trust or a repeated option. Each case checks its own fixed-size read against the
 * end again: the verifier cannot carry the walk's variable-length check over to it. */
static __always_inline int record_option(volatile struct dhcp_request *req, __u8 code,
					 __u8 len, const __u8 *value, __u16 off, void *end)
{
	switch (code) {
	case OPT_MESSAGE_TYPE:
		if (len != 1 || (void *)(value + 1) > end)
			return -1;
		req->msg_type = value[0];
		return mark_seen(req, SEEN_MESSAGE_TYPE);
	case OPT_REQUESTED_ADDRESS:
		if (len != 4 || (void *)(value + 4) > end)
			return -1;
		req->requested = load_be32(value);
		return mark_seen(req, SEEN_REQUESTED);
	case OPT_SERVER_ID:
		if (len != 4 || (void *)(value + 4) > end)
			return -1;
		req->server_id = load_be32(value);
		return mark_seen(req, SEEN_SERVER_ID);
	case OPT_SUBNET_SELECTION:
		if (len != 4 || (void *)(value + 4) > end)
			return -1;
		req->subnet_selection = load_be32(value);
		return mark_seen(req, SEEN_SUBNET_SELECTION);
	case OPT_MAX_MESSAGE_SIZE:
		if (len != 2 || (void *)(value + 2) > end)
			return -1;
		req->max_size = ((__u16)value[0] << 8) | value[1];
		return mark_seen(req, SEEN_MAX_SIZE);
	case OPT_CLIENT_ID:
		if (len == 0 || len > BT_MAX_CLIENT_ID)
			return -1;
		req->client_id_off = off;
		req->client_id_len = len;
		return mark_seen(req, SEEN_CLIENT_ID);
	case OPT_PARAMETER_LIST:
		if (len > PRL_MAX)
			return -1;
		req->prl_off = off;
		req->prl_len = len;
		return mark_seen(req, SEEN_PRL);
	case OPT_RELAY_AGENT_INFO:
		if (len == 0)
			return -1;
		req->relay_off = off;
		req->relay_len = len;
		return mark_seen(req, SEEN_RELAY);
	case OPT_OVERLOAD:
		return -1; /* options continue in sname/file: slow path */
	default:
		return 0;
	}
}

/* Walks the options field: every option must lie inside the UDP payload, and the walk
 * ends at the end option or the payload's end (many clients omit the end option). Every
 * way out goes through one `break` and the verdict is read back from the map, so the rest
 * of the program is verified once, not once per way out of the loop. */
static __always_inline int parse_dhcp_options(struct cursor *c, void *data,
					      struct dhcp_request *req)
{
	volatile struct dhcp_request *v = req;
	int i;

	v->walk = c->pos - data;
	v->walk_ok = 0;
	for (i = 0; i < DHCP_MAX_OPTIONS; i++) {
		__u32 off = v->walk & MAX_FRAME_OFFSET;
		__u8 *p = data + off;
		__u8 code, len;

		if ((void *)(p + 1) > c->end) {
			v->walk_ok = 1;
			break;
		}
		code = p[0];
		if (code == OPT_END) {
			v->walk_ok = 1;
			break;
		}
		if (code == OPT_PAD) {
			v->walk = off + 1;
			continue;
		}
		if ((void *)(p + 2) > c->end)
			break;
		len = p[1];
		if ((void *)(p + 2 + len) > c->end)
			break;
		v->walk = off + 2 + len;
		if (record_option(v, code, len, p + 2, off + 2, c->end) < 0)
			break;
	}
	/* Running out of iterations leaves walk_ok 0: the slow path reads long lists. */
	return v->walk_ok ? 0 : -1;
}

/* Option 82's sub-options: RFC 3527 link selection, which selects the subnet like option
 * 118, the circuit-id (RFC 3046), which names the relay's access line for the rate limit,
 * and whether there is a server identifier override (RFC 5107), which the templates cannot
 * put in option 54. Walked like the options, by an offset kept in the map value. */
static __always_inline int parse_relay_info(struct cursor *c, void *data,
					    struct dhcp_request *req)
{
	volatile struct dhcp_request *v = req;
	__u32 stop = req->relay_off + req->relay_len;
	int i;

	v->walk = req->relay_off;
	v->walk_ok = 0;
	for (i = 0; i < RELAY_MAX_SUBOPTIONS; i++) {
		__u32 off = v->walk;
		__u8 *p = data + (off & MAX_FRAME_OFFSET);
		__u8 code, len;

		if (off >= stop) {
			v->walk_ok = off == stop;
			break;
		}
		if ((void *)(p + 2) > c->end)
			break;
		code = p[0];
		len = p[1];
		v->walk = off + 2 + len;
		if (code == RAI_CIRCUIT_ID && !v->circuit_len) {
			v->circuit_off = off + 2;
			v->circuit_len = len;
		}
		if (code == RAI_SERVER_ID_OVERRIDE)
			v->seen |= SEEN_SERVER_ID_OVERRIDE;
		if (code != RAI_LINK_SELECTION)
			continue;
		if (len != 4 || (void *)(p + 6) > c->end)
			break;
		/* As in the slow path: the first link selection counts, whatever its address
		 * (a request with option 118 never gets here: see slow_path_selector). */
		if (!(v->seen & SEEN_SELECTOR)) {
			v->subnet_selection = load_be32(p + 2);
			v->seen |= SEEN_LINK_SELECTION;
		}
	}
	return v->walk_ok ? 0 : -1;
}

#endif
