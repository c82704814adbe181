"""The pin directory against the kernel: versioned by layout, locked for one brushtaild, and
never emptied before the renewals its rings hold are handed over for recording (a layout
change on upgrade or a new max_subscribers, `brushtail fastpath detach`)."""

import ctypes
import itertools
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from brushtaild import cli
from brushtaild.config.load import load_config
from brushtaild.config.model import Config
from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType
from brushtaild.engine.leases import Lease
from brushtaild.engine.server import Server
from brushtaild.store.lease_store import LeaseStore, read_snapshot
from brushtaild.xdp import loader, maps
from brushtaild.xdp.fastpath import FastPath, Renewal
from brushtaild.xdp.loader import BPFFS, Limits, PinDir, PinDirBusy, Program, RenewalLayout
from tests.bpf.conftest import _require_kernel
from tests.bpf.harness import XDP_TX, Fastpath, RenewalLog, client_message, default_config
from tests.e2e.netns import pid_alive

ROOT_PREFIX = "brushtail-pytest-pins-"
SMALL = Limits(max_subscribers=1024, ratelimit_entries=1024)
LARGER = Limits(max_subscribers=2048, ratelimit_entries=1024)
CLIENT = bytes.fromhex("02b700000901")
_roots = itertools.count()


@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A pin directory of this test's own, removed with everything under it at the end."""
    for stale in BPFFS.glob(f"{ROOT_PREFIX}*"):
        pid = stale.name.removeprefix(ROOT_PREFIX).split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    root = BPFFS / f"{ROOT_PREFIX}{os.getpid()}-{next(_roots)}"
    yield root
    shutil.rmtree(root, ignore_errors=True)


def with_pins(config: Config, root: Path, limits: Limits) -> Config:
    settings = replace(
        config.fastpath,
        pin_dir=root,
        max_subscribers=limits.max_subscribers,
        rate_limit_clients=limits.ratelimit_entries,
    )
    return replace(config, fastpath=settings)


def renewed_in_the_kernel(harness: Fastpath, lease: Lease) -> None:
    """The client's RENEWING request, answered by the program: one renewal left queued in
    its ring. Closes the program, as a stopped brushtaild leaves it."""
    renewing = client_message(MessageType.REQUEST, CLIENT, ciaddr=lease.address)
    frame = harness.frame(encode(renewing), mac=CLIENT, unicast_from=lease.address)
    assert harness.run(frame).retval == XDP_TX
    harness.program.close()


def harness_for(program: Program, config: Config) -> Fastpath:
    renewals = RenewalLog(program)
    return Fastpath(program, renewals, config)


def bound_and_renewed(program: Program, config: Config) -> tuple[Fastpath, Lease]:
    harness = harness_for(program, config)
    lease = harness.bind(CLIENT)
    renewed_in_the_kernel(harness, lease)
    return harness, lease


def assert_renewed(renewals: list[Renewal], lease: Lease) -> None:
    [renewal] = renewals
    assert renewal.key[:6] == CLIENT and renewal.address == lease.address
    # The kernel's expiry: the engine's runs a minute behind (harness.ENGINE_LAG).
    assert renewal.expires > lease.expires + 30


# -- versions --------------------------------------------------------------------------------


_SWAP = {"subnet": "netmask", "netmask": "subnet"}


class SwappedLeaseEntry(ctypes.Structure):
    """struct bt_lease with subnet and netmask swapped: every size is the same."""

    _fields_ = [(_SWAP.get(name, name), ctype) for name, ctype in maps.LeaseEntry._fields_]


def test_a_reordered_field_is_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = loader.layout_version(SMALL)
    assert ctypes.sizeof(SwappedLeaseEntry) == ctypes.sizeof(maps.LeaseEntry)
    monkeypatch.setattr(maps, "LeaseEntry", SwappedLeaseEntry)
    assert loader.layout_version(SMALL) != before


def test_limits_and_numbers_are_part_of_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    version = loader.layout_version(SMALL)
    assert loader.layout_version(SMALL) == version
    assert loader.layout_version(LARGER) != version
    monkeypatch.setattr(maps, "CFG_SLOTS", maps.CFG_SLOTS + 1)
    assert loader.layout_version(SMALL) != version


def test_a_record_of_another_renewal_layout_is_decoded() -> None:
    """What an older program queued is read with the layout it recorded."""
    older = RenewalLayout(size=32, mac=10, outer_vlan=2, inner_vlan=4, address=24, expires_ns=16)
    raw = bytearray(32)
    raw[10:16] = CLIENT
    struct.pack_into("=HH", raw, 2, 100, 7)
    struct.pack_into("=I", raw, 24, maps.net32(0xC6120105))
    struct.pack_into("=Q", raw, 16, 123_456_789)
    assert RenewalLayout.unpack(older.pack()) == older
    event = older.decode(bytes(raw))
    assert bytes(event.key.mac) == CLIENT
    assert (event.key.outer_vlan, event.key.inner_vlan) == (100, 7)
    assert maps.host32(event.address) == 0xC6120105 and event.expires_ns == 123_456_789
    current = RenewalLayout.current()
    assert current.decode(bytes(event)).expires_ns == event.expires_ns
    assert RenewalLayout.unpack(current.pack()) == current


