"""The kernel program next to the slow path it must agree with, for the tests in tests/bpf.

`Fastpath` holds one engine (`Server`) and its `MapSync` over the session's compiled
program: leases are made by feeding the engine real DISCOVER/REQUEST exchanges and applying
its decisions to the maps, as the daemon does after each commit. `slow_path(frame)` is the
reference every kernel answer is compared with: the daemon's receive filter and frame
checks (brushtaild/net/packet_io.py), the codec, then `Server.handle`.
"""

import copy
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from brushtaild.config.model import Config
from brushtaild.daemon import clock
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import encode, parse
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import MalformedPacket
from brushtaild.engine.decisions import Decision, DestKind, Reply
from brushtaild.engine.leases import Lease
from brushtaild.engine.replication import Replication
from brushtaild.engine.server import Server
from brushtaild.net.packet_io import parse_frame
from brushtaild.xdp import libbpf, maps, stats
from brushtaild.xdp.loader import Program
from brushtaild.xdp.relays import REFRESH_INTERVAL, Relays
from brushtaild.xdp.sync import MapSync
from tests.bpf.frames import (
    BROADCAST_MAC,
    ETH_P_IP,
    as_received,
    client_frame,
    decode_reply,
    filtered,
)
from tests.engine_helpers import SERVER, make_config, make_pool

XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3

SERVER_MAC = bytes.fromhex("02b7000000fe")  # the served interface's MAC
# A relay agent's, on the served link: the next hop routing gives for every giaddr here.
RELAY_MAC = bytes.fromhex("02b7000000aa")
SERVER_IP = opt.format_ip(SERVER)
IFINDEX = 2
NS = 1_000_000_000
# bpf/clock.h's TICK_MAX_NS: how much later than the exact clock's a renewal's new expiry
# may be (the program's clock is read once a tick).
TICK_MAX_NS = 10_000_000
ETH_HLEN = 14  # BPF_PROG_TEST_RUN refuses shorter XDP frames
# Engine time runs a minute behind the wall clock, so an expiry the kernel sets on a
# renewal is visibly later than the one the engine set (no clock race in any assertion).
ENGINE_LAG = 60.0

# BOOTP field offsets (RFC 2131 figure 1).
FLAGS_OFFSET = 10
CIADDR_OFFSET = 12
GIADDR_OFFSET = 24
CHADDR_OFFSET = 28
OPTIONS_OFFSET = 240
BROADCAST_FLAG = 0x8000


# Relays whose options 118 and 82 link selection are honoured: those on 198.18.2.0/24.
TRUSTED_RELAYS = IPv4Network("198.18.2.0/24")


def default_config() -> Config:
    """Two pools on separate subnets: 198.18/16 (the server's link and its relays) and
    198.19/16 (reached only through a relay or a subnet selection)."""
    return make_config(
        make_pool(),
        make_pool(name="other", subnet="198.19.0.0/16", first="198.19.1.0", last="198.19.1.9"),
        trusted_relays=(TRUSTED_RELAYS,),
    )


# -- payload edits, in place, so a captured packet keeps every other byte -----------------


def option_spans(raw: bytes) -> list[tuple[int, int, int]]:
    """(code, offset of the value, length) of each option in the options field."""
    spans, pos = [], OPTIONS_OFFSET
    while pos < len(raw) and raw[pos] != 255:
        if raw[pos] == 0:
            pos += 1
            continue
        spans.append((raw[pos], pos + 2, raw[pos + 1]))
        pos += 2 + raw[pos + 1]
    return spans


def with_option(raw: bytes, code: int, value: bytes) -> bytes:
    """`raw` with option `code`'s value replaced by one of the same length."""
    out = bytearray(raw)
    for found, start, length in option_spans(raw):
        if found == code:
            assert length == len(value), f"option {code} has {length} bytes"
            out[start : start + length] = value
            return bytes(out)
    raise KeyError(code)


def without_option(raw: bytes, code: int) -> bytes:
    """`raw` with option `code` overwritten by pad options (length kept)."""
    out = bytearray(raw)
    for found, start, length in option_spans(raw):
        if found == code:
            out[start - 2 : start + length] = bytes(2 + length)
    return bytes(out)


