"""Three sites, each a real Server with a real Replica, clients roaming among them, and a
network that loses, duplicates, reorders and partitions: no address is ever held by two
clients at once (as the clients themselves were told, in real time), and once the network
heals and everything is delivered, every site's replicated state is the same.

The engine is wired the way the daemon wires it: every lease a decision writes goes to
`Replica.local_update` and its deltas to the peers; what `Replica.receive` merged goes to
`Server.absorb` (whose own writes go nowhere else); ticks run both. The clock is shared
(true time), so a site's clock is exact.
"""

import math
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import Decision
from brushtaild.engine.server import Server
from brushtaild.replication.blocks import BlockLayout
from brushtaild.replication.params import Params
from brushtaild.replication.replica import Outgoing, Replica
from tests.engine_helpers import INGRESS, SERVER, make_config, make_pool, request

T0 = 1_800_000_000.0
LEASE = 30
SITES = ("a", "b", "c")
FIRST, LAST = "198.18.1.0", "198.18.1.11"  # 12 addresses: 6 blocks of 2 (a 2, b 4, c 6)
POOL = make_pool(first=FIRST, last=LAST, lease_time=LEASE)
CONFIG = make_config(POOL, offer_hold=10, decline_hold=60)
LAYOUT = BlockLayout.of_config(CONFIG, SITES, 2)
PARAMS = Params(LEASE, extension_bound=10, max_skew=1, lost_after=41, anti_entropy_interval=1.0)
CLIENTS = 8


@dataclass(slots=True)
class Held:
    address: int
    until: float  # real time the client was told its lease ends


@dataclass(slots=True)
class Site:
    server: Server
    replica: Replica
    absorbed: int = 0


@dataclass(slots=True)
class Network:
    # (from, message) in flight; delivery takes any of them, so they reorder
    flight: list[tuple[str, Outgoing]] = field(default_factory=list)
    cut: set[frozenset[str]] = field(default_factory=set)


def lease_time(reply: Message) -> int:
    return opt.decode_u32(reply.options[OptionCode.LEASE_TIME])


