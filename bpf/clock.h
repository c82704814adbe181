/* SPDX-License-Identifier: GPL-2.0 */
/* The program's clock: CLOCK_BOOTTIME, as brushtaild's lease times are, read exactly about
 * once a tick per CPU instead of once a request.
 *
 * A clock read is a helper call, and on a VM with retpolines and Safe RET each one costs
 * about as much as the lease lookup (docs/BENCHMARKS.md, "Fast path"); jiffies is one load,
 * which the verifier inlines. Each CPU keeps the boot time it read when it first saw the
 * current jiffies value and uses it until jiffies moves on. That coarse `now` is never
 * ahead of the clock and lags it by at most how long jiffies stays the same: one tick
 * (1/HZ: 4 ms at HZ=250, at most 10 ms since HZ >= 100), more only while the kernel's own
 * jiffies update stalls (a vCPU held up by its host; the kernel repairs a stall of 5 ticks).
 *
 * What each user makes of it, and the bound it keeps:
 * - expiry (coarse_passed): a deadline less than EXACT_WINDOW_NS ahead of the coarse `now`
 *   is judged by an exact read, so a lease is never answered past its end unless the
 *   coarse clock lags by more than EXACT_WINDOW_NS (1 s);
 * - a renewal's new expiry (coarse_upper): `now` + TICK_MAX_NS, never earlier than the
 *   exact clock would give while the lag is within a tick, and at most TICK_MAX_NS later:
 *   brushtaild holds the address that much longer, never shorter than the client does;
 * - the token buckets: credit is the coarse time passed, so over any interval a bucket
 *   gains at most one lag (a tick) of credit more than exactly, never more than its burst.
 */
#ifndef BRUSHTAIL_CLOCK_H
#define BRUSHTAIL_CLOCK_H

#define TICK_MAX_NS 10000000ull      /* one jiffy on any kernel: HZ >= 100 */
#define EXACT_WINDOW_NS 1000000000ull /* deadlines this close are judged exactly */

/* One CPU's clock: the jiffies value it last saw and the boot time read then. */
struct bt_clock {
	__u64 jiffies;
	__u64 boot_ns;
};

static __always_inline __u64 coarse_now(struct bt_clock *clock)
{
	__u64 jiffies = bpf_jiffies64();

	/* Read after jiffies was: the boot time is no earlier than jiffies' value began. */
	if (jiffies != clock->jiffies) {
		clock->jiffies = jiffies;
		clock->boot_ns = bpf_ktime_get_boot_ns();
	}
	return clock->boot_ns;
}

/* A `now` no earlier than the clock's while the coarse one lags by a tick at most. */
static __always_inline __u64 coarse_upper(__u64 now)
{
	return now + TICK_MAX_NS;
}

/* Whether `deadline` (CLOCK_BOOTTIME) has come: from the coarse `now` when it is far off,
 * from the clock itself when it is near. */
static __always_inline int coarse_passed(__u64 now, __u64 deadline)
{
	if (now + EXACT_WINDOW_NS < deadline)
		return 0;
	return bpf_ktime_get_boot_ns() >= deadline;
}

#endif
