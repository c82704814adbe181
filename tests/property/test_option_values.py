"""Properties of the configured options' encodings: classless routes decode to what was
encoded, and a compressed domain search list expands to the names it was given (by an
RFC 1035 reader written here, apart from the encoder)."""

from hypothesis import given
from hypothesis import strategies as st

from brushtaild.dhcp import options as opt

LABELS = st.text(alphabet="abcXYZ019-", min_size=1, max_size=63).filter(
    lambda label: not label.startswith("-") and not label.endswith("-")
)
# Few distinct labels, so that names share suffixes and compression has work to do.
NAMES = st.lists(
    st.sampled_from(["a", "b", "example", "net", "ISP"]) | LABELS, min_size=1, max_size=5
)
ROUTES = st.lists(
    st.tuples(st.integers(0, 32), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)),
    max_size=10,
)


def expand(raw: bytes) -> list[str]:
    """The names of an RFC 3397 value: labels, pointers back to earlier offsets, roots."""
    names, pos = [], 0

    def read(at: int, depth: int) -> tuple[list[str], int]:
        labels: list[str] = []
        while True:
            length = raw[at]
            if length == 0:
                return labels, at + 1
            if length & 0xC0 == 0xC0:
                target = int.from_bytes(raw[at : at + 2], "big") & 0x3FFF
                assert target < at and depth < 64  # only backwards, never a loop
                rest, _ = read(target, depth + 1)
                return labels + rest, at + 2
            labels.append(raw[at + 1 : at + 1 + length].decode("ascii"))
            at += 1 + length

    while pos < len(raw):
        labels, pos = read(pos, 0)
        names.append(".".join(labels))
    return names


@given(st.lists(NAMES.map(".".join), min_size=1, max_size=6))
def test_domain_search_expands_to_its_names(names: list[str]) -> None:
    raw = opt.domain_search(names)
    assert [n.lower() for n in expand(raw)] == [n.lower() for n in names]
    assert len(raw) <= sum(len(n) + 2 for n in names)


@given(ROUTES)
def test_classless_routes_round_trip(routes: list[tuple[int, int, int]]) -> None:
    # Only the significant octets go on the wire: the destination as a prefix.
    canonical = [
        (destination & (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0, length, router)
        for length, destination, router in routes
    ]
    raw = opt.classless_routes((d, n, r) for d, n, r in canonical)
    assert opt.decode_classless_routes(raw) == canonical
