"""Known subscribers on all four servers: renewals answered per second, renewal latency, the
80/20 mix of renewals and new subscribers, and a restart while subscribers renew.

Per server and run (runs interleaved: run 1 of every server, then run 2, ...): a fresh pair
of namespaces (btfp-<pid>-<n>-s/-c, tests/e2e/netns.Link: server sub0 198.18.0.1/16, client
cli0 198.18.0.2/16, perfdhcp's relay address), the server pinned to CPU 0 with a fresh state
directory in /var/tmp, this process (pacer, counters) and perfdhcp on CPU 1.

  brushtail  the real brushtaild (tests/e2e/daemon.Brushtaild) with its fast path attached,
             from a snapshot of bpf/ and brushtaild/ (the working tree, or --rev); pool
             198.18.0.0/15; the per-client and per-relay rate limits off (rate_limit: 0,
             relay_rate_limit: 0): a handful of subscribers renewing thousands of times a
             second is a load model, not a misbehaving client
  kea, dnsmasq, dhcpd  as bench/slowpath.py starts them (same pool, lease time 3600 s)

--subscribers known subscribers (MACs 02:5b:...) hold a lease before anything is measured:
brushtail's by a real DORA through the daemon (bench/flood.bind_subscribers: 64 at a time,
broadcast, on the link; the run waits until its kernel map holds every one), the peers' from
their lease file written before they start (Kea's memfile CSV, dnsmasq's lease file,
dhcpd.leases: binding 300 by DORA took dhcpd 80 s on a loaded machine). The server side
gets a static neighbour entry for each, so a server that answers a renewal through its IP
stack (dnsmasq, dhcpd) reaches them. Once the server ACKs renewals, every subscriber renews
once at a rate it surely sustains (WARM_RATE), so no measurement holds a first renewal.
Renewals are RENEWING-state DHCPREQUESTs (ciaddr set, unicast to the server's MAC and IP,
the subscribers in turn, UDP checksum 0) from a raw socket paced in Python
(bench/subscribers_wire.Pacer: renewal n due at start + n / rate, sleeping until 0.15 ms
before it, then spinning; its send time read right before the send call). Answers are
counted and stamped on the client veth by an XDP program (bench/subscribers_wire.py): ACK
and NAK apart, each answer's arrival (bpf_ktime_get_ns, when the reply reaches the client
veth, before the client's stack) against its renewal's send time. A send the kernel refuses
(ENOBUFS: the backlog in front of the server is full) counts as offered and unanswered.
Parts (--part, comma-separated, in this order on one server start):

  renewals  offered renewal rates rising (x2 until < 97.5% are ACKed, then bisected to
            1.3x, at most --max-steps): the highest rate with >= 97.5% ACKed; for
            brushtail, when the pacer itself is the limit twice in a row with all answered,
            also bench/fastpath.py's live-frames generator (one subscriber renewing, a flood
            from xdp_gen): the higher figure with >= 97.5% answered counts
  latency   renewal REQUEST-ACK at --light-rate and at half of the server's renewal
            capacity (from part renewals in the same run, or a shorter search); after each
            round, the trivial responder xdp_floor (MAC lookup, swap, XDP_TX) in place of a
            server on the same harness at the same two rates: the method's own floor
  mix       80% renewals (the pacer, in a thread) + 20% new subscribers doing DORA
            (perfdhcp, relay mode, its own base MAC per call, bench/slowpath.perfdhcp) at
            rising total rates, after one relayed DORA completed: the highest total answer
            rate (renewal ACKs + completed DORAs per second) at which >= 97.5% of renewals
            and of new exchanges complete
  restart   renewals at --restart-rate (at most half the server's renewal capacity); the
            server is stopped (SIGTERM) and started again on the same state (brushtail: the
            same config and pin dir): renewals lost and NAKed (a NAK: the server no longer
            knows the lease), the longest run of unanswered renewals
            (first send to the next send), the time from the stop to the answer that ended
            it (0 if answers never stopped), the share of subscribers renewing after it that
            were ACKed, and the share of renewals answered while the start command ran
  flood     (scenario `flood_peers`; not in the default --part; a server started for it
            alone, brushtail with its default rate limits ON, as protection against floods
            is the point) renewals at --flood-renew-rate (at most what the server surely
            sustains, RESTART_UNKNOWN); after --flood-before s, bench/floodgen.c (pinned to
            CPU 1) sends --flood-rate DISCOVERs/s from random MACs (first octet 0x0a)
            directly on the link for --flood-seconds; from 1 s into it a new subscriber
            tries a relayed DORA (perfdhcp, 1 s tries) for up to 10 s; renewals go on for
            --flood-after s after it. The share of renewals ACKed within 2 s before and
            during the flood, whether and how fast the new subscriber got its lease, the
            recovery (the flood's end to the first renewal from which 0.5 s of renewals
            were all ACKed), the flood's answered rate (replies to port 68 that answer no
            renewal), the server process's CPU time over the flood's wall time. No CPU per
            answer: a server that drops the flood as it should answers less of it, so its
            CPU per answer says nothing of its cost

Run as root from the checkout:

    /work/main/.venv/bin/python bench/subscribers.py --part renewals,latency,mix,restart,flood \
        [--runs 3] [--quick] [--servers brushtail,kea,dnsmasq,dhcpd] \
        [--json-dir DIR | --json PATH] [--rev COMMIT]

One Scenario (bench/scenario.py) per part: --json PATH for one part, --json-dir DIR writes
DIR/<part>.json, else bench/results/subscribers-<part>-<date>-<time>.json. Namespaces, pin
dirs (/sys/fs/bpf/brushtail-bench-<pid>-*), state dirs (/var/tmp/btsub-<pid>-*) and the
snapshot are removed on exit, failure and Ctrl-C included; leftovers of dead runs are swept
at start.
"""

