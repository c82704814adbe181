"""Properties of the codec: round trips, and parse failing only with MalformedPacket."""

from dataclasses import replace

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from brushtaild.dhcp.codec import MIN_MAX_SIZE, MessageTooLarge, encode, parse
from brushtaild.dhcp.constants import MAGIC_COOKIE, MessageType, Overload
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.options import build_relay_agent_info, parse_relay_agent_info
from brushtaild.dhcp.reasons import MalformedPacket
from tests.vectors import CAPTURED, load_vector

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
# Every code the caller may set: pad, end and overload belong to the codec, 53 is added apart.
OPTION_CODES = st.integers(1, 254).filter(lambda code: code not in (52, 53))
# Short values; values that fill sname or file when overloaded; values long enough to need
# RFC 3396 splitting.
OPTION_VALUES = st.one_of(
    st.binary(max_size=20),
    st.binary(min_size=20, max_size=120),
    st.binary(min_size=250, max_size=330),
)
VECTORS = [*CAPTURED, "overload_offer"]


ANY_OPTIONS = st.dictionaries(OPTION_CODES, OPTION_VALUES, max_size=6)
# One value that nearly fills the options field, then several that must spill over into
# file and sname: exercises overload far more often than ANY_OPTIONS does.
SPILLING_OPTIONS = st.tuples(
    st.binary(min_size=200, max_size=300),
    st.dictionaries(OPTION_CODES, st.binary(min_size=20, max_size=60), min_size=3, max_size=6),
).map(lambda parts: {43: parts[0], **{k: v for k, v in parts[1].items() if k != 43}})


@st.composite
def messages(
    draw: st.DrawFn, options: st.SearchStrategy[dict[int, bytes]] = ANY_OPTIONS
) -> Message:
    message_type = draw(st.sampled_from(MessageType))
    others = draw(options)
    # 53 anywhere in the dict: encode must move it to the front.
    position = draw(st.integers(0, len(others)))
    items = list(others.items())
    items.insert(position, (53, bytes((message_type,))))
    return Message(
        op=draw(st.sampled_from([1, 2])),
        xid=draw(U32),
        htype=1,  # the codec reads Ethernet only
        hlen=6,
        hops=draw(U8),
        secs=draw(U16),
        flags=draw(U16),
        ciaddr=draw(U32),
        yiaddr=draw(U32),
        siaddr=draw(U32),
        giaddr=draw(U32),
        chaddr=draw(st.binary(min_size=16, max_size=16)),
        sname=draw(st.binary(min_size=64, max_size=64)),
        file=draw(st.binary(min_size=128, max_size=128)),
        options=dict(items),
    )


# (message, max_size) pairs; spilling options only overload at the smallest limit.
CASES = st.one_of(
    st.tuples(messages(), st.one_of(st.just(MIN_MAX_SIZE), st.integers(0, 1500))),
    st.tuples(messages(SPILLING_OPTIONS), st.just(MIN_MAX_SIZE)),
)


def wire_size(options: dict[int, bytes]) -> int:
    """Option bytes on the wire, RFC 3396 pieces included, end excluded."""
    return sum(len(value) + 2 * max(1, -(-len(value) // 255)) for value in options.values())


@settings(max_examples=500)
@given(CASES)
def test_parse_inverts_encode(case: tuple[Message, int]) -> None:
    msg, max_size = case
    try:
        wire = encode(msg, max_size)
    except MessageTooLarge:
        event("too large")
        assert wire_size(msg.options) > max(max_size, MIN_MAX_SIZE) - 241
        return
    assert len(wire) <= max(max_size, MIN_MAX_SIZE)
    assert len(wire) >= 300
    decoded = parse(wire)
    if wire[240] == 52:
        overload = wire[242]
        event(f"overload {overload}")
        # The fields that carry options are rewritten; the others are copied as they are.
        assert (overload & Overload.FILE) or decoded.file == msg.file
        assert (overload & Overload.SNAME) or decoded.sname == msg.sname
        decoded = replace(decoded, sname=msg.sname, file=msg.file)
        assert decoded.options == msg.options
    else:
        assert wire_size(msg.options) <= max(max_size, MIN_MAX_SIZE) - 241
        # Not overloaded: wire order is dict order, with 53 moved to the front.
        assert list(decoded.options) == [53, *(code for code in msg.options if code != 53)]
    assert decoded == msg


@settings(max_examples=500)
@given(CASES)
def test_encode_inverts_parse(case: tuple[Message, int]) -> None:
    msg, max_size = case
    try:
        wire = encode(msg, max_size)
    except MessageTooLarge:
        assume(False)
        return
    assert encode(parse(wire), max_size) == wire


@given(st.sampled_from(VECTORS))
def test_vectors_are_stable_under_reencoding(name: str) -> None:
    first = parse(load_vector(name))
    second = parse(encode(first))
    assert list(second.options.items()) == list(first.options.items())


def parse_or_malformed(raw: bytes) -> Message | None:
    try:
        return parse(raw)
    except MalformedPacket:
        return None


@given(st.binary(max_size=700))
def test_arbitrary_bytes_only_raise_malformed(raw: bytes) -> None:
    parse_or_malformed(raw)


@given(
    st.binary(min_size=236, max_size=236),
    st.lists(st.one_of(st.sampled_from([0, 52, 53, 255]), U8), max_size=400).map(bytes),
)
def test_arbitrary_options_only_raise_malformed(header: bytes, options: bytes) -> None:
    msg = parse_or_malformed(header + MAGIC_COOKIE + options)
    if msg is not None:
        # Whatever parses must encode to something that parses to the same options.
        assert parse(encode(msg, 65535)).options == msg.options


@given(st.sampled_from(VECTORS), st.data())
def test_mutated_vectors_only_raise_malformed(name: str, data: st.DataObject) -> None:
    raw = bytearray(load_vector(name))
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "flip" and raw:
            raw[at] = data.draw(U8)
        elif kind == "truncate":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif raw:
            del raw[at]
    msg = parse_or_malformed(bytes(raw))
    if msg is not None:
        assert parse(encode(msg, 65535)).options == msg.options


SUB_OPTIONS = st.lists(st.tuples(U8, st.binary(max_size=255)), max_size=10)


@given(SUB_OPTIONS)
def test_relay_agent_info_round_trip(subs: list[tuple[int, bytes]]) -> None:
    assert parse_relay_agent_info(build_relay_agent_info(subs)) == subs


@given(st.binary(max_size=300))
def test_relay_agent_info_only_raises_malformed(raw: bytes) -> None:
    try:
        subs = parse_relay_agent_info(raw)
    except MalformedPacket:
        return
    assert build_relay_agent_info(subs) == raw
