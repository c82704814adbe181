"""Replicated state: a delta-state CRDT of address bindings and block ownership.

The state is two maps, each a join-semilattice per key, so merging two states is
commutative, associative and idempotent, and a delta (a state holding a few keys) merges
exactly like a full state (tests/property/test_replication_state.py checks each law):

- `bindings`, by address. A binding belongs to one *tenure*: one client's holding of the
  address, named by the stamp (HLC and site) of the change that began it. Two bindings of
  one tenure merge field by field: the newest change's fields (last writer by HLC), the
  later expiry (`expires_ms`, a max-register), and the later owner-acknowledged expiry
  (`owner_expires_ms`, a max-register only the block's owner raises). Two bindings of
  different tenures: the later tenure (HLC, then site name, then client id) wins whole.
  When the two tenures name different clients and the older one was still unexpired when
  the later began, that is a conflict: it is reported with its loser, so the daemon can
  withdraw the losing lease and NAK its client (docs/STATE.md says when one can arise).
- `owners`, by block: the register (epoch, owner, ...) of each block whose ownership has
  changed since the initial, computed one (blocks.py); the higher epoch wins, then the
  owner's name. Only the owner hands a block over, and only the operator's eviction of a
  lost site moves one without its owner (policy.py).

Times are Unix milliseconds (integers, so merges are exact and sums of them too).
"""

import math
from dataclasses import dataclass, field, replace

from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.replication.hlc import Hlc

_OCCUPYING = (LeaseState.BOUND, LeaseState.DECLINED, LeaseState.REVOKED)


def to_ms(seconds: float) -> int:
    """Wall seconds as milliseconds, rounded up: a replicated expiry is never earlier
    than the one the client was given."""
    return math.ceil(seconds * 1000)


@dataclass(frozen=True, slots=True)
class Binding:
    """One address's binding to one client, as replicated."""

    address: int
    tenure: Hlc  # the change that began this client's holding of the address
    client_id: bytes
    stamp: Hlc  # the change that set the fields below `stamp`
    hwaddr: bytes
    pool: str
    state: LeaseState
    expires_ms: int  # the latest expiry any site gave the client in this tenure
    owner_expires_ms: int  # the latest the block's owner acknowledged (0: none yet)
    vlans: tuple[int, ...] = ()
    relay_info: bytes = b""  # option 82 as stashed, opaque here
    prl: bytes | None = None

    @property
    def key(self) -> tuple[Hlc, bytes]:
        """The tenure's rank: the later tenure wins whole."""
        return self.tenure, self.client_id

    @property
    def held_until_ms(self) -> int:
        """The latest time this tenure's client may have been told it holds the address,
        as far as this binding knows."""
        return max(self.expires_ms, self.owner_expires_ms)

    @property
    def occupies(self) -> bool:
        return self.state in _OCCUPYING

    def _fields(self) -> tuple[object, ...]:
        """The last-writer-wins order of two changes of one tenure: the stamp, then the
        fields themselves, so that even equal stamps (impossible from real clocks) merge
        the same way in any order."""
        prl = (self.prl is not None, self.prl or b"")
        return self.stamp, self.hwaddr, self.pool, self.state, self.vlans, self.relay_info, prl

    def lease(self) -> Lease:
        """The lease table's record of this binding (a quarantine carries no client)."""
        return Lease(
            address=self.address,
            client_id=b"" if self.state is LeaseState.DECLINED else self.client_id,
            hwaddr=self.hwaddr,
            pool=self.pool,
            state=self.state,
            expires=self.expires_ms / 1000,
            updated=self.stamp.wall / 1000,
            prl=self.prl,
            vlans=self.vlans,
            relay_info=self.relay_info,
        )


def join_bindings(a: Binding, b: Binding) -> Binding:
    """The least upper bound of two bindings of one address."""
    if a.key != b.key:
        return a if a.key > b.key else b
    newest = a if a._fields() >= b._fields() else b
    expires = max(a.expires_ms, b.expires_ms)
    owner_expires = max(a.owner_expires_ms, b.owner_expires_ms)
    if newest.expires_ms == expires and newest.owner_expires_ms == owner_expires:
        return newest
    return replace(newest, expires_ms=expires, owner_expires_ms=owner_expires)


@dataclass(frozen=True, slots=True, order=True)
class Ownership:
    """Who owns a block, once it has moved from its initial owner."""

    epoch: int  # 0 is the initial owner, never stored; each move adds one
    owner: str
    previous: str  # the owner it was taken from
    # A handover: the sum of `owner_expires_ms` over the block's bindings when the previous
    # owner handed it over; the new owner allocates only once its own sum has reached it,
    # that is once it knows every expiry the previous owner acknowledged. 0 for an eviction.
    summary: int
    # An eviction: the time before which the new owner may not allocate (the lost site's
    # last sign of life, as the evicting site saw it, plus `lost_after`). 0 for a handover.
    ready_at_ms: int


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two clients' bindings of one address overlapped in time; every site keeps `winner`."""

    winner: Binding
    loser: Binding


def conflict(a: Binding, b: Binding) -> Conflict | None:
    """The conflict between two bindings of one address, if they are one."""
    if a.client_id == b.client_id or a.key == b.key:
        return None
    older, newer = (a, b) if a.key < b.key else (b, a)
    if older.occupies and older.held_until_ms > newer.tenure.wall:
        return Conflict(newer, older)
    return None


@dataclass(slots=True)
class Merged:
    """What a merge changed: the new value of each binding and register that moved, and
    the conflicts met."""

    bindings: list[Binding] = field(default_factory=list)
    owners: list[tuple[int, Ownership]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass(slots=True)
class State:
    """A replica's state, or a delta of it (the same thing with fewer keys)."""

    bindings: dict[int, Binding] = field(default_factory=dict)
    owners: dict[int, Ownership] = field(default_factory=dict)  # by block (first address)

    def copy(self) -> "State":
        return State(dict(self.bindings), dict(self.owners))

    def merge(self, delta: "State") -> Merged:
        """Join `delta` into this state, in place."""
        merged = Merged()
        for address, incoming in delta.bindings.items():
            current = self.bindings.get(address)
            if current is None:
                joined = incoming
            else:
                joined = join_bindings(current, incoming)
                found = conflict(current, incoming)
                if found is not None:
                    merged.conflicts.append(found)
            if joined != current:
                self.bindings[address] = joined
                merged.bindings.append(joined)
        for block, register in delta.owners.items():
            current_owner = self.owners.get(block)
            if current_owner is None or register > current_owner:
                self.owners[block] = register
                merged.owners.append((block, register))
        return merged


def join(a: State, b: State) -> State:
    """The join of two states, leaving both alone."""
    joined = a.copy()
    joined.merge(b)
    return joined
