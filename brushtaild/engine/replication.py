"""What the engine asks of multi-site replication, as a protocol: the engine stays sans-IO
and never imports the replication package (brushtaild.replication.replica.Replica
satisfies it; tests use fakes).

docs/STATE.md, "How the engine applies the rules", says where the engine asks each.
"""

from typing import Protocol


class Replication(Protocol):
    @property
    def block_size(self) -> int:
        """Addresses in one block: every range of every pool is cut into blocks of this
        many from its first address (the last block of a range may be shorter), and a
        block is owned whole, so the allocators skip a block that is not ours at once."""
        ...

    def may_allocate(self, address: int, client_id: bytes, now: float) -> bool:
        """Whether `address` may go to `client_id` as a new binding now: in a block this
        site owns, past every expiry the previous client may hold (plus the bounds)."""
        ...

    def extension_limit(self, address: int, client_id: bytes, now: float) -> float:
        """The latest expiry (Unix seconds) this site may give `client_id` on `address`:
        infinite where it may allocate it, 0 where the client holds no bound lease."""
        ...

    def owns(self, address: int, now: float) -> bool:
        """Whether `address` is in a block this site owns and may allocate in now (an
        address outside every block, a host's fixed address, counts as owned)."""
        ...
