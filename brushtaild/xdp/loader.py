"""Compiles, loads, attaches and adopts the XDP program: the only module that imports BCC.

The C in bpf/ is compiled by BCC at start. Its state maps are pinned under the pin
directory, so a new brushtaild (or a new version of the program) picks them up as they
are; attaching replaces the running program in one netlink call, so there is no moment
without a fast path. A pinned map whose layout no longer matches the C (an upgrade that
changed bpf/shared.h, or a new max_subscribers) is unpinned and rebuilt from the lease
store instead.
"""

import ctypes
import errno
import logging
import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brushtaild.config.model import XdpMode
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


@dataclass(frozen=True, slots=True)
class Limits:
    max_subscribers: int
    ratelimit_entries: int


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
        "ratelimit": libbpf.MapLayout(
            MAP_LRU_HASH,
            ctypes.sizeof(maps.RateKey),
            ctypes.sizeof(maps.Bucket),
            limits.ratelimit_entries,
        ),
        "results": libbpf.MapLayout(MAP_PERCPU_ARRAY, u32, u64, maps.RESULTS),
        "latency": libbpf.MapLayout(MAP_PERCPU_ARRAY, u32, u64, maps.LATENCY_BUCKETS),
        "renewals": libbpf.MapLayout(MAP_RINGBUF, 0, 0, RINGBUF_PAGES * mmap.PAGESIZE),
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


class Program:
    """The compiled program and its maps. Attach it, or run it with BPF_PROG_TEST_RUN."""

    def __init__(self, pin_dir: Path, limits: Limits) -> None:
        from bcc import BPF

        ensure_bpffs()
        pin_dir.mkdir(parents=True, exist_ok=True)
        stale = list(_stale_pins(pin_dir, limits))
        if stale:
            # The running program keeps its own maps until it is replaced: no gap.
            log.warning(
                "fast path map layout changed (%s): rebuilding them from the lease store",
                ", ".join(p.name for p in stale),
            )
            for path in pin_dir.iterdir():
                path.unlink()
        src = source_dir()
        started = time.monotonic()
        try:
            self._bpf = BPF(
                src_file=str(src / "brushtail.c").encode(),
                cflags=[
                    f"-I{src}",
                    f'-DBT_PIN_DIR="{pin_dir}"',
                    f"-DBT_MAX_LEASES={limits.max_subscribers}",
                    f"-DBT_RATELIMIT_ENTRIES={limits.ratelimit_entries}",
                    f"-DBT_EVENT_PAGES={RINGBUF_PAGES}",
                    "-Wno-unused-function",
                ],
            )
            self._fn = self._bpf.load_func(PROGRAM.encode(), BPF.XDP)
        except Exception as exc:  # BCC raises bare Exceptions with the verifier's reason
            raise LoadError(f"cannot load {src / 'brushtail.c'}: {exc}") from exc
        self.load_seconds = time.monotonic() - started
        self.pin_dir = pin_dir
        self.fd: int = self._fn.fd
        self.mode: str | None = None

    def table(self, name: str) -> Any:
        return self._bpf[name.encode()]

    def attach(self, ifname: str, mode: XdpMode) -> str:
        """Attaches in `mode`, replacing whatever program is there; returns the mode used."""
        from bcc import BPF

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
            return name
        raise LoadError(f"cannot attach XDP to {ifname}: {'; '.join(errors)}")

    def ring_buffer(self, callback: Any) -> None:
        self.table("renewals").open_ring_buffer(callback)

    def consume(self) -> None:
        self._bpf.ring_buffer_consume()

    def close(self) -> None:
        """Frees this process's handles; the attached program and its pins stay."""
        self._bpf.cleanup()


def attached_mode(ifname: str) -> str | None:
    """'native', 'generic' or None, as the kernel reports the interface's XDP program."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            links = ipr.link("get", ifname=ifname)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None  # no such interface: nothing attached to it
            raise
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    attached = xdp.get_attr("IFLA_XDP_ATTACHED") if xdp is not None else None
    # XDP_ATTACHED_DRV and _SKB; Debian 12's pyroute2 (0.7) decodes them to iproute2's
    # names, "xdp" and "xdpgeneric", instead of returning the numbers.
    return {1: "native", 2: "generic", "xdp": "native", "xdpgeneric": "generic"}.get(attached or 0)


def detach_leftover(ifname: str, pin_dir: Path) -> bool:
    """With the fast path disabled, removes the program an earlier run left attached (and
    its pins): it would answer from maps nothing keeps up to date any more. An XDP program
    that is not ours (no pins of ours) is left alone. Returns whether one was removed."""
    if not (pin_dir / "leases").exists():
        return False
    detach(ifname if attached_mode(ifname) is not None else None, pin_dir)
    return True


def detach(ifname: str | None, pin_dir: Path | None = None) -> None:
    """Removes the program from the interface and, if given, its pinned maps: the fast
    path is then gone until brushtaild starts again."""
    from bcc import BPF

    mode = attached_mode(ifname) if ifname is not None else None
    if ifname is not None and mode is not None:
        flags = XDP_FLAGS_SKB_MODE if mode == "generic" else XDP_FLAGS_DRV_MODE
        BPF.remove_xdp(ifname.encode(), flags)
    if pin_dir is not None and pin_dir.is_dir():
        for path in pin_dir.iterdir():
            path.unlink()
        try:
            pin_dir.rmdir()
        except OSError as exc:
            # Under the packaged unit the pin directory is a writable bind mount in a
            # read-only bpffs (ReadWritePaths=): it cannot go from inside (EROFS, or EBUSY),
            # and emptied is enough.
            if exc.errno not in (errno.EROFS, errno.EBUSY):
                raise
