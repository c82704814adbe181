"""The lease table's rules under everything that can happen to it, interleaved.

A hypothesis state machine drives one engine the way the daemon does: client requests on
two links, renewals answered by a model of the kernel's map (and absorbed later, as the
daemon reads its ring), restarts from a model of the lease store, reloads that exclude,
shrink or renumber ranges, add or remove host reservations (inside and outside the ranges)
or join both pools in one shared network, the operator's revocations, clock jumps and
expiry, and bindings replicated from other sites (`Server.absorb`). After every step:
- the table's own rules hold (`LeaseTable.check`: in use exactly while held, one record
  per address, timers bounded by the records);
- no address was ever acknowledged to two clients for overlapping times: every ACK that
  went out, from either path, is remembered with the time the client was told it may use
  the address until, and a second client must never be told the same address before then;
- an address reserved for a host is acknowledged to nobody else;
- with `limits`, a client's request never takes an access line (its relay's circuit-id:
  relayed clients share two) past its bound of bound leases, nor a new client's DISCOVER
  the line or the relay past its bound of outstanding offers, and the table counts the
  leases and offers of each line exactly (`check` recounts them).
"""

from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from brushtaild.config.model import Config, Limits, Pool, Reservation
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType, OptionCode, RelayAgentSubOption
from brushtaild.dhcp.message import Message
from brushtaild.engine.decisions import Decision, Ingress, LeaseEventKind
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.server import Server
from tests.engine_helpers import INGRESS, SERVER, mac, make_config, make_pool, request

RELAY = opt.parse_ip("198.19.0.1")
LEASE_TIME = 100
POOL_A = make_pool("a", "198.18.0.0/16", "198.18.1.0", "198.18.1.5", LEASE_TIME)
POOL_B = make_pool("b", "198.19.0.0/16", "198.19.1.0", "198.19.1.5", LEASE_TIME)
CLIENTS = 10  # more clients than addresses
OUTSIDE_B = opt.parse_ip("198.19.0.50")  # in pool b's subnet, outside its ranges
ADDRESSES = [
    *range(opt.parse_ip("198.18.1.0"), opt.parse_ip("198.18.1.6")),
    *range(opt.parse_ip("198.19.1.0"), opt.parse_ip("198.19.1.6")),
    OUTSIDE_B,
]
# Hosts 2, 3 and 4: one address inside each pool's ranges, one outside the ranges.
RESERVED = (
    Reservation(ADDRESSES[1], mac=mac(2)),
    Reservation(ADDRESSES[7], mac=mac(3)),
    Reservation(OUTSIDE_B, client_id=bytes((1,)) + mac(4)),
)


def _config(
    pool_a: Pool = POOL_A, pool_b: Pool = POOL_B, reservations: tuple[Reservation, ...] = ()
) -> Config:
    return make_config(pool_a, pool_b, offer_hold=20, decline_hold=150, reservations=reservations)


RELOADS: dict[str, Config] = {
    "same": _config(),
    "exclude": _config(pool_a=replace(POOL_A, exclude=frozenset(ADDRESSES[:3]))),
    "shrink": _config(
        pool_b=replace(POOL_B, ranges=(replace(POOL_B.ranges[0], last=opt.parse_ip("198.19.1.2")),))
    ),
    "renumber": _config(pool_b=make_pool("b", "198.20.0.0/16", "198.20.1.0", "198.20.1.5")),
    "reserve": _config(reservations=RESERVED),
    "reserve-one": _config(reservations=RESERVED[1:2]),
    "shared": _config(
        replace(POOL_A, shared_network="ab"), replace(POOL_B, shared_network="ab"), RESERVED
    ),
    "limits": replace(_config(), limits=Limits(max_leases_per_circuit=2)),
    "tight limits": replace(_config(), limits=Limits(max_leases_per_circuit=1)),
    "offer limits": replace(
        _config(), limits=Limits(max_offers_per_circuit=1, max_offers_per_relay=2)
    ),
    "all limits": replace(
        _config(reservations=RESERVED),
        limits=Limits(max_leases_per_circuit=2, max_offers_per_circuit=1, max_offers_per_vlan=1),
    ),
}

_WITHDRAW = (LeaseEventKind.EXPIRE, LeaseEventKind.RELEASE, LeaseEventKind.DECLINE)


class LeaseTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.config = _config()
        self.now = 1000.0
        self.server = Server(self.config, [], self.now)
        self.store: dict[int, Lease] = {}
        # The kernel's leases map (hwaddr -> address, expiry) and its renewals ring.
        self.kernel: dict[bytes, tuple[int, float, int]] = {}
        self.ring: list[tuple[bytes, int, float]] = []
        # What clients were told: address -> (client id, usable until).
        self.told: dict[int, tuple[bytes, float]] = {}

    # Model edges ------------------------------------------------------------------------

    def _apply(self, decision: Decision) -> None:
        """What the daemon does with a decision: store, kernel map, then the replies."""
        for address in decision.lease_deletes:
            self.store.pop(address, None)
        for lease in decision.lease_writes:
            self.store[lease.address] = lease
        for lease in decision.lease_writes:
            self._withdraw(lease.address)
            if self.server.renewable(lease, self.now):
                pool = self.server.config.pools[0]
                lease_time = next(
                    (p.lease_time for p in self.server.config.pools if p.name == lease.pool),
                    pool.lease_time,
                )
                self.kernel[lease.hwaddr] = (lease.address, lease.expires, lease_time)
        for address in decision.lease_deletes:
            self._withdraw(address)
        for event in decision.events:
            if event.kind in _WITHDRAW:
                self._withdraw(event.address)
        for reply in decision.replies:
            message = reply.message
            client = bytes((1,)) + message.chaddr[:6]
            if message.message_type is MessageType.ACK and message.yiaddr:
                until = self.now + opt.decode_u32(message.options[OptionCode.LEASE_TIME])
                self._tell(client, message.yiaddr, until)
            elif message.message_type is MessageType.NAK:
                self._forget_client(client)

    def _withdraw(self, address: int) -> None:
        for hwaddr, (entry_address, _, _) in list(self.kernel.items()):
            if entry_address == address:
                del self.kernel[hwaddr]

    def _tell(self, client: bytes, address: int, until: float) -> None:
        host = self.server.table.reservations.by_address.get(address)
        assert host is None or client in (host.client_id, bytes((1,)) + (host.mac or b"")), (
            f"{opt.format_ip(address)}, reserved, acknowledged to {client.hex()}"
        )
        holder = self.told.get(address)
        assert holder is None or holder[0] == client or holder[1] <= self.now, (
            f"{opt.format_ip(address)} acknowledged to {client.hex()} while "
            f"{holder[0].hex()} may use it until {holder[1]} (now {self.now})"
        )
        self._forget_client(client)
        self.told[address] = (client, until)

    def _forget_client(self, client: bytes) -> None:
        for address, (holder, _) in list(self.told.items()):
            if holder == client:
                del self.told[address]

    def _absorb(self) -> None:
        ring, self.ring = self.ring, []
        for hwaddr, address, expires in ring:
            decision = self.server.kernel_renewal(hwaddr, address, expires, self.now)
            if decision.drop is not None:
                self._withdraw(address)
            self._apply(decision)

    def _reconcile(self) -> None:
        self.kernel = {
            lease.hwaddr: (lease.address, lease.expires, LEASE_TIME)
            for lease in self.server.leases()
            if self.server.renewable(lease, self.now)
        }

    def _handle(self, msg: Message, ingress: Ingress) -> Decision:
        self._absorb()
        before = self._per_circuit()
        client = bytes((1,)) + msg.hwaddr
        table = self.server.table
        known = table.hold_of(client) is not None or table.lease_of(client) is not None
        offers_before = self._offers_per_line()
        decision = self.server.handle(msg, ingress, self.now)
        self._apply(decision)
        bound = self.config.limits.max_leases_per_circuit
        for circuit, count in self._per_circuit().items():
            assert not bound or count <= max(bound, before.get(circuit, 0)), (
                f"{circuit!r}: {count} bound leases past the bound of {bound}"
            )
        if not known:
            limits = self.config.limits
            bounds = {
                "circuit": limits.max_offers_per_circuit,
                "relay": limits.max_offers_per_relay,
            }
            for line, count in self._offers_per_line().items():
                bound = bounds[line[0]]
                assert not bound or count <= max(bound, offers_before.get(line, 0)), (
                    f"{line!r}: {count} outstanding offers past the bound of {bound}"
                )
        return decision

    def _per_circuit(self) -> dict[bytes, int]:
        """Bound leases per circuit-id, as the records say."""
        counts: dict[bytes, int] = {}
        for lease in self.server.leases():
            circuit = lease.relay_sub_option(RelayAgentSubOption.CIRCUIT_ID)
            if lease.state is LeaseState.BOUND and circuit is not None:
                counts[circuit] = counts.get(circuit, 0) + 1
        return counts

    def _offers_per_line(self) -> dict[tuple[str, bytes], int]:
        """Outstanding offers per circuit and on the relay, from whose clients hold them."""
        counts: dict[tuple[str, bytes], int] = {}
        for hold in self.server.table.holds():
            client = int.from_bytes(hold.client_id[-4:], "big")  # 01 + mac(client)
            if client % 2:
                for line in (("circuit", b"line-%d" % (client % 4)), ("relay", b"")):
                    counts[line] = counts.get(line, 0) + 1
        return counts

    @staticmethod
    def _route(client: int, msg: Message) -> tuple[Message, Ingress]:
        if client % 2:
            # Relayed clients on two access lines: 1, 5 and 9 on one, 3 and 7 on the other.
            msg.giaddr, msg.hops = RELAY, 1
            circuit = (RelayAgentSubOption.CIRCUIT_ID, b"line-%d" % (client % 4))
            msg.options[OptionCode.RELAY_AGENT_INFO] = opt.build_relay_agent_info([circuit])
        return msg, INGRESS

    # Rules ------------------------------------------------------------------------------

    @initialize(name=st.sampled_from(sorted(RELOADS)))
    def start(self, name: str) -> None:
        """The first start, with any of the configs (the limits bite from the first step)."""
        self.config = RELOADS[name]
        self.server = Server(self.config, [], self.now)

    @rule(client=st.integers(0, CLIENTS - 1), offset=st.integers(0, len(ADDRESSES) - 1))
    def discover(self, client: int, offset: int) -> None:
        msg = request(MessageType.DISCOVER, client, requested=ADDRESSES[offset])
        self._handle(*self._route(client, msg))

    @rule(client=st.integers(0, CLIENTS - 1), offset=st.integers(0, len(ADDRESSES) - 1))
    def select(self, client: int, offset: int) -> None:
        msg = request(MessageType.REQUEST, client, requested=ADDRESSES[offset], server_id=SERVER)
        self._handle(*self._route(client, msg))

    @rule(client=st.integers(0, CLIENTS - 1))
    def select_offer(self, client: int) -> None:
        """DISCOVER then REQUEST of what was offered, the common exchange."""
        decision = self._handle(*self._route(client, request(MessageType.DISCOVER, client)))
        if decision.replies:
            offered = decision.replies[0].message.yiaddr
            msg = request(MessageType.REQUEST, client, requested=offered, server_id=SERVER)
            self._handle(*self._route(client, msg))

    @rule(client=st.integers(0, CLIENTS - 1), offset=st.integers(0, len(ADDRESSES) - 1))
    def renew(self, client: int, offset: int) -> None:
        msg = request(MessageType.REQUEST, client, ciaddr=ADDRESSES[offset])
        self._handle(*self._route(client, msg))

    @rule(client=st.integers(0, CLIENTS - 1))
    def renew_own(self, client: int) -> None:
        """A client renewing what it was told (the usual renewal)."""
        owned = [a for a, (c, _) in self.told.items() if c == bytes((1,)) + mac(client)]
        if owned:
            msg = request(MessageType.REQUEST, client, ciaddr=owned[0])
            self._handle(*self._route(client, msg))

    @rule(client=st.integers(0, CLIENTS - 1), offset=st.integers(0, len(ADDRESSES) - 1))
    def reboot(self, client: int, offset: int) -> None:
        msg = request(MessageType.REQUEST, client, requested=ADDRESSES[offset])
        self._handle(*self._route(client, msg))

    @rule(client=st.integers(0, CLIENTS - 1), offset=st.integers(0, len(ADDRESSES) - 1))
    def release(self, client: int, offset: int) -> None:
        address = ADDRESSES[offset]
        msg = request(MessageType.RELEASE, client, ciaddr=address, server_id=SERVER)
        self._handle(*self._route(client, msg))
        if self.told.get(address, (b"", 0.0))[0] == bytes((1,)) + mac(client):
            del self.told[address]  # the client stops using it, whatever the server says

    @rule(client=st.integers(0, CLIENTS - 1))
    def decline_own(self, client: int) -> None:
        owned = [a for a, (c, _) in self.told.items() if c == bytes((1,)) + mac(client)]
        if owned:
            msg = request(MessageType.DECLINE, client, requested=owned[0], server_id=SERVER)
            self._handle(*self._route(client, msg))
            self._forget_client(bytes((1,)) + mac(client))

    @rule(offset=st.integers(0, len(ADDRESSES) - 1))
    def revoke(self, offset: int) -> None:
        """The operator revokes a lease (`brushtail lease release`). Its client is not
        told: it goes on using the address until it is NAKed or its lease ends."""
        self._absorb()
        self._apply(self.server.revoke(ADDRESSES[offset], self.now))

    @rule(
        client=st.integers(0, CLIENTS - 1),
        offset=st.integers(0, len(ADDRESSES)),
        state=st.sampled_from(list(LeaseState)),
        lasts=st.sampled_from([-10, 0, 30, 100, 300]),
        pool=st.sampled_from(["a", "b", "elsewhere"]),
    )
    def replicated(
        self, client: int, offset: int, state: LeaseState, lasts: int, pool: str
    ) -> None:
        """A binding another site made arrives (a merge changed it): it replaces whatever
        is at its address here. Its client was told by that site; whoever held the
        address here lost it (replication decided; the other client is NAKed next time).
        An address of no pool of ours (the last offset, or one a reload took away) is left
        out."""
        address = ADDRESSES[offset] if offset < len(ADDRESSES) else opt.parse_ip("198.30.0.1")
        client_id = b"" if state is LeaseState.DECLINED else bytes((1,)) + mac(client)
        lease = Lease(address, client_id, mac(client), pool, state, self.now + lasts, self.now)
        self._absorb()
        ours = self.server.table.allocator_for(address) is not None
        decision = self.server.absorb([lease], self.now)
        assert decision.skipped == (not ours)
        self.told.pop(address, None)
        if lease.client_id and lease.active(self.now) and not decision.skipped:
            # The client moved here (bound, or bound and revoked since, which it has not
            # been told): it uses this address, no other.
            self._forget_client(client_id)
            self.told[address] = (client_id, lease.expires)
        self._apply(decision)

    @precondition(lambda self: bool(self.kernel))
    @rule(pick=st.integers(0, 1000), last_second=st.booleans())
    def kernel_ack(self, pick: int, last_second: bool) -> None:
        """The XDP program answers a renewal from its map, without the daemon; sometimes
        in the last second of the lease, the race with the engine's expiry."""
        hwaddr = sorted(self.kernel)[pick % len(self.kernel)]
        address, expires, lease_time = self.kernel[hwaddr]
        if last_second and self.now < expires - 1:
            self.wait(int(expires - 1 - self.now))
            if hwaddr not in self.kernel:
                return
            address, expires, lease_time = self.kernel[hwaddr]
        if self.now >= expires:
            return  # the program passes it to the slow path
        renewed = self.now + lease_time
        self.kernel[hwaddr] = (address, renewed, lease_time)
        self.ring.append((hwaddr, address, renewed))
        self._tell(bytes((1,)) + hwaddr, address, renewed)

    @rule(seconds=st.sampled_from([1, 5, 19, 40, 99, 101, 160, 5000]))
    def wait(self, seconds: int) -> None:
        """Time passes (a suspend of the box is a long jump of CLOCK_BOOTTIME); then the
        daemon's housekeeping: renewals absorbed, then expiry, as Daemon._housekeeping. A
        renewal the kernel answered in a lease's last second is absorbed past its end."""
        self.now += seconds
        self._absorb()
        self._apply(self.server.tick(self.now))

    @rule(back=st.sampled_from([0, 0, 30, 300]))
    def restart(self, back: int) -> None:
        """The daemon dies and starts again from the store; the kernel's map and ring
        survive (pinned). The wall clock may have been stepped back meanwhile."""
        self.now -= back
        self.server = Server(self.config, self.store.values(), self.now)
        self._absorb()
        self._reconcile()

    @rule(name=st.sampled_from(sorted(RELOADS)))
    def reload(self, name: str) -> None:
        self._absorb()
        self.config = RELOADS[name]
        self.server = self.server.reconfigured(self.config, self.now)
        self._apply(self.server.tick(self.now))
        self._reconcile()

    @invariant()
    def table_rules_hold(self) -> None:
        self.server.table.check()
        for alloc in self.server.table.allocators.values():
            assert alloc.queued <= alloc.total


LeaseTableMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None
)
TestLeaseTable = LeaseTableMachine.TestCase
