/* SPDX-License-Identifier: GPL-2.0 */
/* brushtail's XDP fast path: answers DISCOVER and REQUEST from clients that hold a lease
 * in the pinned maps, in place, with XDP_TX. Everything else goes to the slow path
 * (XDP_PASS): the program only ever answers what it fully understands.
 *
 * Reads top to bottom: parse, rate-limit, look up, check, build, send; one exit counts the
 * result. Every DHCP request is charged to its sender before anything else is decided, and
 * one that is not well-formed (docs/DESIGN.md, "Well-formed requests") is dropped here: the
 * slow path refuses the same frames. Compiled and loaded by brushtaild/xdp/loader.py.
 */
#include <uapi/linux/bpf.h>

#include "shared.h"
#include "maps.h"
#include "parsing.h"
#include "csum.h"
#include "clock.h"
#include "ratelimit.h"
#include "reply.h"

#define DHCP_DISCOVER 1
#define DHCP_REQUEST 3
#define NS_PER_SEC 1000000000ull
#define ETH_BROADCAST_ADDR 0xffffffffffffull /* ff:ff:ff:ff:ff:ff in a zeroed u64 */
#define LATENCY_SAMPLE 16 /* a power of two */
#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME 0x100000001b3ull
#define HASH_MAX PRL_MAX /* bytes hash_bytes reads: all of option 55, a circuit-id's first */
#define RELAY_BURST_NS NS_PER_SEC /* a relay's bucket holds one second of its rate */
#define TRACE_BURST_NS NS_PER_SEC /* the trace bucket holds one second of events */

static __always_inline __u64 config_get(__u32 slot)
{
	__u64 *v = config.lookup(&slot);

	return v ? *v : 0;
}

/* Whether the frame was sent to this interface's MAC or to broadcast: the slow path's
 * socket filter takes only those (PACKET_HOST, PACKET_BROADCAST), and a promiscuous
 * interface also sees requests other hosts are meant to answer. */
static __always_inline int addressed_to_us(struct ethhdr *eth)
{
	__u64 dest = 0;

	__builtin_memcpy(&dest, eth->h_dest, ETH_ALEN);
	return dest == ETH_BROADCAST_ADDR || dest == config_get(BT_CFG_SERVER_MAC);
}

/* Returns 1 if `key` is over the rate; a sender never seen gets a fresh bucket. */
static __always_inline int over_rate(struct bt_rate_key *key, __u64 now, __u64 cost,
				     __u64 burst)
{
	struct bt_bucket *b;

	if (!cost)
		return 0;
	b = ratelimit.lookup(key);
	if (!b) {
		struct bt_bucket fresh;

		bucket_init(&fresh, now, cost, burst);
		ratelimit.update(key, &fresh);
		return 0;
	}
	return bucket_take(b, now, cost, burst);
}

/* Charges a request to its sender; returns 1 if the sender is over its rate. A client on the
 * link pays a client's rate. A relay pays its own, larger one, and an access line behind it
 * (a circuit-id) first pays a client's rate in a bucket of its own, so one line over its
 * rate is stopped before it spends its relay's budget. */
static __always_inline int rate_limited(struct bt_rate_key *sender, __u64 now)
{
	__u64 cost = config_get(BT_CFG_RATE_COST);
	__u64 burst = config_get(BT_CFG_RATE_BURST);
	struct bt_rate_key relay;

	if (!sender->giaddr)
		return over_rate(sender, now, cost, burst);
	if (sender->circuit && over_rate(sender, now, cost, burst))
		return 1;
	relay = *sender;
	relay.circuit = 0;
	return over_rate(&relay, now, config_get(BT_CFG_RELAY_COST), RELAY_BURST_NS);
}

/* Returns 1 if a new subscriber's DISCOVER from the link itself is over the link's budget.
 * The slow path allocates for each one: those from the link share one budget (its VLANs),
 * as those behind a relay share their relay's, so a flood from random source MACs cannot
 * crowd out the other links, relays and the renewals the slow path answers. */
static __always_inline int link_over_budget(struct bt_rate_key *sender, __u64 now)
{
	struct bt_rate_key link = {};

	if (sender->giaddr)
		return 0; /* paid for at its relay */
	link.outer_vlan = sender->outer_vlan;
	link.inner_vlan = sender->inner_vlan;
	link.kind = BT_RATE_LINK;
	return over_rate(&link, now, config_get(BT_CFG_RELAY_COST), RELAY_BURST_NS);
}

