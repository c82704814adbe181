"""brushtaild/xdp/maps.py mirrors bpf/shared.h: the ctypes layouts against the ones BCC
derives from the C it compiled, the numbers against the C source, and prl_hash against the
kernel's."""

import ctypes
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from brushtaild.dhcp.codec import encode
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.xdp import libbpf, loader, maps
from brushtaild.xdp.loader import Program, source_dir
from tests.bpf.conftest import LIMITS
from tests.bpf.harness import XDP_PASS, XDP_TX, Fastpath, client_message

SHARED_H = source_dir() / "shared.h"
PARSING_H = source_dir() / "parsing.h"


def ctype_layout(struct: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [
        (name, getattr(struct, name).offset, getattr(struct, name).size)
        for name, *_ in struct._fields_
    ]


def assert_same_layout(python: type[ctypes.Structure], bcc: type[ctypes.Structure]) -> None:
    assert ctypes.sizeof(python) == ctypes.sizeof(bcc)
    assert ctype_layout(python) == ctype_layout(bcc)


MAP_STRUCTS = {
    "leases key": ("leases", "Key", maps.ClientKey),
    "leases value": ("leases", "Leaf", maps.LeaseEntry),
    "templates value": ("templates", "Leaf", maps.Template),
    "relays key": ("relays", "Key", maps.RelayKey),
    "relays value": ("relays", "Leaf", maps.Relay),
    "ratelimit key": ("ratelimit", "Key", maps.RateKey),
    "ratelimit value": ("ratelimit", "Leaf", maps.Bucket),
}


@pytest.mark.parametrize(("table", "side", "mirror"), MAP_STRUCTS.values(), ids=MAP_STRUCTS.keys())
def test_map_struct_matches_the_c(
    program: Program, table: str, side: str, mirror: type[ctypes.Structure]
) -> None:
    assert_same_layout(mirror, getattr(program.table(table), side))


# Ring buffer records: C struct -> mirror.
RECORDS = {"bt_renewal": maps.Renewal, "bt_trace": maps.TraceEvent}


@pytest.fixture(scope="module")
def record_ctypes() -> Iterator[dict[str, type[ctypes.Structure]]]:
    """Ring buffer records are never a map key or value BCC describes (a ring holds raw
    records), so a probe declares an array of each, which BCC then describes."""
    from bcc import BPF

    text = '#include "shared.h"\n' + "".join(
        f"BPF_ARRAY({name}_layout, struct {name}, 1);\n" for name in RECORDS
    )
    probe = BPF(text=text.encode(), cflags=[f"-I{source_dir()}"])
    try:
        yield {name: probe[f"{name}_layout".encode()].Leaf for name in RECORDS}
    finally:
        probe.cleanup()


@pytest.mark.parametrize("name", RECORDS)
def test_ring_record_matches_the_c(
    record_ctypes: dict[str, type[ctypes.Structure]], name: str
) -> None:
    assert_same_layout(RECORDS[name], record_ctypes[name])


# Maps of scalars, as brushtaild reads and writes them: u32 keys, u64 values.
SCALARS = {
    "templates": "Key",
    "config": "Leaf",
    "results": "Leaf",
    "latency": "Leaf",
    "trace_lost": "Leaf",
}


@pytest.mark.parametrize(("table", "side"), SCALARS.items(), ids=SCALARS.keys())
def test_scalar_maps(program: Program, table: str, side: str) -> None:
    t = program.table(table)
    assert ctypes.sizeof(t.Key) == ctypes.sizeof(ctypes.c_uint32)
    if side == "Leaf":
        leaf = t.Leaf
        # A per-CPU array's Leaf is an array of one value per possible CPU.
        value = leaf._type_ if issubclass(leaf, ctypes.Array) else leaf
        assert ctypes.sizeof(value) == ctypes.sizeof(ctypes.c_uint64)


PINNED = (
    "leases",
    "templates",
    "config",
    "relays",
    "ratelimit",
    "results",
    "latency",
    "renewals",
    "trace",
    "trace_lost",
)


@pytest.mark.parametrize("name", PINNED)
def test_pinned_map_is_what_the_loader_expects(program: Program, name: str) -> None:
    """Type, key and value sizes and entries of each pin as the kernel reports them: a
    mismatch would make every brushtaild start throw the maps away and rebuild them."""
    fd = libbpf.obj_get(str(program.pin_dir / name))
    try:
        layout = libbpf.map_layout(fd)
    finally:
        os.close(fd)
    assert layout == loader._expected(LIMITS)[name]
    assert set(loader._expected(LIMITS)) == set(PINNED)


# -- numbers ------------------------------------------------------------------------------

_DEFINE = re.compile(r"^#define\s+(BT_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", re.MULTILINE)
_ENUM = re.compile(r"enum\s+bt_result\s*\{(.*?)\};", re.DOTALL)
_ENUMERATOR = re.compile(r"^\s*(BT_\w+)\s*=\s*(\d+)\s*,", re.MULTILINE)


def c_defines(path: Path) -> dict[str, int]:
    return {name: int(value, 0) for name, value in _DEFINE.findall(path.read_text())}


def c_results() -> dict[str, int]:
    found = _ENUM.search(SHARED_H.read_text())
    assert found, "enum bt_result not found in shared.h"
    return {name: int(value) for name, value in _ENUMERATOR.findall(found.group(1))}


def test_every_define_in_shared_h_is_mirrored() -> None:
    defines = c_defines(SHARED_H)
    assert len(defines) >= 10, defines  # the regex still finds them
    mirrored = {name: getattr(maps, name.removeprefix("BT_"), None) for name in defines}
    assert mirrored == defines


def test_prl_max_is_mirrored() -> None:
    assert c_defines_any(PARSING_H, "PRL_MAX") == maps.PRL_MAX


def c_defines_any(path: Path, name: str) -> int:
    found = re.search(rf"^#define\s+{name}\s+(\d+)\b", path.read_text(), re.MULTILINE)
    assert found, f"{name} not defined in {path.name}"
    return int(found.group(1))


def test_result_enum_is_mirrored() -> None:
    c = c_results()
    assert c.pop("BT_RESULTS") == maps.RESULTS == len(maps.Result)
    python = {member.name: member.value for member in maps.Result}
    renamed = {re.sub(r"^BT_(RES|PASS|DROP)_", "", name): value for name, value in c.items()}
    assert renamed == python
    # Numbered densely from 0: each is the index of a counter in an array of BT_RESULTS.
    assert sorted(python.values()) == list(range(maps.RESULTS))


# -- prl_hash -----------------------------------------------------------------------------

PRLS: dict[str, bytes | None] = {
    "absent": None,
    "empty": b"",
    "one": b"\x01",
    "a zero": b"\x00",
    "udhcpc": bytes([1, 3, 6, 12, 15, 28, 42]),
    "8 bytes": bytes([1, 28, 2, 3, 15, 6, 119, 12]),
    "9 bytes": bytes([1, 28, 2, 3, 15, 6, 119, 12, 44]),
    "dhclient": bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42]),
    "trailing zero": bytes([1, 3, 0]),
    "63 bytes": bytes(range(1, 64)),
    "64 bytes": bytes(range(255, 191, -1)),
}
MAC = bytes.fromhex("02b700000201")


