"""Malformed frames against the kernel program, for a client that has a lease entry: it
must never answer one (XDP_TX), a frame that is not a well-formed request is refused by
both paths alike, and a mutated frame it does answer must get exactly the reply the slow
path gives the same frame."""

import struct
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import OptionCode
from brushtaild.dhcp.reasons import DropReason
from brushtaild.xdp import libbpf, maps
from brushtaild.xdp.loader import Program
from tests.bpf.frames import (
    MALFORMED_FRAMES,
    NOT_WELL_FORMED,
    client_frame,
    ip_offset,
    refusal,
    with_ip_header,
)
from tests.bpf.harness import (
    ETH_HLEN,
    SERVER_MAC,
    XDP_DROP,
    XDP_TX,
    Fastpath,
    RenewalLog,
    assert_same_reply,
    option_spans,
    received,
    with_option,
    without_option,
)
from tests.bpf.test_vectors import CAPTURED_CLIENTS, Client, bind, request_in_state
from tests.unit.test_codec import CLIENT_MAC, DISCOVER_53, MALFORMED, packet

REQUEST_53 = b"\x35\x01\x03"


def prl_of(payload: bytes) -> bytes | None:
    """Option 55 of a (possibly malformed) payload, if a lenient walk finds it."""
    try:
        spans = option_spans(payload)
    except IndexError:
        return None
    for code, start, length in spans:
        if code == OptionCode.PARAMETER_REQUEST_LIST and start + length <= len(payload):
            return payload[start : start + length]
    return None


def bind_corpus_client(fastpath: Fastpath, payload: bytes) -> None:
    """A lease for the corpus's client (tests/unit/test_codec.py's CLIENT_MAC) with the
    request list the malformed packet carries, so nothing but its defect stands between
    it and a reply."""
    prl = prl_of(payload)
    fastpath.bind(
        CLIENT_MAC, options={} if prl is None else {OptionCode.PARAMETER_REQUEST_LIST: prl}
    )


def slow_path_answers(fastpath: Fastpath, frame: bytes) -> bool:
    decision = fastpath.slow_path(frame, apply=False)
    return decision is not None and bool(decision.replies)


def assert_not_answered(fastpath: Fastpath, frame: bytes) -> None:
    run = fastpath.run(frame)
    assert run.retval != XDP_TX, f"answered a malformed frame of {len(frame)} bytes"


def assert_agrees(fastpath: Fastpath, frame: bytes) -> None:
    """Either the kernel leaves `frame` alone or it answers as the slow path does."""
    run = fastpath.run(frame)
    if run.retval == XDP_TX:
        assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))


# -- the corpus ---------------------------------------------------------------------------


def test_corpus_client_is_answered_when_well_formed(fastpath: Fastpath) -> None:
    """The control: the corpus's smallest good packet gets an OFFER from the kernel."""
    payload = packet(DISCOVER_53 + b"\xff")
    bind_corpus_client(fastpath, payload)
    assert fastpath.run(client_frame(payload, src_mac=CLIENT_MAC)).retval == XDP_TX


@pytest.mark.parametrize("raw", [raw for raw, _ in MALFORMED.values()], ids=MALFORMED.keys())
def test_malformed_corpus_is_never_answered(fastpath: Fastpath, raw: bytes) -> None:
    bind_corpus_client(fastpath, raw)
    frame = client_frame(raw, src_mac=CLIENT_MAC)
    assert not slow_path_answers(fastpath, frame)
    assert_not_answered(fastpath, frame)


# -- truncation ---------------------------------------------------------------------------


FRAMES_PER_CLIENT = 5


def good_frames(fastpath: Fastpath, client: Client) -> Iterator[bytes]:
    """The client's DISCOVER and its REQUEST in each state, all answered by the kernel."""
    lease = bind(fastpath, client)
    yield client.frame(fastpath, client.payload("discover"))
    for state in ("selecting", "init-reboot", "renewing", "rebinding"):
        yield request_in_state(client, fastpath, state, lease.address)


@pytest.mark.parametrize("client", CAPTURED_CLIENTS, ids=[c.name for c in CAPTURED_CLIENTS])
def test_truncated_frames_are_never_answered(fastpath: Fastpath, client: Client) -> None:
    """Cut at every length, headers unchanged: the IPv4 and UDP lengths then claim more
    than the frame holds. (BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet
    header, and no NIC delivers one.)"""
    for frame in good_frames(fastpath, client):
        assert fastpath.run(frame).retval == XDP_TX
        for length in range(ETH_HLEN, len(frame)):
            assert_not_answered(fastpath, frame[:length])


