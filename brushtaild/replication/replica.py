"""One site's replica: local changes out as deltas, peers' messages in, anti-entropy rounds.

Sans-IO: the caller passes the time and the bytes in (`local_update`, `receive`, `tick`)
and sends the returned messages to the named peers over DTLS; it installs the bindings a
merge changed in its lease table, withdraws conflict losers, and persists the state.

Deltas go to every peer at once and are never retransmitted: anti-entropy repairs what
was lost. Each `tick` starts a round with the next peer in turn: up to `digest_messages`
digests, each the hashes of our next DIGEST_ENTRIES buckets. The peer answers with its
entries of the buckets we have nothing in, and with a detail (a hash per address) of each
bucket that differs; for those we send our bindings that differ and ask for theirs. So only
what differs crosses, both ways, and each answer is at most about `repair_messages`
messages: a peer far behind is brought back a bounded amount at a time, while both keep
serving. So a peer that was down or cut
off is brought back a bounded amount at a time, while both keep serving.
"""

import itertools
import math
from dataclasses import dataclass, field

from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.replication.blocks import BlockLayout
from brushtaild.replication.digest import Digests
from brushtaild.replication.hlc import ZERO, Hlc, HybridClock
from brushtaild.replication.params import Params
from brushtaild.replication.policy import Policy
from brushtaild.replication.state import Binding, Conflict, Merged, Ownership, State, to_ms
from brushtaild.replication.wire import (
    DIGEST_ENTRIES,
    REQUEST_ENTRIES,
    Codec,
    DecodeError,
    Delta,
    Detail,
    Digest,
    Request,
)

# Bindings per repair message, roughly: what `repair_messages` is turned into.
_ENTRIES_PER_MESSAGE = 10


@dataclass(frozen=True, slots=True)
class Outgoing:
    peer: str
    payload: bytes


