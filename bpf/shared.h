/* SPDX-License-Identifier: GPL-2.0 */
/* Layouts and numbers shared by the XDP program and brushtaild/xdp/maps.py.
 *
 * Change a struct here and its ctypes mirror in brushtaild/xdp/maps.py in the same commit:
 * tests/bpf/test_layout.py compares sizes, offsets and every number below. Reason numbers
 * are metric labels: never renumber one, retire it by leaving its number unused.
 */
#ifndef BRUSHTAIL_SHARED_H
#define BRUSHTAIL_SHARED_H

#define BT_MAX_CLIENT_ID 32   /* option 61 longer than this: slow path only */
#define BT_TEMPLATE_MAX 192   /* reply options rendered by userspace, without 82 and end */
#define BT_MAX_TEMPLATES 4096
#define BT_MAX_RELAYS 4096    /* relays whose next hop the program knows */
#define BT_LATENCY_BUCKETS 32 /* log2 nanosecond buckets: 1 ns .. 2^31 ns */
#define BT_PRL_ABSENT 0       /* prl_hash of a request without option 55 */

/* Lease entry flags. */
#define BT_LEASE_HW_ID 1 /* identity is htype 1 + chaddr: a request without option 61 matches */
#define BT_LEASE_BY_VLAN 2 /* its pool was chosen by the client's VLANs (the key's), not by
			    * server_id: a request from the link without ciaddr is on it */
#define BT_LEASE_UNICAST_ONLY 4 /* its class was told from the option 82 and relay its lease
				 * stashed: a relayed request brings its own, which the slow
				 * path classifies it by */

/* Config slots (array "config"). Never renumbered: a new brushtaild reads the IFINDEX and
 * RENEWAL_LAYOUT slots of an older version's pinned config to take that version down. */
#define BT_CFG_SERVER_ID 0   /* network order IPv4 */
#define BT_CFG_RATE_COST 1   /* ns of credit one request costs; 0 disables the rate limit */
#define BT_CFG_RATE_BURST 2  /* ns of credit a bucket holds at most */
#define BT_CFG_SERVER_MAC 3  /* low 6 bytes, in wire order */
#define BT_CFG_RELAY_COST 4  /* ns of credit one request costs a relay; 0: relays unlimited */
#define BT_CFG_IFINDEX 5     /* the interface the program was attached to (userspace only) */
#define BT_CFG_RENEWAL_LAYOUT 6 /* offsets in struct bt_renewal (userspace only, loader.py) */
/* Tracing (brushtaild/xdp/trace.py sets them while `brushtail trace` runs). */
#define BT_CFG_TRACE_COST 7    /* ns of credit one trace event costs; 0: nobody traces */
#define BT_CFG_TRACE_MAC 8     /* only requests with this chaddr (as SERVER_MAC); 0: any */
#define BT_CFG_TRACE_RESULTS 9 /* bit n: trace result n (enum bt_result); 0: every result */
#define BT_CFG_SLOTS 10

/* Slots of the per-CPU array "trace_lost": trace events the program did not queue. */
#define BT_TRACE_LOST_RATE 0  /* over the trace bucket's rate */
#define BT_TRACE_LOST_FULL 1  /* the trace ring was full: the tracer reads too slowly */
#define BT_TRACE_LOST_SLOTS 2

/* What the program did with a packet: the index of its per-CPU counter. */
enum bt_result {
	BT_RES_OFFER = 0,
	BT_RES_ACK = 1,
	/* passed to the slow path, by reason */
	BT_PASS_NOT_DHCP = 2,      /* not IPv4/UDP to port 67: not counted as a lookup */
	BT_PASS_UNPARSED = 3,      /* a header or option we do not fully understand */
	BT_PASS_MISS = 4,          /* no lease entry for this client */
	BT_PASS_EXPIRED = 5,
	BT_PASS_IDENTITY = 6,      /* option 61 differs from the lease's identity */
	BT_PASS_NETWORK = 7,       /* selects another subnet, or a relay may tell another class */
	BT_PASS_MESSAGE = 8,       /* RELEASE, DECLINE, INFORM, ...: slow path by design */
	BT_PASS_REQUEST_MISMATCH = 9, /* option 50, 54, ciaddr or destination not this lease */
	BT_PASS_PRL = 10,          /* parameter request list differs from the template's */
	BT_PASS_TOO_BIG = 11,      /* the reply would exceed the client's option 57 */
	BT_PASS_EVENT_FULL = 12,   /* renewal event could not be queued */
	BT_PASS_NO_ROOM = 13,      /* frame could not be resized for the reply */
	BT_PASS_NO_TEMPLATE = 14,
	BT_DROP_RATE_LIMIT = 15,
	BT_DROP_MALFORMED = 16,     /* not a well-formed request (docs/DESIGN.md): never passed */
	BT_PASS_SELECTOR = 17,     /* option 118, or 82 from a client: the slow path decides */
	/* No longer counted: a VLAN tag with VID 0 names no VLAN, on both paths. The number
	 * stays taken, so a pinned results map adopted across an upgrade keeps its meaning. */
	BT_PASS_PRIORITY_TAG = 18,
	BT_DROP_LINK_BUDGET = 19,  /* a new subscriber's DISCOVER over its link's budget */
	BT_PASS_RELAY = 20,        /* a relay (giaddr) whose next hop userspace has not given */
	BT_PASS_CAP = 21,          /* a roaming client's lease would run past its entry's cap */
	BT_RESULTS = 22,
};

