"""MapSync's whole-map operations against the real program: a reload's rebuild (new
templates, entries rewritten) and a restarted daemon adopting the pinned maps. After each,
the kernel answers exactly as the engine of the moment does."""

import ctypes
import os
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Network

import pytest

from brushtaild.config.model import AddressRange
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.options import parse_ip
from brushtaild.engine.decisions import Decision
from brushtaild.engine.server import Server
from brushtaild.xdp import maps
from brushtaild.xdp.loader import BPFFS, Limits, Program
from brushtaild.xdp.sync import MapSync
from tests.bpf.conftest import PIN_PREFIX, compiled
from tests.bpf.harness import (
    SERVER_MAC,
    XDP_PASS,
    XDP_TX,
    Fastpath,
    RenewalLog,
    assert_same_reply,
    clear_maps,
    client_message,
)
from tests.engine_helpers import make_pool

CLIENTS = [bytes.fromhex(f"02b7000006{i:02x}") for i in range(1, 6)]
PRLS = [bytes([1, 3, 6]), bytes([1, 3, 6, 15, 28]), None, b"", bytes([1, 3, 6])]
EXTRA = [bytes.fromhex(f"02b7000007{i:02x}") for i in range(1, 4)]


def bind_all(fastpath: Fastpath) -> None:
    for mac, prl in zip(CLIENTS, PRLS, strict=True):
        options: dict[int, bytes] = {} if prl is None else {OptionCode.PARAMETER_REQUEST_LIST: prl}
        fastpath.bind(mac, options=options)


def assert_answers_like_the_engine(fastpath: Fastpath) -> None:
    for mac, prl in zip(CLIENTS, PRLS, strict=True):
        extra: dict[int, bytes] = {} if prl is None else {OptionCode.PARAMETER_REQUEST_LIST: prl}
        frame = fastpath.frame(
            encode(client_message(MessageType.DISCOVER, mac, extra=extra)), mac=mac
        )
        run = fastpath.run(frame)
        assert run.retval == XDP_TX
        assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))


def test_reload_rebuilds_templates_and_entries(fastpath: Fastpath) -> None:
    """A new config (other lease time, domain and DNS) is reconciled as the daemon's
    reload does: every entry then answers with the new options."""
    bind_all(fastpath)
    assert_answers_like_the_engine(fastpath)
    old = fastpath.config
    residential = replace(
        make_pool(lease_time=7200), domain="reloaded.example", dns_servers=(0xC6120035,)
    )
    fastpath.config = replace(old, pools=(residential, *old.pools[1:]))
    fastpath.server = fastpath.server.reconfigured(fastpath.config, fastpath.now)
    fastpath.sync.server = fastpath.server
    fastpath.sync.configure(fastpath.config, SERVER_MAC, 0, 0)
    written, removed = fastpath.sync.reconcile(fastpath.now)
    assert (written, removed) == (len(CLIENTS), 0)
    for mac in CLIENTS:
        entry = fastpath.entry(maps.Key(mac))
        assert entry is not None and entry.lease_time == 7200
    assert_answers_like_the_engine(fastpath)


def test_restarted_daemon_adopts_the_maps(fastpath: Fastpath) -> None:
    """A new engine loaded from the same leases (as from the store) and a new MapSync over
    the pinned maps: reconcile keeps every entry, and the kernel answers as the new engine.
    An entry no lease backs any more is removed."""
    bind_all(fastpath)
    stale = maps.Key(bytes.fromhex("02b7000006ff"))
    fastpath.put_entry(stale, fastpath.entry(maps.Key(CLIENTS[0])) or maps.LeaseEntry())
    fastpath.server = Server(fastpath.config, fastpath.server.leases(), fastpath.now)
    fastpath.sync = MapSync(fastpath.program, fastpath.server)
    fastpath.sync.configure(fastpath.config, SERVER_MAC, 0, 0)
    assert fastpath.sync.reconcile(fastpath.now) == (len(CLIENTS), 1)
    assert set(fastpath.entries()) == {maps.Key(mac) for mac in CLIENTS}
    assert_answers_like_the_engine(fastpath)


# -- room: the kernel's map is smaller than the engine's bound leases (review finding 5) --

SMALL = Limits(max_subscribers=4, ratelimit_entries=64)


@pytest.fixture(scope="module")
def small_program() -> Iterator[tuple[Program, RenewalLog]]:
    """The program compiled with room for SMALL.max_subscribers entries."""
    with compiled(BPFFS / f"{PIN_PREFIX}{os.getpid()}-small", SMALL) as program:
        log = RenewalLog(program)
        yield program, log


@pytest.fixture
def small(small_program: tuple[Program, RenewalLog]) -> Iterator[Fastpath]:
    yield Fastpath(*small_program)
    clear_maps(small_program[0])


