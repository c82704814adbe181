"""The few libbpf calls BCC's Python binding lacks, through ctypes on Debian's libbpf1:
opening pinned objects, reading a map's layout and entries (and an array's slots),
draining a pinned ring buffer
no loaded program of ours owns, which maps a program uses, and BPF_PROG_TEST_RUN."""

import ctypes
import ctypes.util
import mmap
import os
import struct
from dataclasses import dataclass
from functools import cache

_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")

# BPF_F_TEST_XDP_LIVE_FRAMES (linux/bpf.h, 5.18): frames the program returns XDP_TX for
# are really sent, which makes BPF_PROG_TEST_RUN a traffic generator.
TEST_XDP_LIVE_FRAMES = 2


class XdpMd(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    )


class _TestRunOpts(ctypes.Structure):
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class _MapInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("rest", ctypes.c_uint8 * 128),  # fields added by later kernels
    )


class _ProgInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("rest", ctypes.c_uint8 * 256),  # fields added by later kernels
    )


@dataclass(frozen=True, slots=True)
class MapLayout:
    type: int
    key_size: int
    value_size: int
    max_entries: int


@dataclass(frozen=True, slots=True)
class TestRun:
    retval: int
    data: bytes
    duration_ns: int


class LibbpfError(OSError):
    pass


@cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.bpf_obj_get.argtypes = (ctypes.c_char_p,)
    lib.bpf_obj_get_info_by_fd.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint32),
    )
    lib.bpf_prog_test_run_opts.argtypes = (ctypes.c_int, ctypes.POINTER(_TestRunOpts))
    lib.bpf_map_lookup_elem.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    lib.bpf_map_update_elem.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint64,
    )
    lib.bpf_map_get_next_key.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    lib.libbpf_num_possible_cpus.argtypes = ()
    lib.bpf_prog_get_fd_by_id.argtypes = (ctypes.c_uint32,)
    lib.bpf_map_get_fd_by_id.argtypes = (ctypes.c_uint32,)
    return lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno() or -ret
        raise LibbpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def obj_get(path: str) -> int:
    """A new fd for the object pinned at `path`; the caller closes it."""
    return _check(_lib().bpf_obj_get(path.encode()), f"bpf_obj_get({path})")


def _map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(
        _lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
        "bpf_obj_get_info_by_fd",
    )
    return info


def map_layout(fd: int) -> MapLayout:
    info = _map_info(fd)
    return MapLayout(info.type, info.key_size, info.value_size, info.max_entries)


def map_id(fd: int) -> int:
    """The kernel's id of a map: the same for every fd and pin of it."""
    return int(_map_info(fd).id)


def lookup_u64(fd: int, index: int) -> int | None:
    """Slot `index` of an array of u64, or None if the array has no such slot."""
    key = ctypes.c_uint32(index)
    value = ctypes.c_uint64()
    if _lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) != 0:
        return None
    return value.value


def update_u64(fd: int, index: int, value: int) -> None:
    """Sets slot `index` of an array of u64."""
    key = ctypes.c_uint32(index)
    leaf = ctypes.c_uint64(value)
    _check(
        _lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(leaf), 0),
        "bpf_map_update_elem",
    )


def _prog_info(fd: int) -> tuple[_ProgInfo, list[int]]:
    """A program's info and the ids of the maps it uses."""
    ids = (ctypes.c_uint32 * 64)()
    info = _ProgInfo(nr_map_ids=len(ids), map_ids=ctypes.addressof(ids))
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(
        _lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
        "bpf_obj_get_info_by_fd",
    )
    return info, list(ids[: min(info.nr_map_ids, len(ids))])


def prog_id(fd: int) -> int:
    """The kernel's id of a loaded program, as the interface's XDP attachment names it."""
    return int(_prog_info(fd)[0].id)


