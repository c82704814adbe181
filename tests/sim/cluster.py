"""A deterministic simulator of a brushtail cluster: many sites' replicas in one process.

One seed makes one schedule. Time is simulated; each step moves it on a little, delivers
the messages due, runs every live site's anti-entropy tick and does one random thing:
a client asks a site (mostly its own, sometimes another: roaming), releases, the network
splits into partitions or heals, a site crashes (to restart later from what it persisted
or, now and then, with a new empty disk; or lost for good and evicted by the operator
once the bound allows), a wall clock steps, an owner hands a block over. The network
loses, duplicates, delays and so reorders messages. Each site's wall clock is off the
true time by up to `max_skew / 2`.

Sites decide as the lease table will: they renew, extend and allocate only as
`Replica.may_allocate` and `Replica.extension_limit` allow, so the simulator tests the
real rules. Clients remember what they were told, in true time; after every step the
check is the real-world one: no two clients hold an unexpired ACK for one address. At the
end the network heals, crashed sites restart, and all live sites must converge to the
same state digest within a bounded number of anti-entropy rounds.
"""

import heapq
import math
import random
from dataclasses import dataclass, field, replace

from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.replication.blocks import BlockLayout
from brushtaild.replication.params import Params
from brushtaild.replication.policy import EvictionRefused
from brushtaild.replication.replica import Outgoing, Replica, Snapshot
from brushtaild.replication.state import State
from brushtaild.replication.wire import MAX_PAYLOAD

POOL = "p"
FIRST = 0xC6120000  # 198.18.0.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    sites: int = 10
    clients: int = 120
    addresses: int = 160
    block_size: int = 4
    steps: int = 300
    lease_time: float = 30.0
    extension_bound: float = 10.0
    max_skew: float = 1.0
    loss: float = 0.1
    duplicate: float = 0.05
    max_delay: float = 2.0
    step_time: float = 0.5  # mean
    quiesce_rounds: int = 200  # anti-entropy intervals allowed to converge
    # The operator evicts live sites too, ones silent for `lost_after` behind a partition
    # (partitions then last longer): the one way conflicts arise. Safety is then not
    # expected; detection is: every address two clients held is reported as a conflict.
    operator_mistakes: bool = False

    def params(self) -> Params:
        lost_after = self.lease_time + self.extension_bound + self.max_skew
        return Params(
            self.lease_time, self.extension_bound, self.max_skew, lost_after, 1.0, repair_messages=8
        )


@dataclass(slots=True)
class Site:
    name: str
    replica: Replica | None  # None while down
    offset: float  # its wall clock minus the true time
    persisted: Snapshot
    crashed_at: float = 0.0
    lost: bool = False  # crashed for good: evicted, never restarts

    def wall(self, now: float) -> float:
        return now + self.offset


@dataclass(slots=True)
class Client:
    client_id: bytes
    home: int
    address: int = 0  # 0: none
    until: float = 0.0  # true time its ACK runs out


@dataclass(slots=True)
class Result:
    steps: int = 0
    violations: list[str] = field(default_factory=list)
    acks: int = 0
    naks: int = 0
    roams: int = 0
    conflicts: int = 0
    conflicted: set[int] = field(default_factory=set)  # addresses reported in conflict
    double_held: set[int] = field(default_factory=set)  # addresses two clients held at once
    messages: int = 0
    evictions: int = 0
    handovers: int = 0
    disks_lost: int = 0
    converged: bool = False


