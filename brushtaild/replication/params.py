"""The replication's settings, the same on every site."""

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Params:
    """The replication's timing, in seconds; the same on every site."""

    # The longest lease any pool or class gives.
    longest_lease: float
    # How far past the owner's acknowledged expiry a site may extend a roaming client's
    # lease while it cannot reach the owner.
    extension_bound: float
    # The largest difference between two sites' wall clocks: the owner waits this much
    # longer before reusing an address, and a peer's stamp further ahead is refused.
    max_skew: float
    # How long a site must have been silent before the operator may hand its blocks to
    # the others: more than any lease it can have given or any site extended.
    lost_after: float
    # How often a site starts an anti-entropy round with its next peer.
    anti_entropy_interval: float = 1.0
    # Digests a round sends (each covers 80 buckets): a sweep of the whole state takes
    # buckets / (80 * digest_messages) rounds per peer.
    digest_messages: int = 8
    # The most messages that answer one digest (or request) in one direction: a peer far
    # behind catches up over several rounds instead of receiving the whole state at once.
    repair_messages: int = 64

    def __post_init__(self) -> None:
        floor = self.longest_lease + self.extension_bound + self.max_skew
        if self.lost_after < floor:
            raise ValueError(
                f"lost_after {self.lost_after} s is below the longest lease plus the "
                f"extension bound plus the clock skew ({floor} s)"
            )
        if min(self.extension_bound, self.max_skew) < 0:
            raise ValueError("extension_bound and max_skew cannot be negative")

    @property
    def reuse_margin_ms(self) -> int:
        return math.ceil((self.extension_bound + self.max_skew) * 1000)
