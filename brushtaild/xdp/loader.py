"""Compiles, loads, attaches and adopts the XDP program: the only module that imports BCC.

The C in bpf/ is compiled by BCC at start. Its state maps are pinned under a subdirectory
of the pin directory named for their layout (`layout_version`), so a new brushtaild (or a
new version of the program) with the same layout picks them up as they are; attaching
replaces the running program in one netlink call, so there is no moment without a fast
path. Pins of another layout (an upgrade that changed bpf/shared.h, a new max_subscribers)
are left where they are: the caller drains their renewals ring, records what it held, and
only then removes them (see fastpath.py). One brushtaild at a time holds the pin directory.
"""

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from brushtaild.config.model import FastPath, XdpMode
from brushtaild.daemon import clock
from brushtaild.xdp import libbpf, maps

log = logging.getLogger("brushtaild.xdp")

# Installed by the .deb; a source checkout uses its own bpf/.
SOURCE_DIRS = (Path(__file__).resolve().parents[2] / "bpf", Path("/usr/share/brushtail/bpf"))
PROGRAM = "xdp_brushtail"
# linux/if_link.h
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
BPFFS = Path("/sys/fs/bpf")
RINGBUF_PAGES = 1024
TRACE_PAGES = 64
# linux/sockios.h and linux/ethtool.h: the legacy flags call, which every kernel maps onto
# the NETIF_F_HW_VLAN_CTAG_RX feature.
SIOCETHTOOL = 0x8946
ETHTOOL_GFLAGS, ETHTOOL_SFLAGS = 0x25, 0x26
ETH_FLAG_RXVLAN = 1 << 8


@dataclass(frozen=True, slots=True)
class Limits:
    max_subscribers: int
    ratelimit_entries: int

    @classmethod
    def of(cls, settings: FastPath) -> "Limits":
        """The map sizes the `fastpath:` settings ask for."""
        return cls(settings.max_subscribers, settings.rate_limit_clients)


# linux/bpf.h enum bpf_map_type
MAP_HASH, MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_LRU_HASH, MAP_RINGBUF = 1, 2, 6, 9, 27


# Map name -> the layout bpf/maps.h declares.
def _expected(limits: Limits) -> dict[str, libbpf.MapLayout]:
    u32, u64 = 4, 8
    key = ctypes.sizeof(maps.ClientKey)
    return {
        "leases": libbpf.MapLayout(
            MAP_HASH, key, ctypes.sizeof(maps.LeaseEntry), limits.max_subscribers
        ),
        "templates": libbpf.MapLayout(
            MAP_ARRAY, u32, ctypes.sizeof(maps.Template), maps.TEMPLATE_SLOTS
        ),
        "config": libbpf.MapLayout(MAP_ARRAY, u32, u64, maps.CFG_SLOTS),
        "relays": libbpf.MapLayout(
            MAP_HASH, ctypes.sizeof(maps.RelayKey), ctypes.sizeof(maps.Relay), maps.MAX_RELAYS
        ),
        "ratelimit": libbpf.MapLayout(
            MAP_LRU_HASH,
            ctypes.sizeof(maps.RateKey),
            ctypes.sizeof(maps.Bucket),
            limits.ratelimit_entries,
        ),
        "results": libbpf.MapLayout(MAP_PERCPU_ARRAY, u32, u64, maps.RESULTS),
        "latency": libbpf.MapLayout(MAP_PERCPU_ARRAY, u32, u64, maps.LATENCY_BUCKETS),
        "renewals": libbpf.MapLayout(MAP_RINGBUF, 0, 0, RINGBUF_PAGES * mmap.PAGESIZE),
        "trace": libbpf.MapLayout(MAP_RINGBUF, 0, 0, TRACE_PAGES * mmap.PAGESIZE),
        "trace_lost": libbpf.MapLayout(MAP_PERCPU_ARRAY, u32, u64, maps.TRACE_LOST_SLOTS),
    }


class LoadError(Exception):
    """The fast path could not be compiled, loaded or attached."""


def source_dir() -> Path:
    for candidate in SOURCE_DIRS:
        if (candidate / "brushtail.c").exists():
            return candidate
    raise LoadError(f"bpf/brushtail.c not found in {', '.join(map(str, SOURCE_DIRS))}")