/* 64-bit FNV-1a of `len` bytes at frame offset `off` (inside the frame), never 0: the
 * length first, then the first HASH_MAX bytes zero-padded to HASH_MAX, 8 bytes a step, so
 * the loop has a fixed count. Of option 55 it is the lease's prl_hash (brushtaild/xdp/maps.py
 * has the same function). */
static __always_inline __u64 hash_bytes(void *data, void *end, __u32 off, __u32 len)
{
	__u32 n = len < HASH_MAX ? len : HASH_MAX;
	__u64 h = (FNV64_OFFSET ^ len) * FNV64_PRIME;
	__u64 word;
	int i;

#pragma unroll
	for (i = 0; i < HASH_MAX / 8; i++) {
		word = 0;
		if (i * 8 < n && frame_word(data, end, off + i * 8, n - i * 8, &word) < 0)
			return BT_PRL_ABSENT; /* matches no lease */
		h = (h ^ word) * FNV64_PRIME;
	}
	return h ? h : 1;
}

/* Walks the options and, for a relayed request, option 82's sub-options; names the access
 * line in `sender` if the relay gave a circuit-id. Returns 1 if the request was read whole,
 * 0 if the slow path must read it. */
static __always_inline int parse_request(struct cursor *c, void *data, struct bootp_hdr *b,
					 struct dhcp_request *req, struct bt_rate_key *sender)
{
	if (parse_dhcp_options(c, data, req) < 0 || !(req->seen & SEEN_MESSAGE_TYPE))
		return 0;
	if (!(req->seen & SEEN_RELAY) || !b->giaddr)
		return 1;
	if (parse_relay_info(c, data, req) < 0)
		return 0;
	if (req->circuit_len)
		sender->circuit = hash_bytes(data, c->end, req->circuit_off, req->circuit_len);
	return 1;
}

/* A subnet selector the slow path must judge: option 118 (which the reply must echo, RFC
 * 3011, and the templates cannot), or option 82 from a client rather than a relay (which
 * the slow path ignores: a client cannot be trusted with relay information). A relay's
 * server identifier override (RFC 5107) goes there too: the reply's option 54 must be the
 * override, and the templates carry ours. */
static __always_inline int slow_path_selector(struct bootp_hdr *b, struct dhcp_request *req)
{
	return (req->seen & (SEEN_SUBNET_SELECTION | SEEN_SERVER_ID_OVERRIDE)) ||
	       ((req->seen & SEEN_RELAY) && !b->giaddr);
}

/* Option 61 must be the lease's identity; without it, that identity must be htype 1 +
 * chaddr, which the engine gives a client that sends no option 61. */
static __always_inline int identity_matches(void *data, void *end, struct dhcp_request *req,
					    struct bt_lease *lease)
{
	__u64 *want = (__u64 *)lease->client_id;
	__u32 len = req->client_id_len;
	__u64 word;
	int i;

	if (!(req->seen & SEEN_CLIENT_ID))
		return lease->flags & BT_LEASE_HW_ID;
	if (len != lease->id_len || len == 0 || len > BT_MAX_CLIENT_ID)
		return 0;
	/* The lease's identity is zero after its length: the words past len match as they are. */
#pragma unroll
	for (i = 0; i < BT_MAX_CLIENT_ID / 8; i++) {
		if (i * 8 >= len)
			break;
		if (frame_word(data, end, req->client_id_off + i * 8, len - i * 8, &word) < 0 ||
		    word != want[i])
			return 0;
	}
	return 1;
}

/* Which REQUESTs the kernel may ACK: SELECTING (our server id, option 50 = the lease),
 * INIT-REBOOT (option 50 = the lease) and RENEWING/REBINDING (ciaddr = the lease, sent to
 * us or broadcast). Anything else, including a mismatched option 50 next to a good
 * ciaddr, is for the slow path to judge. */
static __always_inline int request_matches(struct iphdr *ip, struct bootp_hdr *b,
					   struct dhcp_request *req, struct bt_lease *lease,
					   __be32 server_id)
{
	if ((req->seen & SEEN_SERVER_ID) && req->server_id != server_id)
		return 0;
	if ((req->seen & SEEN_REQUESTED) && req->requested != lease->address)
		return 0;
	if (b->ciaddr) {
		if (b->ciaddr != lease->address)
			return 0;
		return ip->daddr == server_id || ip->daddr == 0xffffffff;
	}
	return (req->seen & SEEN_REQUESTED) != 0;
}