import argparse
import datetime as dt
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastpath  # bench/ is this script's sys.path[0]
import flood
import slowpath
from scenario import SERVERS, Metric, Scenario, Series
from subscribers_servers import (
    LOAD_CPU,
    SETTLE,
    STATE_DIR,
    WORK_PREFIX,
    Context,
    Session,
    floor_session,
    idle,
    kernel_entries,
    session,
)
from subscribers_wire import TAG_SHIFT, XID_AT, Answers, ClientPrograms

from tests.e2e import netns

PARTS = ("renewals", "latency", "mix", "restart", "flood")
# The scenario id (and --json-dir file name) of a part, where it is not the part's name:
# bench/flood.py's brushtail-only scenario is `flood`.
SCENARIO_IDS = {"flood": "flood_peers"}
OK_SHARE = 0.975
PACER_SHORT = 0.95  # a step whose pacer sent less than this of its target: pacer-limited
# First offered rate of the searches (renewals/s, total answers/s for the mix): near what
# each server did in bench/slowpath.py and /work/shared/notes/peer-baseline.md, so the
# search takes few steps; dnsmasq and dhcpd stop early.
RENEW_START = {"brushtail": 25_000, "kea": 8_000, "dnsmasq": 500, "dhcpd": 500}
MIX_START = {"brushtail": 10_000, "kea": 4_000, "dnsmasq": 250, "dhcpd": 250}
# Renewals/s of part restart when part renewals did not run: what each surely sustains.
RESTART_UNKNOWN = {"brushtail": 1000, "kea": 1000, "dnsmasq": 60, "dhcpd": 150}
RECOVERY_WINDOW = 0.5  # part flood: seconds of renewals all answered that end the recovery


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Step:
    offered: float  # the target rate
    sent: int
    seconds: float
    acks: int
    naks: int
    cpu_s: float | None = None  # the server's CPU time over the step (all threads)
    wait_s: float | None = None  # ... runnable but waiting for a CPU
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.acks / self.sent if self.sent else 0.0

    @property
    def per_s(self) -> float:
        return self.acks / self.seconds if self.seconds else 0.0

    @property
    def pacer_limited(self) -> bool:
        return self.sent < PACER_SHORT * self.offered * self.seconds


def cpu_of(pid: int) -> tuple[float, float] | None:
    return slowpath.schedstat(pid)


def usage(step: Step, before: tuple[float, float] | None, after: tuple[float, float] | None):
    if before is not None and after is not None:
        step.cpu_s, step.wait_s = after[0] - before[0], after[1] - before[1]


COUNTERS = {
    "dhcp_fastpath_requests_total": "",
    "dhcp_slowpath_requests_total": "slow ",
    "dhcp_packets_dropped_total": "dropped ",
}


def fastpath_counts(s: Session) -> dict[str, float]:
    """brushtail's counters by label: its kernel's requests by result (plain), the slow
    path's ("slow ..."), and its drops by reason ("dropped ...")."""
    if s.daemon is None:
        return {}
    samples = flood.scrape(s.daemon)
    return {prefix + k: v for name, prefix in COUNTERS.items()
            for k, v in flood.labelled(samples, name).items()}  # fmt: skip


def counts_since(s: Session, before: dict[str, float]) -> dict[str, float]:
    after = fastpath_counts(s)
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def renewal_step(s: Session, rate: float, seconds: float) -> tuple[Step, Answers]:
    tag = s.progs.begin()
    k0 = fastpath_counts(s)
    c0 = cpu_of(s.pid)
    sent = s.pacer.run(tag, rate, seconds)
    time.sleep(SETTLE)
    c1 = cpu_of(s.pid)
    answers = s.progs.end(sent.count)
    extra: dict[str, Any] = {"send_errors": sent.errors}
    if s.daemon is not None:
        extra["fastpath"] = counts_since(s, k0)
    step = Step(rate, sent.count, sent.seconds, answers.acks, answers.naks, extra=extra)
    usage(step, c0, c1)
    return step, answers


def search(
    s: Session, start: float, max_steps: int, measure: Callable[[float], Step]
) -> tuple[Step | None, list[Step]]:
    """The highest offered rate with >= OK_SHARE answered: x2 from `start` until a step
    fails (or the load generator cannot go faster), then bisected (in log space) to 1.3x."""
    good: Step | None = None
    bad: float | None = None
    steps: list[Step] = []
    rate = start
    limited = 0
    for _ in range(max_steps):
        step = measure(rate)
        steps.append(step)
        print(f"    offered {rate:,.0f}/s: sent {step.sent / step.seconds:,.0f}/s, "
              f"{step.share:.1%} answered {step.extra.get('fastpath', '')}"
              + (f" send errors {step.extra['send_errors']}" if step.extra.get("send_errors")
                 else "")
              + (f"(renewals {step.extra['renew_share']:.1%}, new {step.extra['new_share']:.1%}, "
                 f"perfdhcp CPU {step.extra['perfdhcp_cpu_pct'] or 0:.0f}%)"
                 if "new_share" in step.extra else ""),
              file=sys.stderr, flush=True)  # fmt: skip
        idle(s)
        if step.extra.get("ok", step.share >= OK_SHARE):
            if good is None or step.offered > good.offered:
                good = step
        else:  # what was really offered, if the load generator fell short of the target
            offered = min(rate, step.sent / step.seconds)
            bad = offered if bad is None else min(bad, offered)
        limited = limited + 1 if step.pacer_limited and bad is None else 0
        if limited == 2:
            break  # all answered at the most the load generator can offer, twice
        if good is not None and bad is not None and bad / good.offered <= 1.3:
            break
        if bad is None:
            rate *= 2
        elif good is None:
            rate = bad / 2
        else:
            rate = math.sqrt(good.offered * bad)
    return good, steps


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- parts ---------------------------------------------------------------------------------


