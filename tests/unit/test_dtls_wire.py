"""What the DTLS transport does to bytes without a socket: flights cut into datagrams at
record boundaries, and ClientHellos told from the rest."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from brushtaild.net.dtls import MTU, _datagrams, _is_client_hello


def record(content_type: int, body: bytes, epoch: int = 0) -> bytes:
    header = bytes([content_type]) + b"\xfe\xfd" + epoch.to_bytes(2, "big") + bytes(6)
    return header + len(body).to_bytes(2, "big") + body


@given(st.lists(st.integers(0, MTU - 13), min_size=1, max_size=12))
def test_a_flight_is_cut_at_record_boundaries_within_the_mtu(sizes: list[int]) -> None:
    records = [record(22, bytes([i % 251]) * size) for i, size in enumerate(sizes)]
    datagrams = list(_datagrams(b"".join(records)))
    assert b"".join(datagrams) == b"".join(records)
    assert all(len(d) <= MTU for d in datagrams)
    # Each datagram is whole records, and as few datagrams as the greedy packing needs.
    starts = {0}
    offset = 0
    for r in records:
        offset += len(r)
        starts.add(offset)
    offset = 0
    for d in datagrams:
        assert offset in starts
        offset += len(d)
    for first, second in itertools.pairwise(datagrams):
        next_record = second[: 13 + int.from_bytes(second[11:13], "big")]
        assert len(first) + len(next_record) > MTU


def test_one_record_larger_than_the_mtu_goes_alone() -> None:
    big = record(23, bytes(1500))
    assert list(_datagrams(big + record(21, b"ab"))) == [big, record(21, b"ab")]


def test_only_a_handshake_record_of_epoch_0_holding_a_client_hello_is_one() -> None:
    assert _is_client_hello(record(22, b"\x01" + bytes(40)))
    assert not _is_client_hello(record(22, b"\x02" + bytes(40)))  # ServerHello
    assert not _is_client_hello(record(22, b"\x01" + bytes(40), epoch=1))  # encrypted
    assert not _is_client_hello(record(23, b"\x01" + bytes(40)))
    assert not _is_client_hello(b"\x16\xfe\xfd")