static __always_inline __u32 log2_bucket(__u64 v)
{
	__u32 r = 0;

	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r < BT_LATENCY_BUCKETS ? r : BT_LATENCY_BUCKETS - 1;
}

static __always_inline void count_lost_trace(__u32 why)
{
	__u64 *n = trace_lost.lookup(&why);

	if (n)
		*n += 1;
}

/* Whether a tracer's filters (chaddr, results) take this request. */
static __always_inline int trace_wanted(__u32 result, struct bt_client_key *key)
{
	__u64 only = config_get(BT_CFG_TRACE_MAC);
	__u64 results = config_get(BT_CFG_TRACE_RESULTS);
	__u64 mac = 0;

	__builtin_memcpy(&mac, key->mac, ETH_ALEN);
	if (only && only != mac)
		return 0;
	return !results || (results & (1ull << result));
}

/* Queues a trace event for `brushtail trace` (brushtaild/xdp/trace.py). Nobody tracing
 * costs one config lookup. A tracer's events are paid from one token bucket, so however
 * fast packets come, tracing costs at most its rate in events a second (and a bucket
 * update a packet); what the bucket or a full ring refuses is only counted. `address` is
 * the lease's for an answer, else ciaddr; a request without ciaddr shows its option 50. */
static __always_inline void trace_event(__u32 result, int action, __u64 start,
					struct bt_client_key *key, struct dhcp_request *req,
					__be32 giaddr, __be32 address)
{
	__u64 cost = config_get(BT_CFG_TRACE_COST);
	struct bt_trace event = {};
	struct bt_bucket *bucket;
	__u32 zero = 0;

	if (!cost || !trace_wanted(result, key))
		return;
	bucket = trace_bucket.lookup(&zero);
	if (!bucket || bucket_take(bucket, start, cost, TRACE_BURST_NS)) {
		count_lost_trace(BT_TRACE_LOST_RATE);
		return;
	}
	event.time_ns = start;
	if (action == XDP_TX)
		event.latency_ns = bpf_ktime_get_boot_ns() - start;
	__builtin_memcpy(event.mac, key->mac, ETH_ALEN);
	event.outer_vlan = key->outer_vlan;
	event.inner_vlan = key->inner_vlan;
	event.result = result;
	event.action = action;
	event.giaddr = giaddr;
	event.address = address;
	if (req) {
		event.msg_type = req->msg_type;
		if (!address && (req->seen & SEEN_REQUESTED))
			event.address = req->requested;
	}
	/* Woken up (flags 0): the tracer sleeps on the ring until an event comes. */
	if (trace.ringbuf_output(&event, sizeof(event), 0) < 0)
		count_lost_trace(BT_TRACE_LOST_FULL);
}

/* Counts the result, and records the latency of a sampled request that was answered. The
 * one way out for every DHCP request, so every result can be traced. */
static __always_inline int record(__u32 result, int action, __u64 start, int sampled,
				  struct bt_client_key *key, struct dhcp_request *req,
				  __be32 giaddr, __be32 address)
{
	__u64 *count = results.lookup(&result);

	if (count)
		*count += 1;
	if (action == XDP_TX && sampled) {
		__u32 bucket = log2_bucket(bpf_ktime_get_boot_ns() - start);
		__u64 *n = latency.lookup(&bucket);

		if (n)
			*n += 1;
	}
	trace_event(result, action, start, key, req, giaddr, address);
	return action;
}

