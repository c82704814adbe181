"""Hybrid logical clock (Kulkarni et al., 2014): wall milliseconds, a logical counter, a site.

Timestamps order every replicated change the same way on every site, and respect causality:
a change made after a site has seen another is stamped after it, whatever the wall clocks
say. The clock never goes back, even when the wall clock steps backwards (the counter
carries on from the highest wall time seen), and a peer whose clock runs far ahead cannot
drag everyone's clock along: a remote stamp more than `max_skew_ms` ahead of our wall clock
is refused (and counted by the replica), not adopted.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Hlc:
    """One timestamp; ordered by wall time, then counter, then site name, so two sites
    never stamp alike and every site orders any two stamps the same way."""

    wall: int  # Unix milliseconds, as far as the clock knew
    logical: int
    site: str


ZERO = Hlc(0, 0, "")


class HybridClock:
    def __init__(self, site: str, max_skew_ms: int, last: Hlc = ZERO) -> None:
        """`last`: the highest stamp this site had issued or seen before a restart, from
        its persisted state, so a restart with a wall clock set back stamps nothing twice."""
        self.site = site
        self.max_skew_ms = max_skew_ms
        self._wall = last.wall
        self._logical = last.logical

    @property
    def last(self) -> Hlc:
        """The highest stamp issued or seen: what to persist."""
        return Hlc(self._wall, self._logical, self.site)

    def now(self, wall_ms: int) -> Hlc:
        """A stamp for a local change (or a message sent) at wall time `wall_ms`."""
        if wall_ms > self._wall:
            self._wall, self._logical = wall_ms, 0
        else:
            self._logical += 1
        return Hlc(self._wall, self._logical, self.site)

    def acceptable(self, remote: Hlc, wall_ms: int) -> bool:
        """Whether `remote` is within `max_skew_ms` of our wall clock (not too far ahead)."""
        return remote.wall <= wall_ms + self.max_skew_ms

    def observe(self, remote: Hlc, wall_ms: int) -> bool:
        """Take in a stamp received from a peer; False if it is refused for being more
        than `max_skew_ms` ahead of our wall clock, which then is not moved (the caller
        counts it). Later local stamps sort after an accepted `remote`."""
        if not self.acceptable(remote, wall_ms):
            return False
        wall = max(self._wall, remote.wall, wall_ms)
        if wall == self._wall and wall == remote.wall:
            logical = max(self._logical, remote.logical) + 1
        elif wall == self._wall:
            logical = self._logical + 1
        elif wall == remote.wall:
            logical = remote.logical + 1
        else:
            logical = 0
        self._wall, self._logical = wall, logical
        return True