def with_fields(
    raw: bytes,
    *,
    chaddr: bytes | None = None,
    ciaddr: int | None = None,
    giaddr: int | None = None,
    flags: int | None = None,
) -> bytes:
    out = bytearray(raw)
    if chaddr is not None:
        old = raw[CHADDR_OFFSET : CHADDR_OFFSET + 6]
        out[CHADDR_OFFSET : CHADDR_OFFSET + 6] = chaddr
        # A client identifier in the hardware form names the same MAC.
        for code, start, length in option_spans(raw):
            if code == OptionCode.CLIENT_ID and raw[start : start + length] == b"\x01" + old:
                out[start + 1 : start + length] = chaddr
    for offset, value in ((CIADDR_OFFSET, ciaddr), (GIADDR_OFFSET, giaddr)):
        if value is not None:
            out[offset : offset + 4] = opt.ip(value)
    if flags is not None:
        struct.pack_into("!H", out, FLAGS_OFFSET, flags)
    return bytes(out)


def options_in_order(payload: bytes) -> list[int]:
    return [code for code, _, _ in option_spans(payload)]


# -- the harness --------------------------------------------------------------------------


@dataclass
class RenewalLog:
    """Renewal events read from the program's ring buffer (opened once per session)."""

    program: Program

    def drain(self) -> list[maps.Renewal]:
        ring = self.program.renewals()
        events = [maps.Renewal.from_buffer_copy(raw) for raw in ring.peek()]
        ring.release()
        return events


def clear_maps(program: Program) -> None:
    """Empties the lease entries, rate buckets and relays. Templates stay: an array, rewritten by
    the next MapSync from slot 0, and no entry is left to point at an old one."""
    for name in ("leases", "ratelimit", "relays"):
        program.table(name).clear()


@dataclass
class Sites:
    """Replication as the engine asks it (brushtaild.engine.replication), as a test sets
    it: this site owns every address, or none, and a roaming client may run to `limit`."""

    owned: bool = True
    limit: float = math.inf
    block_size: int = 256

    def owns(self, address: int, now: float) -> bool:
        return self.owned

    def may_allocate(self, address: int, client_id: bytes, now: float) -> bool:
        return self.owned

    def extension_limit(self, address: int, client_id: bytes, now: float) -> float:
        return math.inf if self.owned else self.limit


