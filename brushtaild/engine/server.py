"""The DHCPv4 server engine (RFC 2131), sans-IO: (Message, Ingress, now) -> Decision.

Rules this module keeps:
- It reads no clock: `now` (Unix seconds) comes with every call, so expiry is deterministic.
- It changes its in-memory view at once but only *asks* for durability: the caller writes
  `Decision.lease_writes` to the store before it sends any reply of that decision.
- Lease state lives in the lease table (lease_table.py), which keeps its own rules; this
  module decides what the RFCs say to do and renders the replies.
"""

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from ipaddress import IPv4Address

from brushtaild.config.model import (
    NO_OPTIONS,
    ClientClass,
    Config,
    OptionSet,
    Pool,
    Reservation,
    merge_options,
    option_set,
)
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import MessageTooLarge, encode, encode_options
from brushtaild.dhcp.constants import (
    BROADCAST_FLAG,
    IP_UDP_HEADERS,
    MIN_IP_DATAGRAM,
    MessageType,
    Op,
    OptionCode,
    RelayAgentSubOption,
)
from brushtaild.dhcp.message import Message
from brushtaild.dhcp.reasons import DropReason, MalformedPacket
from brushtaild.engine.addressing import reply_destination
from brushtaild.engine.allocator import PoolAllocator, containing
from brushtaild.engine.classes import NO_CLASS, UNDECIDED, class_of_lease, classify
from brushtaild.engine.decisions import (
    Decision,
    Ingress,
    LeaseEvent,
    LeaseEventKind,
    NakReason,
    Reply,
)
from brushtaild.engine.identity import subscriber_identity, wire_identity
from brushtaild.engine.lease_table import LeaseTable, Line, PoolUsage, access_lines
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.engine.replication import Replication

# Replies never exceed what fits an Ethernet frame, whatever option 57 claims.
MAX_IP_DATAGRAM = 1500
# Distinct (pool, reply type, request list) templates kept before the cache starts over.
MAX_TEMPLATES = 4096
# RFC 3046 2.0: option 82 is one option, at most 255 bytes, however it was split.
MAX_RELAY_AGENT_INFO = 255
# The NAK's message (option 56) to a client whose lease was revoked.
# Requests a client's class must find a pool for (the others end what a lease holds).
_SERVED = (MessageType.DISCOVER, MessageType.REQUEST, MessageType.INFORM)
# Echoed options that stay at the end of the options field, in this order.
_ECHOED_LAST = (OptionCode.CLIENT_ID, OptionCode.RELAY_AGENT_INFO)


class _Same(Enum):
    """`Server.reconfigured`'s default: keep the replication the server has."""

    SAME = 0


@dataclass(frozen=True, slots=True)
class ReplyTemplate:
    options: dict[int, bytes]  # shared by every reply made from it: never mutated
    wire: bytes  # the options encoded, so a reply only packs its fixed fields
    optional: tuple[int, ...]  # requested options, in request order: dropped last-first to fit


@dataclass(frozen=True, slots=True)
class KernelAnswer:
    """How the fast path answers a lease's client (Server.kernel_answer)."""

    profile: str  # the options its replies are rendered with (Server.template)
    # Its pool was chosen by the VLANs its client came on (the key's), not by server_id:
    # a client on our own link (a relayed client's network is its relay's).
    by_vlan: bool
    # Its class was told by what a relay adds (option 82, giaddr), as the lease stashed it:
    # the slow path classifies the client's unicast renewals by the stash too, but a
    # request through a relay by its own option 82, which may tell another class.
    unicast_only: bool
    # A roaming client's `extension_limit` (Unix seconds), which no kernel reply lets its
    # lease run past; None at an address of this site's blocks.
    cap: float | None = None


@dataclass(slots=True)
class ClientContext:
    """Everything about one request the handlers need, computed once."""

    message: Message
    ingress: Ingress
    client_id: bytes
    # Pools serving the client's network, in config order, or in its class's order of
    # those the class names.
    pools: list[PoolAllocator]
    requested: int  # option 50, or 0
    server_id: int | None  # option 54
    now: float
    link: Hashable  # the relay (giaddr) or the local link (ifindex, VLAN ids)
    echo_118: bool  # option 118 chose the subnet, so the reply carries it back
    host: int  # the client's reserved address on this network, or 0
    # The reply's size limit (option 57), decoded with the rest before anything changes:
    # a request found malformed after its lease was moved would leave the table changed.
    max_size: int
    # Option 82 as a relay sent it, empty if the relay added none; None without a relay.
    relay_info: bytes | None
    # The relay's server identifier override (RFC 5107): the address the client knows us
    # by, which the reply names as option 54; None without one.
    override: int | None
    # The VLAN ids the client is known by: those it came on, or for a relayed client's
    # unicast renewal, its relay's (as its lease stashed them).
    vlans: tuple[int, ...]
    # The access lines `limits` count it on (LeaseTable.over_limit, over_offer_limit).
    lines: tuple[Line, ...]
    client_class: ClientClass | None = None  # the first class of the config it matches
    # Its class names none of its network's pools: it is not served (NO_CLASS_POOL).
    refused: bool = False


def client_identity(msg: Message) -> bytes:
    """Option 61 when present, else htype + chaddr: the form RFC 2132 9.14 gives a
    hardware-address client identifier, so both spellings of one client match."""
    client_id = msg.options.get(OptionCode.CLIENT_ID)
    if client_id:
        return client_id
    return bytes((msg.htype,)) + msg.hwaddr


def wire_client_id(lease: Lease) -> bytes:
    """The client identifier as the client sends it (what the XDP program compares), for
    a lease whose identity may carry its VLANs (subscriber_identity)."""
    return wire_identity(lease.client_id, lease.vlans)