Values = dict[str, float | None]  # metric key -> value of one server in one run
Points = list[tuple[float, float]]  # (x, y) of one server in one run


def part_renewals(s: Session, args: argparse.Namespace) -> tuple[Values, Points, list[str]]:
    notes = []
    good, steps = search(s, RENEW_START[s.server], args.max_steps,
                         lambda rate: renewal_step(s, rate, args.step)[0])  # fmt: skip
    values: Values = {"answers_per_s": None, "cpu_us_per_answer": None,
                      "pacer_answers_per_s": None}  # fmt: skip
    points = [(st.sent / st.seconds, st.per_s) for st in steps]
    if good is not None:
        s.capacity = good.per_s
        values["answers_per_s"] = values["pacer_answers_per_s"] = good.per_s
        if good.cpu_s is not None and good.acks:
            values["cpu_us_per_answer"] = good.cpu_s / good.acks * 1e6
    naks = sum(st.naks for st in steps)
    if naks:
        notes.append(f"{s.server} run {s.run + 1}: {naks} NAKs to renewals")
    last = steps[-1]
    if s.server == "brushtail" and last.pacer_limited and last.share >= OK_SHARE:
        gen = generator_step(s, args.step)
        points.append((gen.sent / gen.seconds, gen.per_s))
        notes.append(
            f"brushtail run {s.run + 1}: the pacer's limit was reached at "
            f"{last.sent / last.seconds:,.0f}/s (all answered); the live-frames generator "
            f"offered {gen.sent / gen.seconds:,.0f}/s, {gen.share:.1%} answered (the fast "
            f"path's own count by result: {gen.extra['fastpath']})"
        )
        if gen.share >= OK_SHARE and gen.per_s > (values["answers_per_s"] or 0):
            values["answers_per_s"] = gen.per_s
            if gen.cpu_s is not None and gen.acks:
                values["cpu_us_per_answer"] = gen.cpu_s / gen.acks * 1e6
    return values, points, notes


def generator_step(s: Session, seconds: float) -> Step:
    """One subscriber's renewal sent by xdp_gen (BPF_PROG_TEST_RUN, live frames) from the
    client veth as fast as it goes (bench/fastpath.generate), answers counted as always."""
    tag = s.progs.begin()
    frame = bytearray(s.pacer.frames[0])
    frame[XID_AT : XID_AT + 4] = (tag << TAG_SHIFT).to_bytes(4, "big")
    c0 = cpu_of(s.pid)
    k0 = fastpath_counts(s)
    sent, elapsed, _ = fastpath.generate(s.link, s.progs, bytes(frame), seconds)
    time.sleep(SETTLE)
    c1 = cpu_of(s.pid)
    answers = s.progs.end(1)
    step = Step(sent / elapsed, sent, elapsed, answers.acks, answers.naks,
                extra={"fastpath": counts_since(s, k0)})  # fmt: skip
    usage(step, c0, c1)
    idle(s)
    return step


def latency_at(s: Session, rate: float, seconds: float) -> tuple[float | None, float | None, float]:
    """(median, p99 in us, share answered) of renewals paced at `rate`."""
    tag = s.progs.begin()
    sent = s.pacer.run(tag, rate, seconds)
    time.sleep(SETTLE)
    answers = s.progs.end(sent.count)
    lat = s.pacer.latencies_us(answers)
    idle(s)
    share = len(lat) / sent.count if sent.count else 0.0
    return (statistics.median(lat) if lat else None), quantile(lat, 0.99), share


def part_latency(
    s: Session, args: argparse.Namespace, half_rate: float | None = None
) -> tuple[Values, list[str]]:
    notes = []
    if half_rate is None:
        if s.capacity is None:  # part renewals did not run: a shorter search of its own
            good, _ = search(s, RENEW_START[s.server], max(3, args.max_steps - 2),
                             lambda rate: renewal_step(s, rate, args.step / 2)[0])  # fmt: skip
            s.capacity = good.per_s if good is not None else None
        half_rate = s.capacity / 2 if s.capacity else None
    light = latency_at(s, args.light_rate, args.latency_seconds)
    values: Values = {"renew_median_light_us": light[0], "renew_p99_light_us": light[1],
                      "half_rate": half_rate}  # fmt: skip
    if light[2] < OK_SHARE:
        notes.append(f"{s.server} run {s.run + 1}: {light[2]:.1%} answered at light load")
    if half_rate:
        half = latency_at(s, half_rate, args.latency_seconds)
        values["renew_median_half_us"], values["renew_p99_half_us"] = half[0], half[1]
        if half[2] < OK_SHARE:
            notes.append(f"{s.server} run {s.run + 1}: {half[2]:.1%} answered at half load")
    return values, notes


