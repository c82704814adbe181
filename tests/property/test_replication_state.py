"""The replicated state is a join-semilattice: each law on random states, and deltas.

Small domains (four addresses, three clients, a handful of stamps) make every case meet:
same tenure, other tenure of the same client, other client, conflicting or not.
"""

from hypothesis import given
from hypothesis import strategies as st

from brushtaild.engine.leases import LeaseState
from brushtaild.replication.hlc import Hlc
from brushtaild.replication.state import Binding, Ownership, State, join

SITES = ("a", "b", "c")
hlcs = st.builds(Hlc, st.integers(0, 4), st.integers(0, 2), st.sampled_from(SITES))
bindings = st.builds(
    Binding,
    address=st.integers(0, 3),
    tenure=hlcs,
    client_id=st.sampled_from([b"x", b"y", b"z"]),
    stamp=hlcs,
    hwaddr=st.sampled_from([b"\x01", b"\x02"]),
    pool=st.just("p"),
    state=st.sampled_from(list(LeaseState)),
    expires_ms=st.integers(0, 6),
    owner_expires_ms=st.integers(0, 6),
    vlans=st.sampled_from([(), (7,)]),
    relay_info=st.sampled_from([b"", b"\x01\x01a"]),
    prl=st.sampled_from([None, b"", b"\x01\x03"]),
)
owners = st.builds(
    Ownership,
    epoch=st.integers(0, 2),
    owner=st.sampled_from(SITES),
    previous=st.sampled_from(SITES),
    summary=st.integers(0, 3),
    ready_at_ms=st.integers(0, 3),
)


@st.composite
def states(draw: st.DrawFn) -> State:
    state = State()
    for binding in draw(st.lists(bindings, max_size=6)):
        state.merge(State({binding.address: binding}))
    state.merge(State(owners=draw(st.dictionaries(st.sampled_from([0, 8]), owners))))
    return state


@given(states(), states())
def test_merge_is_commutative(a: State, b: State) -> None:
    assert join(a, b) == join(b, a)


@given(states(), states(), states())
def test_merge_is_associative(a: State, b: State, c: State) -> None:
    assert join(join(a, b), c) == join(a, join(b, c))


@given(states())
def test_merge_is_idempotent(a: State) -> None:
    assert join(a, a) == a


@given(states(), states())
def test_merge_is_an_upper_bound(a: State, b: State) -> None:
    joined = join(a, b)
    assert join(joined, a) == joined
    assert join(joined, b) == joined


@given(st.lists(states(), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_deltas_in_any_order_equal_the_full_states(deltas: list[State], rnd: object) -> None:
    """A site that gets the deltas reordered, some twice, ends where the site that made
    them ended (whose state is the join of them all, in order)."""
    full = State()
    for delta in deltas:
        full.merge(delta)
    shuffled = [*deltas, *deltas[: len(deltas) // 2]]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    received = State()
    for delta in shuffled:
        received.merge(delta)
    assert received == full


@given(states(), states())
def test_merge_reports_exactly_what_changed(a: State, b: State) -> None:
    before = a.copy()
    merged = a.merge(b)
    changed = {x.address for x in merged.bindings}
    assert changed == {k for k in a.bindings if before.bindings.get(k) != a.bindings[k]}
    assert all(a.bindings[x.address] == x for x in merged.bindings)
    assert {k for k, _ in merged.owners} == {
        k for k in a.owners if before.owners.get(k) != a.owners[k]
    }