int xdp_brushtail(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	struct dhcp_request *req = NULL;
	struct bt_client_key key = {};
	struct bt_rate_key sender = {};
	struct reply_plan plan = {};
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	struct bootp_hdr *b = NULL;
	struct bt_relay *relay = NULL;
	struct bt_lease *lease;
	struct bt_template *tpl;
	struct bt_renewal *event = NULL;
	struct bt_scratch *s;
	__u32 result, zero = 0, tpl_id, l3_off, frame_len, limit;
	__be32 server_id, ciaddr = 0;
	__be16 proto;
	__u64 now = 0, start = 0, expires;
	__u8 reply_type;
	int action = XDP_PASS, tags, parsed = 0, sampled = 0;

	tags = parse_ethhdr_vlan(&c, &eth, &key.outer_vlan, &key.inner_vlan, &proto);
	if (tags < 0 || proto != htons(ETH_P_IP))
		return XDP_PASS;
	l3_off = c.pos - data;
	frame_len = data_end - data;
	if (parse_iphdr(&c, &ip) < 0 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (parse_udphdr(&c, &udp) < 0 || udp->dest != htons(DHCP_SERVER_PORT) ||
	    !addressed_to_us(eth))
		return XDP_PASS;

	/* From here on it is DHCP, and every packet is counted under one result. */
	/* The walk's findings live in the scratch map, not on the stack: the verifier does not
	 * track map contents, so every way out of the walk leads to one state, not thousands. */
	result = BT_PASS_UNPARSED;
	s = scratch.lookup(&zero);
	if (!s)
		goto out;
	now = coarse_now(&s->clock);
	/* The exact clock is read for one request in LATENCY_SAMPLE (its latency, if it is
	 * answered) and for every request while someone traces (the event's time). */
	sampled = (++s->requests & (LATENCY_SAMPLE - 1)) == 0;
	if (sampled || config_get(BT_CFG_TRACE_COST))
		start = bpf_ktime_get_boot_ns();
	req = &s->req;
	__builtin_memset(req, 0, sizeof(*req));
	__builtin_memcpy(sender.mac, eth->h_source, ETH_ALEN);
	sender.outer_vlan = key.outer_vlan;
	sender.inner_vlan = key.inner_vlan;
	sender.saddr = ip->saddr;
	result = BT_DROP_MALFORMED;
	if (datagram_well_formed(ip, udp, l3_off, frame_len) &&
	    ipv4_csum_valid(ctx, ip, l3_off, ip->ihl * 4) && parse_bootp(&c, &b) == 0) {
		result = BT_PASS_UNPARSED;
		sender.giaddr = b->giaddr; /* only a well-formed request names a relay */
		/* Read now for a trace event, which may come after the frame became the reply. */
		__builtin_memcpy(key.mac, b->chaddr, ETH_ALEN);
		ciaddr = b->ciaddr;
	}
	/* A client on the link is charged before its options are walked, so an over-rate
	 * flood costs no walk; a relay's access line is named by an option (its circuit-id),
	 * so a relayed request is charged after the walk. */
	if (!sender.giaddr && rate_limited(&sender, now))
		goto over_rate;
	if (result == BT_DROP_MALFORMED) {
		action = XDP_DROP;
		goto out;
	}
	parsed = parse_request(&c, data, b, req, &sender);
	if (sender.giaddr && rate_limited(&sender, now))
		goto over_rate;
	if (!parsed)
		goto out;
	result = BT_PASS_MESSAGE;
	if (req->msg_type == DHCP_DISCOVER)
		reply_type = DHCP_OFFER;
	else if (req->msg_type == DHCP_REQUEST)
		reply_type = DHCP_ACK;
	else
		goto out;
	result = BT_PASS_SELECTOR;
	if (slow_path_selector(b, req))
		goto out;

	result = BT_PASS_RELAY;
	if (b->giaddr) {
		struct bt_relay_key relay_key = {
			.giaddr = b->giaddr,
			.outer_vlan = key.outer_vlan,
			.inner_vlan = key.inner_vlan,
		};

		relay = relays.lookup(&relay_key);
		if (!relay)
			goto out;
	}

	result = BT_PASS_MISS;
	lease = leases.lookup(&key);
	if (!lease) {
		if (reply_type == DHCP_OFFER && link_over_budget(&sender, now)) {
			result = BT_DROP_LINK_BUDGET;
			action = XDP_DROP;
		}
		goto out;
	}
	result = BT_PASS_EXPIRED;
	if (coarse_passed(now, lease->expires_ns))
		goto out;
	result = BT_PASS_IDENTITY;
	if (!identity_matches(data, data_end, req, lease))
		goto out;
	server_id = config_get(BT_CFG_SERVER_ID);
	result = BT_PASS_NETWORK;
	{
		/* The slow path's subnet selector, in its order (Server._network_selector), 118
		 * aside; a link selection (from a trusted relay only) of 0.0.0.0 is still a
		 * selection, of no subnet. A DISCOVER's ciaddr is 0 by RFC 2131 4.3.1 and does
		 * not select. Where server_id would select, a pool chosen by the client's VLANs
		 * (the key's) is the client's network whatever its subnet (Server._on_link). */
		__be32 selector = relay && relay->trusted && (req->seen & SEEN_SELECTOR) ?
					  req->subnet_selection :
					  b->giaddr ?: (reply_type == DHCP_ACK ? ciaddr : 0) ?: server_id;

		if ((selector & lease->netmask) != lease->subnet &&
		    !(selector == server_id && !b->giaddr && (lease->flags & BT_LEASE_BY_VLAN)))
			goto out;
		if (b->giaddr && (lease->flags & BT_LEASE_UNICAST_ONLY))
			goto out;
	}
	result = BT_PASS_PRL;
	if ((req->seen & SEEN_PRL ? hash_bytes(data, data_end, req->prl_off, req->prl_len) :
				    BT_PRL_ABSENT) != lease->prl_hash)
		goto out;
	result = BT_PASS_REQUEST_MISMATCH;
	if (reply_type == DHCP_ACK && !request_matches(ip, b, req, lease, server_id))
		goto out;
	/* A roaming client (an address of another site's block, docs/STATE.md rule 2) is
	 * extended only up to the cap: an ACK that would run past it is the slow path's,
	 * which gives a shorter lease or NAKs. So is such an OFFER, whose lease time the ACK
	 * could not give. */
	result = BT_PASS_CAP;
	expires = coarse_upper(now) + lease->lease_time * NS_PER_SEC;
	if (lease->cap_ns && expires > lease->cap_ns)
		goto out;

	result = BT_PASS_NO_TEMPLATE;
	tpl_id = reply_type == DHCP_OFFER ? lease->offer_template : lease->ack_template;
	tpl = templates.lookup(&tpl_id);
	/* A template starts with option 53 (the codec writes it first). An unused slot is all
	 * zeros (brushtaild/xdp/sync.py zeroes the ones it frees): no template, or the reply
	 * would go out without even a message type. (Not tested as len == 0: clang merges that
	 * with the bound below into one compare the verifier cannot take a range from.) */
	if (!tpl || tpl->options[0] != OPT_MESSAGE_TYPE || tpl->len > BT_TEMPLATE_MAX)
		goto out;
	result = BT_PASS_UNPARSED;
	plan.l3_off = l3_off;
	plan.frame_len = frame_len;
	plan.tpl_len = tpl->len;
	if (req->seen & SEEN_CLIENT_ID) {
		/* Echoed as the lease holds it: identity_matches found it the request's. */
		if (!lease->id_len || lease->id_len > BT_MAX_CLIENT_ID)
			goto out;
		plan.client_id_len = 2 + lease->id_len;
	}
	if (req->seen & SEEN_RELAY) {
		plan.relay_len = save_relay_info(ctx, s->buf, req);
		if (!plan.relay_len)
			goto out;
	}
	result = BT_PASS_TOO_BIG;
	plan.opt_len = plan.tpl_len + plan.client_id_len + plan.relay_len;
	plan.bootp_len = reply_bootp_len(plan.opt_len);
	limit = req->max_size > MIN_IP_DATAGRAM ? req->max_size : MIN_IP_DATAGRAM;
	if (UDP_IP_HLEN + plan.bootp_len > limit)
		goto out;
	if (keep_fields(data, data_end, b, &plan.kept) < 0)
		goto out;
	reply_destination(eth, b, relay, lease->address, &plan.to);
	plan.server_id = server_id;
	plan.yiaddr = lease->address;
	plan.ciaddr = reply_type == DHCP_ACK ? ciaddr : 0;
	plan.server_mac = config_get(BT_CFG_SERVER_MAC);

	if (reply_type == DHCP_ACK) {
		/* No renewal goes unrecorded: without room to report it, the slow path answers. */
		result = BT_PASS_EVENT_FULL;
		event = renewals.ringbuf_reserve(sizeof(*event));
		if (!event)
			goto out;
		event->key = key;
		event->address = lease->address;
		event->expires_ns = expires;
	}

	/* Up to here the frame is untouched and a failure passes it on. */
	result = BT_PASS_NO_ROOM;
	action = write_reply(ctx, &plan, tpl, lease, s->client_id, s->buf);
	if (action != XDP_TX)
		goto out_discard;
	if (event) {
		lease->expires_ns = event->expires_ns;
		/* No wakeup: brushtaild reads the ring in its own loop, not by waiting on it. */
		renewals.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
	}
	result = reply_type == DHCP_OFFER ? BT_RES_OFFER : BT_RES_ACK;
	return record(result, XDP_TX, start, sampled, &key, req, sender.giaddr, lease->address);

over_rate:
	result = BT_DROP_RATE_LIMIT;
	action = XDP_DROP;
	goto out;

out_discard:
	if (event)
		renewals.ringbuf_discard(event, 0);
out:
	return record(result, action, start, sampled, &key, req, sender.giaddr, ciaddr);
}