# -- the lock ------------------------------------------------------------------------------


def test_a_second_holder_of_the_pin_dir_is_refused_with_the_first_named(pin_root: Path) -> None:
    _require_kernel()
    first = PinDir(pin_root, SMALL)
    first.lock()
    try:
        with pytest.raises(PinDirBusy, match=rf"in use by pid {os.getpid()} \("):
            PinDir(pin_root, LARGER).lock()
        # A daemon fails there, before compiling anything.
        config = with_pins(default_config(), pin_root, SMALL)
        with pytest.raises(PinDirBusy):
            FastPath(config, Server(config, [], 0.0))
        assert not list(pin_root.iterdir())
    finally:
        first.close()
    again = PinDir(pin_root, SMALL)
    again.lock()
    again.close()


# -- draining before removing ---------------------------------------------------------------


def test_a_new_layout_records_the_old_rings_renewals_before_its_pins_go(pin_root: Path) -> None:
    """Finding 3b: a new max_subscribers (or an upgrade that changed bpf/shared.h) used to
    unlink every pin, the ring with the renewals queued while no daemon ran included."""
    _require_kernel()
    config = with_pins(default_config(), pin_root, SMALL)
    old = PinDir(pin_root, SMALL).current
    harness, lease = bound_and_renewed(Program(old.path, SMALL), config)

    bigger = with_pins(config, pin_root, LARGER)
    fastpath = FastPath(bigger, Server(bigger, harness.server.leases(), harness.now))
    try:
        assert fastpath.pins.current != old
        assert_renewed(fastpath.renewals(), lease)
        assert old.pins(), "removed before the daemon committed its renewals"
        # Once attached in its place (no interface here: as if), the old ring is drained
        # once more, and its pins go at the call after that, once that was committed.
        fastpath.mode = "generic"
        assert fastpath.renewals() == []
        assert old.pins()
        assert fastpath.renewals() == []
        assert not old.path.exists()
        assert (fastpath.pins.current.path / "renewals").exists()
    finally:
        fastpath.close()


def test_unversioned_pins_of_an_older_brushtaild_are_drained(pin_root: Path) -> None:
    """Pins straight in the pin directory, from before versions, with no renewal layout
    recorded: their records are read as that brushtaild laid them out."""
    _require_kernel()
    config = with_pins(default_config(), pin_root, SMALL)
    program = Program(pin_root, SMALL)
    program.table("config")[ctypes.c_uint32(maps.CFG_RENEWAL_LAYOUT)] = ctypes.c_uint64(0)
    harness, lease = bound_and_renewed(program, config)
    fastpath = FastPath(config, Server(config, harness.server.leases(), harness.now))
    try:
        assert_renewed(fastpath.renewals(), lease)
        fastpath.mode = "generic"
        fastpath.renewals()
        fastpath.renewals()
        assert [p.name for p in pin_root.iterdir()] == [fastpath.pins.current.path.name]
    finally:
        fastpath.close()


CONFIG = """\
site: edge-test
interface: bt-pins-none0
server_id: 198.18.0.1
state_dir: {state_dir}
pools:
  - name: residential
    subnet: 198.18.0.0/16
    ranges: ["198.18.1.0-198.18.1.9"]
    routers: [198.18.0.1]
    dns_servers: [198.18.0.1]
fastpath:
  enabled: true
  pin_dir: {pin_dir}
  max_subscribers: {max_subscribers}
  rate_limit_clients: {clients}
"""


def test_detach_records_the_renewals_then_unpins(
    pin_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 3c: `brushtail fastpath detach` (and the package's prerm, which runs it)
    records in the lease store what the program answered while brushtaild was stopped."""
    _require_kernel()
    path = tmp_path / "brushtail.yaml"
    path.write_text(
        CONFIG.format(
            state_dir=tmp_path / "state",
            pin_dir=pin_root,
            max_subscribers=SMALL.max_subscribers,
            clients=SMALL.ratelimit_entries,
        )
    )
    config = load_config(path)
    version = PinDir(pin_root, SMALL).current
    program = Program(version.path, SMALL)
    harness = harness_for(program, config)
    lease = harness.bind(CLIENT)
    with LeaseStore.open(config.state_dir) as store:
        store.apply([lease], [])
    renewed_in_the_kernel(harness, lease)
    argv = ["fastpath", "detach", "--config", str(path)]

    # While a brushtaild holds the pin directory: refused, nothing drained or removed.
    holder = PinDir(pin_root, SMALL)
    holder.lock()
    try:
        assert cli.main(argv) == cli.EXIT_INVALID
    finally:
        holder.close()
    assert "pinned maps left in place: pin directory" in capsys.readouterr().err
    assert (version.path / "renewals").exists()

    assert cli.main(argv) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "1 renewals it answered recorded" in out, out
    [stored] = read_snapshot(config.state_dir)
    assert stored.address == lease.address and stored.expires > lease.expires + 30
    assert not pin_root.exists()