def _revoked(lease: Lease, address: int) -> bool:
    """Whether the client's `lease` of `address` was revoked. Handlers see one only before
    its old end: the table expires it at that time, before any request is handled."""
    return lease.state is LeaseState.REVOKED and lease.address == address


def _pool_options(pool: Pool, *levels: OptionSet) -> dict[int, bytes]:
    """Every option a reply from `pool` may carry besides the lease's own: the subnet's
    mask and broadcast address, then the configured options, those of `levels` (a class's,
    a reserved host's) overriding the pool's in that order, in ascending code order (the
    order a client without a parameter request list receives them in)."""
    net = pool.subnet
    own: dict[int, bytes] = {}
    if pool.routers:
        own[OptionCode.ROUTERS] = opt.ips(pool.routers)
    if pool.dns_servers:
        own[OptionCode.DNS_SERVERS] = opt.ips(pool.dns_servers)
    if pool.domain:
        own[OptionCode.DOMAIN_NAME] = pool.domain.encode("ascii")
    configured = merge_options(option_set(own), pool.options, *levels)
    return {
        OptionCode.SUBNET_MASK: opt.ip(int(net.netmask)),
        OptionCode.BROADCAST_ADDRESS: opt.ip(int(net.broadcast_address)),
        **configured.as_dict(),
    }