@dataclass(slots=True)
class Received:
    """What a message did: messages to send, bindings and registers the merge changed
    (to install), and the conflicts it met (to withdraw each loser, NAK it, count it)."""

    messages: list[Outgoing] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)
    owners: list[tuple[int, Ownership]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass(slots=True)
class Snapshot:
    """What a site persists, and restarts from."""

    state: State
    clock: Hlc = ZERO
    # A site recovering from a lost disk allocates nothing before this (Unix ms), across
    # restarts too.
    blind_until_ms: int = 0


@dataclass(slots=True)
class Counters:
    deltas_sent: int = 0
    deltas_received: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    anti_entropy_rounds: int = 0
    repaired_entries: int = 0  # bindings sent in answer to a digest or a request
    conflicts: int = 0
    # Refused messages, by reason.
    malformed: int = 0  # includes another layout or protocol version
    unknown_peer: int = 0
    wrong_sender: int = 0  # the message names a site other than the authenticated peer
    too_far_ahead: int = 0  # messages and bindings stamped beyond max_skew ahead of us


class Replica:
    def __init__(
        self,
        site: str,
        layout: BlockLayout,
        params: Params,
        snapshot: Snapshot | None,
        now: float,
        recovering: bool = False,
    ) -> None:
        """`snapshot`: the state persisted before a restart, None on a first start;
        `recovering`: a first start of a site that served before (its disk was lost): it
        allocates nothing for `lost_after`, by when every lease it gave before is over,
        since it cannot learn them all from its peers."""
        if site not in layout.sites:
            raise ValueError(f"site {site!r} is not in the layout")
        self.site = site
        self.layout = layout
        self.params = params
        self.state = snapshot.state.copy() if snapshot is not None else State()
        self.clock = HybridClock(
            site, math.ceil(params.max_skew * 1000), snapshot.clock if snapshot else ZERO
        )
        blind_until = snapshot.blind_until_ms if snapshot is not None else 0
        if recovering:
            blind_until = _ms(now) + math.ceil(params.lost_after * 1000)
        self.policy = Policy(site, layout, params, self.state, _ms(now), blind_until)
        self.codec = Codec(layout)
        self.digests = Digests(self.codec)
        for binding in self.state.bindings.values():
            self.digests.binding(binding)
        for block, register in self.state.owners.items():
            self.digests.owner(block, None, register)
        self.peers = tuple(s for s in layout.sites if s != site)
        self.counters = Counters()
        self._cursor = dict.fromkeys(self.peers, 0)
        self._turn = 0
        self._next_round = now

    def peers_up(self, now: float) -> list[str]:
        """The peers heard from lately (for STATUS and the peers-up gauge): each peer's
        rounds reach this site once every len(peers) intervals, so within three times that."""
        window = 3 * len(self.peers) * self.params.anti_entropy_interval * 1000
        heard = self.policy.last_heard
        return [p for p in self.peers if p in heard and _ms(now) - heard[p] <= window]

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state.copy(), self.clock.last, self.policy.blind_until_ms)

    # The lease table's side ---------------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self.layout.block_size

    def may_allocate(self, address: int, client_id: bytes, now: float) -> bool:
        return self.policy.may_allocate(address, client_id, now)

    def owns(self, address: int, now: float) -> bool:
        """Whether `address` is in a block this site may allocate in now (an address
        outside every block, a host's fixed address, counts as owned): elsewhere the
        engine only extends a roaming client, up to `extension_limit`."""
        block = self.layout.block_of(address)
        return block is None or self.policy.owns(block, _ms(now))

    def extension_limit(self, address: int, client_id: bytes, now: float) -> float:
        return self.policy.extension_limit(address, client_id, now)

    def local_update(self, lease: Lease, now: float) -> list[Outgoing]:
        """Replicate a change the lease table made (a binding, renewal, release, decline or
        revocation); the deltas to send. The table has applied the policy: a new client
        only where `may_allocate`, a roaming client only up to `extension_limit`.

        The client keeps its tenure while the address stays its own; a quarantine (the
        table's record without a client) stays the tenure of the client that declined."""
        now_ms = _ms(now)
        current = self.state.bindings.get(lease.address)
        declined = lease.state is LeaseState.DECLINED
        same = current is not None and (declined or current.client_id == lease.client_id)
        if current is not None and not same and not lease.occupies:
            # The end of a record the replicated state already gave another client (the
            # table learns of a conflict's winner after the fact): nothing to tell.
            return []
        stamp = self.clock.now(now_ms)
        expires_ms = to_ms(lease.expires)
        owner_expires = current.owner_expires_ms if current is not None and same else 0
        binding = Binding(
            address=lease.address,
            tenure=current.tenure if current is not None and same else stamp,
            client_id=current.client_id if current is not None and same else lease.client_id,
            stamp=stamp,
            hwaddr=lease.hwaddr,
            pool=lease.pool,
            state=lease.state,
            expires_ms=expires_ms,
            owner_expires_ms=owner_expires,
            vlans=lease.vlans,
            relay_info=lease.relay_info,
            prl=lease.prl,
        )
        acknowledged = self.policy.acknowledgement(binding, now_ms)
        merged = self._apply(State({lease.address: acknowledged or binding}))
        return self._broadcast(merged.bindings, [], now_ms)

    # Operator -----------------------------------------------------------------------------

    def evict(self, lost: str, now: float) -> list[Outgoing]:
        """Hand every block of the lost site to the others (EvictionRefused if it was
        heard from within `lost_after`)."""
        registers = self.policy.evict(lost, _ms(now))
        merged = self._apply(State(owners=registers))
        return self._broadcast([], merged.owners, _ms(now))

    def hand_over(self, block: int, to: str, now: float) -> list[Outgoing]:
        """Give one of this site's blocks to another site (ValueError if not ours)."""
        found = self.layout.block(block)
        if found is None:
            raise ValueError(f"no block starts at {block:#x}")
        register = self.policy.hand_over(found, to, _ms(now))
        merged = self._apply(State(owners={block: register}))
        return self._broadcast([], merged.owners, _ms(now))

    # Peers --------------------------------------------------------------------------------

    def receive(self, peer: str, payload: bytes, now: float) -> Received:
        """Handle one message from the authenticated `peer`."""
        received = Received()
        if peer not in self._cursor:
            self.counters.unknown_peer += 1
            return received
        self.counters.bytes_received += len(payload)
        try:
            message = self.codec.decode(payload)
        except DecodeError:
            self.counters.malformed += 1
            return received
        if message.sent.site != peer:
            self.counters.wrong_sender += 1
            return received
        now_ms = _ms(now)
        if not self.clock.observe(message.sent, now_ms):
            self.counters.too_far_ahead += 1
            return received
        self.policy.last_heard[peer] = now_ms
        if isinstance(message, Delta):
            self._merge_delta(self._bounded(message, now_ms), now_ms, received)
        elif isinstance(message, Digest):
            self._answer_digest(peer, message, now_ms, received)
        elif isinstance(message, Detail):
            self._answer_detail(peer, message, now_ms, received)
        else:
            self._answer_request(peer, message, now_ms, received)
        return received

    def _bounded(self, delta: Delta, now_ms: int) -> Delta:
        """The delta without the bindings stamped beyond `max_skew` ahead of our clock
        (counted): a site whose clock runs ahead, relayed by another, cannot drag ours
        along. They come back with anti-entropy, and are taken once our clock is near."""
        acceptable = self.clock.acceptable
        bindings = tuple(
            b
            for b in delta.bindings
            if acceptable(b.tenure, now_ms) and acceptable(b.stamp, now_ms)
        )
        self.counters.too_far_ahead += len(delta.bindings) - len(bindings)
        if bindings:
            self.clock.observe(max(max(b.tenure, b.stamp) for b in bindings), now_ms)
        return Delta(delta.sent, bindings, delta.owners)

    def _merge_delta(self, delta: Delta, now_ms: int, received: Received) -> None:
        self.counters.deltas_received += 1
        merged = self._apply(State({b.address: b for b in delta.bindings}, dict(delta.owners)))
        received.bindings = merged.bindings
        received.owners = merged.owners
        received.conflicts = merged.conflicts
        self.counters.conflicts += len(merged.conflicts)
        acks = [
            ack
            for ack in (self.policy.acknowledgement(b, now_ms) for b in merged.bindings)
            if ack is not None
        ]
        if acks:
            acked = self._apply(State({b.address: b for b in acks}))
            received.messages += self._broadcast(acked.bindings, [], now_ms)

    def _answer_digest(self, peer: str, digest: Digest, now_ms: int, received: Received) -> None:
        """Send whole the buckets in the digest's range they have nothing in, ask for
        those we have nothing in, and for every other bucket that differs send our
        per-address detail."""
        mine = self.digests.between(digest.lo, digest.hi)
        theirs = dict(digest.buckets)
        received.messages += self._repair(peer, sorted(mine.keys() - theirs.keys()), now_ms)
        lacking = sorted(theirs.keys() - mine.keys())[:REQUEST_ENTRIES]
        if lacking:
            request = Request(self.clock.now(now_ms), buckets=tuple(lacking))
            received.messages.append(self._send(peer, self.codec.encode(request)))
        differ = sorted(b for b, h in theirs.items() if b in mine and mine[b] != h)
        # As many buckets as the answers to the details may fill about `repair_messages`
        # messages with, judging by our own buckets' sizes.
        budget = self.params.repair_messages * _ENTRIES_PER_MESSAGE
        details: list[Outgoing] = []
        load = 0
        for bucket in differ:
            load += len(self.digests.members.get(bucket, ()))
            if details and (load > budget or len(details) >= self.params.repair_messages):
                break
            details += self._detail(peer, bucket, now_ms)
        received.messages += details

    def _detail(self, peer: str, bucket: int, now_ms: int) -> list[Outgoing]:
        """Our hash of each binding in `bucket`, DIGEST_ENTRIES a message; the first
        message, covering addresses from 0, carries the block's register."""
        members = self.digests.members.get(bucket, {})
        addresses = sorted(members)
        starts = [0, *addresses[DIGEST_ENTRIES::DIGEST_ENTRIES], 1 << 32]
        messages = []
        for n, (lo, hi) in enumerate(itertools.pairwise(starts)):
            chunk = addresses[n * DIGEST_ENTRIES : (n + 1) * DIGEST_ENTRIES]
            owner = self.state.owners.get(bucket) if n == 0 else None
            entries = tuple((a, members[a]) for a in chunk)
            detail = Detail(self.clock.now(now_ms), bucket, lo, hi, owner, entries)
            messages.append(self._send(peer, self.codec.encode(detail)))
        return messages

    def _answer_detail(self, peer: str, detail: Detail, now_ms: int, received: Received) -> None:
        """Send our bindings that differ from theirs in the detail's range, and our
        register if it is higher; ask for theirs that differ from ours."""
        if detail.owner is not None:
            merged = self._apply(State(owners={detail.bucket: detail.owner}))
            received.owners += merged.owners
        members = self.digests.members.get(detail.bucket, {})
        mine = {a: h for a, h in members.items() if detail.lo <= a < detail.hi}
        theirs = dict(detail.bindings)
        push = sorted(a for a, h in mine.items() if theirs.get(a) != h)
        wanted = sorted(a for a, h in theirs.items() if mine.get(a) != h)[:REQUEST_ENTRIES]
        owners = []
        register = self.state.owners.get(detail.bucket)
        if detail.lo == 0 and register is not None and register != detail.owner:
            owners.append((detail.bucket, register))
        received.messages += self._push(peer, push, owners, now_ms)
        if wanted:
            request = Request(self.clock.now(now_ms), addresses=tuple(wanted))
            received.messages.append(self._send(peer, self.codec.encode(request)))

    def _answer_request(self, peer: str, request: Request, now_ms: int, received: Received) -> None:
        received.messages += self._repair(peer, list(request.buckets[:REQUEST_ENTRIES]), now_ms)
        wanted = [a for a in request.addresses[:REQUEST_ENTRIES] if a in self.state.bindings]
        received.messages += self._push(peer, wanted, [], now_ms)

    def _repair(self, peer: str, buckets: list[int], now_ms: int) -> list[Outgoing]:
        """Our entries of `buckets`, which the peer has nothing in, up to about
        `repair_messages` messages' worth. A bucket cut short is compared address by
        address next time (the peer then has something in it)."""
        budget = self.params.repair_messages * _ENTRIES_PER_MESSAGE
        addresses: list[int] = []
        owners: list[tuple[int, Ownership]] = []
        for bucket in buckets:
            if len(addresses) >= budget:
                break
            addresses += sorted(self.digests.members.get(bucket, ()))
            register = self.state.owners.get(bucket)
            if register is not None:
                owners.append((bucket, register))
        return self._push(peer, addresses, owners, now_ms)

    def _push(
        self, peer: str, addresses: list[int], owners: list[tuple[int, Ownership]], now_ms: int
    ) -> list[Outgoing]:
        """Our bindings of `addresses` (the first of them, about `repair_messages`
        messages' worth) and `owners`, as deltas to `peer`."""
        budget = self.params.repair_messages * _ENTRIES_PER_MESSAGE
        bindings = [self.state.bindings[a] for a in addresses[:budget]]
        if not bindings and not owners:
            return []
        self.counters.repaired_entries += len(bindings)
        payloads = self.codec.encode_delta(self.clock.now(now_ms), bindings, owners)
        return [self._send(peer, p) for p in payloads]

    def tick(self, now: float) -> list[Outgoing]:
        """Start the next anti-entropy round when it is due."""
        if not self.peers or now < self._next_round:
            return []
        self._next_round = now + self.params.anti_entropy_interval
        peer = self.peers[self._turn % len(self.peers)]
        self._turn += 1
        self.counters.anti_entropy_rounds += 1
        messages = []
        for _ in range(self.params.digest_messages):
            lo, hi, buckets = self.digests.chunk(self._cursor[peer], DIGEST_ENTRIES)
            self._cursor[peer] = hi if hi < 1 << 32 else 0
            digest = Digest(self.clock.now(_ms(now)), lo, hi, tuple(buckets))
            messages.append(self._send(peer, self.codec.encode(digest)))
            if not self._cursor[peer]:
                break  # the whole address space this round
        return messages

    # Internals ----------------------------------------------------------------------------

    def _apply(self, delta: State) -> Merged:
        """Merge `delta` into the state, keeping the digests in step."""
        old_owners = {b: self.state.owners.get(b) for b in delta.owners}
        merged = self.state.merge(delta)
        for binding in merged.bindings:
            self.digests.binding(binding)
        for block, register in merged.owners:
            self.digests.owner(block, old_owners[block], register)
        return merged

    def _broadcast(
        self, bindings: list[Binding], owners: list[tuple[int, Ownership]], now_ms: int
    ) -> list[Outgoing]:
        if not bindings and not owners:
            return []
        payloads = self.codec.encode_delta(self.clock.now(now_ms), bindings, owners)
        self.counters.deltas_sent += len(payloads)
        return [self._send(peer, p) for peer in self.peers for p in payloads]

    def _send(self, peer: str, payload: bytes) -> Outgoing:
        self.counters.messages_sent += 1
        self.counters.bytes_sent += len(payload)
        return Outgoing(peer, payload)


def _ms(now: float) -> int:
    return math.floor(now * 1000)
