"""`brushtail trace`: the XDP program's decision on each DHCP request, as it makes them.

The program queues a record (struct bt_trace) on its pinned `trace` ring for each request
it counts, once a tracer has set the trace config slots (off, it costs one config lookup a
packet); a token bucket in the kernel bounds the events a second, and what it refuses is
counted in `trace_lost`. This module is the tracer: it reads the pins directly (root
only), so it works whether or not brushtaild runs, sets the slots for as long as it runs
and sets the rate back to 0 however it stops, short of SIGKILL (then the next tracer's exit
does). One tracer at a time: it holds the flock of the pin directory's current version.
"""

import argparse
import ctypes
import json
import os
import select
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from brushtaild.config.load import DEFAULT_CONFIG, ConfigError, load_config
from brushtaild.daemon import clock
from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.options import format_ip, format_mac
from brushtaild.xdp import libbpf, loader, maps

DEFAULT_RATE = 100  # events a second
# linux/bpf.h enum xdp_action, as a verdict
VERDICTS = {1: "dropped", 2: "passed", 3: "answered"}
EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2  # brushtaild/cli.py's rule


class TraceError(Exception):
    """Nothing to trace, or someone else is tracing."""


@dataclass(frozen=True, slots=True)
class Filter:
    """What the tracer asks the kernel for: at most `rate` events a second, of one chaddr
    (None: any) and of some results (empty: all)."""

    rate: int = DEFAULT_RATE
    mac: bytes | None = None
    results: frozenset[maps.Result] = frozenset()

    def slots(self) -> dict[int, int]:
        """The config slots, the rate (which turns tracing on) last."""
        return {
            maps.CFG_TRACE_MAC: int.from_bytes((self.mac or b"").ljust(8, b"\0"), "little"),
            maps.CFG_TRACE_RESULTS: sum(1 << result for result in self.results),
            maps.CFG_TRACE_COST: max(1, clock.NS // self.rate),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One traced request, decoded."""

    time: float  # Unix seconds
    mac: bytes
    outer_vlan: int
    inner_vlan: int
    relay: int  # giaddr, host order; 0 if not relayed
    address: int  # host order; 0 if none
    message: int  # option 53; 0 if not read
    result: maps.Result
    action: int
    latency_ns: int

    @classmethod
    def decode(cls, raw: bytes) -> "Event":
        record = maps.TraceEvent.from_buffer_copy(raw[: ctypes.sizeof(maps.TraceEvent)])
        return cls(
            time=clock.from_boot_ns(record.time_ns),
            mac=bytes(record.mac),
            outer_vlan=record.outer_vlan,
            inner_vlan=record.inner_vlan,
            relay=maps.host32(record.giaddr),
            address=maps.host32(record.address),
            message=record.msg_type,
            result=maps.Result(record.result),
            action=record.action,
            latency_ns=record.latency_ns,
        )

    @property
    def verdict(self) -> str:
        """`answered ack`, `passed miss`, `dropped rate_limit`, ..."""
        return f"{VERDICTS.get(self.action, f'action {self.action}')} {self.result.label}"

    @property
    def vlans(self) -> str | None:
        if not self.outer_vlan:
            return None
        return f"{self.outer_vlan}.{self.inner_vlan}" if self.inner_vlan else str(self.outer_vlan)

    @property
    def message_name(self) -> str | None:
        if not self.message:
            return None
        try:
            return MessageType(self.message).name
        except ValueError:
            return f"type-{self.message}"

    def line(self) -> str:
        """For people: local time to the microsecond, then what is known of the request."""
        fields = [
            datetime.fromtimestamp(self.time).strftime("%H:%M:%S.%f"),
            format_mac(self.mac) if any(self.mac) else "-",
        ]
        if self.vlans is not None:
            fields.append(f"vlan {self.vlans}")
        if self.relay:
            fields.append(f"relay {format_ip(self.relay)}")
        fields += [
            format_ip(self.address) if self.address else "-",
            self.message_name or "-",
            self.verdict,
        ]
        if self.latency_ns:
            fields.append(f"{self.latency_ns / 1000:.1f}us")
        return " ".join(fields)

    def as_json(self) -> dict[str, Any]:
        return {
            "time": datetime.fromtimestamp(self.time).astimezone().isoformat(),
            "mac": format_mac(self.mac) if any(self.mac) else None,
            "outer_vlan": self.outer_vlan,
            "inner_vlan": self.inner_vlan,
            "relay": format_ip(self.relay) if self.relay else None,
            "address": format_ip(self.address) if self.address else None,
            "message": self.message_name,
            "verdict": VERDICTS.get(self.action, str(self.action)),
            "result": self.result.label,
            "latency_ns": self.latency_ns if self.latency_ns else None,
        }


@dataclass(frozen=True, slots=True)
class Lost:
    """Events the kernel did not queue."""

    rate: int  # over the rate
    full: int  # the ring was full: the tracer did not keep up


class Tracer:
    """The trace ring of one version's pins, with the trace switched on while open."""

    def __init__(self, version: Path, wanted: Filter) -> None:
        try:
            pinned = (version / "trace").exists()
        except PermissionError:
            raise TraceError(
                f"cannot read {version}: tracing reads the pinned maps, as root"
            ) from None
        if not pinned:
            raise TraceError(
                f"no fast path with a trace ring is pinned under {version}: brushtaild has "
                "not attached its program with this configuration, or an older one runs"
            )
        try:
            self._lock = loader.lock_dir(version)
        except loader.Held as exc:
            raise TraceError(
                f"another trace is running ({exc.holder}): one tracer at a time"
            ) from None
        self._fds: dict[str, int] = {}
        self._ring: libbpf.RingReader | None = None
        self._epoll: select.epoll | None = None
        self._lost_before = Lost(0, 0)
        try:
            for name in ("config", "trace", "trace_lost"):
                self._fds[name] = libbpf.obj_get(str(version / name))
            self._ring = libbpf.RingReader(self._fds["trace"])
            self._epoll = select.epoll()
            self._epoll.register(self._fds["trace"], select.EPOLLIN)
            # A tracer killed by SIGKILL left tracing on, and events unread: off, then
            # those go, so that this tracer shows only what its own filters took.
            libbpf.update_u64(self._fds["config"], maps.CFG_TRACE_COST, 0)
            self._ring.peek()
            self._ring.release()
            self._lost_before = self.lost()
            for slot, value in wanted.slots().items():
                libbpf.update_u64(self._fds["config"], slot, value)
        except BaseException:
            self.close()
            raise

    def lost(self) -> "Lost":
        """Events the kernel refused since this tracer started."""
        counts = libbpf.percpu_u64_sums(self._fds["trace_lost"], maps.TRACE_LOST_SLOTS)
        return Lost(
            counts[maps.TRACE_LOST_RATE] - self._lost_before.rate,
            counts[maps.TRACE_LOST_FULL] - self._lost_before.full,
        )

    def events(self, timeout: float) -> list[Event]:
        """Events queued since the last call, waiting up to `timeout` seconds for one."""
        assert self._ring is not None and self._epoll is not None
        records = self._ring.peek()
        if not records:
            self._epoll.poll(timeout)
            records = self._ring.peek()
        self._ring.release()
        return [Event.decode(raw) for raw in records]

    def close(self) -> None:
        """Tracing off, then the handles go, even if it could not be turned off."""
        try:
            if "config" in self._fds:
                libbpf.update_u64(self._fds["config"], maps.CFG_TRACE_COST, 0)
        finally:
            if self._epoll is not None:
                self._epoll.close()
            if self._ring is not None:
                self._ring.close()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            os.close(self._lock)

    def __enter__(self) -> "Tracer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream(tracer: Tracer, count: int | None, duration: float | None) -> Iterator[Event]:
    """The tracer's events until `count` of them or `duration` seconds, else forever."""
    deadline = None if duration is None else time.monotonic() + duration
    shown = 0
    while count is None or shown < count:
        wait = 1.0 if deadline is None else deadline - time.monotonic()
        if wait <= 0:
            return
        for event in tracer.events(min(wait, 1.0)):
            yield event
            shown += 1
            if count is not None and shown >= count:
                return


def parse_mac(text: str) -> bytes:
    mac = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(mac) != 6:
        raise ValueError(text)
    return mac


def _mac_arg(text: str) -> bytes:
    try:
        return parse_mac(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a MAC address: {text!r}") from None


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    return parse


class _Stopped(Exception):
    """SIGTERM or SIGHUP: stop as after Ctrl-C."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    settings = config.fastpath
    pins = loader.PinDir.of(settings)
    wanted = Filter(args.rate, args.mac, frozenset(maps.Result[r.upper()] for r in args.reason))
    # SIGINT too: a trace started in the background by a script inherits SIGINT ignored,
    # and `kill -INT` must still end it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    try:
        with Tracer(pins.current.path, wanted) as tracer:
            shown = _show(tracer, args)
            lost = tracer.lost()
    except TraceError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(
        f"{shown} events shown; the kernel dropped {lost.rate} over --rate {args.rate}/s"
        f" and {lost.full} for a full ring",
        file=sys.stderr,
    )
    return EXIT_OK


def _show(tracer: Tracer, args: argparse.Namespace) -> int:
    """Prints events until done or stopped; returns how many."""
    shown = 0
    try:
        for event in stream(tracer, args.count, args.duration):
            print(json.dumps(event.as_json()) if args.json else event.line(), flush=True)
            shown += 1
    except _Stopped:
        pass
    return shown


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "trace",
        help="show the XDP program's decisions as it makes them",
        description="One line per DHCP request the XDP program decides on: time, MAC, "
        "VLANs, relay, address, message type, verdict (answered, passed or dropped, with "
        "the reason) and, for answers, the latency. Read from the pinned maps (root), so it "
        "works while brushtaild is stopped. The kernel sends at most --rate events a second "
        "and counts the rest, reported at exit. One trace at a time; exit 1 if no program "
        "is pinned or another trace runs.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help="where the maps are pinned",
    )
    parser.add_argument("--mac", type=_mac_arg, help="only requests with this chaddr")
    parser.add_argument(
        "--reason",
        nargs="+",
        action="extend",
        default=[],
        choices=[result.label for result in maps.Result],
        metavar="NAME",
        help="only these results (ack, offer, miss, rate_limit, ...)",
    )
    parser.add_argument(
        "--rate",
        type=_positive(int),
        default=DEFAULT_RATE,
        metavar="N",
        help=f"events a second at most (default {DEFAULT_RATE})",
    )
    parser.add_argument("--count", type=_positive(int), metavar="N", help="stop after N events")
    parser.add_argument("--duration", type=_positive(float), metavar="S", help="stop after S s")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run=run)