struct bt_client_key {
	__u8 mac[6];
	__u16 outer_vlan; /* VLAN IDs in host order; 0 = untagged */
	__u16 inner_vlan;
	__u16 pad;
};

struct bt_lease {
	__u64 expires_ns;   /* CLOCK_BOOTTIME */
	/* CLOCK_BOOTTIME; 0: none. A roaming client's (an address of another site's block,
	 * docs/STATE.md rule 2): no reply of the program lets its lease run past it. */
	__u64 cap_ns;
	__u64 prl_hash;     /* of the option 55 the templates were rendered for */
	__u32 address;      /* network order, as all addresses here */
	__u32 subnet;
	__u32 netmask;
	__u32 lease_time;   /* seconds, host order */
	__u16 offer_template;
	__u16 ack_template;
	__u8 flags;
	__u8 id_len;
	__u8 pad[2];
	__u8 client_id[BT_MAX_CLIENT_ID]; /* 8-byte aligned: compared a word at a time */
};

struct bt_template {
	__u16 len;
	__u16 csum; /* partial checksum of options[0, len), as bpf_csum_diff would fold it */
	__u8 options[BT_TEMPLATE_MAX]; /* zero after len: the program copies past it */
};

/* A relay as its requests name it: the giaddr it writes, on the VLANs it sends on. */
struct bt_relay_key {
	__be32 giaddr;
	__u16 outer_vlan;
	__u16 inner_vlan;
};

/* Where a relay's replies go and what it is trusted with, from brushtaild/xdp/relays.py. */
struct bt_relay {
	__u8 next_hop[6]; /* the MAC the kernel's routing and neighbour tables give for giaddr */
	__u8 trusted;     /* its link selection (82 sub-option 5) chooses the subnet */
	__u8 pad;
};

/* Ring buffer record for every lease the program extends. */
struct bt_renewal {
	struct bt_client_key key;
	__u32 address;
	__u64 expires_ns;
};

/* Ring buffer record of one traced request: what the program decided and on what. */
struct bt_trace {
	__u64 time_ns;    /* CLOCK_BOOTTIME when the request was read */
	__u64 latency_ns; /* answered: from then to the reply written; else 0 */
	__u8 mac[6];      /* chaddr; zero if the request was not well-formed */
	__u16 outer_vlan; /* host order; 0 = untagged */
	__u16 inner_vlan;
	__u8 result;      /* enum bt_result */
	__u8 action;      /* XDP_DROP, XDP_PASS or XDP_TX */
	__be32 giaddr;
	__be32 address;   /* answered: the lease's; else ciaddr, or option 50 */
	__u8 msg_type;    /* option 53, 0 if the walk did not reach it */
	__u8 pad[3];
};

/* Whom a request is charged to: what its sender cannot forge. A client on the link is its
 * L2 source, VLANs and IP source (giaddr and circuit 0); a relay is its L2 source, VLANs,
 * IP source and giaddr, and one of its access lines adds the hash of option 82's
 * circuit-id. The IP source matters for unicast renewals of routed subscribers: they all
 * arrive from the upstream router's MAC, each from its own address (0.0.0.0 until a
 * client has one). */
struct bt_rate_key {
	__u8 mac[6];
	__u16 outer_vlan;
	__u16 inner_vlan;
	__u16 pad;
	__be32 giaddr;
	__be32 saddr;
	__u32 kind; /* BT_RATE_SENDER, or BT_RATE_LINK for a link's budget of new subscribers */
	__u64 circuit;
};

#define BT_RATE_SENDER 0
#define BT_RATE_LINK 1

struct bt_bucket {
	__u64 last_ns;
	__u64 credit_ns;
};

#endif