def prog_map_ids(prog_id: int) -> list[int]:
    """The ids of the maps the program `prog_id` uses."""
    fd = _check(_lib().bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")
    try:
        return _prog_info(fd)[1]
    finally:
        os.close(fd)


def map_memory(map_id: int) -> tuple[str, int]:
    """A map's name and the bytes of kernel memory it takes: the `memlock` of its fdinfo,
    which the kernel computes per map type (per-CPU copies, hash buckets and LRU lists
    included), the figure `bpftool map show` prints."""
    fd = _check(_lib().bpf_map_get_fd_by_id(map_id), f"bpf_map_get_fd_by_id({map_id})")
    try:
        name = _map_info(fd).name.decode(errors="replace")
        with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
            for line in fdinfo:
                key, _, value = line.partition(":")
                if key == "memlock":
                    return name, int(value)
    finally:
        os.close(fd)
    raise LibbpfError(0, f"map {map_id} ({name}): no memlock in its fdinfo")


class RingReader:
    """A BPF ring buffer read in place, through its mmap, the way libbpf reads it: records
    are handed out by `peek` and given back to the kernel only by `release`.

    libbpf's ring_buffer__consume (which BCC uses) moves the consumer position past each
    record as soon as its callback returns: a daemon killed between reading renewals and
    committing them would lose them, from the ring and from the store. Here the position
    moves only once the caller has made them durable; a daemon killed before that leaves
    them for the next one, which records them again (recording twice changes nothing).
    The ordering reasoning is x86's (loads are not reordered with loads, stores not with
    stores), as the appliance is: the producer position is read before the records.
    """

    _BUSY = 1 << 31  # linux/bpf.h BPF_RINGBUF_BUSY_BIT: reserved, not yet submitted
    _DISCARD = 1 << 30  # BPF_RINGBUF_DISCARD_BIT
    _HEADER = 8  # u32 length with the two bits, u32 page offset

    def __init__(self, fd: int) -> None:
        size = map_layout(fd).max_entries
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._page = page
        # The consumer position's page is the only one user space may write.
        self._consumer = mmap.mmap(
            fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        try:
            # The producer's page, then the data mapped twice over, so that a record that
            # wraps around the end reads as one run of bytes.
            self._data = mmap.mmap(
                fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._consumer.close()
            raise
        (self._read,) = _U64.unpack_from(self._consumer, 0)

    def peek(self) -> list[bytes]:
        """Records submitted since the previous peek (or since the last release, for the
        first), in order; none is released."""
        (producer,) = _U64.unpack_from(self._data, 0)
        records = []
        position = self._read
        while position < producer:
            at = self._page + (position & self._mask)
            (header,) = _U32.unpack_from(self._data, at)
            if header & self._BUSY:
                break  # reserved by the program and not submitted yet: later
            length = header & ~(self._BUSY | self._DISCARD)
            if not header & self._DISCARD:
                start = at + self._HEADER
                records.append(self._data[start : start + length])
            position += (length + self._HEADER + 7) & ~7
        self._read = position
        return records

    def release(self) -> None:
        """Gives every record peeked so far back to the kernel."""
        _U64.pack_into(self._consumer, 0, self._read)

    def close(self) -> None:
        self._data.close()
        self._consumer.close()


def count_keys(fd: int, key_size: int) -> int:
    """Entries in a hash map, walked with BPF_MAP_GET_NEXT_KEY."""
    lib = _lib()
    key = ctypes.create_string_buffer(key_size)
    count = 0
    previous = None
    while lib.bpf_map_get_next_key(fd, previous, key) == 0:
        count += 1
        previous = ctypes.create_string_buffer(key.raw, key_size)
    return count


def percpu_u64_sums(fd: int, entries: int) -> list[int]:
    """Each slot of a per-CPU array of u64, summed over the CPUs."""
    lib = _lib()
    cpus = _check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")
    values = (ctypes.c_uint64 * cpus)()
    sums = []
    for index in range(entries):
        key = ctypes.c_uint32(index)
        _check(lib.bpf_map_lookup_elem(fd, ctypes.byref(key), values), "bpf_map_lookup_elem")
        sums.append(sum(values))
    return sums


def prog_test_run(
    prog_fd: int,
    data: bytes,
    *,
    ctx: XdpMd | None = None,
    repeat: int = 1,
    flags: int = 0,
    batch_size: int = 0,
    out_size: int = 4096,
) -> TestRun:
    """Runs an XDP program on `data` in the kernel (BPF_PROG_TEST_RUN)."""
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(out_size)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    if not flags & TEST_XDP_LIVE_FRAMES:
        opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
        opts.data_size_out = out_size
    if ctx is not None:
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    opts.repeat = repeat
    opts.flags = flags
    opts.batch_size = batch_size
    _check(_lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(opts.retval, data_out.raw[: opts.data_size_out], opts.duration)