class Server:
    def __init__(
        self,
        config: Config,
        leases: Iterable[Lease],
        now: float,
        keepalive: Callable[[], object] = lambda: None,
        replication: Replication | None = None,
    ) -> None:
        """`replication`: the site's replica, with other sites (None: a single site). New
        bindings go only where it admits them, a client whose address is another site's
        is extended only up to its `extension_limit`, and such a lease stays on the slow
        path (docs/STATE.md, "How the engine applies the rules")."""
        self.config = config
        self.replication = replication
        # Kernel renewals past a roaming client's limit (kernel_renewal): none, by
        # construction, unless an entry's cap went stale.
        self.renewals_past_cap = 0
        self._server_id = opt.ip(config.server_id)
        self.table = LeaseTable(config, leases, now, keepalive, replication)
        allocators = self.table.allocators
        # A pool serves every client of its shared network: the pools of its subnet and
        # of its `shared_network` name, in config order.
        networks: dict[object, list[PoolAllocator]] = {}
        for p in config.pools:
            networks.setdefault(p.shared_network or p.subnet, []).append(allocators[p.name])
        self._subnets = [
            (
                int(p.subnet.network_address),
                int(p.subnet.netmask),
                networks[p.shared_network or p.subnet],
            )
            for p in config.pools
        ]
        self._vlan_pools = [allocators[p.name] for p in config.pools if p.vlans]
        self._plain_pools = [allocators[p.name] for p in config.pools if not p.vlans]
        # Options by profile: a pool's name, "pool+class" for a class that shapes replies,
        # and either with "/address" for a reserved host with options of its own (made by
        # _profile when first needed), with the pool it renders (the class's lease time).
        self._options = {p.name: _pool_options(p) for p in config.pools}
        self._profile_pools = {p.name: p for p in config.pools}
        self._host_options = {r.address: r.options for r in config.reservations if r.options.values}
        self._templates: dict[tuple[str, MessageType, bool, bytes | None], ReplyTemplate] = {}
        self._handlers: dict[MessageType, Callable[[ClientContext, Decision], None]] = {
            MessageType.DISCOVER: self._discover,
            MessageType.REQUEST: self._request,
            MessageType.DECLINE: self._decline,
            MessageType.RELEASE: self._release,
            MessageType.INFORM: self._inform,
        }

    # Public API ---------------------------------------------------------------------------

    def handle(self, msg: Message, ingress: Ingress, now: float) -> Decision:
        decision = Decision()
        self.table.expire(now, decision)
        if msg.op != Op.BOOTREQUEST:
            decision.drop = DropReason.NOT_FROM_CLIENT
            return decision
        mtype = msg.message_type
        handler = self._handlers.get(mtype) if mtype is not None else None
        if handler is None:
            decision.drop = DropReason.UNEXPECTED_MESSAGE
            return decision
        try:
            ctx = self._context(msg, ingress, now)
            if ctx.refused and mtype in _SERVED:
                decision.drop = DropReason.NO_CLASS_POOL
                return decision
            handler(ctx, decision)
        except MalformedPacket as exc:
            decision.drop = exc.reason
        except Exception as exc:
            # A bug. What the lease table has already done stands, and its writes and
            # events (expiry included) still reach the store and the kernel maps; no reply
            # goes out, since it may not match them.
            decision.replies.clear()
            decision.drop = DropReason.INTERNAL_ERROR
            decision.error = exc
        return decision

    def tick(self, now: float) -> Decision:
        """Expire leases, offers and quarantines that are due; call when `next_deadline`
        passes even if no packet arrives."""
        decision = Decision()
        self.table.expire(now, decision)
        return decision

    def next_deadline(self) -> float | None:
        return self.table.next_deadline()

    def kernel_renewal(
        self,
        hwaddr: bytes,
        address: int,
        expires: float,
        now: float,
        vlans: tuple[int, ...] = (),
    ) -> Decision:
        """Records a renewal the XDP fast path has already ACKed: the bound lease of
        `address` held by the client with `hwaddr` on `vlans` now runs until `expires`. The
        decision writes the lease and logs the ACK; it drops with STALE_RENEWAL when the
        address is no longer this client's to renew (changed by the slow path or a reload
        meanwhile): the caller then withdraws the kernel's entry, and the client's next
        request comes to the slow path.

        A roaming client's lease is recorded no later than its `extension_limit`
        (docs/STATE.md, rule 2). The program never ACKs past its entry's cap, but an entry
        written before the limit fell (a binding absorbed, a block handed over) can until
        the decision's write rewrites it: such a renewal is counted in `renewals_past_cap`
        and recorded up to the limit, or dropped as stale if the limit has passed."""
        decision = Decision()
        held = self.table.lease_at(address)
        renewed = None
        if held is not None and held.vlans == vlans:
            limit = self.table.extension_limit(address, held.client_id, now)
            if expires > limit:
                self.renewals_past_cap += 1
                expires = limit
            if limit > now:  # else nothing is left to extend: the entry must go
                renewed = self.table.renew(hwaddr, address, expires, now)
        if renewed is None:
            decision.drop = DropReason.STALE_RENEWAL
            return decision
        decision.lease_writes.append(renewed)
        decision.events.append(
            LeaseEvent(
                LeaseEventKind.ACK,
                renewed.client_id,
                hwaddr,
                address,
                renewed.pool,
                vlans=renewed.vlans,
            )
        )
        return decision

    def absorb(self, leases: Sequence[Lease], now: float) -> Decision:
        """Installs the bindings a replication merge changed (`Binding.lease()` of what
        `Replica.receive` returns), as the merge decided: each replaces whatever the table
        holds at its address, so another client's record there (a conflict's loser, or a
        tenure that ended) is dropped, its kernel entry withdrawn by the write, and that
        client is NAKed or finds no record at its next request. The decision writes them
        (the store, and the kernel maps: an entry where this site owns the address, like a
        local lease's) and logs each as REPLICATED. Never raises on what a peer sends: a
        lease at an address none of our pools hands out is left out and counted in
        `skipped` (drop REPLICATED_ELSEWHERE). Its writes are not local changes: they must
        not go back to `Replica.local_update`."""
        decision = Decision()
        self.table.expire(now, decision)
        for lease in leases:
            if not self.table.absorb(lease, now, decision):
                decision.skipped += 1
                continue
            decision.events.append(
                LeaseEvent(
                    LeaseEventKind.REPLICATED,
                    lease.client_id,
                    lease.hwaddr,
                    lease.address,
                    lease.pool,
                    lease.state.name.lower(),
                    lease.vlans,
                )
            )
        if decision.skipped:
            decision.drop = DropReason.REPLICATED_ELSEWHERE
        return decision

    def revoke(self, address: int, now: float) -> Decision:
        """Ends the bound lease of `address` on the operator's word (`brushtail lease
        release`). The decision writes it as REVOKED, which withdraws its kernel entry;
        the client's next REQUEST for it is NAKed (not ignored, as a client unknown to us
        would be: RFC 2131 4.3.2), so it starts over with a DISCOVER, and the address
        stays its own until the lease's old end. Drops with NO_MATCHING_LEASE when the
        address has no bound lease."""
        decision = Decision()
        self.table.expire(now, decision)
        lease = self.table.lease_at(address)
        if (
            lease is None
            or lease.state is not LeaseState.BOUND
            or self.table.lease_of(lease.client_id) is not lease
        ):
            decision.drop = DropReason.NO_MATCHING_LEASE
            return decision
        self.table.revoke(lease, now, decision)
        decision.events.append(
            LeaseEvent(
                LeaseEventKind.REVOKE,
                lease.client_id,
                lease.hwaddr,
                address,
                lease.pool,
                vlans=lease.vlans,
            )
        )
        return decision

    def renewable(self, lease: Lease, now: float) -> bool:
        return self.kernel_answer(lease, now) is not None

    def kernel_answer(self, lease: Lease, now: float) -> "KernelAnswer | None":
        """How the fast path answers for `lease`, or None where it may not (see also
        LeaseTable.renewable): not when its VLANs no longer select its pool (a reload moved
        them), since the program checks only the lease's subnet (a relayed client's pool
        is chosen by its relay, whatever the VLANs); not when its class cannot be told from
        the lease, or no longer gives it this pool. At an address of another site's block
        the answer carries the client's `extension_limit` as its cap (docs/STATE.md, rule
        2), past which the kernel leaves it to the slow path; none if the slow path would
        NAK it already."""
        until = self.table.extension_until(lease.address, lease.client_id, now)
        if not until:
            return None
        alloc = self.table.allocators.get(lease.pool)
        if alloc is None or (not lease.relayed and alloc not in self._for_vlans(lease.vlans)):
            return None
        told = class_of_lease(self.config.classes, lease)
        if told is UNDECIDED:
            return None
        cls = told.cls
        if cls is not None and cls.pools and lease.pool not in cls.pools:
            return None
        if not self.table.renewable(lease, now):
            return None
        return KernelAnswer(
            profile=self._profile(alloc.pool, lease.address, cls),
            by_vlan=bool(alloc.pool.vlans) and not lease.relayed,
            unicast_only=told.by_relay,
            cap=None if until == math.inf else until,
        )

    def kernel_answers(
        self, leases: Iterable[Lease], now: float
    ) -> Iterator[tuple[Lease, "KernelAnswer | None"]]:
        """`kernel_answer` of each of `leases`, for filling the maps: where no class,
        reservation, host's options nor replication weighs the lease itself, what depends
        only on its pool, relay and VLANs is decided once per such shape, and only the
        checks of LeaseTable.renewable are made per lease."""
        table = self.table
        if (
            self.config.classes
            or table.reservations
            or self._host_options
            or table.replication is not None
        ):
            for lease in leases:
                yield lease, self.kernel_answer(lease, now)
            return
        shapes: dict[tuple[str, bool, tuple[int, ...]], tuple[PoolAllocator, KernelAnswer] | None]
        shapes = {}
        for lease in leases:
            key = (lease.pool, lease.relayed, lease.vlans)
            if key in shapes:
                shared = shapes[key]
            else:
                shared = shapes[key] = self._shared_answer(*key)
            if (
                shared is None
                or lease.state is not LeaseState.BOUND
                or lease.expires <= now
                or table.lease_of(lease.client_id) is not lease
                or not shared[0].contains(lease.address)
            ):
                yield lease, None
            else:
                yield lease, shared[1]

    def _shared_answer(
        self, pool: str, relayed: bool, vlans: tuple[int, ...]
    ) -> "tuple[PoolAllocator, KernelAnswer] | None":
        """kernel_answer's decisions for every lease of `pool` with no class, reservation
        nor replication to weigh, that came through a relay or on `vlans`."""
        alloc = self.table.allocators.get(pool)
        if alloc is None or (not relayed and alloc not in self._for_vlans(vlans)):
            return None
        by_vlan = bool(alloc.pool.vlans) and not relayed
        return alloc, KernelAnswer(alloc.pool.name, by_vlan, NO_CLASS.by_relay, None)

    def profile_pool(self, profile: str) -> Pool:
        return self._profile_pools[profile]

    def template(self, profile: str, mtype: MessageType, prl: bytes | None) -> ReplyTemplate:
        """The options a reply of `mtype` rendered with `profile` carries for a client that
        asked for `prl`: the fast path answers with exactly these bytes."""
        return self._template(self._profile_pools[profile], profile, mtype, True, prl)

    def _profile(self, pool: Pool, address: int, cls: ClientClass | None = None) -> str:
        """`pool`'s name, "pool+class" for a client of a class with options or a lease
        time of its own, and either with "/address" for a reserved host with options of its
        own: its replies carry the pool's options overridden by the class's, overridden by
        the host's, and the class's lease time."""
        host = self._host_options.get(address)
        shaped = cls is not None and cls.shapes_replies
        if host is None and not shaped:
            return pool.name
        profile = pool.name
        levels = [NO_OPTIONS, host or NO_OPTIONS]
        rendered = pool
        if cls is not None and shaped:
            profile += f"+{cls.name}"
            levels[0] = cls.options
            if cls.lease_time is not None:
                rendered = replace(
                    pool,
                    lease_time=cls.lease_time,
                    renewal_time=cls.renewal_time,
                    rebinding_time=cls.rebinding_time,
                )
        if host is not None:
            profile += f"/{opt.format_ip(address)}"
        if profile not in self._options:
            self._options[profile] = _pool_options(pool, *levels)
            self._profile_pools[profile] = rendered
        return profile

    def lease_at(self, address: int) -> Lease | None:
        return self.table.lease_at(address)

    def leases(self) -> list[Lease]:
        return self.table.leases()

    def leases_in(self, first: int, last: int) -> list[Lease]:
        """The records at addresses `first` to `last` (a block): when the block's owner
        changes (a register merged, `Replica.hand_over`, a handover or eviction becoming
        ready), `kernel_answer` changes for them, and the caller hands them to the map
        sync as writes to install or withdraw their entries (before a handover, so that
        the kernel renews none of them after it)."""
        return [
            lease
            for address in range(first, last + 1)
            if (lease := self.table.lease_at(address)) is not None
        ]

    def pool_usage(self) -> dict[str, PoolUsage]:
        return self.table.usage()

    def reconfigured(
        self,
        config: Config,
        now: float,
        keepalive: Callable[[], object] = lambda: None,
        replication: Replication | _Same | None = _Same.SAME,
    ) -> "Server":
        """A server for a new config that keeps every lease and quarantine, loaded the way
        a restart loads them; pending offers are dropped (the client's REQUEST is still
        granted while the address is free). `keepalive` runs every few thousand leases.
        A lease at an address the new config reserves for someone else stays until it
        ends but is not renewed: its holder is NAKed at its next renewal (LeaseTable rule
        4), and `renewable` turns false so the fast path's entry goes at the reconcile.
        `replication`: the new server's (by default this one's)."""
        kept = self.replication if isinstance(replication, _Same) else replication
        server = Server(config, self.leases(), now, keepalive, kept)
        server.renewals_past_cap = self.renewals_past_cap
        return server

    # Request context ----------------------------------------------------------------------

    def _context(self, msg: Message, ingress: Ingress, now: float) -> ClientContext:
        options = msg.options
        relay_info = options.get(OptionCode.RELAY_AGENT_INFO)
        if relay_info is not None and len(relay_info) > MAX_RELAY_AGENT_INFO:
            # RFC 3046 2.0: the whole option fits one option, 255 bytes; repeats
            # concatenated past that are not a relay's, and could not be echoed.
            raise MalformedPacket(DropReason.BAD_OPTION, f"option 82 of {len(relay_info)} bytes")
        # A relay's option 82 goes back to it in the reply: one whose sub-options do not
        # parse is no relay's, whether or not the relay is trusted with link selection.
        relay_subs = (
            opt.parse_relay_agent_info(relay_info) if relay_info is not None and msg.giaddr else []
        )
        relayed = (relay_info or b"") if msg.giaddr else None
        override = next(
            (
                opt.decode_ip(value)
                for code, value in relay_subs
                if code == RelayAgentSubOption.SERVER_ID_OVERRIDE
            ),
            None,
        )
        requested = options.get(OptionCode.REQUESTED_ADDRESS)
        server_id = options.get(OptionCode.SERVER_ID)
        selector, by_118 = self._network_selector(msg, relay_subs)
        pools = self._pools_for(selector)
        client_id = client_identity(msg)
        relay, vlans = msg.giaddr, ingress.vlans
        renewed = None if msg.giaddr else self._relayed_lease(client_id, msg.ciaddr)
        if renewed is not None:
            # A renewal unicast by a relayed client is still that relay's subscriber: it is
            # matched, classified and counted on what its lease stashed (the relay's option
            # 82, giaddr and VLANs), on the network of its address, as the relay had it.
            relay_subs = opt.parse_relay_agent_info(renewed.relay_info)
            relay, vlans = renewed.relay, renewed.vlans
        elif not msg.giaddr:
            pools = self._on_link(pools, selector, vlans)
            if any(alloc.pool.serves_vlans(vlans) for alloc in self._vlan_pools):
                client_id = subscriber_identity(client_id, vlans)
        host = self._host(client_id, msg.hwaddr, vlans, relay_subs, pools)
        client_class = classify(self.config.classes, msg, vlans, relay_subs, relay)
        served = self._class_pools(pools, client_class, host)
        return ClientContext(
            message=msg,
            ingress=ingress,
            client_id=client_id,
            pools=served,
            requested=opt.decode_ip(requested) if requested is not None else 0,
            server_id=opt.decode_ip(server_id) if server_id is not None else None,
            now=now,
            link=msg.giaddr if msg.giaddr else (ingress.ifindex, ingress.vlans),
            echo_118=by_118,
            host=host,
            max_size=self._max_size(msg),
            relay_info=relayed,
            override=override,
            vlans=vlans,
            lines=self._lines(relay_subs, vlans, relay),
            client_class=client_class,
            refused=bool(pools) and not served,
        )

    def _lines(
        self, relay_subs: list[tuple[int, bytes]], vlans: tuple[int, ...], giaddr: int
    ) -> tuple[Line, ...]:
        subs = dict(relay_subs)
        return access_lines(
            subs.get(RelayAgentSubOption.CIRCUIT_ID),
            subs.get(RelayAgentSubOption.REMOTE_ID),
            vlans,
            giaddr,
        )

    def _relayed_lease(self, client_id: bytes, ciaddr: int) -> Lease | None:
        """The client's lease of `ciaddr` if a relay's request bound it (a relayed
        client's identity is its own, never with VLANs: subscriber_identity)."""
        lease = self.table.lease_of(client_id) if ciaddr else None
        if lease is None or lease.address != ciaddr or not lease.relayed:
            return None
        return lease

    @staticmethod
    def _class_pools(
        pools: list[PoolAllocator], cls: ClientClass | None, host: int
    ) -> list[PoolAllocator]:
        """Of the network's `pools`, those `cls` names, in its order. A reserved host keeps
        the pool of its address, ahead of them, whatever its class names."""
        if cls is None or not cls.pools:
            return pools
        named = [alloc for name in cls.pools for alloc in pools if alloc.pool.name == name]
        own = containing(pools, host) if host else None
        if own is not None and own not in named:
            named.insert(0, own)
        return named

    def _host(
        self,
        client_id: bytes,
        hwaddr: bytes,
        vlans: tuple[int, ...],
        relay_subs: list[tuple[int, bytes]],
        pools: list[PoolAllocator],
    ) -> int:
        """The client's reserved address, if the network it is on serves it; else 0 (a
        reservation elsewhere does not follow the client to another network)."""
        reservations = self.table.reservations
        if not reservations:
            return 0
        subs = dict(relay_subs)
        found: Reservation | None = reservations.find(
            client_id,
            hwaddr,
            vlans,
            subs.get(RelayAgentSubOption.CIRCUIT_ID),
            subs.get(RelayAgentSubOption.REMOTE_ID),
        )
        if found is None or containing(pools, found.address) is None:
            return 0
        return found.address

    def _network_selector(
        self, msg: Message, relay_subs: list[tuple[int, bytes]]
    ) -> tuple[int, bool]:
        """An address on the client's network, in Kea's order, and whether option 118
        chose it. Twin of the selector in bpf/brushtail.c.

        Subnet selection (RFC 3011) and a relay's link selection (RFC 3527) are honoured
        only from a trusted relay: from anyone else (a client on our own link, a host
        that writes a giaddr) they would pick any pool. Then the relay's giaddr; then
        ciaddr where a client may set it (a RENEWING client unicasts without a relay; a
        DISCOVER's ciaddr is 0 by RFC 2131 4.3.1, and a bogus one must not hide the link
        it came on); then the server's own link."""
        options = msg.options
        if msg.giaddr:
            if self.config.trusts_relay(msg.giaddr):
                subnet_selection = options.get(OptionCode.SUBNET_SELECTION)
                if subnet_selection is not None:
                    return opt.decode_ip(subnet_selection), True
                for code, value in relay_subs:
                    if code == RelayAgentSubOption.LINK_SELECTION:
                        return opt.decode_ip(value), False
            return msg.giaddr, False
        if msg.ciaddr and msg.message_type is not MessageType.DISCOVER:
            return msg.ciaddr, False
        return self.config.server_id, False

    def _pools_for(self, address: int) -> list[PoolAllocator]:
        """The pools of the shared network whose subnet holds `address`, in config order."""
        return next((pools for net, mask, pools in self._subnets if address & mask == net), [])

    def _for_vlans(self, vlans: tuple[int, ...]) -> list[PoolAllocator]:
        """The pools that may serve a client on our own link that came on `vlans`: those
        listing the VLANs if any does, else those listing none (docs/CONFIG.md, `vlans`)."""
        tagged = [alloc for alloc in self._vlan_pools if alloc.pool.serves_vlans(vlans)]
        if tagged:
            return tagged
        return self._plain_pools

    def _on_link(
        self, pools: list[PoolAllocator], selector: int, vlans: tuple[int, ...]
    ) -> list[PoolAllocator]:
        """Of `pools` (those whose subnet holds `selector`), the ones serving a client on
        our own link that came on `vlans` (_for_vlans). Pools chosen by their VLANs are
        the client's network whatever their subnets, unless ciaddr selects among them."""
        eligible = self._for_vlans(vlans)
        if selector == self.config.server_id and eligible and eligible[0].pool.vlans:
            return eligible
        return [alloc for alloc in pools if alloc in eligible]

    def _link_pools(self, vlans: tuple[int, ...]) -> list[PoolAllocator]:
        """The pools serving our own link's clients on `vlans`."""
        server_id = self.config.server_id
        return self._on_link(self._pools_for(server_id), server_id, vlans)

    @staticmethod
    def _pool_of(ctx: ClientContext, address: int) -> PoolAllocator | None:
        return containing(ctx.pools, address)

    def _on_network(self, pools: list[PoolAllocator], address: int) -> bool:
        """Whether `address` is inside a subnet of `pools`, whether or not our ranges hold
        it (other servers' ranges may share the subnet)."""
        return any(alloc in pools for alloc in self._pools_for(address))

    # Message handlers ---------------------------------------------------------------------

    def _discover(self, ctx: ClientContext, decision: Decision) -> None:
        if not ctx.pools:
            decision.drop = DropReason.NO_SUBNET
            return
        if self.table.over_limit(ctx.client_id, ctx.lines):
            decision.drop = DropReason.LEASE_LIMIT
            return
        if self.table.over_offer_limit(ctx.client_id, ctx.lines):
            decision.drop = DropReason.OFFER_LIMIT
            return
        chosen = self.table.offer(
            ctx.client_id,
            ctx.pools,
            ctx.requested,
            ctx.link,
            ctx.now,
            ctx.message.hwaddr,
            ctx.host,
            ctx.lines,
            ctx.ingress.vlans,
        )
        if chosen is None:
            decision.drop = DropReason.POOL_EXHAUSTED
            return
        address, alloc = chosen
        if self._reply(ctx, decision, MessageType.OFFER, address, alloc.pool):
            decision.events.append(self._event(LeaseEventKind.OFFER, ctx, address, alloc.pool.name))

    def _request(self, ctx: ClientContext, decision: Decision) -> None:
        """RFC 2131 4.3.2, by the client's state. A REQUEST naming this server (54) that
        cannot be satisfied is NAKed (3.1 step 4), whatever is wrong with it."""
        msg = ctx.message
        names_us = ctx.server_id is not None and not self._names_another(ctx)
        if self._names_another(ctx):
            # The client chose another server's offer: ours is free again.
            self.table.drop_hold(ctx.client_id)
            decision.drop = DropReason.OTHER_SERVER
        elif not ctx.pools:
            if names_us:
                self._nak(ctx, decision, NakReason.NO_SUBNET)
            else:
                decision.drop = DropReason.NO_SUBNET
        elif msg.ciaddr:
            # RENEWING or REBINDING (some clients name the server here too).
            self._request_renewing(ctx, decision)
        elif names_us:
            self._request_selecting(ctx, decision)
        elif ctx.requested:
            self._request_init_reboot(ctx, decision)
        else:
            decision.drop = DropReason.NO_MATCHING_LEASE

    def _request_selecting(self, ctx: ClientContext, decision: Decision) -> None:
        if not ctx.requested:
            self._nak(ctx, decision, NakReason.NO_REQUESTED_ADDRESS)
            return
        self._bind(ctx, decision, ctx.requested)

    def _request_init_reboot(self, ctx: ClientContext, decision: Decision) -> None:
        if not self._on_network(ctx.pools, ctx.requested):
            self._nak(ctx, decision, NakReason.NOT_ON_NETWORK)
            return
        lease = self.table.lease_of(ctx.client_id)
        if lease is not None and _revoked(lease, ctx.requested):
            self._nak(ctx, decision, NakReason.REVOKED)
            return
        hold = self.table.hold_of(ctx.client_id)
        if lease is None and hold is None:
            # RFC 2131 4.3.2: with no record of the client, stay silent (another server
            # on this network may have leased it).
            decision.drop = DropReason.NO_RECORD
            return
        if ctx.requested not in {lease.address if lease else 0, hold.address if hold else 0}:
            self._nak(ctx, decision, NakReason.NOT_CLIENTS)
            return
        self._bind(ctx, decision, ctx.requested)

    def _request_renewing(self, ctx: ClientContext, decision: Decision) -> None:
        address = ctx.message.ciaddr
        lease = self.table.lease_of(ctx.client_id)
        if lease is not None and _revoked(lease, address):
            self._nak(ctx, decision, NakReason.REVOKED)
            return
        if lease is not None and lease.address != address and lease.active(ctx.now):
            self._nak(ctx, decision, NakReason.NOT_CLIENTS)
            return
        if (lease is None or lease.address != address) and self._on_network(ctx.pools, address):
            # No record of this client at this address. Inside our ranges and free, the
            # client keeps it (it already uses it and nobody else holds it: this is how a
            # lease survives a lost record), but only where the network vouches for the
            # address: through a relay, or on our own link. Outside our ranges it may be
            # another server's lease: stay silent, as in INIT-REBOOT.
            alloc = self._pool_of(ctx, address)
            own_link = self._link_pools(ctx.ingress.vlans)
            vouched = ctx.message.giaddr or self._on_network(own_link, address)
            if alloc is None or not vouched:
                decision.drop = DropReason.NO_RECORD
                return
        self._bind(ctx, decision, address)

    def _bind(self, ctx: ClientContext, decision: Decision, address: int) -> None:
        """Lease `address` to the client (ACK), or NAK if it can't be."""
        alloc = self._pool_of(ctx, address)
        if alloc is None:
            self._nak(ctx, decision, NakReason.NOT_ON_NETWORK)
            return
        msg = ctx.message
        if not self.table.may_bind(ctx.client_id, msg.hwaddr, address, ctx.host, ctx.ingress.vlans):
            self._nak(ctx, decision, NakReason.RESERVED)
            return
        if ctx.host and address != ctx.host and self.table.host_free(ctx.client_id, ctx.host):
            # Its reserved address is free again (a reload added it, or the client that
            # held it has gone): the NAK sends the client back to DISCOVER, and to it.
            self._nak(ctx, decision, NakReason.RESERVATION)
            return
        # Replication's rule 2: a roaming client is extended only so far; past that,
        # NAKed, it DISCOVERs and is given an address of this site's own blocks.
        until = self.table.extension_until(address, ctx.client_id, ctx.now)
        if not until:
            self._nak(ctx, decision, NakReason.OTHER_SITE)
            return
        if self.table.over_limit(ctx.client_id, ctx.lines):
            decision.drop = DropReason.LEASE_LIMIT
            return
        lease = self.table.bind(
            ctx.client_id,
            msg.hwaddr,
            alloc,
            address,
            ctx.now,
            msg.options.get(OptionCode.PARAMETER_REQUEST_LIST),
            decision,
            ctx.host,
            ctx.vlans,
            ctx.client_class.lease_time if ctx.client_class is not None else None,
            ctx.relay_info,
            msg.giaddr,
            until,
        )
        if lease is None:
            self._nak(ctx, decision, NakReason.ADDRESS_IN_USE)
            return
        capped = math.floor(lease.expires - ctx.now) if until != math.inf else None
        # The lease stays written even if the ACK cannot be encoded: the client retries
        # and is given the same address.
        if self._reply(ctx, decision, MessageType.ACK, address, alloc.pool, lease_time=capped):
            decision.events.append(self._event(LeaseEventKind.ACK, ctx, address, alloc.pool.name))

    def _names_another(self, ctx: ClientContext) -> bool:
        """Whether the request's option 54 names another server: neither our server_id
        nor the address its relay's override (RFC 5107) made the client know us by."""
        return ctx.server_id is not None and ctx.server_id not in (
            self.config.server_id,
            ctx.override,
        )

    def _decline(self, ctx: ClientContext, decision: Decision) -> None:
        if self._names_another(ctx):
            decision.drop = DropReason.OTHER_SERVER
            return
        lease = self._own_active_lease(ctx, ctx.requested)
        if lease is None:
            decision.drop = DropReason.NO_MATCHING_LEASE
            return
        self.table.decline(lease, ctx.now, decision)
        decision.events.append(
            self._event(
                LeaseEventKind.DECLINE,
                ctx,
                lease.address,
                lease.pool,
                f"quarantined for {self.config.decline_hold}s",
            )
        )

    def _release(self, ctx: ClientContext, decision: Decision) -> None:
        if self._names_another(ctx):
            decision.drop = DropReason.OTHER_SERVER
            return
        lease = self._own_active_lease(ctx, ctx.message.ciaddr)
        if lease is None:
            decision.drop = DropReason.NO_MATCHING_LEASE
            return
        self.table.release(lease, ctx.now, decision)
        decision.events.append(self._event(LeaseEventKind.RELEASE, ctx, lease.address, lease.pool))

    def _own_active_lease(self, ctx: ClientContext, address: int) -> Lease | None:
        lease = self.table.lease_of(ctx.client_id)
        if lease is None or lease.address != address or not lease.active(ctx.now):
            return None
        return lease

    def _inform(self, ctx: ClientContext, decision: Decision) -> None:
        if not ctx.message.ciaddr:
            # RFC 2131 4.3.5: the ACK goes to ciaddr; a client without one must DISCOVER.
            decision.drop = DropReason.NO_CLIENT_ADDRESS
            return
        if not ctx.pools:
            decision.drop = DropReason.NO_SUBNET
            return
        # In a shared network, the options of the client's own subnet (its mask above all).
        ciaddr = IPv4Address(ctx.message.ciaddr)
        own = (a.pool for a in ctx.pools if ciaddr in a.pool.subnet)
        pool = next(own, ctx.pools[0].pool)
        if self._reply(ctx, decision, MessageType.ACK, 0, pool, with_lease=False):
            decision.events.append(
                self._event(LeaseEventKind.INFORM, ctx, ctx.message.ciaddr, pool.name)
            )

    # Replies ------------------------------------------------------------------------------

    def _reply(
        self,
        ctx: ClientContext,
        decision: Decision,
        mtype: MessageType,
        yiaddr: int,
        pool: Pool,
        with_lease: bool = True,
        lease_time: int | None = None,
    ) -> bool:
        """Append the reply (twin of write_headers in bpf/reply.h); False if it cannot be
        made to fit the client's maximum message size (the request is dropped).
        `lease_time`: a roaming client's lease, when shorter than the pool's: the lease
        time, T1 and T2 are capped to fit it."""
        request = ctx.message
        profile = self._profile(pool, yiaddr or request.ciaddr, ctx.client_class)
        rendered = self._profile_pools[profile]
        template = self._template(
            rendered,
            profile,
            mtype,
            with_lease,
            request.options.get(OptionCode.PARAMETER_REQUEST_LIST),
        )
        if lease_time is not None and lease_time < rendered.lease_time:
            options = {
                **template.options,
                OptionCode.LEASE_TIME: opt.u32(lease_time),
                OptionCode.RENEWAL_TIME: opt.u32(min(rendered.renewal_time, lease_time // 2)),
                OptionCode.REBINDING_TIME: opt.u32(
                    min(rendered.rebinding_time, lease_time * 7 // 8)
                ),
            }
            template = ReplyTemplate(options, encode_options(options), template.optional)
        reply = Message(
            op=Op.BOOTREPLY,
            xid=request.xid,
            htype=request.htype,
            hlen=request.hlen,
            flags=request.flags,
            ciaddr=request.ciaddr if mtype is MessageType.ACK else 0,
            yiaddr=yiaddr,
            giaddr=request.giaddr,
            chaddr=request.chaddr,
            options=template.options,
        )
        return self._finish(ctx, decision, reply, mtype, template)

    def _template(
        self, pool: Pool, profile: str, mtype: MessageType, with_lease: bool, prl: bytes | None
    ) -> ReplyTemplate:
        """The options of a reply, which depend only on the profile (the pool, or a reserved
        host's own), the reply type and the client's parameter request list: rendered once,
        reused for every such reply. With a request list, the configured options it names,
        in its order (RFC 2131 4.3.1); without one, all of them (docs/CONFIG.md, "Which
        options a reply carries")."""
        key = (profile, mtype, with_lease, prl)
        template = self._templates.get(key)
        if template is not None:
            return template
        options: dict[int, bytes] = {
            OptionCode.MESSAGE_TYPE: bytes((mtype,)),
            OptionCode.SERVER_ID: self._server_id,
        }
        if with_lease:
            options[OptionCode.LEASE_TIME] = opt.u32(pool.lease_time)
            options[OptionCode.RENEWAL_TIME] = opt.u32(pool.renewal_time)
            options[OptionCode.REBINDING_TIME] = opt.u32(pool.rebinding_time)
        pool_options = self._options[profile]
        options[OptionCode.SUBNET_MASK] = pool_options[OptionCode.SUBNET_MASK]
        # A code listed twice in option 55 is one option (dict.fromkeys keeps the order).
        optional = [
            c
            for c in dict.fromkeys(prl if prl is not None else pool_options)
            if c in pool_options and c != OptionCode.SUBNET_MASK
        ]
        for code in optional:
            options.setdefault(code, pool_options[code])
        if len(self._templates) >= MAX_TEMPLATES:
            # Clients choose the request lists: never let them grow this without bound.
            self._templates.clear()
        template = ReplyTemplate(options, encode_options(options), tuple(optional))
        self._templates[key] = template
        return template

    def _nak(self, ctx: ClientContext, decision: Decision, why: NakReason) -> None:
        request = ctx.message
        options: dict[int, bytes] = {
            OptionCode.MESSAGE_TYPE: bytes((MessageType.NAK,)),
            OptionCode.SERVER_ID: self._server_id,
            OptionCode.MESSAGE: why.value.encode("ascii"),
        }
        reply = Message(
            op=Op.BOOTREPLY,
            xid=request.xid,
            htype=request.htype,
            hlen=request.hlen,
            # RFC 2131 4.3.2: a NAK through a relay asks the relay to broadcast it.
            flags=request.flags | (BROADCAST_FLAG if request.giaddr else 0),
            giaddr=request.giaddr,
            chaddr=request.chaddr,
            options=options,
        )
        template = ReplyTemplate(options, encode_options(options), ())
        if self._finish(ctx, decision, reply, MessageType.NAK, template):
            decision.nak = why
            address = ctx.requested or request.ciaddr
            decision.events.append(self._event(LeaseEventKind.NAK, ctx, address, "", why.value))

    def _finish(
        self,
        ctx: ClientContext,
        decision: Decision,
        reply: Message,
        mtype: MessageType,
        template: ReplyTemplate,
    ) -> bool:
        """Echo what must be echoed, encode to fit, and address the reply.

        Echoed, after the template's options and in this order (the fast path writes the
        same bytes, bpf/reply.h): 118 when it chose the subnet (RFC 3011 3: a client
        discards replies without it), 61 verbatim (RFC 6842), then 82 verbatim and last
        (RFC 3046 2.2), never moved into `file` or `sname`. A relay's server identifier
        override (RFC 5107) takes option 54's place: the client sends its renewals there,
        to the relay, which relays them to us."""
        request = ctx.message
        if ctx.override is not None:
            options = {**template.options, OptionCode.SERVER_ID: opt.ip(ctx.override)}
            template = ReplyTemplate(options, encode_options(options), template.optional)
            reply.options = options
        echo: dict[int, bytes] = {}
        if ctx.echo_118:
            echo[OptionCode.SUBNET_SELECTION] = request.options[OptionCode.SUBNET_SELECTION]
        for code in _ECHOED_LAST:
            value = request.options.get(code)
            if value is not None:
                echo[code] = value
        wire = template.wire
        if echo:
            reply.options = {**reply.options, **echo}
            wire += encode_options(echo)
        payload = self._encoded(reply, ctx.max_size, wire, list(template.optional))
        if payload is None:
            decision.drop = DropReason.REPLY_TOO_LARGE
            return False
        dest = reply_destination(request, mtype, reply.yiaddr)
        decision.replies.append(Reply(reply, payload, dest, ctx.ingress))
        return True

    @staticmethod
    def _encoded(reply: Message, max_size: int, wire: bytes, optional: list[int]) -> bytes | None:
        """The reply encoded within `max_size`, dropping requested options from the end of
        the request list until it fits; None if even the mandatory ones do not."""
        try:
            return encode(reply, max_size, wire, _ECHOED_LAST)
        except MessageTooLarge:
            pass
        reply.options = dict(reply.options)
        while optional:
            del reply.options[optional.pop()]
            try:
                return encode(reply, max_size, last=_ECHOED_LAST)
            except MessageTooLarge:
                continue
        return None

    @staticmethod
    def _max_size(request: Message) -> int:
        raw = request.options.get(OptionCode.MAX_MESSAGE_SIZE)
        datagram = opt.decode_u16(raw) if raw is not None else MIN_IP_DATAGRAM
        return min(max(datagram, MIN_IP_DATAGRAM), MAX_IP_DATAGRAM) - IP_UDP_HEADERS

    @staticmethod
    def _event(
        kind: LeaseEventKind, ctx: ClientContext, address: int, pool: str, detail: str = ""
    ) -> LeaseEvent:
        return LeaseEvent(kind, ctx.client_id, ctx.message.hwaddr, address, pool, detail, ctx.vlans)