@pytest.mark.parametrize("client", CAPTURED_CLIENTS, ids=[c.name for c in CAPTURED_CLIENTS])
def test_short_payload_in_consistent_headers(fastpath: Fastpath, client: Client) -> None:
    """A payload cut short with IPv4 and UDP lengths that say so: an ordinary (if
    truncated) request. Answered only if the slow path answers it too, and alike."""
    for frame in good_frames(fastpath, client):
        ip = ip_offset(frame)
        header_end = ip + 28
        for length in range(header_end, len(frame)):
            cut = with_ip_header(frame[:length], tot_len=length - ip, udp_len=length - ip - 20)
            assert_agrees(fastpath, cut)


def test_bytes_after_the_datagram_are_not_options(fastpath: Fastpath) -> None:
    """Link-layer padding or junk after the IPv4 datagram is not part of the request. A
    REQUEST without option 50 whose options run to the datagram's end (no end option, as
    many clients send them) must not become answerable by a 50 in the bytes after it."""
    client = next(c for c in CAPTURED_CLIENTS if c.name == "udhcpc")
    lease = bind(fastpath, client)
    payload = without_option(client.payload("request"), OptionCode.REQUESTED_ADDRESS)
    _, start, length = option_spans(payload)[-1]
    frame = client.frame(fastpath, payload[: start + length])
    assert fastpath.run(frame).retval != XDP_TX
    for trailer in (b"\x32\x04" + opt.ip(lease.address) + b"\xff", bytes(18)):
        assert_agrees(fastpath, frame + trailer)
        assert_not_answered(fastpath, frame + trailer)


# -- L2 to L4 headers ---------------------------------------------------------------------


@pytest.fixture
def answered(fastpath: Fastpath) -> bytes:
    """A REQUEST the kernel answers (udhcpc, SELECTING), to break one field at a time."""
    client = CAPTURED_CLIENTS[1]
    lease = bind(fastpath, client)
    frame = request_in_state(client, fastpath, "selecting", lease.address)
    assert fastpath.run(frame).retval == XDP_TX
    return frame


def _ip_len(frame: bytes) -> int:
    return len(frame) - ip_offset(frame)


BAD_HEADERS = {
    **{f"ihl {ihl}": {"ihl": ihl} for ihl in (0, 1, 4, 6, 7, 15)},
    "ihl 6, checksum over 20 bytes": {"ihl": 6, "checksum": False},
    "more fragments": {"frag": 0x2000},
    "fragment offset": {"frag": 0x0001},
    "last fragment": {"frag": 0x0010},
    "DF and more fragments": {"frag": 0x6000},
    "bad header checksum": {"checksum": False, "frag": 0x0000, "tot_len": -1},
    "total length 0": {"tot_len": 0},
    "total length below headers": {"tot_len": 27},
    "total length one past the frame": {"tot_len": +1},
    "total length 65535": {"tot_len": 0xFFFF},
    "udp length 0": {"udp_len": 0},
    "udp length 7": {"udp_len": 7},
    "udp length 8": {"udp_len": 8},
    "udp length below BOOTP": {"udp_len": 8 + 239},
    "udp length past ip": {"udp_len": +1},
    "udp length 65535": {"udp_len": 0xFFFF},
}


def broken(frame: bytes, edit: dict[str, int]) -> bytes:
    fields = dict(edit)
    ip_len = _ip_len(frame)
    if fields.get("tot_len") in (-1, +1):  # relative to the real length
        fields["tot_len"] = ip_len + fields["tot_len"]
    if fields.get("udp_len") == +1:
        fields["udp_len"] = ip_len - 20 + 1
    checksum = bool(fields.pop("checksum", True))
    frame = with_ip_header(frame, checksum=checksum, **fields)
    if not checksum and "ihl" not in edit:  # a header checksum one off
        ip = ip_offset(frame)
        value = struct.unpack_from("!H", frame, ip + 10)[0] ^ 1
        frame = frame[: ip + 10] + struct.pack("!H", value) + frame[ip + 12 :]
    return frame


