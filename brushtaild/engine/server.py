"""The DHCPv4 server engine (RFC 2131), sans-IO: (Message, Ingress, now) -> Decision.

Rules this module keeps:
- It reads no clock: `now` (Unix seconds) comes with every call, so expiry is deterministic.
- It changes its in-memory view at once but only *asks* for durability: the caller writes
  `Decision.lease_writes` to the store before it sends any reply of that decision.
- An address is in an allocator's in-use set exactly while it is leased (active), offered
  (held) or quarantined; expiry is processed before every request so that stays true.
"""

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import MessageTooLarge, encode, encode_options
from brushtaild.dhcp.constants import (
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
from brushtaild.engine.allocator import PoolAllocator
from brushtaild.engine.config import Config, Pool
from brushtaild.engine.decisions import (
    Decision,
    Ingress,
    LeaseEvent,
    LeaseEventKind,
    Reply,
)
from brushtaild.engine.leases import Lease, LeaseState

# Replies never exceed what fits an Ethernet frame, whatever option 57 claims.
MAX_IP_DATAGRAM = 1500
# Distinct (pool, reply type, request list) templates kept before the cache starts over.
MAX_TEMPLATES = 4096


@dataclass(slots=True)
class Hold:
    """An OFFERed address, reserved for one client until `expires`."""

    client_id: bytes
    address: int
    pool: str
    expires: float


@dataclass(frozen=True, slots=True)
class ReplyTemplate:
    options: dict[int, bytes]  # shared by every reply made from it: never mutated
    wire: bytes  # the options encoded, so a reply only packs its fixed fields
    optional: tuple[int, ...]  # requested options, in request order: dropped last-first to fit


@dataclass(slots=True)
class ClientContext:
    """Everything about one request the handlers need, computed once."""

    message: Message
    ingress: Ingress
    client_id: bytes
    pools: list[PoolAllocator]  # pools serving the client's network, in config order
    requested: int  # option 50, or 0
    server_id: int | None  # option 54
    now: float


def client_identity(msg: Message) -> bytes:
    """Option 61 when present, else htype + chaddr: the form RFC 2132 9.14 gives a
    hardware-address client identifier, so both spellings of one client match."""
    client_id = msg.options.get(OptionCode.CLIENT_ID)
    if client_id:
        return client_id
    return bytes((msg.htype,)) + msg.hwaddr


def _pool_options(pool: Pool) -> dict[int, bytes]:
    net = pool.subnet
    options: dict[int, bytes] = {
        OptionCode.SUBNET_MASK: opt.ip(int(net.netmask)),
        OptionCode.BROADCAST_ADDRESS: opt.ip(int(net.broadcast_address)),
    }
    if pool.routers:
        options[OptionCode.ROUTERS] = opt.ips(pool.routers)
    if pool.dns_servers:
        options[OptionCode.DNS_SERVERS] = opt.ips(pool.dns_servers)
    if pool.domain:
        options[OptionCode.DOMAIN_NAME] = pool.domain.encode("ascii")
    return options


class Server:
    def __init__(self, config: Config, leases: Iterable[Lease], now: float) -> None:
        self.config = config
        self._server_id = opt.ip(config.server_id)
        self._allocators = {p.name: PoolAllocator(p, config.server_id) for p in config.pools}
        self._subnets = [
            (int(p.subnet.network_address), int(p.subnet.netmask), self._allocators[p.name])
            for p in config.pools
        ]
        self._options = {p.name: _pool_options(p) for p in config.pools}
        self._templates: dict[tuple[str, MessageType, bool, bytes | None], ReplyTemplate] = {}
        self._by_client: dict[bytes, Lease] = {}
        self._by_address: dict[int, Lease] = {}
        self._holds: dict[bytes, Hold] = {}
        self._held: dict[int, Hold] = {}
        self._lease_timers: list[tuple[float, int]] = []
        self._hold_timers: list[tuple[float, bytes]] = []
        self._handlers: dict[MessageType, Callable[[ClientContext, Decision], None]] = {
            MessageType.DISCOVER: self._discover,
            MessageType.REQUEST: self._request,
            MessageType.DECLINE: self._decline,
            MessageType.RELEASE: self._release,
            MessageType.INFORM: self._inform,
        }
        for lease in sorted(leases, key=lambda lease: lease.updated):
            self._load(lease, now)

    # Public API ---------------------------------------------------------------------------

    def handle(self, msg: Message, ingress: Ingress, now: float) -> Decision:
        decision = Decision()
        self._expire(now, decision)
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
            handler(ctx, decision)
        except MalformedPacket as exc:
            decision.drop = exc.reason
        return decision

    def tick(self, now: float) -> Decision:
        """Expire leases, offers and quarantines that are due; call when `next_deadline`
        passes even if no packet arrives."""
        decision = Decision()
        self._expire(now, decision)
        return decision

    def next_deadline(self) -> float | None:
        times = [heap[0][0] for heap in (self._lease_timers, self._hold_timers) if heap]
        return min(times) if times else None

    def kernel_renewal(self, hwaddr: bytes, address: int, expires: float, now: float) -> Decision:
        """Records a renewal the XDP fast path has already ACKed: the bound lease of
        `address` held by the client with `hwaddr` now runs until `expires`. The decision
        writes the lease and logs the ACK; it drops with STALE_RENEWAL when the address is
        no longer this client's to renew (changed by the slow path or a reload meanwhile):
        the caller then withdraws the kernel's entry, and the client's next request comes
        to the slow path."""
        decision = Decision()
        lease = self._by_address.get(address)
        if lease is None or lease.hwaddr != hwaddr or not lease.client_id:
            decision.drop = DropReason.STALE_RENEWAL
            return decision
        renewed = self.extend(lease.client_id, address, expires, now)
        if renewed is None:
            decision.drop = DropReason.STALE_RENEWAL
            return decision
        decision.lease_writes.append(renewed)
        decision.events.append(
            LeaseEvent(LeaseEventKind.ACK, renewed.client_id, hwaddr, address, renewed.pool)
        )
        return decision

    def renewable(self, lease: Lease, now: float) -> bool:
        """Whether the fast path may answer for `lease`: bound, unexpired, and its address
        still one its pool hands out (a reload may have excluded or renumbered it)."""
        if lease.state is not LeaseState.BOUND or not lease.active(now):
            return False
        alloc = self._allocators.get(lease.pool)
        return alloc is not None and alloc.contains(lease.address)

    def extend(self, client_id: bytes, address: int, expires: float, now: float) -> Lease | None:
        """Records a renewal the XDP fast path has already ACKed: the client's bound lease
        of `address` now runs until `expires`. Returns the lease to write, or None if the
        address is no longer this client's (changed by the slow path meanwhile): the
        caller then withdraws the kernel's entry and the client's next renewal comes here.
        """
        lease = self._by_address.get(address)
        if lease is None or lease.client_id != client_id:
            return None
        if self._by_client.get(client_id) is not lease:
            return None
        if lease.state is LeaseState.EXPIRED:
            # Expired here between the kernel's ACK and this event: take it back if free.
            alloc = self._allocator_for(address, lease.pool)
            if alloc is None or not alloc.take(address):
                return None
        elif lease.state is not LeaseState.BOUND:
            return None
        renewed = replace(
            lease, state=LeaseState.BOUND, expires=max(expires, lease.expires), updated=now
        )
        self._by_address[address] = renewed
        self._by_client[client_id] = renewed
        heapq.heappush(self._lease_timers, (renewed.expires, address))
        return renewed

    def template(self, pool_name: str, mtype: MessageType, prl: bytes | None) -> ReplyTemplate:
        """The options a reply of `mtype` from `pool_name` carries for a client that asked
        for `prl`: the fast path answers with exactly these bytes."""
        pool = self._allocators[pool_name].pool
        return self._template(pool, mtype, True, prl)

    def lease_at(self, address: int) -> Lease | None:
        return self._by_address.get(address)

    def leases(self) -> list[Lease]:
        return list(self._by_address.values())

    def pool_usage(self) -> dict[str, tuple[int, int]]:
        """Pool name -> (addresses total, addresses assigned, offered or quarantined)."""
        return {name: (a.total, a.assigned) for name, a in self._allocators.items()}

    def reconfigured(self, config: Config, now: float) -> "Server":
        """A server for a new config that keeps every lease and quarantine; pending offers
        are dropped (the client's REQUEST is still granted while the address is free)."""
        return Server(config, self.leases(), now)

    # Loading and expiry -------------------------------------------------------------------

    def _load(self, lease: Lease, now: float) -> None:
        alloc = self._allocator_for(lease.address, lease.pool)
        active = lease.active(now)
        if lease.state is LeaseState.DECLINED and not active:
            return
        self._by_address[lease.address] = lease
        if lease.client_id:
            self._by_client[lease.client_id] = lease
        if active:
            if alloc is not None:
                alloc.take(lease.address)
            heapq.heappush(self._lease_timers, (lease.expires, lease.address))
        elif alloc is not None:
            alloc.recycle(lease.address)

    def _allocator_for(self, address: int, pool_name: str) -> PoolAllocator | None:
        alloc = self._allocators.get(pool_name)
        if alloc is not None and alloc.contains(address):
            return alloc
        return next((a for a in self._allocators.values() if a.contains(address)), None)

    def _expire(self, now: float, decision: Decision) -> None:
        timers = self._lease_timers
        while timers and timers[0][0] <= now:
            _, address = heapq.heappop(timers)
            lease = self._by_address.get(address)
            if lease is None or lease.expires > now or not lease.occupies:
                continue  # renewed, released or replaced since this timer was set
            alloc = self._allocator_for(address, lease.pool)
            if lease.state is LeaseState.DECLINED:
                del self._by_address[address]
                decision.lease_deletes.append(address)
                kind = LeaseEventKind.EXPIRE
                detail = "quarantine over"
            else:
                expired = replace(lease, state=LeaseState.EXPIRED)
                self._by_address[address] = expired
                self._by_client[lease.client_id] = expired
                kind, detail = LeaseEventKind.EXPIRE, ""
            if alloc is not None:
                alloc.release(address)
            decision.events.append(
                LeaseEvent(kind, lease.client_id, lease.hwaddr, address, lease.pool, detail)
            )
        holds = self._hold_timers
        while holds and holds[0][0] <= now:
            _, client_id = heapq.heappop(holds)
            hold = self._holds.get(client_id)
            if hold is not None and hold.expires <= now:
                self._drop_hold(hold, now)

    @staticmethod
    def _active(lease: Lease | None, now: float) -> bool:
        return lease is not None and lease.active(now)

    def _drop_hold(self, hold: Hold, now: float, keep: int = 0) -> None:
        del self._holds[hold.client_id]
        del self._held[hold.address]
        if hold.address != keep and not self._active(self._by_address.get(hold.address), now):
            alloc = self._allocators.get(hold.pool)
            if alloc is not None:
                alloc.release(hold.address)

    # Request context ----------------------------------------------------------------------

    def _context(self, msg: Message, ingress: Ingress, now: float) -> ClientContext:
        options = msg.options
        requested = options.get(OptionCode.REQUESTED_ADDRESS)
        server_id = options.get(OptionCode.SERVER_ID)
        return ClientContext(
            message=msg,
            ingress=ingress,
            client_id=client_identity(msg),
            pools=self._pools_for(self._network_selector(msg)),
            requested=opt.decode_ip(requested) if requested is not None else 0,
            server_id=opt.decode_ip(server_id) if server_id is not None else None,
            now=now,
        )

    def _network_selector(self, msg: Message) -> int:
        """An address on the client's network, in Kea's order: subnet selection (RFC 3011),
        link selection from a relay (RFC 3527), the relay's giaddr, the client's ciaddr,
        then the server's own link."""
        options = msg.options
        subnet_selection = options.get(OptionCode.SUBNET_SELECTION)
        if subnet_selection is not None:
            return opt.decode_ip(subnet_selection)
        relay_info = options.get(OptionCode.RELAY_AGENT_INFO)
        if relay_info is not None:
            for code, value in opt.parse_relay_agent_info(relay_info):
                if code == RelayAgentSubOption.LINK_SELECTION:
                    return opt.decode_ip(value)
        return msg.giaddr or msg.ciaddr or self.config.server_id

    def _pools_for(self, address: int) -> list[PoolAllocator]:
        return [alloc for net, mask, alloc in self._subnets if address & mask == net]

    @staticmethod
    def _pool_of(ctx: ClientContext, address: int) -> PoolAllocator | None:
        return next((a for a in ctx.pools if a.contains(address)), None)

    # Message handlers ---------------------------------------------------------------------

    def _discover(self, ctx: ClientContext, decision: Decision) -> None:
        if not ctx.pools:
            decision.drop = DropReason.NO_SUBNET
            return
        chosen = self._choose_offer(ctx)
        if chosen is None:
            decision.drop = DropReason.POOL_EXHAUSTED
            return
        address, alloc = chosen
        self._reply(ctx, decision, MessageType.OFFER, address, alloc.pool)
        decision.events.append(self._event(LeaseEventKind.OFFER, ctx, address, alloc.pool.name))

    def _choose_offer(self, ctx: ClientContext) -> tuple[int, PoolAllocator] | None:
        """Kea's order: the client's lease (active, or its old address while free), its
        pending offer, the address it asks for, then any free address."""
        now = ctx.now
        lease = self._by_client.get(ctx.client_id)
        if lease is not None:
            alloc = self._pool_of(ctx, lease.address)
            if alloc is not None:
                if self._active(lease, now):
                    return lease.address, alloc
                if alloc.take(lease.address):
                    return self._hold(ctx, alloc, lease.address)
        hold = self._holds.get(ctx.client_id)
        if hold is not None:
            alloc = self._pool_of(ctx, hold.address)
            if alloc is not None:
                hold.expires = now + self.config.offer_hold
                heapq.heappush(self._hold_timers, (hold.expires, ctx.client_id))
                return hold.address, alloc
        if ctx.requested:
            alloc = self._pool_of(ctx, ctx.requested)
            if alloc is not None and alloc.take(ctx.requested):
                return self._hold(ctx, alloc, ctx.requested)
        for alloc in ctx.pools:
            address = alloc.allocate()
            if address is not None:
                return self._hold(ctx, alloc, address)
        return None

    def _hold(
        self, ctx: ClientContext, alloc: PoolAllocator, address: int
    ) -> tuple[int, PoolAllocator]:
        """Record the offer of an address the caller has just taken from `alloc`."""
        previous = self._holds.get(ctx.client_id)
        if previous is not None:
            self._drop_hold(previous, ctx.now)
        hold = Hold(ctx.client_id, address, alloc.pool.name, ctx.now + self.config.offer_hold)
        self._holds[ctx.client_id] = hold
        self._held[address] = hold
        heapq.heappush(self._hold_timers, (hold.expires, ctx.client_id))
        return address, alloc

    def _request(self, ctx: ClientContext, decision: Decision) -> None:
        msg = ctx.message
        if ctx.server_id is not None and not msg.ciaddr:
            self._request_selecting(ctx, decision)
        elif ctx.server_id is not None and ctx.server_id != self.config.server_id:
            decision.drop = DropReason.OTHER_SERVER
        elif not ctx.pools:
            decision.drop = DropReason.NO_SUBNET
        elif msg.ciaddr:
            self._request_renewing(ctx, decision)
        elif ctx.requested:
            self._request_init_reboot(ctx, decision)
        else:
            decision.drop = DropReason.NO_MATCHING_LEASE

    def _request_selecting(self, ctx: ClientContext, decision: Decision) -> None:
        if ctx.server_id != self.config.server_id:
            # The client chose another server's offer: ours is free again (RFC 2131 4.3.2).
            hold = self._holds.get(ctx.client_id)
            if hold is not None:
                self._drop_hold(hold, ctx.now)
            decision.drop = DropReason.OTHER_SERVER
            return
        if not ctx.pools:
            decision.drop = DropReason.NO_SUBNET
            return
        if not ctx.requested:
            self._nak(ctx, decision, "no requested address")
            return
        self._bind(ctx, decision, ctx.requested)

    def _request_init_reboot(self, ctx: ClientContext, decision: Decision) -> None:
        if self._pool_of(ctx, ctx.requested) is None:
            self._nak(ctx, decision, "address not on this network")
            return
        lease = self._by_client.get(ctx.client_id)
        hold = self._holds.get(ctx.client_id)
        if lease is None and hold is None:
            # RFC 2131 4.3.2: with no record of the client, stay silent.
            decision.drop = DropReason.NO_RECORD
            return
        if ctx.requested not in {lease.address if lease else 0, hold.address if hold else 0}:
            self._nak(ctx, decision, "address not leased to this client")
            return
        self._bind(ctx, decision, ctx.requested)

    def _request_renewing(self, ctx: ClientContext, decision: Decision) -> None:
        address = ctx.message.ciaddr
        lease = self._by_client.get(ctx.client_id)
        if lease is not None and lease.address != address and self._active(lease, ctx.now):
            self._nak(ctx, decision, "address not leased to this client")
            return
        # With no record (or an expired one), a client renewing a free address keeps it:
        # it is already using it, and nobody else holds it.
        self._bind(ctx, decision, address)

    def _bind(self, ctx: ClientContext, decision: Decision, address: int) -> None:
        """Lease `address` to the client (ACK), or NAK if it can't be."""
        now = ctx.now
        alloc = self._pool_of(ctx, address)
        if alloc is None:
            self._nak(ctx, decision, "address not on this network")
            return
        client_id = ctx.client_id
        owner = self._by_address.get(address)
        hold = self._held.get(address)
        leased_to_client = owner is not None and owner.client_id == client_id
        mine = (leased_to_client and self._active(owner, now)) or (
            hold is not None and hold.client_id == client_id
        )
        if not mine and not alloc.take(address):
            self._nak(ctx, decision, "address in use")
            return
        own_hold = self._holds.get(client_id)
        if own_hold is not None:
            # Taken above or by the hold itself: either way `address` stays in use.
            self._drop_hold(own_hold, now, keep=address)
        previous = self._by_client.get(client_id)
        if previous is not None and previous.address != address:
            # One record per client: the old address is given back and forgotten.
            self._forget(previous, now)
            decision.lease_deletes.append(previous.address)
        if (
            owner is not None
            and not leased_to_client
            and self._by_client.get(owner.client_id) is owner
        ):
            del self._by_client[owner.client_id]
        pool = alloc.pool
        lease = Lease(
            address=address,
            client_id=client_id,
            hwaddr=ctx.message.hwaddr,
            pool=pool.name,
            state=LeaseState.BOUND,
            expires=now + pool.lease_time,
            updated=now,
            prl=ctx.message.options.get(OptionCode.PARAMETER_REQUEST_LIST),
        )
        self._by_address[address] = lease
        self._by_client[client_id] = lease
        heapq.heappush(self._lease_timers, (lease.expires, address))
        decision.lease_writes.append(lease)
        self._reply(ctx, decision, MessageType.ACK, address, pool)
        decision.events.append(self._event(LeaseEventKind.ACK, ctx, address, pool.name))

    def _forget(self, lease: Lease, now: float) -> None:
        if self._by_address.get(lease.address) is lease:
            del self._by_address[lease.address]
        if self._active(lease, now):
            alloc = self._allocator_for(lease.address, lease.pool)
            if alloc is not None:
                alloc.release(lease.address)

    def _decline(self, ctx: ClientContext, decision: Decision) -> None:
        if ctx.server_id is not None and ctx.server_id != self.config.server_id:
            decision.drop = DropReason.OTHER_SERVER
            return
        address = ctx.requested
        lease = self._by_client.get(ctx.client_id)
        if lease is None or lease.address != address or not self._active(lease, ctx.now):
            decision.drop = DropReason.NO_MATCHING_LEASE
            return
        # The address is in use by someone we don't know: keep it out of circulation. The
        # allocator keeps it in use; the quarantine record carries no client.
        hold_time = self.config.decline_hold
        quarantine = replace(
            lease,
            client_id=b"",
            state=LeaseState.DECLINED,
            expires=ctx.now + hold_time,
            updated=ctx.now,
        )
        del self._by_client[ctx.client_id]
        self._by_address[address] = quarantine
        heapq.heappush(self._lease_timers, (quarantine.expires, address))
        decision.lease_writes.append(quarantine)
        decision.events.append(
            self._event(
                LeaseEventKind.DECLINE, ctx, address, lease.pool, f"quarantined for {hold_time}s"
            )
        )

    def _release(self, ctx: ClientContext, decision: Decision) -> None:
        if ctx.server_id is not None and ctx.server_id != self.config.server_id:
            decision.drop = DropReason.OTHER_SERVER
            return
        address = ctx.message.ciaddr
        lease = self._by_client.get(ctx.client_id)
        if lease is None or lease.address != address or not self._active(lease, ctx.now):
            decision.drop = DropReason.NO_MATCHING_LEASE
            return
        released = replace(lease, state=LeaseState.RELEASED, expires=ctx.now, updated=ctx.now)
        self._by_address[address] = released
        self._by_client[ctx.client_id] = released
        alloc = self._allocator_for(address, lease.pool)
        if alloc is not None:
            alloc.release(address)
        decision.lease_writes.append(released)
        decision.events.append(self._event(LeaseEventKind.RELEASE, ctx, address, lease.pool))

    def _inform(self, ctx: ClientContext, decision: Decision) -> None:
        if not ctx.pools:
            decision.drop = DropReason.NO_SUBNET
            return
        pool = ctx.pools[0].pool
        self._reply(ctx, decision, MessageType.ACK, 0, pool, with_lease=False)
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
    ) -> None:
        request = ctx.message
        template = self._template(
            pool, mtype, with_lease, request.options.get(OptionCode.PARAMETER_REQUEST_LIST)
        )
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
        self._finish(ctx, decision, reply, mtype, template)

    def _template(
        self, pool: Pool, mtype: MessageType, with_lease: bool, prl: bytes | None
    ) -> ReplyTemplate:
        """The options of a reply, which depend only on the pool, the reply type and the
        client's parameter request list: rendered once, reused for every such reply."""
        key = (pool.name, mtype, with_lease, prl)
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
        pool_options = self._options[pool.name]
        options[OptionCode.SUBNET_MASK] = pool_options[OptionCode.SUBNET_MASK]
        optional = [
            c
            for c in (prl if prl is not None else pool_options)
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

    def _nak(self, ctx: ClientContext, decision: Decision, why: str) -> None:
        request = ctx.message
        options: dict[int, bytes] = {
            OptionCode.MESSAGE_TYPE: bytes((MessageType.NAK,)),
            OptionCode.SERVER_ID: self._server_id,
            OptionCode.MESSAGE: why.encode("ascii"),
        }
        reply = Message(
            op=Op.BOOTREPLY,
            xid=request.xid,
            htype=request.htype,
            hlen=request.hlen,
            # RFC 2131 4.3.2: a NAK through a relay asks the relay to broadcast it.
            flags=request.flags | (0x8000 if request.giaddr else 0),
            giaddr=request.giaddr,
            chaddr=request.chaddr,
            options=options,
        )
        template = ReplyTemplate(options, encode_options(options), ())
        self._finish(ctx, decision, reply, MessageType.NAK, template)
        address = ctx.requested or request.ciaddr
        decision.events.append(self._event(LeaseEventKind.NAK, ctx, address, "", why))

    def _finish(
        self,
        ctx: ClientContext,
        decision: Decision,
        reply: Message,
        mtype: MessageType,
        template: ReplyTemplate,
    ) -> None:
        request = ctx.message
        wire = template.wire
        relay_info = request.options.get(OptionCode.RELAY_AGENT_INFO)
        if relay_info is not None:
            # RFC 3046 2.2: echoed verbatim, after all other options.
            echo: dict[int, bytes] = {OptionCode.RELAY_AGENT_INFO: relay_info}
            reply.options = {**reply.options, **echo}
            wire += encode_options(echo)
        max_size = self._max_size(request)
        try:
            payload = encode(reply, max_size, wire)
        except MessageTooLarge:
            payload = self._trimmed(reply, max_size, list(template.optional))
        dest = reply_destination(request, mtype, reply.yiaddr)
        decision.replies.append(Reply(reply, payload, dest, ctx.ingress))

    @staticmethod
    def _trimmed(reply: Message, max_size: int, optional: list[int]) -> bytes:
        """Drop requested options from the end of the request list until the reply fits."""
        reply.options = dict(reply.options)
        while True:
            try:
                return encode(reply, max_size)
            except MessageTooLarge:
                if not optional:
                    raise
                del reply.options[optional.pop()]

    @staticmethod
    def _max_size(request: Message) -> int:
        raw = request.options.get(OptionCode.MAX_MESSAGE_SIZE)
        datagram = opt.decode_u16(raw) if raw is not None else MIN_IP_DATAGRAM
        return min(max(datagram, MIN_IP_DATAGRAM), MAX_IP_DATAGRAM) - IP_UDP_HEADERS

    @staticmethod
    def _event(
        kind: LeaseEventKind, ctx: ClientContext, address: int, pool: str, detail: str = ""
    ) -> LeaseEvent:
        return LeaseEvent(kind, ctx.client_id, ctx.message.hwaddr, address, pool, detail)
