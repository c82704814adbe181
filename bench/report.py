"""One report beside Kea, dnsmasq and ISC dhcpd: runs every scenario script, then writes
docs/BENCHMARKS.md and its plots (docs/bench/*.png) from their JSON (bench/scenario.py).

    bash scripts/setup.sh --bench            # once: peers, perfdhcp, matplotlib
    /work/main/.venv/bin/python bench/report.py [--runs 3] [--quick] [--only dora,kernel] \
        [--render bench/results/report-<stamp>]

Each script runs as a subprocess, in turn (never two at once: they pin to the same CPUs),
with `--runs N --json PATH` (or `--quick`): bench/slowpath.py (dora), bench/fastpath.py
(kernel), bench/subscribers.py (renewals, latency, mix, restart, flood_peers), bench/flood.py
(flood),
bench/startup.py (startup). A script that is missing, fails or writes no JSON is reported as
not run, with the tail of its output, and the report still renders. Everything a run makes
goes to bench/results/report-<stamp>/: manifest.json (machine, command, per script: wall
time, exit status, load average before and after), <scenario>.json, and each script's
stdout and stderr. `--render DIR` renders an earlier run's DIR again without measuring.
docs/PERFORMANCE.md is the hand-written analysis; BENCHMARKS.md is wholly generated.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.scenario import (  # noqa: E402
    SERVERS,
    Metric,
    Scenario,
    cpu_model,
    load,
    median,
    present,
    run_ratios,
)

PEERS = SERVERS[1:]
RESULTS = REPO / "bench" / "results"
SETUP_HINT = "bash scripts/setup.sh --bench"
# One colour per server in every plot; anything else (a reference program) is grey.
COLOURS = {"brushtail": "#d62728", "kea": "#1f77b4", "dnsmasq": "#2ca02c", "dhcpd": "#ff7f0e"}
PACKAGES = (
    "kea-dhcp4-server", "kea-admin", "dnsmasq-base", "isc-dhcp-server", "python3",
    "python3-bpfcc", "libbpf1", "libsqlite3-0", "python3-matplotlib", "linux-libc-dev",
)  # fmt: skip
# A script hung past its budget this many times over (plus a minute) is stopped.
OVERRUN = 3.0


@dataclass(frozen=True)
class Job:
    """One scenario script and the scenarios it writes."""

    name: str
    script: str
    scenarios: tuple[str, ...]
    budget_s: int  # for --runs 3, from the plan
    args: tuple[str, ...] = ()
    json_dir: bool = False  # writes DIR/<scenario>.json (--json-dir) instead of --json PATH
    full: tuple[str, ...] = ()  # arguments of a full run only (--quick has its own sizes)

    def argv(self, out: Path, runs: int, quick: bool, wanted: Sequence[str]) -> list[str]:
        argv = [sys.executable, self.script, *self.args]
        if self.json_dir:
            argv += ["--part", ",".join(wanted), "--json-dir", str(out)]
        else:
            argv += ["--json", str(out / f"{self.scenarios[0]}.json")]
        return argv + (["--quick"] if quick else ["--runs", str(runs), *self.full])


JOBS = (
    Job("dora", "bench/slowpath.py", ("dora",), 540, full=("--duration", "5")),
    # 10,000 calls per ns figure and three paced rates for Kea keep it within 3 minutes on a
    # shared machine; the 1M-subscriber start is the startup scenario's.
    Job(
        "kernel",
        "bench/fastpath.py",
        ("kernel",),
        180,
        ("--part", "ns,live"),
        full=("--calls", "10000", "--kea-rates", "10000,20000,40000"),
    ),
    Job(
        "subscribers",
        "bench/subscribers.py",
        ("renewals", "latency", "mix", "restart", "flood_peers"),
        840,
        json_dir=True,
    ),
    Job("flood", "bench/flood.py", ("flood",), 180),
    # Every peer as many times as brushtail: each of their starts takes seconds, not minutes.
    Job("startup", "bench/startup.py", ("startup",), 240, full=("--peer-runs", "3")),
)
ORDER = tuple(s for job in JOBS for s in job.scenarios)

# Section titles of scenarios that did not run (one that ran brings its own).
TITLES = {
    "dora": "New subscribers (DORA, slow path)",
    "kernel": "Kernel fast path: cost per reply and renewals per core",
    "renewals": "Renewals of known subscribers answered per second",
    "latency": "Renewal REQUEST-ACK latency from the client's side",
    "mix": "80% renewals of known subscribers + 20% new subscribers (DORA)",
    "restart": "Server restarted while known subscribers renew",
    "flood_peers": "Renewals of known subscribers under a random-MAC DISCOVER flood, all servers",
    "flood": "Random-MAC DISCOVER flood while known subscribers renew",
    "startup": "1,000,000 known subscribers: start to READY, memory",
}
# What each scenario measures, for the reader; the figures come from the JSON.
METHODS = {
    "dora": (
        "Every exchange is a new client (perfdhcp as a relay, 198.18.0.2, pinned to CPU 1; the "
        "server on CPU 0, a fresh namespace pair and state directory on disk). Per server and "
        "run: DISCOVER-OFFER and REQUEST-ACK delays from perfdhcp's per-packet timestamps "
        "(`-x t`) at a light 25/s; fixed offered rates (the plot), stopped once a server "
        "answers less than half of what is offered; the paced capacity (the highest offered "
        "rate at which >= 97.5% of DISCOVERs end in an ACK, ISC's criterion, bisected from "
        "the fixed rates); the same delays at half of that capacity; and the highest rate "
        "(perfdhcp without -r, as fast as it sends). CPU per DORA is the server's CPU time "
        "over the highest-rate phase per ACK. brushtail is SIGKILLed after its phases and its "
        "SQLite store opened: `durable` is 1 when it holds a BOUND row for every ACK "
        "received. Kea runs memfile without fsync (Debian's default), dhcpd fsyncs every "
        "lease, dnsmasq rewrites its lease file per lease; brushtail fsyncs every ACK "
        "(grouped), and its per-relay budget is off because perfdhcp is one relay."
    ),
    "kernel": (
        "brushtail's XDP program timed by BPF_PROG_TEST_RUN, one call per frame (repeat=1), "
        "the kernel-reported duration averaged without the slowest 1% of calls, beside the "
        "floor program (bench/xdp_floor.c: hash lookup, MAC swap, XDP_TX) timed the same way "
        "on the same frame; ratios are taken within each run. The headline case is a "
        "dhclient frame (342 bytes) with one subscriber and the rate limiter off. Renewals/s: "
        "one client renewing under a flood from BPF_PROG_TEST_RUN live frames over a veth "
        "pair, generator and XDP on one core, replies counted on the client veth; beside the "
        "minimal responder on the same harness and Kea (its best of the same flood and paced "
        "rates, on the other core)."
    ),
    "renewals": (
        "Known subscribers (bound by a real DORA first) renew (RENEWING DHCPREQUEST, unicast) "
        "at rising offered rates; the figure is the highest rate with >= 97.5% ACKed. "
        "brushtail answers them in the kernel."
    ),
    "latency": (
        "Renewal REQUEST-ACK delay stamped on the client veth by an XDP program, at a light "
        "rate and at half of each server's own renewal capacity, median and p99."
    ),
    "mix": (
        "80% renewals of known subscribers and 20% new subscribers (perfdhcp DORA) at rising "
        "total rates: the highest total answered rate at which >= 97.5% of each complete."
    ),
    "restart": (
        "Known subscribers renew while the server is stopped (SIGTERM) and started again on "
        "the same state: renewals lost and the time without answers."
    ),
    "flood_peers": (
        "Each server started for this alone, brushtail with its default rate limits ON (the "
        "other scenarios turn them off; protection against floods is the point). Known "
        "subscribers renew at a moderate paced rate (200/s; dnsmasq 60/s and dhcpd 150/s, what "
        "they surely sustain); after 2 s, bench/floodgen.c sends 50,000 DISCOVERs/s from random "
        "MACs directly on the same link for 10 s. The shares of renewals ACKed within 2 s "
        "before and during the flood; whether a new subscriber (a relayed DORA by perfdhcp, "
        "1 s tries from 1 s into the flood) got a lease within 10 s, and how fast; recovery, "
        "from the flood's end to the first renewal from which 0.5 s of renewals were all "
        "ACKed; the flood's DISCOVERs answered per second (counted on the client veth, a fact "
        "rather than a win or a loss); the server process's CPU time over the flood's wall "
        "time (schedstat; work in softirq, XDP and the kernel's stack, is not in it). No CPU "
        "per answer: a server that drops the flood answers less of it."
    ),
    "flood": (
        "brushtaild with its fast path: known subscribers renew while bench/floodgen.c sends "
        "DISCOVERs from random MACs (half through one relay); new subscribers on another relay "
        "and on the flooded link try to get a lease during the flood; recovery is the time "
        "after the flood until a new client is served in under 1 s."
    ),
    "startup": (
        "1,000,000 known subscribers in the server's store: time from exec to READY "
        "(brushtail: READY=1 with the kernel answering them; peers: to the first answer), and "
        "resident memory then."
    ),
}


# --- running -------------------------------------------------------------------------------


def sh(argv: Sequence[str], timeout: float = 10.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine() -> dict[str, Any]:
    debian = "unknown"
    with contextlib.suppress(OSError):
        debian = Path("/etc/debian_version").read_text().strip()
    return {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "debian": debian,
        "python": platform.python_version(),
        "packages": {
            p: sh(["dpkg-query", "-W", "-f", "${Version}", p]) or "not installed" for p in PACKAGES
        },
    }


def revision() -> str:
    got = sh(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return got or "unknown"


def preflight() -> list[str]:
    """What is missing for a full report, each with the command that installs it."""
    missing = []
    for binary, package in (("perfdhcp", "kea-admin"), ("kea-dhcp4", "kea-dhcp4-server"),
                            ("dnsmasq", "dnsmasq-base"), ("dhcpd", "isc-dhcp-server"),
                            ("gcc", "gcc")):  # fmt: skip
        if shutil.which(binary) is None:
            missing.append(f"`{binary}` (Debian {package})")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing.append("matplotlib (Debian python3-matplotlib)")
    return missing


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_job(job: Job, wanted: Sequence[str], out: Path, runs: int, quick: bool) -> dict[str, Any]:
    """Run one script; returns its manifest entry. Its scenarios' JSON land in `out`."""
    entry: dict[str, Any] = {"script": job.script, "scenarios": list(wanted)}
    if not (REPO / job.script).exists():
        entry.update(status="not run", error=f"{job.script} does not exist in this checkout")
        return entry
    argv = job.argv(out, runs, quick, wanted)
    limit = (job.budget_s * max(runs, 1) / 3 if not quick else 120) * OVERRUN + 60
    entry.update(command=shlex.join(argv), loadavg_before=loadavg())
    stdout, stderr = out / f"{job.name}.stdout", out / f"{job.name}.stderr"
    t0 = time.monotonic()
    with open(stdout, "wb") as so, open(stderr, "wb") as se:
        # Its own session, so a stop reaches its children (perfdhcp, servers) too.
        proc = subprocess.Popen(argv, cwd=REPO, stdout=so, stderr=se, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the scripts clean up on SIGTERM
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
            entry["error"] = f"stopped after {limit:.0f} s (budget {job.budget_s} s for 3 runs)"
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            raise
    entry.update(seconds=round(time.monotonic() - t0, 1), returncode=code, loadavg_after=loadavg())
    written = [s for s in wanted if (out / f"{s}.json").exists()]
    if len(written) < len(wanted) or code != 0:
        entry.setdefault("error", f"exit status {code}")
        entry["tail"] = (tail(stderr) + "\n" + tail(stdout, 5)).strip()
    entry["status"] = "ok" if len(written) == len(wanted) and code == 0 else (
        "partial" if written else "not run"
    )  # fmt: skip
    return entry


def measure(args: argparse.Namespace, only: list[str]) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"report-{stamp}"
    out.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "revision": revision(),
        "runs": 1 if args.quick else args.runs,
        "quick": args.quick,
        "machine": machine(),
        "missing": preflight(),
        "loadavg_before": loadavg(),
        "jobs": {},
    }
    for miss in manifest["missing"]:
        print(f"missing: {miss}; run `{SETUP_HINT}`", file=sys.stderr)
    t0 = time.monotonic()
    for job in JOBS:
        wanted = [s for s in job.scenarios if s in only]
        if not wanted:
            continue
        print(f"{job.script} ({', '.join(wanted)}) ...", file=sys.stderr, flush=True)
        entry = run_job(job, wanted, out, args.runs, args.quick)
        manifest["jobs"][job.name] = entry
        print(f"  {entry['status']} in {entry.get('seconds', 0):.0f} s"
              + (f": {entry['error']}" if "error" in entry else ""), file=sys.stderr)  # fmt: skip
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["loadavg_after"] = loadavg()
    manifest["seconds"] = round(time.monotonic() - t0, 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


# --- reading the numbers -------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    size = abs(value)
    digits = 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 0.1 else 3
    return f"{value:,.{digits}f}"


def cell(values: Sequence[float | None]) -> str:
    """Median [min-max] over runs; a failed run shows as a count."""
    got = present(values)
    if not got:
        return "n/a"
    text = fmt(median(got))
    if len(got) > 1 and fmt(min(got)) != fmt(max(got)):
        text += f" [{fmt(min(got))}-{fmt(max(got))}]"
    if len(got) < len(values):
        text += f" ({len(values) - len(got)} of {len(values)} n/a)"
    return text


def ratio(metric: Metric, peer: str) -> float | None:
    """Median over runs of brushtail / peer, each run's pair measured in the same round."""
    ours, theirs = metric.values.get("brushtail"), metric.values.get(peer)
    if ours is None or theirs is None:
        return None
    return median(run_ratios(ours, theirs))


def servers_of(scenario: Scenario) -> list[str]:
    seen = {s for m in scenario.metrics.values() for s in m.values}
    return [s for s in SERVERS if s in seen] + sorted(seen - set(SERVERS))


@dataclass
class Target:
    text: str
    where: str
    status: str  # "met", "missed", "not measured"
    figure: str
    by: str = ""
    why: str = ""  # the anchor of its analysis (profile, arithmetic) in docs/PERFORMANCE.md


def _metric(scenarios: dict[str, Scenario], sid: str, key: str) -> Metric | None:
    scenario = scenarios.get(sid)
    return scenario.metrics.get(key) if scenario else None


def _bt(metric: Metric | None) -> list[float | None]:
    return metric.values.get("brushtail", []) if metric else []


# Where docs/PERFORMANCE.md explains each target's figure: the why a number cannot give.
WHY = {
    "dora / dora_max, durable": "dora-rate",
    "dora / request_ack_light_ms, fsync_ms": "request-ack-at-light-load",
    "kernel / offer_vs_floor": "kernel-reply-cost",
    "kernel / ack_vs_floor": "kernel-reply-cost",
    "mix / answers_per_s": "the-8020-mix",
    "latency / renew_p99_half_us": "fast-path-latency",
    "startup / ready_s": "one-million-subscribers",
    "startup / rss_mib": "one-million-subscribers",
}


def targets(scenarios: dict[str, Scenario]) -> list[Target]:
    """Issue 13's targets, each judged from the figures (met, missed, or not measured)."""
    out = _targets(scenarios)
    for goal in out:
        goal.why = WHY.get(goal.where, "")
    return out


def _targets(scenarios: dict[str, Scenario]) -> list[Target]:
    out = []

    def not_measured(text: str, where: str) -> Target:
        return Target(text, where, "not measured", "n/a")

    # 1. New DORA/s >= 1.5x Kea at the highest rate, every ACK fsynced.
    text, where = (
        "new DORA/s >= 1.5x Kea's at the highest rate, every ACK durable",
        ("dora / dora_max, durable"),
    )
    dora_max, durable = (
        _metric(scenarios, "dora", "dora_max"),
        _metric(scenarios, "dora", "durable"),
    )
    r = ratio(dora_max, "kea") if dora_max else None
    if r is None:
        out.append(not_measured(text, where))
    else:
        durables = present(_bt(durable))
        all_durable = bool(durables) and all(v == 1 for v in durables)
        ok = r >= 1.5 and all_durable
        figure = f"{r:.2f}x Kea; durable in {sum(v == 1 for v in durables)} of {len(durables)} runs"
        by = "" if r >= 1.5 else f"{r / 1.5:.0%} of the target ({1.5 - r:.2f}x short)"
        if not all_durable:
            by = (by + "; " if by else "") + "a run lost ACKed leases"
        out.append(Target(text, where, "met" if ok else "missed", figure, by))

    # 2. REQUEST-ACK at light load within Kea's plus one fsync.
    text, where = (
        "REQUEST-ACK at light load <= Kea's + one fsync",
        ("dora / request_ack_light_ms, fsync_ms"),
    )
    ra = _metric(scenarios, "dora", "request_ack_light_ms")
    fsync = _metric(scenarios, "dora", "fsync_ms")
    bt, kea, fs = _bt(ra), ra.values.get("kea", []) if ra else [], _bt(fsync)
    margins = [b - (k + f) for b, k, f in zip(bt, kea, fs, strict=False)
               if b is not None and k is not None and f is not None]  # fmt: skip
    if not margins:
        out.append(not_measured(text, where))
    else:
        margin = median(margins)
        assert margin is not None
        figure = (f"brushtail {fmt(median(bt))} ms, Kea {fmt(median(kea))} ms + fsync "
                  f"{fmt(median(fs))} ms")  # fmt: skip
        by = f"{margin:.2f} ms over" if margin > 0 else f"{-margin:.2f} ms to spare"
        out.append(Target(text, where, "met" if margin <= 0 else "missed", figure, by))

    # 3. Kernel reply <= 2x the floor program.
    for key, what in (("offer_vs_floor", "OFFER"), ("ack_vs_floor", "ACK")):
        text, where = f"kernel {what} <= 2x the floor program", f"kernel / {key}"
        got = median(_bt(_metric(scenarios, "kernel", key)))
        if got is None:
            out.append(not_measured(text, where))
            continue
        by = f"{got / 2:.2f} times the 2x allowed" if got > 2 else f"{2 - got:.2f}x to spare"
        out.append(Target(text, where, "met" if got <= 2 else "missed", f"{got:.2f}x", by))

    # 4. 80/20 mix >= 10x Kea.
    text, where = "80/20 mix >= 10x Kea's", "mix / answers_per_s"
    mix = _metric(scenarios, "mix", "answers_per_s")
    r = ratio(mix, "kea") if mix else None
    if r is None:
        out.append(not_measured(text, where))
    else:
        by = f"{r / 10:.0%} of the target" if r < 10 else f"{r / 10:.1f}x the target"
        out.append(Target(text, where, "met" if r >= 10 else "missed", f"{r:.2f}x Kea", by))

    # 5. Fast-path p99 < 50 us at half load; 6. 1M subscribers READY < 10 s, < 512 MiB.
    for sid, key, limit, unit, text in (
        ("latency", "renew_p99_half_us", 50.0, "us", "fast-path renewal p99 < 50 us at half load"),
        ("startup", "ready_s", 10.0, "s", "1,000,000 subscribers READY < 10 s"),
        ("startup", "rss_mib", 512.0, "MiB", "1,000,000 subscribers < 512 MiB resident"),
    ):
        got = median(_bt(_metric(scenarios, sid, key)))
        where = f"{sid} / {key}"
        if got is None:
            out.append(not_measured(text, where))
            continue
        by = (
            f"{got - limit:,.1f} {unit} over"
            if got >= limit
            else f"{limit - got:,.1f} {unit} under"
        )
        out.append(Target(text, where, "met" if got < limit else "missed",
                          f"{fmt(got)} {unit}", by))  # fmt: skip
    return out


# Never read as a win or a loss: facts about the run rather than the server, and restart_s,
# which ends at READY for brushtail but at the fork for the peers, whose start returns at once.
# flood_peers' flood answered per second is neither: answering a flood is not serving anyone.
NOT_COMPARED = frozenset({
    "cpu_wait_pct", "restart_s", "renew_rate", "flood_offered_per_s", "flood_answered_per_s"
})  # fmt: skip


def comparisons(scenario: Scenario) -> list[tuple[float, str, bool]]:
    """(how far apart, sentence, brushtail worse), one per metric with a peer beside it: a loss
    against the peer that does best, naming the others that also do better; else a win against
    the strongest peer it beats (never a win over a weak peer where a strong one is closer)."""
    out = []
    for key, metric in scenario.metrics.items():
        ours = median(metric.values.get("brushtail", []))
        if key in NOT_COMPARED or ours is None:
            continue
        losses, wins = [], []
        for peer in PEERS:
            r = ratio(metric, peer)
            theirs = median(metric.values.get(peer, []))
            if r is None or theirs is None or r <= 0:
                continue
            worse = r < 1 if metric.better == "higher" else r > 1
            factor = max(r, 1 / r)
            if factor >= 1.05:
                (losses if worse else wins).append((factor, peer, theirs))
        if not losses and not wins:
            continue
        worse = bool(losses)
        factor, peer, theirs = max(losses) if losses else min(wins)
        unit = f" {metric.unit}" if metric.unit not in ("", "/s", "%") else metric.unit
        also = sorted(p for _, p, _ in losses if p != peer)
        sentence = (
            f"{scenario.title}, {metric.label}: brushtail {fmt(ours)}{unit} against "
            f"{peer}'s {fmt(theirs)}{unit} ({factor:.2f}x {'worse' if worse else 'better'}; "
            f"{metric.better} is better)" + (f"; {', '.join(also)} also better" if also else "")
        )
        out.append((factor, sentence, worse))
    return out


def reading(
    scenarios: dict[str, Scenario], goals: list[Target], manifest: dict[str, Any]
) -> list[str]:
    """The honest reading, computed from the figures: losses first, then the targets."""
    lines = []
    losses: list[tuple[float, str]] = []
    wins: list[tuple[float, str]] = []
    for sid in ORDER:
        if sid in scenarios:
            for factor, sentence, worse in comparisons(scenarios[sid]):
                (losses if worse else wins).append((factor, sentence))
    if losses:
        lines += ["Where brushtail loses (median of per-run ratios, largest first):", ""]
        lines += [f"- {s}." for _, s in sorted(losses, reverse=True)]
    else:
        lines.append("brushtail loses to no peer on any metric measured beside one.")
    if wins:
        lines += ["", "Where brushtail wins by the widest margins:", ""]
        lines += [f"- {s}." for _, s in sorted(wins, reverse=True)[:8]]
    missed = [g for g in goals if g.status == "missed"]
    met = [g for g in goals if g.status == "met"]
    unmeasured = [g for g in goals if g.status == "not measured"]
    lines.append("")
    lines.append(
        f"Targets: {len(met)} met, {len(missed)} missed, {len(unmeasured)} not measured."
        + (
            " Missed: " + "; ".join(f"{g.text} ({g.figure}, {g.by})" for g in missed) + "."
            if missed
            else ""
        )
    )
    nproc = manifest.get("machine", {}).get("nproc") or 2
    loads = [x[0] for x in (manifest.get("loadavg_before"), manifest.get("loadavg_after")) if x]
    loads += [
        j[k][0] for j in manifest.get("jobs", {}).values()
        for k in ("loadavg_before", "loadavg_after") if j.get(k)
    ]  # fmt: skip
    if loads and max(loads) > nproc / 2:
        lines += ["", f"The machine was shared while this ran (1-minute load average up to "
                  f"{max(loads):.1f} on {nproc} CPUs): absolute figures are lower than on an "
                  "idle machine; ratios compare servers measured in the same round."]  # fmt: skip
    absent = [s for s in ORDER if s not in scenarios]
    if absent:
        lines += ["", f"Not run: {', '.join(absent)} (see their sections)."]
    return lines


# --- plots ---------------------------------------------------------------------------------

LATENCY_PLOTS = {
    "dora": ("ms", (
        ("discover_offer_light_ms", "D-O light"), ("discover_offer_light_p99_ms", "D-O light p99"),
        ("request_ack_light_ms", "R-A light"), ("request_ack_light_p99_ms", "R-A light p99"),
        ("discover_offer_half_ms", "D-O half"), ("discover_offer_half_p99_ms", "D-O half p99"),
        ("request_ack_half_ms", "R-A half"), ("request_ack_half_p99_ms", "R-A half p99"),
    )),
    "latency": ("us", (
        ("renew_median_light_us", "light"), ("renew_p99_light_us", "light p99"),
        ("renew_median_half_us", "half"), ("renew_p99_half_us", "half p99"),
    )),
}  # fmt: skip
RATE_BARS = (
    ("dora", "dora_max", "new DORA/s\nhighest rate"),
    ("dora", "dora_capacity", "new DORA/s\npaced capacity"),
    ("renewals", "answers_per_s", "renewals/s"),
    ("mix", "answers_per_s", "80/20 mix\nanswers/s"),
    ("kernel", "renewals_per_s", "renewals/s\nkernel, one core"),
)


def colour(server: str) -> str:
    return COLOURS.get(server, "#7f7f7f")


def plots(scenarios: dict[str, Scenario], out: Path) -> dict[str, list[str]]:
    """Writes the PNGs; returns scenario id -> file names (relative to `out`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}

    def save(fig: Any, sid: str, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.setdefault(sid, []).append(name)

    for sid in ORDER:
        scenario = scenarios.get(sid)
        if scenario is None:
            continue
        for sname, series in scenario.series.items():
            if not any(series.points.values()):
                continue
            fig, ax = plt.subplots(figsize=(7.5, 4.5))
            top = 0.0
            for server in [s for s in SERVERS if s in series.points] + sorted(
                set(series.points) - set(SERVERS)
            ):
                pts = [(x, present(ys)) for x, ys in series.points[server] if present(ys)]
                if not pts:
                    continue
                xs = [x for x, _ in pts]
                mids = [float(median(ys) or 0) for _, ys in pts]
                low = [m - min(ys) for m, (_, ys) in zip(mids, pts, strict=True)]
                high = [max(ys) - m for m, (_, ys) in zip(mids, pts, strict=True)]
                ax.errorbar(xs, mids, yerr=[low, high], marker="o", capsize=3, label=server,
                            color=colour(server))  # fmt: skip
                top = max(top, *xs)
            if top:
                low_x = min(x for pts in series.points.values() for x, _ in pts)
                ax.plot([low_x, top], [low_x, top], ls=":", color="#999999", label="all answered")
            ax.set_xscale("log")
            ax.set_yscale("log")
            offered = sorted({x for pts in series.points.values() for x, _ in pts})
            ax.set_xticks(offered, [f"{x:,.0f}" for x in offered])
            ax.minorticks_off()
            ax.set_xlabel(series.x_label)
            ax.set_ylabel(series.y_label)
            ax.set_title(
                f"{scenario.title}\nanswered vs offered (median of runs, bars min-max)", fontsize=10
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            save(fig, sid, f"{sid}_{sname}.png")
        if sid in LATENCY_PLOTS:
            unit, keys = LATENCY_PLOTS[sid]
            keys = tuple((k, lbl) for k, lbl in keys if k in scenario.metrics)
            servers = [
                s for s in servers_of(scenario)
                if any(median(scenario.metrics[k].values.get(s, [])) for k, _ in keys)
            ]  # fmt: skip
            if keys and servers:
                fig, ax = plt.subplots(figsize=(max(7.5, 1.1 * len(keys) + 2), 4.5))
                width = 0.8 / len(servers)
                for i, server in enumerate(servers):
                    xs, ys, lo, hi = [], [], [], []
                    for j, (key, _) in enumerate(keys):
                        got = present(scenario.metrics[key].values.get(server, []))
                        if got:
                            m = float(median(got) or 0)
                            xs.append(j + (i - (len(servers) - 1) / 2) * width)
                            ys.append(m)
                            lo.append(m - min(got))
                            hi.append(max(got) - m)
                    ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=server,
                           color=colour(server))  # fmt: skip
                ax.set_xticks(range(len(keys)), [lbl for _, lbl in keys])
                ax.set_yscale("log")
                ax.set_ylabel(f"delay, {unit} (log)")
                ax.set_title(
                    f"{scenario.title}\nmedian and p99 delays (median of runs, bars min-max)",
                    fontsize=10,
                )
                ax.grid(True, axis="y", which="both", alpha=0.3)
                ax.legend()
                save(fig, sid, f"{sid}_latency.png")
    bars = [(sid, key, lbl) for sid, key, lbl in RATE_BARS if _metric(scenarios, sid, key)]
    if bars:
        fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(bars) + 2), 4.5))
        shown = [
            s
            for s in SERVERS
            if any(
                median(m.values.get(s, []))
                for sid, key, _ in bars
                if (m := _metric(scenarios, sid, key))
            )
        ]
        width = 0.8 / max(len(shown), 1)
        for i, server in enumerate(shown):
            xs, ys = [], []
            for j, (sid, key, _) in enumerate(bars):
                metric = _metric(scenarios, sid, key)
                got = median(metric.values.get(server, [])) if metric else None
                if got:
                    xs.append(j + (i - (len(shown) - 1) / 2) * width)
                    ys.append(got)
            if xs:
                ax.bar(xs, ys, width, label=server, color=colour(server))
        ax.set_xticks(range(len(bars)), [lbl for _, _, lbl in bars])
        ax.set_yscale("log")
        ax.set_ylabel("answers per second (log, median of runs)")
        ax.set_title("Rates per server")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend()
        save(fig, "summary", "rates.png")
    return made


# --- the document --------------------------------------------------------------------------


def table(scenario: Scenario) -> list[str]:
    servers = servers_of(scenario)
    peers = [p for p in PEERS if p in servers and "brushtail" in servers]
    head = ["metric", *servers, *(f"brushtail / {p}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, metric in scenario.metrics.items():
        unit = f" ({metric.unit})" if metric.unit and metric.unit != "x" else ""
        row = [f"{metric.label}{unit} `{key}`"]
        row += [cell(metric.values[s]) if s in metric.values else "-" for s in servers]
        for peer in peers:
            r = ratio(metric, peer)
            row.append(f"{r:.2f}x" if r is not None else "-")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def machine_lines(manifest: dict[str, Any], scenarios: dict[str, Scenario]) -> list[str]:
    box = manifest.get("machine", {})
    packages = ", ".join(f"{k} {v}" for k, v in box.get("packages", {}).items())
    lines = [
        f"- CPU: {box.get('cpu', '?')}, {box.get('nproc', '?')} CPUs; kernel "
        f"{box.get('kernel', '?')}; Debian {box.get('debian', '?')}; Python "
        f"{box.get('python', '?')}.",
        f"- Packages: {packages}.",
        f"- Load average (1, 5, 15 min) before: {manifest.get('loadavg_before')}, after: "
        f"{manifest.get('loadavg_after')}.",
    ]
    for job in manifest.get("jobs", {}).values():
        if "seconds" in job:
            lines.append(
                f"- {job['script']}: {job['seconds']:.0f} s, load average "
                f"{job.get('loadavg_before')} before, {job.get('loadavg_after')} after"
                f" ({job['status']})."
            )
        else:
            lines.append(f"- {job['script']}: {job['status']} ({job.get('error', '')}).")
    waits = []
    for sid in ORDER:
        metric = _metric(scenarios, sid, "cpu_wait_pct")
        if metric:
            per = ", ".join(f"{s} {cell(v)}%" for s, v in metric.values.items())
            waits.append(f"{sid}: {per}")
        elif scenario := scenarios.get(sid):
            for name, value in scenario.machine.items():
                if "wait" in name and isinstance(value, dict) and value:
                    per = ", ".join(
                        f"{s} {cell(v)}" for s, v in value.items() if isinstance(v, list)
                    )
                    waits.append(f"{sid}: {name} {per}")
    if waits:
        lines.append(
            "- Time each server spent runnable but waiting for its CPU (share of the measured "
            "phase; other tenants of the machine): " + "; ".join(waits) + "."
        )
    if manifest.get("missing"):
        lines.append(f"- Missing when it ran: {', '.join(manifest['missing'])}; install with "
                     f"`{SETUP_HINT}`.")  # fmt: skip
    return lines


def render_markdown(
    manifest: dict[str, Any], scenarios: dict[str, Scenario], images: dict[str, list[str]],
    image_dir: str = "bench",
) -> str:  # fmt: skip
    goals = targets(scenarios)
    runs = manifest.get("runs", "?")
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/report.py: do not edit; run it again (see below). -->",
        "",
        "This file is generated by `bench/report.py` from the JSON of one run of every scenario "
        "script; the hand-written analysis (profiles, overload behaviour, durability, pitfalls "
        "of the harness, suggested changes, earlier runs) is in [PERFORMANCE.md]"
        "(PERFORMANCE.md). To regenerate it on this machine (as root, about 25 minutes):",
        "",
        "```sh",
        "bash scripts/setup.sh --bench && .venv/bin/python bench/report.py",
        "```",
        "",
        f"This run: `{manifest.get('command', '?')}`, started {manifest.get('started', '?')}, "
        f"revision {manifest.get('revision', '?')}, {runs} run(s) per server, interleaved.",
        "",
        "## Machine",
        "",
        *machine_lines(manifest, scenarios),
        "",
        "## Targets",
        "",
        "| target | scenario / metric | status | figure | by how much | why |",
        "|---|---|---|---|---|---|",
        *(
            f"| {g.text} | {g.where} | **{g.status}** | {g.figure} | {g.by or '-'} | "
            + (f"[analysis](PERFORMANCE.md#{g.why})" if g.why else "-")
            + " |"
            for g in goals
        ),
        "",
        "## Reading",
        "",
        *reading(scenarios, goals, manifest),
        "",
    ]
    if "summary" in images:
        lines += [f"![rates per server]({image_dir}/{images['summary'][0]})", ""]
    jobs = manifest.get("jobs", {})
    for sid in ORDER:
        scenario = scenarios.get(sid)
        job = next((j for j in jobs.values() if sid in j.get("scenarios", [])), None)
        title = scenario.title if scenario else TITLES.get(sid, sid)
        lines += [f"## {title} (`{sid}`)", "", METHODS.get(sid, ""), ""]
        if scenario is None:
            why = "not selected (--only)" if job is None else job.get("error", job["status"])
            lines += [f"**Not run**: {why}."]
            if job and job.get("tail"):
                lines += ["", "```", *job["tail"].splitlines()[-12:], "```"]
            lines.append("")
            continue
        lines += [
            f"Command: `{scenario.command}`; revision {scenario.revision}; {scenario.runs} "
            f"run(s); {scenario.seconds:.0f} s. Cells: median [min-max] over runs; ratios: "
            "median of the per-run ratios brushtail / peer.",
            "",
            *table(scenario),
            "",
        ]
        for name in images.get(sid, []):
            lines += [f"![{sid}: {name}]({image_dir}/{name})", ""]
        for server, why in scenario.skipped.items():
            lines.append(f"- {server} not measured: {why}")
        lines += [f"- {note}" for note in scenario.notes]
        if scenario.skipped or scenario.notes:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def load_dir(directory: Path) -> tuple[dict[str, Any], dict[str, Scenario]]:
    manifest: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((directory / "manifest.json").read_text())
    scenarios = {}
    for sid in ORDER:
        path = directory / f"{sid}.json"
        if path.exists():
            try:
                scenarios[sid] = load(path)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                job = manifest.setdefault("jobs", {}).setdefault(sid, {"scenarios": [sid]})
                job.update(status="not run", error=f"unreadable {path.name}: {exc}")
    return manifest, scenarios


def render(directory: Path, docs: Path) -> Path:
    manifest, scenarios = load_dir(directory)
    image_dir = docs / "bench"
    if image_dir.is_dir():
        for old in image_dir.glob("*.png"):
            old.unlink()
    try:
        images = plots(scenarios, image_dir)
    except ImportError:
        print(f"matplotlib is missing, no plots: run `{SETUP_HINT}`", file=sys.stderr)
        images = {}
    out = docs / "BENCHMARKS.md"
    out.write_text(render_markdown(manifest, scenarios, images))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="each script's --quick (a smoke run)")
    ap.add_argument("--only", help=f"comma-separated scenarios of {','.join(ORDER)}")
    ap.add_argument("--render", type=Path, help="render this earlier run's directory again")
    ap.add_argument("--docs", type=Path, default=REPO / "docs", help="where BENCHMARKS.md goes")
    args = ap.parse_args(argv)
    only = [s.strip() for s in (args.only or ",".join(ORDER)).split(",") if s.strip()]
    unknown = sorted(set(only) - set(ORDER))
    if unknown:
        ap.error(f"unknown scenarios {unknown}; choose from {', '.join(ORDER)}")
    if args.render is None:
        if os.geteuid() != 0:
            print("run as root (namespaces, XDP, CPU pinning)", file=sys.stderr)
            return 2
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"matplotlib is missing: run `{SETUP_HINT}`", file=sys.stderr)
            return 2
        directory = measure(args, only)
    else:
        directory = args.render
        if not directory.is_dir():
            ap.error(f"{directory} is not a directory")
    out = render(directory, args.docs)
    print(f"raw results: {directory}\nreport: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