@pytest.mark.parametrize("edit", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_ip_or_udp_header_is_never_answered(
    fastpath: Fastpath, answered: bytes, edit: dict[str, int]
) -> None:
    frame = broken(answered, edit)
    assert not slow_path_answers(fastpath, frame)
    assert_not_answered(fastpath, frame)


def test_dont_fragment_is_answered(fastpath: Fastpath, answered: bytes) -> None:
    frame = with_ip_header(answered, frag=0x4000)
    assert fastpath.run(frame).retval == XDP_TX
    assert_agrees(fastpath, frame)


@pytest.mark.parametrize("defect", MALFORMED_FRAMES.values(), ids=MALFORMED_FRAMES.keys())
def test_malformed_frame_is_refused_by_both_paths(
    fastpath: Fastpath, answered: bytes, defect: Callable[[bytes], bytes]
) -> None:
    """One definition of a well-formed request: the kernel drops each of these, counted
    as malformed (the slow path would refuse it anyway), and the slow path refuses it as
    not well-formed, whichever path a frame takes."""
    assert received(answered) is not None and refusal(answered) is None
    frame = defect(answered)
    assert refusal(frame) in NOT_WELL_FORMED
    assert fastpath.results_of(frame) == {maps.Result.MALFORMED: 1}
    assert fastpath.run(frame).retval == XDP_DROP


DESTINATIONS = {
    "another host": bytes.fromhex("02b7000000fd"),
    "multicast": bytes.fromhex("01005e000001"),
    "all but one bit broadcast": bytes.fromhex("fffffffffffe"),
}


@pytest.mark.parametrize("dst_mac", DESTINATIONS.values(), ids=DESTINATIONS.keys())
def test_frame_for_another_mac_is_never_answered(fastpath: Fastpath, dst_mac: bytes) -> None:
    """The slow path's socket filter sees only frames to the interface's MAC or to
    broadcast; on a promiscuous interface the program sees the others too."""
    client = next(c for c in CAPTURED_CLIENTS if c.name == "perfdhcp")  # a relay: unicast
    bind(fastpath, client)
    frame = client.frame(fastpath, client.payload("discover"))
    assert frame[:6] == SERVER_MAC and fastpath.run(frame).retval == XDP_TX
    other = dst_mac + frame[6:]
    assert not slow_path_answers(fastpath, other)
    assert fastpath.results_of(other) == {}
    assert_not_answered(fastpath, other)


def test_three_vlan_tags_are_never_answered(fastpath: Fastpath) -> None:
    client = CAPTURED_CLIENTS[1]
    lease = bind(fastpath, client)
    entry = fastpath.entry(maps.Key(client.mac))
    assert entry is not None
    for key in (maps.Key(client.mac, 100, 200), maps.Key(client.mac, 200, 300)):
        fastpath.put_entry(key, entry)
    payload = with_option(
        client.payload("request"), OptionCode.REQUESTED_ADDRESS, opt.ip(lease.address)
    )
    two = client_frame(payload, src_mac=client.mac, vlans=(100, 200))
    assert fastpath.run(two).retval == XDP_TX
    three = client_frame(payload, src_mac=client.mac, vlans=(100, 200, 300))
    assert fastpath.results_of(three) == {}
    assert_not_answered(fastpath, three)


# -- options ------------------------------------------------------------------------------


def _replace_end(payload: bytes, tail: bytes) -> bytes:
    """`payload` with its end option and everything after replaced by `tail`."""
    spans = option_spans(payload)
    _, start, length = spans[-1]
    return payload[: start + length] + tail


OVERRUNS = {
    "length past the packet": b"\x0c\x40" + b"x" * 10,
    "code without length": b"\x0c",
    "length past, then end": b"\x0c\x05abc\xff",
    "50 cut short": b"\x32\x04\xc6\x12",
}


@pytest.mark.parametrize("tail", OVERRUNS.values(), ids=OVERRUNS.keys())
@pytest.mark.parametrize("client", CAPTURED_CLIENTS, ids=[c.name for c in CAPTURED_CLIENTS])
def test_options_overrunning_the_packet_are_never_answered(
    fastpath: Fastpath, client: Client, tail: bytes
) -> None:
    lease = bind(fastpath, client)
    for kind in ("discover", "request"):
        payload = client.payload(kind)
        if kind == "request":
            payload = with_option(payload, OptionCode.REQUESTED_ADDRESS, opt.ip(lease.address))
        frame = client.frame(fastpath, _replace_end(payload, tail))
        assert not slow_path_answers(fastpath, frame)
        assert_not_answered(fastpath, frame)


def test_relay_sub_option_overrunning_option_82_is_never_answered(fastpath: Fastpath) -> None:
    client = next(c for c in CAPTURED_CLIENTS if c.name == "dhcrelay_udhcpc")
    bind(fastpath, client)
    payload = bytearray(client.payload("discover"))
    [(_, start, length)] = [s for s in option_spans(bytes(payload)) if s[0] == 82]
    for sub_len in (length - 1, 200, 255):  # circuit ID's length runs past 82's end
        payload[start + 1] = sub_len
        frame = client.frame(fastpath, bytes(payload))
        assert not slow_path_answers(fastpath, frame)
        assert_not_answered(fastpath, frame)


OVERLOADED = {
    "file": (1, b"", b"\xff"),
    "sname": (2, b"\xff", b""),
    "both": (3, b"\xff", b"\xff"),
    "50 in file": (1, b"", b"\x32\x04\xc6\x12\x01\x00\xff"),
}


@pytest.mark.parametrize(("overload", "sname", "file"), OVERLOADED.values(), ids=OVERLOADED.keys())
@pytest.mark.parametrize("mtype", [DISCOVER_53, REQUEST_53], ids=["discover", "request"])
def test_overload_is_left_to_the_slow_path(
    fastpath: Fastpath, overload: int, sname: bytes, file: bytes, mtype: bytes
) -> None:
    lease = fastpath.bind(CLIENT_MAC)
    requested = (
        b"\x32\x04" + opt.ip(lease.address) + b"\x36\x04" + opt.ip(fastpath.config.server_id)
    )
    options = mtype + (requested if mtype == REQUEST_53 else b"")
    plain = packet(options + b"\xff")
    assert fastpath.run(client_frame(plain, src_mac=CLIENT_MAC)).retval == XDP_TX
    raw = packet(options + bytes((52, 1, overload)) + b"\xff", sname=sname, file=file)
    frame = client_frame(raw, src_mac=CLIENT_MAC)
    assert fastpath.results_of(frame) == {maps.Result.UNPARSED: 1}
    assert_not_answered(fastpath, frame)


# -- mutations ----------------------------------------------------------------------------


Edit = tuple[int, int]


@st.composite
def mutations(draw: st.DrawFn) -> tuple[int, list[Edit], int | None, bytes]:
    """Which base frame, which bytes to overwrite (anywhere, or in the first 300 bytes
    where every header and the interesting options are), where to cut it, what to add."""
    index = draw(st.integers(0, FRAMES_PER_CLIENT * len(CAPTURED_CLIENTS) - 1))
    # Half the edits land in the first 64 bytes: Ethernet, IPv4, UDP and BOOTP's start.
    edits = [
        (draw(st.integers(0, 63 if draw(st.booleans()) else 400)), draw(st.integers(0, 255)))
        for _ in range(draw(st.integers(0, 4)))
    ]
    cut = draw(st.integers(0, 400)) if draw(st.integers(0, 3)) == 0 else None
    extra = draw(st.binary(max_size=16)) if draw(st.integers(0, 3)) == 0 else b""
    return index, edits, cut, extra


def mutate(frame: bytes, edits: list[Edit], cut: int | None, extra: bytes) -> bytes:
    out = bytearray(frame)
    for position, value in edits:
        if position < len(out):
            out[position] = value
    if cut is not None:
        del out[cut:]
    return bytes(out) + extra


@settings(
    max_examples=250,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutation=mutations())
def test_mutated_frame_is_passed_or_answered_as_the_slow_path_would(
    program: Program, renewal_log: RenewalLog, mutation: tuple[int, list[Edit], int | None, bytes]
) -> None:
    index, edits, cut, extra = mutation
    fastpath = Fastpath(program, renewal_log)
    client, which = divmod(index, FRAMES_PER_CLIENT)
    frames = list(good_frames(fastpath, CAPTURED_CLIENTS[client]))
    frame = mutate(frames[which], edits, cut, extra)
    assume(len(frame) >= ETH_HLEN)
    runs: list[libbpf.TestRun] = []
    counted = fastpath.counted(lambda: runs.append(fastpath.run(frame)))
    [run] = runs
    event("answered" if run.retval == XDP_TX else "left alone")
    if run.retval == XDP_TX:
        assert_same_reply(run, frame, fastpath.slow_path(frame, apply=False))
    # One definition of well-formed: of the untagged frames the program takes for DHCP
    # (it counts them), it drops as malformed exactly those the slow path refuses as not
    # well-formed; or for their options first: a BOOTREPLY is the engine's to refuse,
    # after the codec has read its options.
    if counted and frame[12:14] == b"\x08\x00":
        malformed = maps.Result.MALFORMED in counted
        event("malformed" if malformed else "well-formed")
        reason = refusal(frame) if received(frame) is not None else DropReason.BAD_FRAME
        if malformed:
            assert reason is not None
        else:
            assert reason not in NOT_WELL_FORMED


@pytest.mark.parametrize("client", CAPTURED_CLIENTS, ids=[c.name for c in CAPTURED_CLIENTS])
def test_mutation_base_frames_are_answered(fastpath: Fastpath, client: Client) -> None:
    frames = list(good_frames(fastpath, client))
    assert len(frames) == FRAMES_PER_CLIENT
    for frame in frames:
        assert fastpath.run(frame).retval == XDP_TX
