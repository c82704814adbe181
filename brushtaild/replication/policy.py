"""The safety rules: which addresses a site may hand out, and for how long.

No address is ever held by two clients at once because (docs/STATE.md has the proof):
1. A site gives an address to a new client only in a block it owns (`may_allocate`), and
   only once every expiry any site may have given the previous client has passed, plus
   `max_skew` for the clocks: the owner-acknowledged expiry plus `extension_bound`.
2. A site answering a client whose address it does not own extends the lease at most
   `extension_bound` past the expiry the owner last acknowledged (`extension_limit`).
3. The owner raises the acknowledged expiry (`acknowledgement`) of what it allocates and of
   the extensions it learns of; nobody else does. So the owner's acknowledged expiry of an
   address is the highest there is, and every ACK anywhere ends by it plus the bound.
4. Ownership moves only with the owner's agreement (`hand_over`: the new owner allocates
   once it knows every expiry the old one acknowledged) or after the owner has been silent
   for `lost_after`, longer than any lease it can have given (`evict`).
"""

import math
from dataclasses import replace

from brushtaild.engine.leases import LeaseState
from brushtaild.replication.blocks import Block, BlockLayout
from brushtaild.replication.params import Params
from brushtaild.replication.state import Binding, Ownership, State


class EvictionRefused(Exception):
    """The site was heard from too recently to be declared lost."""


class Policy:
    """The rules as one site applies them to its replica's state (which it only reads)."""

    def __init__(
        self,
        site: str,
        layout: BlockLayout,
        params: Params,
        state: State,
        started_ms: int,
        blind_until_ms: int = 0,
    ) -> None:
        """`blind_until_ms`: the site allocates nothing before then (replica.py: a site
        that lost its persisted state, for `lost_after`)."""
        self.site = site
        self.layout = layout
        self.params = params
        self.state = state
        self._lost_after_ms = math.ceil(params.lost_after * 1000)
        self._extension_ms = math.ceil(params.extension_bound * 1000)
        # When each site was last heard from since this replica started. An eviction
        # counts a site not heard from since as heard at the start (a restart forgets, so
        # the operator waits `lost_after` again); a block evicted to this site waits for
        # what this site heard itself, on top of what the evicting site heard.
        self.started_ms = started_ms
        self.blind_until_ms = blind_until_ms
        self.last_heard: dict[str, int] = {}
        # Blocks found ready under a given register: readiness never goes back.
        self._ready: dict[int, Ownership] = {}

    # Ownership ----------------------------------------------------------------------------

    def owner(self, block: Block) -> Ownership:
        register = self.state.owners.get(block.first)
        if register is None:
            return Ownership(0, self.layout.initial_owner(block), "", 0, 0)
        return register

    def owns(self, block: Block, now_ms: int) -> bool:
        """Whether this site owns `block` and may allocate in it now: a block handed over
        once it knows what the old owner acknowledged; an evicted site's once `lost_after`
        has passed since anyone here or at the evicting site heard from it."""
        register = self.owner(block)
        if register.owner != self.site or now_ms < self.blind_until_ms:
            return False
        if register.epoch == 0 or self._ready.get(block.first) == register:
            return True
        ready = self.acknowledged_sum(block) >= register.summary and now_ms >= register.ready_at_ms
        if register.ready_at_ms:
            heard = self.last_heard.get(register.previous, 0)
            ready = ready and now_ms >= heard + self._lost_after_ms
        if ready:
            self._ready[block.first] = register
        return ready

    def owned_blocks(self, now_ms: int) -> list[Block]:
        """The blocks this site may allocate in now (for the allocator's ranges)."""
        return [b for b in self.layout.blocks() if self.owns(b, now_ms)]

    def acknowledged_sum(self, block: Block) -> int:
        bindings = self.state.bindings
        return sum(
            b.owner_expires_ms
            for address in range(block.first, block.last + 1)
            if (b := bindings.get(address)) is not None
        )

    def hand_over(self, block: Block, to: str, now_ms: int) -> Ownership:
        """The register that gives `block` to `to`; from the moment it is merged here,
        this site neither allocates in the block nor acknowledges in it."""
        if to not in self.layout.sites or to == self.site:
            raise ValueError(f"cannot hand a block to {to!r}")
        if not self.owns(block, now_ms):
            raise ValueError(f"block {block.first:#x} is not this site's to hand over")
        epoch = self.owner(block).epoch + 1
        return Ownership(epoch, to, self.site, self.acknowledged_sum(block), 0)

    def evict(self, lost: str, now_ms: int) -> dict[int, Ownership]:
        """The registers that hand every block of `lost` to the other sites (rendezvous
        hashing over the sites not lost), for the operator's command. Refused unless
        `lost` has been silent for `lost_after`: whatever it gave out has expired then."""
        if lost not in self.layout.sites or lost == self.site:
            raise ValueError(f"cannot evict {lost!r}")
        heard = self.last_heard.get(lost, self.started_ms)
        if now_ms < heard + self._lost_after_ms:
            wait = (heard + self._lost_after_ms - now_ms) / 1000
            raise EvictionRefused(f"{lost} was heard from too recently: wait {wait:.0f} s")
        gone = {r.previous for r in self.state.owners.values() if r.ready_at_ms} | {lost}
        registers = {}
        for block in self.layout.blocks():
            register = self.owner(block)
            if register.owner == lost:
                to = self.layout.successor(block, frozenset(gone))
                ready_at = heard + self._lost_after_ms
                registers[block.first] = Ownership(register.epoch + 1, to, lost, 0, ready_at)
        return registers

    # Leases -------------------------------------------------------------------------------

    def may_allocate(self, address: int, client_id: bytes, now: float) -> bool:
        """Whether this site may give `address` to `client_id` now: in a block it owns,
        and either the client's own or past every expiry the previous client may hold
        (plus the extension bound and the clock skew). An address outside every block is
        a host's fixed address, which only that host is given: its own binding decides."""
        now_ms = math.floor(now * 1000)
        block = self.layout.block_of(address)
        if block is not None and not self.owns(block, now_ms):
            return False
        binding = self.state.bindings.get(address)
        if binding is None or self._holds(binding, client_id):
            return True
        return now_ms >= binding.held_until_ms + self.params.reuse_margin_ms

    def extension_limit(self, address: int, client_id: bytes, now: float) -> float:
        """The latest expiry (Unix seconds) this site may give `client_id` on `address`:
        unbounded where it may allocate the address to the client; for a client whose
        address is in another site's block, `extension_bound` past what the owner last
        acknowledged; 0 (NAK it) if the client holds no bound lease there."""
        if self.may_allocate(address, client_id, now):
            return math.inf
        block = self.layout.block_of(address)
        binding = self.state.bindings.get(address)
        if (
            block is None
            or binding is None
            or binding.state is not LeaseState.BOUND
            or not self._holds(binding, client_id)
        ):
            return 0.0
        return (binding.owner_expires_ms + self._extension_ms) / 1000

    @staticmethod
    def _holds(binding: Binding, client_id: bytes) -> bool:
        return binding.client_id == client_id and binding.state is not LeaseState.DECLINED

    def acknowledgement(self, binding: Binding, now_ms: int) -> Binding | None:
        """The owner's acknowledgement of an expiry it learns of (its own, or a roaming
        extension from another site), or None if it is not this site's to acknowledge."""
        if binding.expires_ms <= binding.owner_expires_ms or not binding.occupies:
            return None
        block = self.layout.block_of(binding.address)
        if block is not None and not self.owns(block, now_ms):
            return None
        return replace(binding, owner_expires_ms=binding.expires_ms)