class Fastpath:
    """One engine and its map sync over the shared program; the maps start empty."""

    def __init__(
        self,
        program: Program,
        renewals: RenewalLog,
        config: Config | None = None,
        *,
        rate: int = 0,
        burst: int = 0,
        replication: Replication | None = None,
    ) -> None:
        clear_maps(program)
        renewals.drain()
        self.program = program
        self.renewal_log = renewals
        self.config = config or default_config()
        self.now = clock.wall() - ENGINE_LAG
        self.server = Server(self.config, [], self.now, replication=replication)
        self.sync = MapSync(program, self.server)
        self.sync.configure(self.config, SERVER_MAC, rate, burst)
        self.relays = Relays(program, lambda _giaddr: RELAY_MAC, self.config)
        self._relays_checked = 0.0
        self._leases = program.table("leases")

    # -- the kernel -------------------------------------------------------------------------

    def run(self, frame: bytes, repeat: int = 1) -> libbpf.TestRun:
        return libbpf.prog_test_run(self.program.fd, frame, repeat=repeat)

    def results(self) -> dict[maps.Result, int]:
        return stats.read(self.program).results

    def counted(self, action: Callable[[], object]) -> dict[maps.Result, int]:
        """The results counters that `action` raised, by how much."""
        before = self.results()
        action()
        after = self.results()
        return {r: after[r] - before[r] for r in maps.Result if after[r] != before[r]}

    def results_of(self, frame: bytes) -> dict[maps.Result, int]:
        """The results counters one run of `frame` raised."""
        return self.counted(lambda: self.run(frame))

    def entry(self, key: maps.Key) -> maps.LeaseEntry | None:
        try:
            leaf = self._leases[key.ctype()]
        except KeyError:
            return None
        return maps.LeaseEntry.from_buffer_copy(leaf)

    def put_entry(self, key: maps.Key, entry: maps.LeaseEntry) -> None:
        self._leases[key.ctype()] = entry

    def entries(self) -> dict[maps.Key, maps.LeaseEntry]:
        return {
            maps.Key.from_ctype(
                maps.ClientKey.from_buffer_copy(k)
            ): maps.LeaseEntry.from_buffer_copy(v)
            for k, v in self._leases.items()
        }

    def renewals(self) -> list[maps.Renewal]:
        return self.renewal_log.drain()

    # -- the slow path ----------------------------------------------------------------------

    def slow_path(
        self, frame: bytes, *, now: float | None = None, apply: bool = True
    ) -> Decision | None:
        """What the daemon does with `frame` if the program passes it: None if its socket
        filter or frame checks drop it, or the codec finds it malformed; else the engine's
        decision, applied to the maps (as after a commit). With `apply` false, only what
        the slow path would answer: a copy of the engine handles it, and nothing changes."""
        when = self.now if now is None else now
        request = received(frame)
        if request is None:
            return None
        payload, ingress = request
        try:
            msg = parse(payload)
        except MalformedPacket:
            return None
        server = self.server if apply else copy.deepcopy(self.server)
        decision = server.handle(msg, ingress, when)
        if apply:
            self.sync.apply([decision], when)
            for reply in decision.replies:
                self.relays.answered(reply)
            self.refresh_relays()
        return decision

    def know_relay(self, giaddr: int, vlans: tuple[int, ...] = ()) -> None:
        """As after the slow path answered this relay: the kernel has its next hop."""
        self.relays.learn(giaddr, vlans)
        self.refresh_relays()

    def refresh_relays(self) -> None:
        """The daemon's next relay refresh, as if REFRESH_INTERVAL had passed."""
        self._relays_checked += REFRESH_INTERVAL
        self.relays.refresh(self._relays_checked)

    def absorb_renewals(self) -> int:
        """What the daemon does with the renewals the kernel answered
        (Daemon._absorb_renewals): each extends the engine's lease, whose entry is then
        rewritten; one whose lease changed meanwhile has its entry withdrawn. Returns how
        many there were."""
        events = self.renewals()
        for event in events:
            address = maps.host32(event.address)
            expires = clock.from_boot_ns(event.expires_ns)
            key = maps.Key.from_ctype(event.key)
            renewed = self.server.kernel_renewal(key.mac, address, expires, self.now, key.vlans)
            if renewed.drop is not None:
                self.sync.withdraw(address)
            else:
                self.sync.apply([renewed], self.now)
        return len(events)

    def bind(
        self,
        mac: bytes,
        *,
        options: dict[int, bytes] | None = None,
        giaddr: int = 0,
        now: float | None = None,
        vlans: tuple[int, ...] = (),
    ) -> Lease:
        """A bound lease for `mac`, made by a DISCOVER/REQUEST exchange with the engine
        (SELECTING) on `vlans` and installed in the maps. `options` go into both messages
        (61, 55, 82, 118 ...)."""
        extra = dict(options or {})
        discover = client_message(MessageType.DISCOVER, mac, giaddr=giaddr, extra=extra)
        offer = self.slow_path(
            self.frame(encode(discover), mac=mac, relay=bool(giaddr), vlans=vlans), now=now
        )
        assert offer is not None and offer.replies, offer
        yiaddr = offer.replies[0].message.yiaddr
        request = client_message(
            MessageType.REQUEST,
            mac,
            giaddr=giaddr,
            extra={
                **extra,
                OptionCode.REQUESTED_ADDRESS: opt.ip(yiaddr),
                OptionCode.SERVER_ID: opt.ip(self.config.server_id),
            },
        )
        ack = self.slow_path(
            self.frame(encode(request), mac=mac, relay=bool(giaddr), vlans=vlans), now=now
        )
        assert ack is not None and len(ack.lease_writes) == 1, ack
        return ack.lease_writes[0]

    def frame(
        self,
        payload: bytes,
        *,
        mac: bytes,
        relay: bool = False,
        unicast_from: int = 0,
        vlans: tuple[int, ...] = (),
        ip_options: bytes = b"",
    ) -> bytes:
        """`payload` as a client broadcasts it, a relay forwards it (from its giaddr, to
        the server, port 67) or a bound client unicasts it to the server."""
        if relay:
            giaddr = int.from_bytes(payload[GIADDR_OFFSET : GIADDR_OFFSET + 4], "big")
            return client_frame(
                payload,
                src_mac=RELAY_MAC,
                dst_mac=SERVER_MAC,
                src_ip=opt.format_ip(giaddr),
                dst_ip=SERVER_IP,
                sport=67,
                vlans=vlans,
                ip_options=ip_options,
            )
        if unicast_from:
            return client_frame(
                payload,
                src_mac=mac,
                dst_mac=SERVER_MAC,
                src_ip=opt.format_ip(unicast_from),
                dst_ip=SERVER_IP,
                vlans=vlans,
                ip_options=ip_options,
            )
        return client_frame(payload, src_mac=mac, vlans=vlans, ip_options=ip_options)


