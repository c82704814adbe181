"""The replication codec: what it encodes it decodes, split to fit one DTLS record, and
hostile bytes raise DecodeError and nothing else."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brushtaild.engine.leases import LeaseState
from brushtaild.replication.blocks import BlockLayout
from brushtaild.replication.hlc import Hlc
from brushtaild.replication.state import Binding, Ownership
from brushtaild.replication.wire import (
    MAX_PAYLOAD,
    Codec,
    DecodeError,
    Delta,
    Detail,
    Digest,
    Message,
    Request,
)

LAYOUT = BlockLayout(["a", "b", "x" * 32], [("p", 100, 199), ("q" * 80, 300, 310)], 8)
CODEC = Codec(LAYOUT)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
hlcs = st.builds(Hlc, st.integers(0, 2**63), U32, st.sampled_from(LAYOUT.sites))
bindings = st.builds(
    Binding,
    address=U32,
    tenure=hlcs,
    client_id=st.binary(max_size=255),
    stamp=hlcs,
    hwaddr=st.binary(max_size=16),
    pool=st.sampled_from(LAYOUT.pools),
    state=st.sampled_from(list(LeaseState)),
    expires_ms=U64,
    owner_expires_ms=U64,
    vlans=st.lists(st.integers(0, 4095), max_size=2).map(tuple),
    relay_info=st.binary(max_size=255),
    prl=st.none() | st.binary(max_size=255),
)
owners = st.tuples(
    U32,
    st.builds(
        Ownership,
        U32,
        st.sampled_from(LAYOUT.sites),
        st.sampled_from(LAYOUT.sites),
        U64,
        U64,
    ),
)
messages = st.one_of(
    st.builds(
        Delta,
        hlcs,
        st.lists(bindings, max_size=1).map(tuple),
        st.lists(owners, max_size=3).map(tuple),
    ),
    st.builds(
        Digest,
        hlcs,
        st.just(0),
        st.integers(0, 2**32),
        st.lists(st.tuples(U32, U64), max_size=80).map(tuple),
    ),
    st.builds(
        Detail,
        hlcs,
        U32,
        st.just(0),
        st.integers(0, 2**32),
        st.none() | owners.map(lambda o: o[1]),
        st.lists(st.tuples(U32, U64), max_size=80).map(tuple),
    ),
    st.builds(
        Request,
        hlcs,
        st.lists(U32, max_size=125).map(tuple),
        st.lists(U32, max_size=125).map(tuple),
    ),
)


@given(messages)
def test_every_message_round_trips_within_one_record(message: Message) -> None:
    data = CODEC.encode(message)
    assert len(data) <= MAX_PAYLOAD
    assert CODEC.decode(data) == message


@given(hlcs, st.lists(bindings, max_size=30), st.lists(owners, max_size=60))
def test_a_large_delta_is_split_into_records_that_carry_it_all(
    sent: Hlc, bs: list[Binding], os: list[tuple[int, Ownership]]
) -> None:
    payloads = CODEC.encode_delta(sent, bs, os)
    decoded = [CODEC.decode(p) for p in payloads]
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)
    assert all(isinstance(d, Delta) and d.sent == sent for d in decoded)
    assert [b for d in decoded if isinstance(d, Delta) for b in d.bindings] == bs
    assert [o for d in decoded if isinstance(d, Delta) for o in d.owners] == os


def test_the_largest_binding_fits_one_record() -> None:
    stamp = Hlc(2**64 - 1, 2**32 - 1, "x" * 32)
    largest = Binding(
        2**32 - 1,
        stamp,
        b"c" * 255,
        stamp,
        b"h" * 16,
        "q" * 80,
        LeaseState.BOUND,
        2**64 - 1,
        2**64 - 1,
        (4095, 4095),
        b"r" * 255,
        b"p" * 255,
    )
    [payload] = CODEC.encode_delta(stamp, [largest])
    assert len(payload) <= MAX_PAYLOAD


@settings(max_examples=500)
@given(st.binary(max_size=1200))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        CODEC.decode(data)


@settings(max_examples=500)
@given(messages, st.data())
def test_mutated_messages_raise_only_decode_error(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(CODEC.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(encoded) - 1)))
        if kind == "flip" and encoded:
            encoded[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del encoded[at:]
        else:
            encoded[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    with contextlib.suppress(DecodeError):
        CODEC.decode(bytes(encoded))


def test_a_message_for_another_layout_or_version_is_refused() -> None:
    other = Codec(BlockLayout(["a", "b"], [("p", 100, 199)], 8))
    with pytest.raises(DecodeError, match="layout"):
        CODEC.decode(other.encode(Request(Hlc(1, 0, "a"), (1,))))
    bumped = bytearray(CODEC.encode(Request(Hlc(1, 0, "a"), (1,))))
    bumped[2] = 2
    with pytest.raises(DecodeError, match="version"):
        CODEC.decode(bytes(bumped))