class ReplicatedEngines(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        replicas = {s: Replica(s, LAYOUT, PARAMS, None, T0) for s in SITES}
        self.sites = {
            s: Site(Server(CONFIG, [], T0, replication=r), r) for s, r in replicas.items()
        }
        self.net = Network()
        self.held: dict[int, Held] = {}  # by client
        self.acks = 0
        self.roams = 0

    # The daemon's part -------------------------------------------------------------------

    def _decided(self, name: str, decision: Decision) -> None:
        """What the daemon does with a decision: each lease written goes to the replica."""
        site = self.sites[name]
        for lease in decision.lease_writes:
            self._send(name, site.replica.local_update(lease, self.now))

    def _send(self, name: str, messages: list[Outgoing]) -> None:
        self.net.flight += [(name, m) for m in messages]

    def _handle(self, name: str, msg: Message) -> Message | None:
        decision = self.sites[name].server.handle(msg, INGRESS, self.now)
        self._decided(name, decision)
        self.sites[name].server.table.check()
        if not decision.replies:
            return None
        return decision.replies[0].message

    def _deliver(self, index: int) -> None:
        sender, message = self.net.flight.pop(index % len(self.net.flight))
        if frozenset((sender, message.peer)) in self.net.cut:
            return  # lost
        site = self.sites[message.peer]
        received = site.replica.receive(sender, message.payload, self.now)
        self._send(message.peer, received.messages)
        if received.bindings:
            decision = site.server.absorb([b.lease() for b in received.bindings], self.now)
            assert decision.skipped == 0
            site.absorbed += len(received.bindings)
            site.server.table.check()

    # Clients ------------------------------------------------------------------------------

    @rule(
        acts=st.lists(
            st.tuples(
                st.sampled_from(["dora", "renew", "renew", "release"]),
                st.integers(0, CLIENTS - 1),
                st.sampled_from(SITES),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def clients(self, acts: list[tuple[str, int, str]]) -> None:
        """A few clients ask (at any site: roaming), between two network events."""
        for op, client, site in acts:
            getattr(self, op)(client, site)

    def dora(self, client: int, site: str) -> None:
        offer = self._handle(site, request(MessageType.DISCOVER, client))
        if offer is None or offer.message_type is not MessageType.OFFER:
            return
        selecting = request(MessageType.REQUEST, client, requested=offer.yiaddr, server_id=SERVER)
        ack = self._handle(site, selecting)
        if ack is not None and ack.message_type is MessageType.ACK:
            self.held[client] = Held(ack.yiaddr, self.now + lease_time(ack))
            self.acks += 1
        elif ack is not None:
            self.held.pop(client, None)

    def renew(self, client: int, site: str) -> None:
        held = self.held.get(client)
        if held is None or held.until <= self.now:
            return
        reply = self._handle(site, request(MessageType.REQUEST, client, ciaddr=held.address))
        if reply is None:
            return
        if reply.message_type is MessageType.ACK:
            assert reply.yiaddr == held.address
            held.until = self.now + lease_time(reply)
            self.acks += 1
            self.roams += not self.sites[site].replica.owns(held.address, self.now)
        else:
            del self.held[client]  # NAKed: it stops using the address

    def release(self, client: int, site: str) -> None:
        held = self.held.pop(client, None)
        if held is not None and held.until > self.now:
            self._handle(site, request(MessageType.RELEASE, client, ciaddr=held.address))

    @rule(site=st.sampled_from(SITES))
    def rush(self, site: str) -> None:
        """Every client without a lease asks one site: its addresses get reused."""
        for client in range(CLIENTS):
            held = self.held.get(client)
            if held is None or held.until <= self.now:
                self.dora(client, site)

    @rule(client=st.integers(0, CLIENTS - 1), site=st.sampled_from(SITES))
    def renew_late(self, client: int, site: str) -> None:
        """The client renews in the last second of its lease (the roaming bound matters
        most then: a site extends it as far as it may)."""
        held = self.held.get(client)
        if held is not None and held.until - 1 > self.now:
            self.wait(held.until - 1 - self.now)
            self.renew(client, site)

    # Sites --------------------------------------------------------------------------------

    @rule(site=st.sampled_from(SITES), pick=st.integers(0, 100), to=st.sampled_from(SITES))
    def hand_over(self, site: str, pick: int, to: str) -> None:
        """The owner of a block gives it to another site."""
        replica = self.sites[site].replica
        owned = replica.policy.owned_blocks(math.floor(self.now * 1000))
        if owned and to != site:
            block = owned[pick % len(owned)]
            self._send(site, replica.hand_over(block.first, to, self.now))

    @rule(site=st.sampled_from(SITES))
    def restart(self, site: str) -> None:
        """The site restarts from what it committed (every decision is committed before
        its replies go: the leases and the replica's state with them)."""
        old = self.sites[site]
        snapshot = old.replica.snapshot()
        replica = Replica(site, LAYOUT, PARAMS, snapshot, self.now)
        server = Server(CONFIG, old.server.leases(), self.now, replication=replica)
        self.sites[site] = Site(server, replica, old.absorbed)
        server.table.check()

    # Network and time ---------------------------------------------------------------------

    @rule(index=st.integers(0, 1000))
    def deliver(self, index: int) -> None:
        if self.net.flight:
            self._deliver(index)

    @rule(index=st.integers(0, 1000), times=st.integers(2, 12))
    def deliver_many(self, index: int, times: int) -> None:
        for n in range(times):
            if self.net.flight:
                self._deliver(index + n * 7)

    @rule(index=st.integers(0, 1000))
    def drop(self, index: int) -> None:
        if self.net.flight:
            self.net.flight.pop(index % len(self.net.flight))

    @rule(index=st.integers(0, 1000))
    def duplicate(self, index: int) -> None:
        if self.net.flight:
            self.net.flight.append(self.net.flight[index % len(self.net.flight)])

    @rule(a=st.sampled_from(SITES), b=st.sampled_from(SITES))
    def partition(self, a: str, b: str) -> None:
        if a != b:
            self.net.cut.add(frozenset((a, b)))

    @rule()
    def heal(self) -> None:
        self.net.cut.clear()

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 12.0, 25.0]))
    def wait(self, seconds: float) -> None:
        self.now += seconds
        for name, site in self.sites.items():
            self._decided(name, site.server.tick(self.now))
            self._send(name, site.replica.tick(self.now))
            site.server.table.check()

    # The guarantee ------------------------------------------------------------------------

    @invariant()
    def no_address_is_held_by_two_clients(self) -> None:
        holders: dict[int, int] = {}
        for client, held in self.held.items():
            if held.until > self.now:
                other = holders.setdefault(held.address, client)
                assert other == client, f"{held.address:#x} held by {other} and {client}"

    def teardown(self) -> None:
        """Heal, deliver everything, run anti-entropy until quiet: every site's state is
        the same."""
        self.net.cut.clear()
        for _ in range(3 * len(SITES) * 4):
            while self.net.flight:
                self._deliver(0)
            self.now += PARAMS.anti_entropy_interval
            for name, site in self.sites.items():
                self._send(name, site.replica.tick(self.now))
        while self.net.flight:
            self._deliver(0)
        states = [site.replica.state for site in self.sites.values()]
        assert all(state == states[0] for state in states[1:])
        # Every site's table holds what the replicated state says, where it holds a record.
        for site in self.sites.values():
            site.server.table.check()


ReplicatedEngines.TestCase.settings = settings(
    max_examples=150, stateful_step_count=100, deadline=None
)
TestReplicatedEngines = ReplicatedEngines.TestCase