def mix_step(s: Session, total: float, seconds: int) -> Step:
    tag = s.progs.begin()
    k0 = fastpath_counts(s)
    c0 = cpu_of(s.pid)
    box: dict[str, Any] = {}
    pacer = threading.Thread(target=lambda: box.update(sent=s.pacer.run(tag, 0.8 * total, seconds)),
                             daemon=True)  # fmt: skip
    pacer.start()
    try:
        result, _, load = slowpath.perfdhcp(s.link, rate=max(1, round(0.2 * total)),
                                            duration=seconds)  # fmt: skip
    finally:
        pacer.join()
    time.sleep(SETTLE)
    c1 = cpu_of(s.pid)
    sent = box["sent"]
    answers = s.progs.end(sent.count)
    do, ra = result.exchanges.get("DISCOVER-OFFER"), result.exchanges.get("REQUEST-ACK")
    started = do.sent if do else 0
    done = ra.received if ra else 0
    renew_share = answers.acks / sent.count if sent.count else 0.0
    new_share = done / started if started else 0.0
    step = Step(total, sent.count + started, seconds, answers.acks + done, answers.naks,
                extra={"renew_share": renew_share, "new_share": new_share,
                       "ok": renew_share >= OK_SHARE and new_share >= OK_SHARE,
                       "perfdhcp_cpu_pct": load.cpu_pct, "renewals_sent": sent.count,
                       "pacer_rate": sent.rate})  # fmt: skip
    if s.daemon is not None:
        step.extra["fastpath"] = counts_since(s, k0)
    usage(step, c0, c1)
    return step