class Simulation:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.params = config.params()
        self.lost_after = self.params.lost_after
        names = [f"site{n:02d}" for n in range(config.sites)]
        last = FIRST + config.addresses - 1
        self.layout = BlockLayout(names, [(POOL, FIRST, last)], config.block_size)
        self.now = 1_800_000_000.0
        self.sites = [Site(name, None, self._skew(), Snapshot(State())) for name in names]
        for site in self.sites:
            site.replica = Replica(site.name, self.layout, self.params, None, site.wall(self.now))
        self.clients = [
            Client(b"\x01" + n.to_bytes(6, "big"), self.rng.randrange(config.sites))
            for n in range(config.clients)
        ]
        self.groups: dict[str, int] = {}  # partition of each site; empty: none
        self.queue: list[tuple[float, int, str, str, bytes]] = []
        self._seq = 0
        self.result = Result()

    def _skew(self) -> float:
        half = self.config.max_skew / 2
        return self.rng.uniform(-half, half)

    # Running ------------------------------------------------------------------------------

    def run(self) -> Result:
        actions = [
            (self.client_request, 60),
            (self.client_release, 6),
            (self.partition, 3),
            (self.heal, 0.2 if self.config.operator_mistakes else 2),
            (self.crash, 2),
            (self.restart, 3),
            (self.lose_site, 1),
            (self.evict, 3),
            (self.step_clock, 2),
            (self.hand_over, 3),
        ]
        funcs = [a for a, _ in actions]
        weights = [w for _, w in actions]
        for _ in range(self.config.steps):
            self.advance(self.rng.expovariate(1 / self.config.step_time))
            self.rng.choices(funcs, weights)[0]()
            self.check()
            self.result.steps += 1
        self.quiesce()
        return self.result

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self.queue and self.queue[0][0] <= self.now:
            _, _, src, dst, payload = heapq.heappop(self.queue)
            self.deliver(src, dst, payload)
        for site in self.sites:
            if site.replica is not None:
                self.send(site, site.replica.tick(site.wall(self.now)))

    def deliver(self, src: str, dst: str, payload: bytes) -> None:
        site = self._site(dst)
        if site.replica is None or self._cut(src, dst):
            return
        received = site.replica.receive(src, payload, site.wall(self.now))
        self.result.conflicts += len(received.conflicts)
        for conflict in received.conflicts:
            self.result.conflicted.add(conflict.winner.address)
            if not self.config.operator_mistakes:
                self.result.violations.append(
                    f"conflict at {dst}: {conflict.winner} beats {conflict.loser}"
                )
        self.send(site, received.messages)

    def send(self, site: Site, messages: list[Outgoing]) -> None:
        for message in messages:
            self.result.messages += 1
            if len(message.payload) > MAX_PAYLOAD:
                self.result.violations.append(f"{len(message.payload)}-byte message")
            if self._cut(site.name, message.peer) or self.rng.random() < self.config.loss:
                continue
            copies = 2 if self.rng.random() < self.config.duplicate else 1
            for _ in range(copies):
                at = self.now + self.rng.uniform(0.001, self.config.max_delay)
                self._seq += 1
                heapq.heappush(
                    self.queue, (at, self._seq, site.name, message.peer, message.payload)
                )

    def _cut(self, a: str, b: str) -> bool:
        return bool(self.groups) and self.groups[a] != self.groups[b]

    def _site(self, name: str) -> Site:
        return self.sites[self.layout.site_index[name]]

    def _up(self) -> list[Site]:
        return [s for s in self.sites if s.replica is not None]

    # Clients ------------------------------------------------------------------------------

    def client_request(self) -> None:
        client = self.rng.choice(self.clients)
        if self.rng.random() < 0.15:
            client.home = self.rng.randrange(len(self.sites))
            self.result.roams += 1
        site = self.sites[client.home]
        replica = site.replica
        if replica is None:
            return
        wall = site.wall(self.now)
        if client.address:
            limit = replica.extension_limit(client.address, client.client_id, wall)
            expires = min(wall + self.config.lease_time, limit)
            if expires > wall:
                self._ack(site, client, client.address, expires)
            else:
                self.result.naks += 1
                client.address = 0
            return
        address = self._known_address(replica, client, wall) or self._free_address(
            replica, client, wall
        )
        if address:
            limit = replica.extension_limit(address, client.client_id, wall)
            self._ack(site, client, address, min(wall + self.config.lease_time, limit))

    def _known_address(self, replica: Replica, client: Client, wall: float) -> int:
        """The address replicated state says is the client's, if this site may renew it."""
        for address, binding in replica.state.bindings.items():
            if (
                binding.client_id == client.client_id
                and binding.state is LeaseState.BOUND
                and replica.extension_limit(address, client.client_id, wall) > wall
            ):
                return address
        return 0

    def _free_address(self, replica: Replica, client: Client, wall: float) -> int:
        for block in replica.policy.owned_blocks(math.floor(wall * 1000)):
            for address in range(block.first, block.last + 1):
                binding = replica.state.bindings.get(address)
                free = binding is None or not binding.occupies or binding.expires_ms < wall * 1000
                if free and replica.may_allocate(address, client.client_id, wall):
                    return address
        return 0

    def _ack(self, site: Site, client: Client, address: int, expires: float) -> None:
        assert site.replica is not None
        wall = site.wall(self.now)
        lease = Lease(address, client.client_id, b"\x02" * 6, POOL, LeaseState.BOUND, expires, wall)
        self.send(site, site.replica.local_update(lease, wall))
        client.address = address
        client.until = expires - site.offset
        self.result.acks += 1

    def client_release(self) -> None:
        client = self.rng.choice(self.clients)
        site = self.sites[client.home]
        if not client.address or site.replica is None:
            return
        binding = site.replica.state.bindings.get(client.address)
        wall = site.wall(self.now)
        if binding is not None and binding.client_id == client.client_id:
            lease = replace(binding.lease(), state=LeaseState.RELEASED, expires=wall, updated=wall)
            self.send(site, site.replica.local_update(lease, wall))
        client.address = 0

    # Faults -------------------------------------------------------------------------------

    def partition(self) -> None:
        parts = self.rng.randint(2, 3)
        self.groups = {s.name: self.rng.randrange(parts) for s in self.sites}

    def heal(self) -> None:
        self.groups = {}

    def crash(self) -> None:
        up = self._up()
        if len(up) > len(self.sites) // 2:
            self._take_down(self.rng.choice(up))

    def _take_down(self, site: Site) -> None:
        """Everything a site applied is on its disk (the lease store commits before the
        ACK), so the snapshot can be taken at the crash."""
        assert site.replica is not None
        site.persisted = site.replica.snapshot()
        site.replica = None
        site.crashed_at = self.now

    def restart(self) -> None:
        """A crashed site comes back from its disk, or now and then with a new, empty one."""
        down = [s for s in self.sites if s.replica is None and not s.lost]
        if down:
            site = self.rng.choice(down)
            if self.rng.random() < 0.2:
                self.result.disks_lost += 1
                self._start(site, None)
            else:
                self._start(site, site.persisted)

    def _start(self, site: Site, persisted: Snapshot | None) -> None:
        wall = site.wall(self.now)
        recovering = persisted is None
        site.replica = Replica(site.name, self.layout, self.params, persisted, wall, recovering)

    def lose_site(self) -> None:
        """A site crashes for good (at most a third of them in one schedule)."""
        lost = sum(s.lost for s in self.sites)
        up = self._up()
        if lost < len(self.sites) // 3 and len(up) > len(self.sites) // 2:
            site = self.rng.choice(up)
            self._take_down(site)
            site.lost = True

    def evict(self) -> None:
        """The operator evicts a site it knows has been down for `lost_after`, from a
        live one (which refuses if it heard from the site within that bound).

        The operator's knowledge is the precondition: a site can only tell how long ago
        it last heard from another, and a site cut off by a partition but still serving
        is silent too (docs/STATE.md: evicting a live site is how conflicts arise)."""
        lost = [s for s in self.sites if s.lost and self.now - s.crashed_at >= self.lost_after]
        up = self._up()
        if self.config.operator_mistakes:
            lost = [s for s in self.sites if s.lost or s.replica is not None]
        if not lost or not up:
            return
        site, gone = self.rng.choice(up), self.rng.choice(lost)
        assert site.replica is not None
        if gone is site:
            return
        try:
            messages = site.replica.evict(gone.name, site.wall(self.now))
        except EvictionRefused:
            return
        if messages:
            self.result.evictions += 1
        self.send(site, messages)

    def step_clock(self) -> None:
        """NTP or an operator steps a wall clock, backwards as often as forwards."""
        self.rng.choice(self.sites).offset = self._skew()

    def hand_over(self) -> None:
        up = self._up()
        if len(up) < 2:
            return
        site, to = self.rng.sample(up, 2)
        assert site.replica is not None
        owned = site.replica.policy.owned_blocks(math.floor(site.wall(self.now) * 1000))
        if owned:
            block = self.rng.choice(owned)
            self.send(site, site.replica.hand_over(block.first, to.name, site.wall(self.now)))
            self.result.handovers += 1

    # Checks -------------------------------------------------------------------------------

    def check(self) -> None:
        """No two clients hold an unexpired ACK for one address (in true time)."""
        holders: dict[int, bytes] = {}
        for client in self.clients:
            if client.address and client.until > self.now:
                other = holders.setdefault(client.address, client.client_id)
                if other != client.client_id:
                    self.result.double_held.add(client.address)
                    if self.config.operator_mistakes:
                        continue
                    self.result.violations.append(
                        f"step {self.result.steps}: {client.address:#x} held by "
                        f"{other.hex()} and {client.client_id.hex()}"
                    )

    def quiesce(self) -> None:
        """Heal, restart the crashed sites, stop losing messages, and wait for every live
        site to hold the same state."""
        self.heal()
        for site in self.sites:
            if site.replica is None and not site.lost:
                self._start(site, site.persisted)
        self.config = replace(self.config, loss=0.0, duplicate=0.0)
        interval = self.params.anti_entropy_interval
        for _ in range(self.config.quiesce_rounds):
            self.advance(interval)
            digests = {s.replica.digests.total() for s in self.sites if s.replica is not None}
            if len(digests) == 1:
                self.result.converged = True
                break
        else:
            self.result.violations.append("live sites did not converge")
        for address in sorted(self.result.double_held - self.result.conflicted):
            self.result.violations.append(f"{address:#x} held by two clients, never reported")
