/* SPDX-License-Identifier: GPL-2.0 */
/* Token buckets, kept in nanoseconds of credit so the hot path never divides: each request
 * costs `cost` ns and a bucket holds at most `burst` ns.
 * Map access stays in brushtail.c: BCC rewrites map calls only in the main file. */
#ifndef BRUSHTAIL_RATELIMIT_H
#define BRUSHTAIL_RATELIMIT_H

#include "shared.h"

static __always_inline void bucket_init(struct bt_bucket *b, __u64 now, __u64 cost, __u64 burst)
{
	b->last_ns = now;
	b->credit_ns = burst > cost ? burst - cost : 0; /* the first request is paid for */
}

/* Returns 1 if the request is over the rate (and leaves the credit to build up).
 *
 * Another CPU may have stamped the bucket with a later `now` than this one's: no time has
 * passed then, and the stamp stays (the difference would wrap and fill the bucket). The
 * read-modify-write is not atomic, so two CPUs at once may both spend one credit: at most
 * one request per CPU more than the rate, never a full bucket. */
static __always_inline int bucket_take(struct bt_bucket *b, __u64 now, __u64 cost, __u64 burst)
{
	__u64 last = b->last_ns;
	__u64 credit = b->credit_ns;

	if (now > last) {
		credit += now - last;
		b->last_ns = now;
	}
	if (credit > burst)
		credit = burst;
	if (credit < cost) {
		b->credit_ns = credit;
		return 1;
	}
	b->credit_ns = credit - cost;
	return 0;
}

#endif