def first_dora(s: Session, limit: float = 30.0) -> float:
    """Seconds until a new subscriber's relayed DORA first completes (perfdhcp, two
    exchanges a try): the relay path warmed up before the mix is measured."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        result, _, _ = slowpath.perfdhcp(s.link, rate=10, duration=1, extra=["-n", "2"])
        if slowpath.acks_of(result):
            return time.monotonic() - t0
    raise flood.BenchError(f"{s.server} completed no relayed DORA within {limit:.0f} s")


def part_mix(s: Session, args: argparse.Namespace) -> tuple[Values, Points, list[str]]:
    seconds = max(1, round(args.step))
    warm = first_dora(s)
    good, steps = search(s, MIX_START[s.server], args.mix_steps,
                         lambda total: mix_step(s, total, seconds))  # fmt: skip
    values: Values = {"answers_per_s": None, "cpu_us_per_answer": None}
    if good is not None:
        values["answers_per_s"] = good.per_s
        if good.cpu_s is not None and good.acks:
            values["cpu_us_per_answer"] = good.cpu_s / good.acks * 1e6
    points = [(st.offered, st.per_s) for st in steps]
    busy = [st for st in steps if (st.extra.get("perfdhcp_cpu_pct") or 0) > 90
            or st.extra["pacer_rate"] < PACER_SHORT * 0.8 * st.offered]  # fmt: skip
    notes = [f"{s.server} run {s.run + 1}: the first relayed DORA completed {warm:.1f} s "
             "into the mix part (a warm-up, not measured)"]  # fmt: skip
    if busy:
        notes.append(
            f"{s.server} run {s.run + 1}: the load generator was saturated at "
            + ", ".join(f"{st.offered:,.0f}/s" for st in busy)
        )
    return values, points, notes


def part_restart(s: Session, args: argparse.Namespace) -> tuple[Values, list[str]]:
    # A server that cannot answer --restart-rate (dnsmasq) renews at half its capacity.
    rate = min(args.restart_rate, s.capacity / 2 if s.capacity else RESTART_UNKNOWN[s.server])
    tag = s.progs.begin()
    stop = threading.Event()
    box: dict[str, Any] = {}
    total = args.restart_before + args.restart_limit + args.restart_after
    pacer = threading.Thread(target=lambda: box.update(sent=s.pacer.run(tag, rate, total, stop)),
                             daemon=True)  # fmt: skip
    pacer.start()
    try:
        time.sleep(args.restart_before)
        t_stop = time.monotonic_ns()
        s.pid = s.restart()
        t_started = time.monotonic_ns()
        acks = s.progs.peek_acks()
        deadline = time.monotonic() + args.restart_limit
        while s.progs.peek_acks() == acks and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(args.restart_after)
    finally:
        stop.set()
        pacer.join()
    time.sleep(SETTLE)
    sent = box["sent"]
    answers = s.progs.end(sent.count)
    sent_ns, stamps = s.pacer.sent_ns, answers.stamps
    gap, back = unanswered(sent_ns, stamps, sent.count)
    # An outage: the longest run without answers ended after the stop (with an answer).
    outage = back < sent.count and stamps[back] > t_stop
    first = back if outage else next((i for i in range(sent.count) if sent_ns[i] >= t_started),
                                     sent.count)  # fmt: skip
    after = range(first, sent.count)
    again = {i % len(s.bound) for i in after if stamps[i]}
    asked = {i % len(s.bound) for i in after}
    down = [i for i in range(sent.count) if t_stop <= sent_ns[i] < t_started]
    values: Values = {
        "rate": rate,
        "lost": float(sum(1 for t in stamps if not t)),
        "naks": float(answers.naks),
        "gap_s": gap / 1e9,
        "back_s": (stamps[back] - t_stop) / 1e9 if outage else 0.0,
        "restart_s": (t_started - t_stop) / 1e9,
        "kept_pct": 100 * len(again) / len(asked) if asked else None,
        "answered_down_pct": 100 * sum(1 for i in down if answers.stamps[i]) / len(down)
        if down
        else None,
    }
    notes = []
    if s.daemon is not None:
        entries = kernel_entries(s.daemon)
        notes.append(f"brushtail run {s.run + 1}: {entries:.0f} kernel lease entries after "
                     f"the restart ({len(s.bound)} subscribers)")  # fmt: skip
    return values, notes


def unanswered(sent_ns: Sequence[int], stamps: list[int], count: int) -> tuple[int, int]:
    """The longest run of consecutive renewals without an answer: its length in ns (from
    the first one's send to the next renewal's send, or to the last send) and the index of
    the renewal after it (`count` if none came)."""
    longest, back = 0, count
    i = 0
    while i < count:
        if stamps[i]:
            i += 1
            continue
        j = i
        while j < count and not stamps[j]:
            j += 1
        length = (sent_ns[j] if j < count else sent_ns[count - 1]) - sent_ns[i]
        if length >= longest:
            longest, back = length, j
        i = j
    return longest, back


def part_flood(s: Session, args: argparse.Namespace, gen: Path) -> tuple[Values, list[str]]:
    """Renewals paced at a moderate rate; after --flood-before s, floodgen's random-MAC
    DISCOVERs on the same link for --flood-seconds; a new subscriber (perfdhcp, relayed)
    tries from 1 s into the flood; renewals go on for --flood-after s after it."""
    rate = min(args.flood_renew_rate,
               s.capacity / 2 if s.capacity else RESTART_UNKNOWN[s.server])  # fmt: skip
    tag = s.progs.begin()
    stop = threading.Event()
    box: dict[str, Any] = {}
    k0 = fastpath_counts(s)
    limit = args.flood_before + args.flood_seconds + flood.PROBE_LIMIT + args.flood_after + 30
    pacer = threading.Thread(target=lambda: box.update(sent=s.pacer.run(tag, rate, limit, stop)),
                             daemon=True)  # fmt: skip
    gen_args = argparse.Namespace(rate=args.flood_rate, flood_seconds=args.flood_seconds,
                                  relay_share=0.0)  # fmt: skip
    gen_out = s.work / "floodgen.out"
    probe: dict[str, float] = {}

    def new_subscriber() -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < flood.PROBE_LIMIT:
            result, _, _ = slowpath.perfdhcp(s.link, rate=10, duration=1, extra=["-n", "2"])
            took = time.monotonic() - t0
            if slowpath.acks_of(result):
                if took <= flood.PROBE_LIMIT:  # a try started in time may end after it
                    probe["new_s"] = took
                return

    pacer.start()
    generator = None
    try:
        time.sleep(args.flood_before)
        t_flood = time.monotonic_ns()
        c0 = cpu_of(s.pid)
        generator = flood.run_generator(s.link, gen, s.link.server_mac, gen_args, s.run, gen_out)
        time.sleep(1.0)
        prober = threading.Thread(target=new_subscriber, daemon=True)
        prober.start()
        generator.wait(timeout=args.flood_seconds + 30)
        t_end = time.monotonic_ns()
        c_end = cpu_of(s.pid)
        time.sleep(args.flood_after)
        prober.join(timeout=flood.PROBE_LIMIT + 30)
    finally:
        stop.set()
        pacer.join()
        if generator is not None:
            netns.terminate(generator, grace=2)
    time.sleep(SETTLE)
    sent = box["sent"]
    answers = s.progs.end(sent.count)
    sent_ns, stamps = s.pacer.sent_ns, answers.stamps
    window = int(flood.RENEW_ANSWER_WINDOW * 1e9)
    ok = [bool(stamps[i]) and stamps[i] - sent_ns[i] < window for i in range(sent.count)]

    def pct(lo: int, hi: int) -> float | None:
        idx = [i for i in range(sent.count) if lo <= sent_ns[i] < hi]
        return 100 * sum(ok[i] for i in idx) / len(idx) if idx else None

    match = flood._GEN_LINE.search(gen_out.read_text(errors="replace"))
    if match is None:
        raise flood.BenchError(f"floodgen output: {gen_out.read_text(errors='replace')[-500:]}")
    flooded, seconds = int(match.group(1)), float(match.group(5))
    # Answers to the flood's MACs: every reply to port 68 in this phase not to a renewal
    # (xdp_answers counts them as stale); nearly all of them come during the flood.
    flood_answers = answers.stale
    values: Values = {
        "renewals_before_pct": pct(0, t_flood),
        "renewals_flood_pct": pct(t_flood, t_end),
        "new_served": 1.0 if "new_s" in probe else 0.0,
        "new_s": probe.get("new_s"),
        "recovery_s": recovery(sent_ns, ok, sent.count, t_end),
        "flood_offered_per_s": flooded / seconds if seconds else None,
        "flood_answered_per_s": flood_answers * 1e9 / (t_end - t_flood),
        "renew_rate": rate,
        "server_cpu_pct": None,
    }
    notes = []
    if c0 is not None and c_end is not None:
        values["server_cpu_pct"] = 100 * (c_end[0] - c0[0]) * 1e9 / (t_end - t_flood)
        notes.append(f"{s.server} run {s.run + 1}: server CPU {c_end[0] - c0[0]:.1f} s, "
                     f"waiting {c_end[1] - c0[1]:.1f} s, during the flood")  # fmt: skip
    if values["recovery_s"] is None:
        notes.append(f"{s.server} run {s.run + 1}: renewals not all answered over any 0.5 s "
                     f"within {args.flood_after:g} s of the flood's end")  # fmt: skip
    if probe.get("new_s", 0.0) > args.flood_seconds - 1.0:
        notes.append(f"{s.server} run {s.run + 1}: the new subscriber got its lease only "
                     f"after the flood ended ({probe['new_s']:.1f} s)")  # fmt: skip
    if sent.rate < PACER_SHORT * rate:
        notes.append(f"{s.server} run {s.run + 1}: renewals paced at {sent.rate:.0f}/s of "
                     f"{rate:.0f}/s")  # fmt: skip
    if s.daemon is not None:
        notes.append(f"brushtail run {s.run + 1}: counters over the part: {counts_since(s, k0)}")
    return values, notes


def recovery(sent_ns: Sequence[int], ok: list[bool], count: int, t_end: int) -> float | None:
    """Seconds from the flood's end to the first renewal from which every renewal sent in
    the next 0.5 s was answered (0: answers never stopped after it); None if that never
    happened before the renewals stopped."""
    span = int(RECOVERY_WINDOW * 1e9)
    after = [i for i in range(count) if sent_ns[i] >= t_end]
    for k, i in enumerate(after):
        if sent_ns[after[-1]] < sent_ns[i] + span:
            return None  # fewer than 0.5 s of renewals left
        if all(ok[j] for j in after[k:] if sent_ns[j] < sent_ns[i] + span):
            return max(0.0, (sent_ns[i] - t_end) / 1e9) if k else 0.0
    return None


# --- scenarios -----------------------------------------------------------------------------


METRICS: dict[str, dict[str, tuple[str, str, str]]] = {
    "renewals": {
        "answers_per_s": ("renewals ACKed/s (>= 97.5% of offered)", "/s", "higher"),
        "pacer_answers_per_s": ("the same, paced raw-socket sender only", "/s", "higher"),
        "cpu_us_per_answer": ("server process CPU us per ACK", "us", "lower"),
    },
    "latency": {
        "renew_median_light_us": ("REQUEST-ACK median, light load", "us", "lower"),
        "renew_p99_light_us": ("REQUEST-ACK p99, light load", "us", "lower"),
        "renew_median_half_us": ("REQUEST-ACK median, half capacity", "us", "lower"),
        "renew_p99_half_us": ("REQUEST-ACK p99, half capacity", "us", "lower"),
        "half_rate": ("half load offered (renewals/s)", "/s", "higher"),
        "floor_median_light_us": ("trivial XDP responder median, light load", "us", "lower"),
        "floor_p99_light_us": ("trivial XDP responder p99, light load", "us", "lower"),
        "floor_median_half_us": ("trivial XDP responder median, half load", "us", "lower"),
        "floor_p99_half_us": ("trivial XDP responder p99, half load", "us", "lower"),
    },
    "mix": {
        "answers_per_s": ("renewal ACKs + DORAs/s (80/20, >= 97.5% each)", "/s", "higher"),
        "cpu_us_per_answer": ("server process CPU us per answer", "us", "lower"),
    },
    "restart": {
        "rate": ("renewals offered/s", "/s", "higher"),
        "lost": ("renewals without an answer", "", "lower"),
        "naks": ("renewals NAKed (a lease the server no longer knows)", "", "lower"),
        "gap_s": ("longest time without an answer", "s", "lower"),
        "back_s": ("stop to the first answer after the outage", "s", "lower"),
        "restart_s": ("stop + start command until it returned", "s", "lower"),
        "kept_pct": ("subscribers renewing after it ACKed", "%", "higher"),
        "answered_down_pct": ("renewals answered while restarting", "%", "higher"),
    },
    "flood": {
        "renewals_before_pct": ("renewals ACKed within 2 s, before the flood", "%", "higher"),
        "renewals_flood_pct": ("renewals ACKed within 2 s, during the flood", "%", "higher"),
        "new_served": ("a new subscriber got a lease within 10 s (1: yes)", "", "higher"),
        "new_s": ("seconds to that lease (1 s tries)", "s", "lower"),
        "recovery_s": ("flood's end until 0.5 s of renewals all ACKed", "s", "lower"),
        "flood_offered_per_s": ("flood DISCOVERs sent/s", "/s", "higher"),
        "flood_answered_per_s": ("flood DISCOVERs answered/s", "/s", "lower"),
        "renew_rate": ("renewals offered/s", "/s", "higher"),
        "server_cpu_pct": ("server process CPU during the flood", "%", "lower"),
    },
}
TITLES = {
    "renewals": "Renewals of known subscribers answered per second",
    "latency": "Renewal REQUEST-ACK latency from the client's side",
    "mix": "80% renewals of known subscribers + 20% new subscribers (DORA)",
    "restart": "Server restarted while known subscribers renew",
    "flood": "Known subscribers' renewals under a random-MAC DISCOVER flood, all four servers",
}
SERIES = {
    "renewals": ("answered_vs_offered", "renewals offered/s", "renewals ACKed/s"),
    "mix": ("answered_vs_offered", "total offered/s (80% renewals)", "answers/s"),
}


@dataclass
class Collected:
    """One part's values for every server and run, as measured."""

    part: str
    runs: int
    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    points: dict[str, dict[float, list[float | None]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    server_wait: dict[str, list[float | None]] = field(default_factory=dict)

    def put(self, server: str, run: int, values: Values) -> None:
        for key, value in values.items():
            runs = self.values.setdefault(key, {}).setdefault(server, [None] * self.runs)
            runs[run] = value

    def put_points(self, server: str, run: int, points: Points) -> None:
        curve = self.points.setdefault(server, {})
        for x, y in points:
            curve.setdefault(round(x, -1) if x >= 100 else round(x), [None] * self.runs)[run] = y

    def scenario(self, meta: dict[str, Any], skipped: dict[str, str]) -> Scenario:
        metrics = {}
        for key, by_server in self.values.items():
            label, unit, better = METRICS[self.part][key]
            metrics[key] = Metric(label, unit, better, by_server)  # type: ignore[arg-type]
        series = {}
        if self.part in SERIES:
            name, x_label, y_label = SERIES[self.part]
            series[name] = Series(x_label, y_label, {
                server: sorted(curve.items()) for server, curve in self.points.items()
            })  # fmt: skip
        return Scenario(
            scenario=SCENARIO_IDS.get(self.part, self.part), title=TITLES[self.part],
            command=meta["command"],
            started=meta["started"], seconds=round(self.seconds, 1), revision=meta["revision"],
            runs=self.runs, metrics=metrics, series=series, skipped=skipped,
            notes=[*meta["notes"], *self.notes],
            machine={**meta["machine"], "loadavg_end": fastpath.loadavg(),
                     "server_wait_s": self.server_wait},
        )  # fmt: skip


def measure_session(
    s: Session,
    parts: list[str],
    args: argparse.Namespace,
    out: dict[str, Collected],
    setup_s: float,
) -> None:
    share = setup_s / len(parts)
    for part in parts:
        t0 = time.monotonic()
        c0 = cpu_of(s.pid)
        col = out[part]
        if part == "renewals":
            values, points, notes = part_renewals(s, args)
            col.put_points(s.server, s.run, points)
        elif part == "latency":
            values, notes = part_latency(s, args)
        elif part == "mix":
            values, points, notes = part_mix(s, args)
            col.put_points(s.server, s.run, points)
        else:
            values, notes = part_restart(s, args)
        c1 = cpu_of(s.pid)
        col.put(s.server, s.run, values)
        col.notes += notes
        wait = c1[1] - c0[1] if c0 and c1 and part != "restart" else None
        col.server_wait.setdefault(s.server, [None] * col.runs)[s.run] = wait
        col.seconds += time.monotonic() - t0 + share
        print(f"  {part}: " + ", ".join(f"{k} {fmt(v)}" for k, v in values.items())
              + f" [{time.monotonic() - t0:.0f} s]", file=sys.stderr, flush=True)  # fmt: skip


def measure_floor(ctx: Context, run: int, half_rate: float | None, col: Collected) -> None:
    t0 = time.monotonic()
    with floor_session(ctx) as s:
        args = ctx.args
        light = latency_at(s, args.light_rate, args.latency_seconds)
        values: Values = {"floor_median_light_us": light[0], "floor_p99_light_us": light[1]}
        if half_rate:
            half = latency_at(s, half_rate, args.latency_seconds)
            values["floor_median_half_us"], values["floor_p99_half_us"] = half[0], half[1]
    col.put("brushtail", run, values)
    col.seconds += time.monotonic() - t0
    print("  floor: " + ", ".join(f"{k} {fmt(v)}" for k, v in values.items()),
          file=sys.stderr, flush=True)  # fmt: skip


def measure_flood(ctx: Context, server: str, run: int, gen: Path, col: Collected) -> None:
    """Part flood on a server of its own: brushtail with its default rate limits."""
    t0 = time.monotonic()
    with session(server, run, ctx) as s:
        c0 = cpu_of(s.pid)
        values, notes = part_flood(s, ctx.args, gen)
        c1 = cpu_of(s.pid)
    col.put(server, run, values)
    col.notes += notes
    col.server_wait.setdefault(server, [None] * col.runs)[run] = (
        c1[1] - c0[1] if c0 and c1 else None
    )
    col.seconds += time.monotonic() - t0
    print("  flood: " + ", ".join(f"{k} {fmt(v)}" for k, v in values.items())
          + f" [{time.monotonic() - t0:.0f} s]", file=sys.stderr, flush=True)  # fmt: skip


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


# --- main ----------------------------------------------------------------------------------


def sweep() -> list[str]:
    swept = fastpath.sweep_stale()
    for path in STATE_DIR.glob(f"{WORK_PREFIX}*"):
        match = re.match(rf"{WORK_PREFIX}(\d+)-", path.name)
        if match and path.is_dir() and not netns.pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            swept.append(str(path))
    return swept


def revision(rev: str | None) -> str:
    git = ["git", "-C", str(fastpath.REPO)]
    argv = [*git, "rev-parse", "--short", rev] if rev else [*git, "describe", "--always",
                                                              "--dirty"]  # fmt: skip
    return fastpath.sh(argv) or "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default=",".join(PARTS[:-1]),
                   help="comma-separated: " + ",".join(PARTS))  # fmt: skip
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 run, 300 subscribers, short steps")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--json", type=Path, help="the Scenario of the one part measured")
    p.add_argument("--json-dir", type=Path, help="DIR/<part>.json for each part")
    p.add_argument("--rev", help="benchmark this commit's bpf/ and brushtaild/")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--step", type=float, default=1.5, help="seconds per offered rate")
    p.add_argument("--max-steps", type=int, default=5, help="offered rates per search")
    p.add_argument("--mix-steps", type=int, default=4, help="offered rates of the mix search")
    p.add_argument("--light-rate", type=float, default=100.0)
    p.add_argument("--latency-seconds", type=float, default=3.0)
    p.add_argument("--restart-rate", type=float, default=1000.0)
    p.add_argument("--restart-before", type=float, default=2.0)
    p.add_argument("--restart-after", type=float, default=2.0)
    p.add_argument("--restart-limit", type=float, default=60.0,
                   help="seconds to wait for the first answer after the restart")  # fmt: skip
    p.add_argument("--flood-renew-rate", type=float, default=200.0,
                   help="part flood: renewals/s (capped per server)")  # fmt: skip
    p.add_argument("--flood-rate", type=int, default=50_000, help="flood DISCOVERs/s")
    p.add_argument("--flood-seconds", type=float, default=10.0)
    p.add_argument("--flood-before", type=float, default=2.0)
    p.add_argument("--flood-after", type=float, default=2.0)
    args = p.parse_args(argv)
    ids = {v: k for k, v in SCENARIO_IDS.items()}  # bench/report.py asks by scenario id
    args.part = ",".join(ids.get(x, x) for x in args.part.split(","))
    args.parts = [x for x in PARTS if x in args.part.split(",")]
    args.server_list = [x for x in SERVERS if x in args.servers.split(",")]
    unknown = set(args.part.split(",")) - set(PARTS) | set(args.servers.split(",")) - set(SERVERS)
    if unknown or not args.parts:
        p.error(f"unknown part or server: {', '.join(sorted(unknown)) or '(none given)'}")
    if args.json and len(args.parts) != 1:
        p.error("--json takes one part; use --json-dir for several")
    if args.quick:
        args.runs, args.subscribers, args.step, args.max_steps = 1, 300, 1.0, 4
        args.mix_steps = min(args.mix_steps, 4)
        args.latency_seconds, args.restart_before, args.restart_after = 1.5, 1.0, 1.5
        args.flood_seconds, args.flood_before = 5.0, 1.5
    return args