def client_message(
    mtype: MessageType,
    mac: bytes,
    *,
    xid: int = 0x5EED,
    ciaddr: int = 0,
    giaddr: int = 0,
    flags: int = 0,
    extra: dict[int, bytes] | None = None,
) -> Message:
    options: dict[int, bytes] = {OptionCode.MESSAGE_TYPE: bytes((mtype,))}
    options.update(extra or {})
    return Message(
        op=1,
        xid=xid,
        flags=flags,
        ciaddr=ciaddr,
        giaddr=giaddr,
        hops=1 if giaddr else 0,
        chaddr=mac.ljust(16, b"\0"),
        options=options,
    )


def received(frame: bytes) -> tuple[bytes, Any] | None:
    """The DHCP payload and Ingress the daemon's socket would deliver for `frame`, or None.

    The kernel takes the outer VLAN tag off (frames.as_received); the socket's classic-BPF
    filter (packet_io.DHCP_SERVER_FILTER, run by frames.run_filter) takes IPv4 UDP to port
    67 sent to the interface's MAC or broadcast, with up to two tags; parse_frame then
    refuses what is not a well-formed datagram (docs/DESIGN.md), as the program does."""
    pkttype = {SERVER_MAC: 0, BROADCAST_MAC: 1}.get(frame[0:6], 3)
    if not filtered(frame, pkttype):
        return None
    inside, outer = as_received(frame)
    return parse_frame(bytearray(inside), len(inside), IFINDEX, outer)


@dataclass(frozen=True, slots=True)
class Expected:
    """Where RFC 2131 section 4.1 sends the reply to a request."""

    ip: str
    port: int
    mac: bytes


def expected_destination(frame: bytes, yiaddr: int) -> Expected:
    """Computed from the request frame alone, independently of both implementations."""
    payload = frame_payload(frame)
    src_mac = frame[6:12]
    flags = struct.unpack_from("!H", payload, FLAGS_OFFSET)[0]
    ciaddr = payload[CIADDR_OFFSET : CIADDR_OFFSET + 4]
    giaddr = payload[GIADDR_OFFSET : GIADDR_OFFSET + 4]
    if any(giaddr):
        return Expected(".".join(map(str, giaddr)), 67, RELAY_MAC)
    if any(ciaddr):
        return Expected(".".join(map(str, ciaddr)), 68, src_mac)
    if flags & BROADCAST_FLAG:
        return Expected("255.255.255.255", 68, BROADCAST_MAC)
    return Expected(opt.format_ip(yiaddr), 68, payload[CHADDR_OFFSET : CHADDR_OFFSET + 6])


def frame_payload(frame: bytes) -> bytes:
    """The UDP payload of a well-formed request frame (tags and IP options skipped)."""
    pos = 12
    while struct.unpack_from("!H", frame, pos)[0] != ETH_P_IP:
        pos += 4
    ip = pos + 2
    ihl = (frame[ip] & 0x0F) * 4
    udp_len = struct.unpack_from("!H", frame, ip + ihl + 4)[0]
    return frame[ip + ihl + 8 : ip + ihl + udp_len]


def assert_same_reply(fast: libbpf.TestRun, request: bytes, slow: Decision | None) -> Reply:
    """The kernel's reply (XDP_TX) to `request` is the slow path's, byte for byte and
    address for address; returns the slow path's reply."""
    assert fast.retval == XDP_TX
    got = decode_reply(fast.data)
    assert slow is not None and slow.drop is None, "kernel answered, slow path would not"
    assert len(slow.replies) == 1, slow
    want = slow.replies[0]
    assert parse(got.payload).message_type == want.message.message_type
    assert got.payload == want.payload
    assert (got.dst_ip, got.dport) == (opt.format_ip(want.dest.ip), want.dest.port)
    if want.dest.mac:
        assert got.dst_mac == want.dest.mac
    elif want.dest.kind is DestKind.RELAY:  # the next hop routing gives for giaddr
        assert got.dst_mac == RELAY_MAC
    else:  # routed by the slow path to a bound client: the one that sent the request
        assert got.dst_mac == request[6:12]
    assert (got.src_mac, got.src_ip, got.sport) == (SERVER_MAC, SERVER_IP, 67)
    if want.dest.kind is not DestKind.RELAY:  # the slow path frames it with these tags
        tags = want.ingress.tags
        assert fast.data[12 : 12 + len(tags)] == tags
        assert struct.unpack_from("!H", fast.data, 12 + len(tags))[0] == ETH_P_IP
    return want
