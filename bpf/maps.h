/* SPDX-License-Identifier: GPL-2.0 */
/* Every map of the fast path, declared in one place.
 *
 * Maps that hold state are pinned under BT_PIN_DIR (set by brushtaild/xdp/loader.py), so
 * the program keeps answering renewals while brushtaild is stopped or restarting, and a
 * new brushtaild adopts them. Sizes come from the loader's -D flags.
 */
#ifndef BRUSHTAIL_MAPS_H
#define BRUSHTAIL_MAPS_H

#include "shared.h"
#include "parsing.h"
#include "clock.h"

#ifndef BT_PIN_DIR
#error "BT_PIN_DIR must be set by the loader"
#endif
#ifndef BT_MAX_LEASES
#define BT_MAX_LEASES 1048576
#endif
#ifndef BT_RATELIMIT_ENTRIES
#define BT_RATELIMIT_ENTRIES 65536
#endif
#ifndef BT_EVENT_PAGES
#define BT_EVENT_PAGES 1024 /* 4 MiB: about 130k renewals while brushtaild is away */
#endif
#ifndef BT_TRACE_PAGES
#define BT_TRACE_PAGES 64 /* 256 KiB: 5000 events a slow tracer has not read yet */
#endif
#define BT_SCRATCH_SIZE 264 /* option 82 (2 + 255 bytes), zero-padded to 4 */
#define BT_SCRATCH_ID_SIZE 48 /* option 61 (2 + BT_MAX_CLIENT_ID bytes) after 8 bytes */

#define BPF_F_NO_PREALLOC_ 1

/* Client -> lease. Not preallocated: an entry replaced by userspace is freed only after
 * an RCU grace period, so the program never reads a half-written lease. */
BPF_TABLE_PINNED("hash", struct bt_client_key, struct bt_lease, leases, BT_MAX_LEASES,
		 BT_PIN_DIR "/leases", BPF_F_NO_PREALLOC_);
/* Template id -> reply options, rendered by the slow path's codec. An array, so a lookup is
 * an inlined bounds check and no hash: userspace never rewrites a template an entry may
 * still use (a changed template gets a fresh id, see brushtaild/xdp/sync.py), so the
 * program never reads one half-written. Twice the templates in use fit, so a rebuild
 * writes the new set before the old one goes. */
BPF_TABLE_PINNED("array", __u32, struct bt_template, templates, 2 * BT_MAX_TEMPLATES,
		 BT_PIN_DIR "/templates");
BPF_TABLE_PINNED("array", __u32, __u64, config, BT_CFG_SLOTS, BT_PIN_DIR "/config");
/* Relay -> its next hop. A relayed reply goes where routing would send it, never to the
 * frame's L2 source, which any host on the link can be; a relay without an entry is
 * answered by the slow path, which then has the entry written. */
BPF_TABLE_PINNED("hash", struct bt_relay_key, struct bt_relay, relays, BT_MAX_RELAYS,
		 BT_PIN_DIR "/relays");
/* Token buckets per sender (struct bt_rate_key); an LRU apart from the leases, so a flood
 * of random MACs only ever evicts other buckets. */
BPF_TABLE_PINNED("lru_hash", struct bt_rate_key, struct bt_bucket, ratelimit,
		 BT_RATELIMIT_ENTRIES, BT_PIN_DIR "/ratelimit");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, results, BT_RESULTS, BT_PIN_DIR "/results");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, latency, BT_LATENCY_BUCKETS,
		 BT_PIN_DIR "/latency");
/* One CPU's working space: its coarse clock, its count of DHCP requests (which picks the
 * ones whose latency is sampled) and what the option walk found, which a request reads
 * whatever it is, together in the first 64 bytes; then room for option 61 and option 82,
 * kept while the frame becomes the reply. */
struct bt_scratch {
	struct bt_clock clock;
	struct dhcp_request req;
	__u32 requests;
	__u8 client_id[BT_SCRATCH_ID_SIZE];
	__u8 buf[BT_SCRATCH_SIZE];
};
BPF_PERCPU_ARRAY(scratch, struct bt_scratch, 1);

/* BCC's BPF_RINGBUF_OUTPUT, pinned at `path`. */
#define BT_RINGBUF_PINNED(_name, _size, _path)                                       \
	struct _name##_table_t {                                                     \
		int key;                                                             \
		u32 leaf;                                                            \
		int (*ringbuf_output)(void *, u64, u64);                             \
		void *(*ringbuf_reserve)(u64);                                       \
		void (*ringbuf_discard)(void *, u64);                                \
		void (*ringbuf_submit)(void *, u64);                                 \
		u32 max_entries;                                                     \
	};                                                                           \
	__attribute__((section("maps/ringbuf:" _path)))                              \
	struct _name##_table_t _name = { .max_entries = (_size) }

/* Renewals queued while brushtaild is away are read by the next one, so none is lost
 * across a restart. */
BT_RINGBUF_PINNED(renewals, BT_EVENT_PAGES * PAGE_SIZE, BT_PIN_DIR "/renewals");

/* Trace events (struct bt_trace), read by `brushtail trace` whether or not brushtaild
 * runs: pinned, like the counts of events it lost. */
BT_RINGBUF_PINNED(trace, BT_TRACE_PAGES * PAGE_SIZE, BT_PIN_DIR "/trace");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, trace_lost, BT_TRACE_LOST_SLOTS,
		 BT_PIN_DIR "/trace_lost");
/* One bucket for all CPUs, so the rate a tracer asks for is the rate it gets. Written only
 * while someone traces. Not pinned: it holds nothing worth keeping across programs. */
BPF_ARRAY(trace_bucket, struct bt_bucket, 1);

#endif