def main(argv: list[str] | None = None) -> int:
    raw_argv = sys.argv[1:] if argv is None else argv
    args = parse_args(raw_argv)
    if os.geteuid() != 0:
        print("run as root (namespaces, XDP)", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, flood._on_signal)
    swept = sweep()
    if swept:
        print(f"swept leftovers of dead runs: {', '.join(swept)}", file=sys.stderr)
    fastpath.pin_thread(LOAD_CPU)
    started_at = dt.datetime.now(dt.UTC)
    skipped: dict[str, str] = {}
    for server in args.server_list:
        try:
            slowpath.check_installed(server)
        except slowpath.Skip as exc:
            skipped[server] = str(exc)
    servers = [x for x in args.server_list if x not in skipped]
    meta: dict[str, Any] = {
        "command": "bench/subscribers.py " + " ".join(raw_argv),
        "started": started_at.isoformat(timespec="seconds"),
        "revision": revision(args.rev),
        "notes": [f"{args.subscribers} known subscribers (brushtail: bound by DORA; peers: "
                  f"leases in their lease file at start); {args.step:g} s per offered rate"],
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                    "loadavg_start": fastpath.loadavg()},
    }  # fmt: skip
    out = {part: Collected(part, args.runs) for part in args.parts}
    if "flood" in out:
        out["flood"].notes.append(
            f"brushtail runs with its default rate limits ON here (rate_limit 10/s per client, "
            f"relay_rate_limit 1000/s, the same budget per link for new subscribers' DISCOVERs), "
            f"unlike the other parts: protection against floods is the point. Renewals at "
            f"min({args.flood_renew_rate:g}/s, what the server surely sustains); floodgen sends "
            f"{args.flood_rate:,}/s random-MAC DISCOVERs directly on the link for "
            f"{args.flood_seconds:g} s; the new subscriber is relayed (perfdhcp, 1 s tries from "
            f"1 s into the flood), so it does not share the flooded link's budget"
        )
    snapshot, source = fastpath.source_snapshot(raw_argv)
    meta["notes"].append(f"brushtaild and bpf/: {source}")
    progs = None
    try:
        progs = ClientPrograms()
        ctx = Context(args, progs, snapshot)
        flood_ctx = Context(args, progs, snapshot, rate_limits=True)
        gen = snapshot / "floodgen"
        if "flood" in args.parts:
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(gen), str(flood.GEN_C)],
                           check=True, capture_output=True, timeout=60)  # fmt: skip
        parts = [x for x in args.parts if x != "flood"]
        for run in range(args.runs):
            for server in servers:
                if "flood" in args.parts:
                    print(f"run {run + 1} {server} (flood)", file=sys.stderr, flush=True)
                    try:
                        measure_flood(flood_ctx, server, run, gen, out["flood"])
                    except (flood.BenchError, RuntimeError, OSError, subprocess.SubprocessError,
                            KeyError, ValueError) as exc:  # fmt: skip
                        msg = f"{server} run {run + 1} (flood): ERROR {type(exc).__name__}: {exc}"
                        print("  " + msg, file=sys.stderr, flush=True)
                        out["flood"].notes.append(msg[:500])
                if not parts:
                    continue
                t0 = time.monotonic()
                print(f"run {run + 1} {server}", file=sys.stderr, flush=True)
                try:
                    with session(server, run, ctx) as s:
                        setup = time.monotonic() - t0
                        print(f"  set up in {setup:.0f} s", file=sys.stderr, flush=True)
                        measure_session(s, parts, args, out, setup)
                except (flood.BenchError, RuntimeError, OSError, subprocess.SubprocessError,
                        KeyError, ValueError) as exc:  # fmt: skip
                    msg = f"{server} run {run + 1}: ERROR {type(exc).__name__}: {exc}"
                    print("  " + msg, file=sys.stderr, flush=True)
                    for part in parts:
                        out[part].notes.append(msg[:500])
            if "latency" in out and "brushtail" in servers:
                halves = out["latency"].values.get("half_rate", {}).get("brushtail", [])
                half = halves[run] if run < len(halves) else None
                try:
                    measure_floor(ctx, run, half, out["latency"])
                except (RuntimeError, OSError) as exc:
                    out["latency"].notes.append(f"floor run {run + 1}: ERROR {exc}")
    except flood.Interrupted as exc:
        print(f"interrupted ({exc}); cleaning up", file=sys.stderr)
        return 130
    finally:
        if progs is not None:
            progs.close()
        shutil.rmtree(snapshot, ignore_errors=True)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    for part, col in out.items():
        scenario = col.scenario(meta, skipped)
        if args.json:
            path = args.json
        elif args.json_dir:
            path = args.json_dir / f"{SCENARIO_IDS.get(part, part)}.json"
        else:
            path = fastpath.RESULTS_DIR / f"subscribers-{part}-{stamp}.json"
        scenario.write(path)
        print(f"{part}: {col.seconds:.0f} s, written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