def test_leases_beyond_max_subscribers_stay_on_the_slow_path(small: Fastpath) -> None:
    """More clients bind than the map holds: the kernel refuses the next key (E2BIG), which
    MapSync never asks for; the rest are served by the slow path."""
    for mac in CLIENTS + EXTRA:
        small.bind(mac)
    assert len(small.entries()) == small.sync.entries == SMALL.max_subscribers
    assert small.sync.skipped == len(CLIENTS) + len(EXTRA) - SMALL.max_subscribers
    assert small.sync.failed == 0
    # A client left out is answered by the slow path, a client with an entry by the kernel.
    left_out = next(mac for mac in CLIENTS + EXTRA if maps.Key(mac) not in small.entries())
    discover = encode(client_message(MessageType.DISCOVER, left_out))
    assert small.run(small.frame(discover, mac=left_out)).retval == XDP_PASS


def test_a_restart_with_more_bound_leases_than_room_starts(small: Fastpath) -> None:
    """The pinned map is full of entries no lease backs, and the engine holds more bound
    leases than the map: reconcile removes the stale entries first and writes as many as
    fit (the batch would fail with E2BIG otherwise)."""
    stale = [maps.Key(bytes.fromhex(f"02b70000ff{i:02x}")) for i in range(SMALL.max_subscribers)]
    for key in stale:
        small.put_entry(key, maps.LeaseEntry())
    for mac in CLIENTS + EXTRA:
        small.bind(mac)  # the map is full: none of these gets an entry
    assert set(small.entries()) == set(stale)
    small.server = Server(small.config, small.server.leases(), small.now)
    small.sync = MapSync(small.program, small.server)
    small.sync.configure(small.config, SERVER_MAC, 0, 0)
    assert small.sync.reconcile(small.now) == (SMALL.max_subscribers, len(stale))
    assert not set(small.entries()) & set(stale)


def test_a_refused_write_is_counted_not_raised(small: Fastpath) -> None:
    """The kernel refuses an install MapSync thought had room (here: an entry put behind
    its back fills the map): counted, and the daemon goes on."""
    for i in range(SMALL.max_subscribers):
        small.put_entry(maps.Key(bytes.fromhex(f"02b70000ff{i:02x}")), maps.LeaseEntry())
    small.bind(CLIENTS[0])
    assert small.sync.failed == 1 and small.sync.entries == 0
    assert maps.Key(CLIENTS[0]) not in small.entries()


# -- template slots (review finding 11) ----------------------------------------------------


@pytest.mark.timeout(60)
def test_a_start_after_a_crash_mid_reconcile_frees_the_template_slots(fastpath: Fastpath) -> None:
    """A daemon killed between writing a new template set and zeroing the old one can
    leave every slot written: the next start frees those no entry points at."""
    templates = fastpath.program.table("templates")
    for slot in range(maps.TEMPLATE_SLOTS):
        templates[ctypes.c_uint32(slot)] = maps.template(b"\x35\x01\x05")
    fastpath.bind(CLIENTS[0])
    fastpath.server = Server(fastpath.config, fastpath.server.leases(), fastpath.now)
    fastpath.sync = MapSync(fastpath.program, fastpath.server)
    fastpath.sync.configure(fastpath.config, SERVER_MAC, 0, 0)
    assert fastpath.sync.reconcile(fastpath.now) == (1, 0)
    entry = fastpath.entry(maps.Key(CLIENTS[0]))
    assert entry is not None
    in_use = {s for s in range(maps.TEMPLATE_SLOTS) if templates[ctypes.c_uint32(s)].len}
    assert in_use == {entry.offer_template, entry.ack_template}


# -- leases their pool no longer hands out (review finding 7) ------------------------------


def test_a_reload_that_excludes_or_renumbers_an_address_removes_its_entry(
    fastpath: Fastpath,
) -> None:
    first, second = fastpath.bind(CLIENTS[0]), fastpath.bind(CLIENTS[1])
    old = fastpath.config
    residential = old.pools[0]
    excluded = replace(residential, exclude=frozenset({first.address}))
    fastpath.config = replace(old, pools=(excluded, *old.pools[1:]))
    fastpath.server = fastpath.server.reconfigured(fastpath.config, fastpath.now)
    fastpath.sync.server = fastpath.server
    fastpath.sync.reconcile(fastpath.now)
    assert set(fastpath.entries()) == {maps.Key(CLIENTS[1])}
    renumbered = replace(
        residential,
        subnet=IPv4Network("198.19.128.0/24"),
        ranges=(AddressRange(parse_ip("198.19.128.10"), parse_ip("198.19.128.19")),),
    )
    fastpath.config = replace(old, pools=(renumbered, *old.pools[1:]))
    fastpath.server = fastpath.server.reconfigured(fastpath.config, fastpath.now)
    fastpath.sync.server = fastpath.server
    fastpath.sync.reconcile(fastpath.now)
    assert fastpath.entries() == {}
    # The kernel passes their renewals up; a write of the old lease does not bring it back.
    fastpath.sync.apply([Decision(lease_writes=[second])], fastpath.now)
    assert fastpath.entries() == {}