def ensure_bpffs() -> None:
    """Pinning needs bpffs at /sys/fs/bpf; systemd mounts it, a bare container may not."""
    if os.path.ismount(BPFFS):
        return
    BPFFS.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", bytes(BPFFS), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise LoadError(f"cannot mount bpffs at {BPFFS}: {os.strerror(err)}")
    # In a private mount namespace (`ip netns exec`, a container) this bpffs, and the pins
    # in it, vanish with the namespace: the next brushtaild cannot adopt them.
    log.warning(
        "bpffs was not mounted at %s: mounted it; if this is a private mount namespace, "
        "the pinned maps do not outlive it and a restart cannot adopt the running program",
        BPFFS,
    )


def _stale_pins(pin_dir: Path, limits: Limits) -> Iterator[Path]:
    for name, expected in _expected(limits).items():
        path = pin_dir / name
        if not path.exists():
            continue
        fd = libbpf.obj_get(str(path))
        try:
            got = libbpf.map_layout(fd)
        finally:
            os.close(fd)
        if got != expected:
            yield path


def _fields(struct_type: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [
        (name, getattr(struct_type, name).offset, getattr(struct_type, name).size)
        for name, *_ in struct_type._fields_
    ]


def layout_version(limits: Limits) -> str:
    """The name of the pin subdirectory for this program's maps: a hash of everything the
    maps' contents depend on (every struct's size and field offsets as bpf/shared.h lays
    them out, the numbers it defines, each map's type and size), so a reordered field is
    a new version as much as a resized one."""
    structs = (
        maps.ClientKey,
        maps.LeaseEntry,
        maps.Template,
        maps.Renewal,
        maps.Bucket,
        maps.RelayKey,
        maps.Relay,
        maps.TraceEvent,
    )
    described = [(s.__name__, ctypes.sizeof(s), _fields(s)) for s in structs]
    numbers = sorted(
        (name, value)
        for name, value in vars(maps).items()
        if name.isupper() and isinstance(value, int)
    )
    pinned = sorted((name, astuple(layout)) for name, layout in _expected(limits).items())
    digest = hashlib.sha256(repr((described, numbers, pinned)).encode()).hexdigest()
    return f"v-{digest[:16]}"


@dataclass(frozen=True, slots=True)
class RenewalLayout:
    """Where a renewals ring record keeps each field: recorded in the pinned config
    (CFG_RENEWAL_LAYOUT) by the program's loader, so a later version can read the records
    an older program queued even if struct bt_renewal changed between them."""

    size: int
    mac: int
    outer_vlan: int
    inner_vlan: int
    address: int
    expires_ns: int

    @classmethod
    def current(cls) -> "RenewalLayout":
        key = maps.Renewal.key.offset
        return cls(
            ctypes.sizeof(maps.Renewal),
            key + maps.ClientKey.mac.offset,
            key + maps.ClientKey.outer_vlan.offset,
            key + maps.ClientKey.inner_vlan.offset,
            maps.Renewal.address.offset,
            maps.Renewal.expires_ns.offset,
        )

    def pack(self) -> int:
        return int.from_bytes(bytes(astuple(self)), "little")

    @classmethod
    def unpack(cls, value: int) -> "RenewalLayout":
        return cls(*value.to_bytes(8, "little")[:6])

    def decode(self, raw: bytes) -> maps.Renewal:
        """A record in this layout, as the current struct."""
        if len(raw) < self.size:
            raise ValueError(f"a {len(raw)}-byte renewal record, {self.size} expected")
        renewal = maps.Renewal()
        renewal.key.mac[:] = raw[self.mac : self.mac + 6]
        (renewal.key.outer_vlan,) = struct.unpack_from("=H", raw, self.outer_vlan)
        (renewal.key.inner_vlan,) = struct.unpack_from("=H", raw, self.inner_vlan)
        (renewal.address,) = struct.unpack_from("=I", raw, self.address)
        (renewal.expires_ns,) = struct.unpack_from("=Q", raw, self.expires_ns)
        return renewal


# struct bt_renewal as it was before the layout was recorded (pins directly in the pin
# directory): what a brushtaild of that time queued.
UNRECORDED_RENEWAL_LAYOUT = RenewalLayout(24, 0, 6, 8, 12, 16)


class PinDirBusy(LoadError):
    """Another process holds the pin directory."""


class Ring:
    """An open renewals ring of an older version: readable until closed, even once its pin
    is gone. Nothing is released: its pins go once what it held is recorded."""

    def __init__(self, fd: int, layout: RenewalLayout) -> None:
        self.layout = layout
        try:
            self._reader = libbpf.RingReader(fd)
        finally:
            os.close(fd)  # the mappings keep the ring

    def drain(self) -> list[maps.Renewal]:
        """Renewals queued since the previous drain."""
        return [self.layout.decode(raw) for raw in self._reader.peek()]

    def close(self) -> None:
        self._reader.close()


@dataclass(frozen=True, slots=True)
class Version:
    """The pins of one map layout: a subdirectory of the pin directory, or the pin directory
    itself for pins from before layouts were versioned."""

    path: Path

    def pins(self) -> list[Path]:
        return [p for p in self.path.iterdir() if not p.is_dir()] if self.path.is_dir() else []

    def config(self, slot: int) -> int | None:
        """Slot `slot` of its pinned config, if it has one."""
        if not (self.path / "config").exists():
            return None
        fd = libbpf.obj_get(str(self.path / "config"))
        try:
            return libbpf.lookup_u64(fd, slot)
        finally:
            os.close(fd)

    def ifindex(self) -> int | None:
        """The interface this version's program was last attached to, if recorded."""
        return self.config(maps.CFG_IFINDEX) or None

    def queues(self) -> bool:
        """Whether it has a renewals ring, which may hold renewals nobody recorded."""
        return (self.path / "renewals").exists()

    def ring(self) -> Ring | None:
        if not self.queues():
            return None
        recorded = self.config(maps.CFG_RENEWAL_LAYOUT)
        layout = RenewalLayout.unpack(recorded) if recorded else UNRECORDED_RENEWAL_LAYOUT
        return Ring(libbpf.obj_get(str(self.path / "renewals")), layout)

    def config_map_id(self) -> int | None:
        """The id of its `config` map, which every program of ours uses: how a program on
        some interface is recognised as this version's."""
        if not (self.path / "config").exists():
            return None
        fd = libbpf.obj_get(str(self.path / "config"))
        try:
            return libbpf.map_id(fd)
        finally:
            os.close(fd)

    def remove(self) -> None:
        for pin in self.pins():
            pin.unlink()


class PinDir:
    """The pin directory of one brushtaild: `current` holds this program's maps, other
    versions are what earlier programs left."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self.root = root
        self.current = Version(root / layout_version(limits))
        self._lock_fd: int | None = None

    @classmethod
    def of(cls, settings: FastPath) -> "PinDir":
        """The pin directory the `fastpath:` settings name, for maps of their sizes."""
        return cls(settings.pin_dir, Limits.of(settings))

    def lock(self) -> None:
        """Takes the pin directory for this process (until it exits or calls close()): a
        second brushtaild with the same pin directory would delete this one's entries as
        stale and overwrite its config slots."""
        ensure_bpffs()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fd = lock_dir(self.root)
        except Held as exc:
            raise PinDirBusy(
                f"pin directory {self.root} is in use by {exc.holder}: one pin directory per "
                "brushtaild (give each its own fastpath.pin_dir), and `brushtail fastpath "
                "detach` only once brushtaild is stopped"
            ) from None

    def versions(self) -> list[Version]:
        """Every version with pins, the unversioned pins of an old brushtaild included."""
        if not self.root.is_dir():
            return []
        found = [Version(p) for p in sorted(self.root.iterdir()) if p.is_dir()]
        return [v for v in [Version(self.root), *found] if v.pins()]

    def others(self) -> list[Version]:
        return [v for v in self.versions() if v != self.current]

    def remove(self, version: Version) -> None:
        version.remove()
        if version.path != self.root:
            version.path.rmdir()

    def remove_all(self) -> None:
        for version in self.versions():
            self.remove(version)
        for empty in self.root.iterdir() if self.root.is_dir() else []:
            empty.rmdir()  # a version directory whose pins went earlier
        try:
            self.root.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Under the packaged unit the pin directory is a writable bind mount in a
            # read-only bpffs (ReadWritePaths=): it cannot go from inside (EROFS, or EBUSY),
            # and emptied is enough.
            if exc.errno not in (errno.EROFS, errno.EBUSY):
                raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class Held(Exception):
    """Another process holds a directory's lock; `holder` says which."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lock_dir(path: Path) -> int:
    """An fd of the directory `path` holding its exclusive flock, until closed; raises Held
    if another process has it. flock on a directory: bpffs holds no lock files, and the
    kernel drops the lock however the holder dies."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(fd)
        os.close(fd)
        raise Held(holder) from None
    return fd


def _flock_holder(fd: int) -> str:
    """Who holds the flock on `fd`'s file, from /proc/locks, for the error message."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "->" not in fields and "FLOCK" in fields and inode in fields:
                pid = fields[fields.index(inode) - 1]
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    return f"pid {pid}"
                command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {pid} ({command})"
    return "another process"


class Program:
    """The compiled program and its maps. Attach it, or run it with BPF_PROG_TEST_RUN."""

    def __init__(self, pin_dir: Path, limits: Limits) -> None:
        """Pins its maps in `pin_dir` (a PinDir's current version), adopting those there.
        Pins of another layout are refused, never removed here: their ring may hold
        renewals nobody recorded yet."""
        from bcc import BPF

        ensure_bpffs()
        pin_dir.mkdir(parents=True, exist_ok=True)
        stale = list(_stale_pins(pin_dir, limits))
        if stale:
            raise LoadError(
                f"pinned maps in {pin_dir} ({', '.join(p.name for p in stale)}) do not have "
                "this program's layout"
            )
        src = source_dir()
        started = clock.ticks()
        try:
            self._bpf = BPF(
                src_file=str(src / "brushtail.c").encode(),
                cflags=[
                    f"-I{src}",
                    f'-DBT_PIN_DIR="{pin_dir}"',
                    f"-DBT_MAX_LEASES={limits.max_subscribers}",
                    f"-DBT_RATELIMIT_ENTRIES={limits.ratelimit_entries}",
                    f"-DBT_EVENT_PAGES={RINGBUF_PAGES}",
                    f"-DBT_TRACE_PAGES={TRACE_PAGES}",
                    "-Wno-unused-function",
                ],
            )
            self._fn = self._bpf.load_func(PROGRAM.encode(), BPF.XDP)
        except Exception as exc:  # BCC raises bare Exceptions with the verifier's reason
            raise LoadError(f"cannot load {src / 'brushtail.c'}: {exc}") from exc
        self.load_seconds = clock.ticks() - started
        self.pin_dir = pin_dir
        self.fd: int = self._fn.fd
        self.id = libbpf.prog_id(self.fd)
        self.mode: str | None = None
        self._ring: libbpf.RingReader | None = None
        self._put_config(maps.CFG_RENEWAL_LAYOUT, RenewalLayout.current().pack())

    def table(self, name: str) -> Any:
        return self._bpf[name.encode()]

    def _put_config(self, slot: int, value: int) -> None:
        self.table("config")[ctypes.c_uint32(slot)] = ctypes.c_uint64(value)

    def attach(self, ifname: str, mode: XdpMode) -> str:
        """Attaches in `mode`, replacing whatever program is there; returns the mode used.
        The interface is recorded in the pinned config, so a brushtaild configured for
        another interface later finds this program and takes it off."""
        from bcc import BPF

        rx_vlan_offload_off(ifname)

        attempts = {
            XdpMode.NATIVE: [("native", XDP_FLAGS_DRV_MODE)],
            XdpMode.GENERIC: [("generic", XDP_FLAGS_SKB_MODE)],
            XdpMode.AUTO: [("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE)],
        }[mode]
        current = attached_mode(ifname)
        if mode is XdpMode.AUTO and current == "generic":
            # Native and generic cannot coexist: replace the running program where it is.
            attempts = [("generic", XDP_FLAGS_SKB_MODE)]
        errors = []
        for name, flags in attempts:
            try:
                BPF.attach_xdp(ifname.encode(), self._fn, flags)
            except Exception as exc:
                errors.append(f"{name}: {exc}")
                continue
            self.mode = name
            self._put_config(maps.CFG_IFINDEX, socket.if_nametoindex(ifname))
            return name
        raise LoadError(f"cannot attach XDP to {ifname}: {'; '.join(errors)}")

    def mode_on(self, ifname: str) -> str | None:
        """The mode this program is attached in on `ifname` as the kernel reports it now,
        or None if it is not there (never attached, taken off, replaced by another)."""
        program = _attached(ifname)
        return program[1] if program is not None and program[0] == self.id else None

    def map_memory(self) -> dict[str, int]:
        """Kernel memory of each map the program uses, by map name."""
        return dict(libbpf.map_memory(i) for i in libbpf.prog_map_ids(self.id))

    def renewals(self) -> libbpf.RingReader:
        """This program's renewals ring, read in place (see libbpf.RingReader)."""
        if self._ring is None:
            self._ring = libbpf.RingReader(self.table("renewals").map_fd)
        return self._ring

    def close(self) -> None:
        """Frees this process's handles; the attached program and its pins stay."""
        if self._ring is not None:
            self._ring.close()
        self._bpf.cleanup()


def _xdp_program(ifindex: int) -> tuple[int, str] | None:
    """(program id, 'native' or 'generic') of the XDP program on an interface, if any."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            links = ipr.link("get", index=ifindex)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None  # no such interface: nothing attached to it
            raise
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    if xdp is None:
        return None
    attached = xdp.get_attr("IFLA_XDP_ATTACHED")
    # XDP_ATTACHED_DRV and _SKB; Debian 12's pyroute2 (0.7) decodes them to iproute2's
    # names, "xdp" and "xdpgeneric", instead of returning the numbers.
    mode = {1: "native", 2: "generic", "xdp": "native", "xdpgeneric": "generic"}.get(attached or 0)
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID")
    return (int(prog_id or 0), mode) if mode is not None else None


def _attached(ifname: str) -> tuple[int, str] | None:
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError:
        return None  # no such interface: nothing attached to it
    return _xdp_program(ifindex)


def attached_mode(ifname: str) -> str | None:
    """'native', 'generic' or None, as the kernel reports the interface's XDP program."""
    program = _attached(ifname)
    return program[1] if program is not None else None


def remove_program(ifindex: int, ours: set[int]) -> str | None:
    """Takes the XDP program off the interface `ifindex` if it is ours: it uses one of the
    maps `ours` names (another brushtaild's, or anyone else's, stays). Returns the
    interface's name if a program was removed."""
    from bcc import BPF

    program = _xdp_program(ifindex) if ours else None
    if program is None or not ours & set(libbpf.prog_map_ids(program[0])):
        return None
    ifname = socket.if_indextoname(ifindex)
    BPF.remove_xdp(
        ifname.encode(), XDP_FLAGS_SKB_MODE if program[1] == "generic" else XDP_FLAGS_DRV_MODE
    )
    return ifname


def remove_programs(pins: PinDir, ifnames: list[str]) -> list[str]:
    """Takes every program of ours off `ifnames` and off the interfaces each version
    recorded: afterwards nothing writes to the pinned rings. Returns the interfaces."""
    ifindexes = {i for v in pins.versions() if (i := v.ifindex())}
    for ifname in ifnames:
        with contextlib.suppress(OSError):  # gone: nothing attached to it
            ifindexes.add(socket.if_nametoindex(ifname))
    ours = {i for v in pins.versions() if (i := v.config_map_id())}
    removed = [remove_program(i, ours) for i in sorted(ifindexes)]
    return [ifname for ifname in removed if ifname is not None]


def ethtool_flags(sock: socket.socket, ifname: str, cmd: int, data: int = 0) -> int:
    """ETHTOOL_GFLAGS (returns the flags) or ETHTOOL_SFLAGS (sets them to `data`)."""
    value = ctypes.create_string_buffer(struct.pack("=II", cmd, data), 8)
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack("=II", value.raw)[1])


def rx_vlan_offload_off(ifname: str) -> None:
    """Turns hardware VLAN tag stripping off on `ifname`: with it on, the program (native
    or generic) sees a tagged client's frames untagged and would answer it with the lease
    of the untagged subscriber with the same MAC. Where it cannot be turned off, the fast
    path is refused (LoadError)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            flags = ethtool_flags(sock, ifname, ETHTOOL_GFLAGS)
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                return  # no offload flags at all
            raise LoadError(f"cannot read the offload flags of {ifname}: {exc.strerror}") from exc
        if not flags & ETH_FLAG_RXVLAN:
            return
        try:
            ethtool_flags(sock, ifname, ETHTOOL_SFLAGS, flags & ~ETH_FLAG_RXVLAN)
            flags = ethtool_flags(sock, ifname, ETHTOOL_GFLAGS)
        except OSError as exc:
            flags |= ETH_FLAG_RXVLAN
            reason = exc.strerror
        else:
            reason = "the driver keeps it on"
    if flags & ETH_FLAG_RXVLAN:
        raise LoadError(
            f"rx VLAN offload (rxvlan) is on on {ifname} and cannot be turned off ({reason}): "
            "the program would see VLAN clients as untagged ones"
        )
    log.warning(
        "turned rx VLAN offload (rxvlan) off on %s: with it on, the fast path would see "
        "tagged clients' frames untagged",
        ifname,
    )