def _others(prl: bytes | None) -> list[bytes | None]:
    """Request lists close to `prl` that must not share its hash."""
    near: list[bytes | None] = [p for p in PRLS.values() if p != prl]
    if prl:
        near += [prl[:-1], prl[:-1] + bytes([prl[-1] ^ 1]), bytes(reversed(prl))]
    if prl is not None and len(prl) < maps.PRL_MAX:
        near.append(prl + b"\x00")
    return [p for p in near if p != prl]


@pytest.mark.parametrize("prl", PRLS.values(), ids=PRLS.keys())
def test_prl_hash_matches_the_kernel(fastpath: Fastpath, prl: bytes | None) -> None:
    """An entry carries maps.prl_hash of the client's list: the kernel answers a request
    whose list has that hash, and passes every other one as a PRL mismatch."""
    options: dict[int, bytes] = {} if prl is None else {OptionCode.PARAMETER_REQUEST_LIST: prl}
    fastpath.bind(MAC, options=options)
    entry = fastpath.entry(maps.Key(MAC))
    assert entry is not None and entry.prl_hash == maps.prl_hash(prl)

    def discover(with_prl: bytes | None) -> bytes:
        extra: dict[int, bytes] = (
            {} if with_prl is None else {OptionCode.PARAMETER_REQUEST_LIST: with_prl}
        )
        msg = client_message(MessageType.DISCOVER, MAC, extra=extra)
        return fastpath.frame(encode(msg), mac=MAC)

    assert fastpath.run(discover(prl)).retval == XDP_TX
    for other in _others(prl):
        frame = discover(other)
        if maps.prl_hash(other) == entry.prl_hash:  # a collision: see LENGTH_COLLISIONS
            assert fastpath.run(frame).retval == XDP_TX
            continue
        assert fastpath.results_of(frame) == {maps.Result.PRL: 1}
        assert fastpath.run(frame).retval == XDP_PASS


# Lists whose length and first word once cancelled out in the hash's first round (the
# length was XORed into the seed): b"" and b"\x01", [3] and [0, 0]. The kernel then answered
# a client's [0, 0] with the template rendered for its lease's [3].
LENGTH_COLLISIONS = [
    (b"", b"\x01"),
    (b"\x03", b"\x00\x00"),
    (b"\x01\x03\x06", b"\x06\x03\x06\x00"),
]


@pytest.mark.parametrize(("a", "b"), LENGTH_COLLISIONS)
def test_prl_hash_keeps_length_and_content_apart(a: bytes, b: bytes) -> None:
    assert maps.prl_hash(a) != maps.prl_hash(b)


def test_near_prl_is_not_answered_with_the_leases_template(fastpath: Fastpath) -> None:
    fastpath.bind(MAC, options={OptionCode.PARAMETER_REQUEST_LIST: b"\x03"})
    msg = client_message(
        MessageType.DISCOVER, MAC, extra={OptionCode.PARAMETER_REQUEST_LIST: b"\x00\x00"}
    )
    frame = fastpath.frame(encode(msg), mac=MAC)
    assert fastpath.results_of(frame) == {maps.Result.PRL: 1}


def test_prl_hash_is_never_absent() -> None:
    assert maps.prl_hash(None) == maps.PRL_ABSENT
    assert all(maps.prl_hash(p) != maps.PRL_ABSENT for p in PRLS.values() if p is not None)
