"""Prometheus metrics: one registry for the daemon, served on the configured address.

The fast path and replication add their metrics to this same registry.
"""

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from brushtaild.dhcp.constants import MessageType
from brushtaild.dhcp.reasons import DropReason
from brushtaild.engine.decisions import LeaseEvent, LeaseEventKind, NakReason
from brushtaild.engine.lease_table import PoolUsage

if TYPE_CHECKING:  # the transport loads OpenSSL, which a single site does not need
    from brushtaild.net.dtls import TransportCounters
    from brushtaild.replication.replica import Counters as ReplicaCounters

# Slow-path latency runs from tens of microseconds (an OFFER) to a few milliseconds (an ACK
# waiting for its fsync); buckets resolve both ends.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
# Replication lag: a delta arrives in about a round trip (milliseconds); what anti-entropy
# repairs arrives after rounds of seconds, or after a partition heals (minutes, hours).
LAG_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
)  # fmt: skip
# The replica's refused messages, by reason: (label, counter field).
_REFUSED = (
    ("malformed", "malformed"),
    ("unknown_peer", "unknown_peer"),
    ("wrong_sender", "wrong_sender"),
    ("too_far_ahead", "too_far_ahead"),
)


# Per pool, read at scrape time: name, help, value.
_POOL_GAUGES: tuple[tuple[str, str, Callable[[PoolUsage], float]], ...] = (
    ("dhcp_pool_addresses", "Addresses a pool can hand out", lambda u: u.total),
    (
        "dhcp_pool_addresses_assigned",
        "Addresses of a pool leased, offered or quarantined",
        lambda u: u.assigned,
    ),
    (
        "dhcp_pool_addresses_declined",
        "Addresses of a pool quarantined after a DECLINE (also counted as assigned)",
        lambda u: u.declined,
    ),
    (
        "dhcp_pool_utilization_ratio",
        "Assigned addresses of a pool out of the addresses it can hand out",
        lambda u: u.utilization,
    ),
)


class _PoolCollector(Collector):
    """Reads pool usage at scrape time, so the request loop never updates gauges."""

    def __init__(self, usage: Callable[[], dict[str, PoolUsage]]) -> None:
        self._usage = usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        usage = self._usage()
        for name, documentation, value in _POOL_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["pool"])
            for pool, pool_usage in usage.items():
                family.add_metric([pool], value(pool_usage))
            yield family


class _TransportCollector(Collector):
    """The replication transport's counters and its peers, read at scrape time."""

    def __init__(
        self,
        counters: "Callable[[], TransportCounters]",
        peers: Sequence[str],
        peers_up: Callable[[], list[str]],
    ) -> None:
        self._counters = counters
        self._peers = tuple(peers)
        self._peers_up = peers_up

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self._counters()
        failures = CounterMetricFamily(
            "dhcp_replication_handshake_failures_total",
            "DTLS handshakes refused or failed, and datagrams turned away, by reason",
            labels=["reason"],
        )
        for reason, n in c.refused.items():
            failures.add_metric([reason.value], n)
        yield failures
        yield CounterMetricFamily(
            "dhcp_replication_handshakes_total",
            "DTLS handshakes completed with a peer, both certificates accepted",
            value=c.handshakes,
        )
        up = GaugeMetricFamily(
            "dhcp_replication_peer_up",
            "1 while the peer is up: a DTLS session, and heard from within three "
            "anti-entropy rounds",
            labels=["peer"],
        )
        established = set(self._peers_up())
        for peer in self._peers:
            up.add_metric([peer], 1 if peer in established else 0)
        yield up
        wire = CounterMetricFamily(
            "dhcp_replication_wire_bytes_total",
            "UDP payload bytes of the replication socket, handshakes included",
            labels=["direction"],
        )
        wire.add_metric(["sent"], c.bytes_sent)
        wire.add_metric(["received"], c.bytes_received)
        yield wire
        datagrams = CounterMetricFamily(
            "dhcp_replication_datagrams_total",
            "Datagrams of the replication socket",
            labels=["direction"],
        )
        datagrams.add_metric(["sent"], c.datagrams_sent)
        datagrams.add_metric(["received"], c.datagrams_received)
        yield datagrams
        yield CounterMetricFamily(
            "dhcp_replication_payloads_dropped_total",
            "Replication messages dropped before they were encrypted: the peer's queue was "
            "full or its handshake failed",
            value=c.payloads_dropped,
        )
        yield CounterMetricFamily(
            "dhcp_replication_send_errors_total",
            "Datagrams of the replication socket the kernel refused to send",
            value=c.send_errors,
        )


class _ReplicaCollector(Collector):
    """The replication core's counters and this site's blocks, read at scrape time."""

    def __init__(
        self,
        counters: "Callable[[], ReplicaCounters]",
        owned_blocks: Callable[[], int],
        errors: Callable[[], int],
        past_cap: Callable[[], int],
    ) -> None:
        self._counters = counters
        self._owned_blocks = owned_blocks
        self._errors = errors
        self._past_cap = past_cap

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self._counters()
        deltas = CounterMetricFamily(
            "dhcp_replication_deltas_total",
            "Delta messages: sent (each local change, to every peer; counted once) and "
            "received (from peers, anti-entropy repairs included)",
            labels=["direction"],
        )
        deltas.add_metric(["sent"], c.deltas_sent)
        deltas.add_metric(["received"], c.deltas_received)
        yield deltas
        messages = CounterMetricFamily(
            "dhcp_replication_messages_total",
            "Replication messages sent to peers, of every kind (deltas per peer, digests, "
            "details, requests, repairs)",
            labels=["direction"],
        )
        messages.add_metric(["sent"], c.messages_sent)
        yield messages
        yield CounterMetricFamily(
            "dhcp_replication_anti_entropy_rounds_total",
            "Anti-entropy rounds this site started (one peer each)",
            value=c.anti_entropy_rounds,
        )
        yield CounterMetricFamily(
            "dhcp_replication_repaired_entries_total",
            "Bindings sent to a peer because its digest or request showed it lacked them",
            value=c.repaired_entries,
        )
        yield CounterMetricFamily(
            "dhcp_replication_conflicts_total",
            "Addresses two clients held at once, met in a merge; the loser is withdrawn",
            value=c.conflicts,
        )
        refused = CounterMetricFamily(
            "dhcp_replication_refused_total",
            "Messages (and bindings, for too_far_ahead) from authenticated peers refused, "
            "by reason",
            labels=["reason"],
        )
        for label, name in _REFUSED:
            refused.add_metric([label], getattr(c, name))
        yield refused
        yield CounterMetricFamily(
            "dhcp_replication_errors_total",
            "Unexpected failures of the replication service (a bug: the journal has the "
            "traceback); the loop went on",
            value=self._errors(),
        )
        yield GaugeMetricFamily(
            "dhcp_replication_owned_blocks",
            "Address blocks this site may allocate new leases in now",
            value=self._owned_blocks(),
        )
        yield CounterMetricFamily(
            "dhcp_fastpath_renewals_past_cap_total",
            "Renewals the kernel reported past a roaming lease's extension limit, recorded "
            "at the limit (an entry written before the limit fell; should stay 0)",
            value=self._past_cap(),
        )


class Metrics:
    def __init__(self, pool_usage: Callable[[], dict[str, PoolUsage]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dhcp_slowpath_requests_total",
            "Requests handled in userspace, by outcome (reply type or drop reason)",
            ["result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dhcp_slowpath_latency_seconds",
            "Time from receiving a request to sending its reply, durable commit included",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dropped = Counter(
            "dhcp_packets_dropped_total",
            "Packets dropped without a reply, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.socket_drops = Counter(
            "dhcp_socket_drops_total",
            "Packets the kernel dropped because the receive queue was full",
            registry=self.registry,
        )
        self.commits = Histogram(
            "dhcp_lease_commit_seconds",
            "Duration of one durable group commit of lease changes",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.committed = Counter(
            "dhcp_lease_writes_total",
            "Lease changes written durably to the lease store",
            registry=self.registry,
        )
        self.naks = Counter(
            "dhcp_naks_total",
            "NAKs sent, by why the engine refused the REQUEST",
            ["reason"],
            registry=self.registry,
        )
        self.lease_events = Counter(
            "dhcp_lease_events_total",
            "What happened to leases, as the lease log records it (offer, ack, nak, release, "
            "decline, expire, inform), by the path that decided it (slow: the engine; fast: "
            "a renewal the kernel answered, recorded by the daemon; peer: a change another "
            "site replicated)",
            ["event", "path"],
            registry=self.registry,
        )
        self.socket_errors = Counter(
            "dhcp_socket_errors_total",
            "Errors of the DHCP sockets by operation (receive, send) and errno name; "
            "a send error also counts as a drop with reason send_failed",
            ["operation", "error"],
            registry=self.registry,
        )
        # Registered once the daemon knows: absent with the fast path disabled in the config,
        # so `dhcp_fastpath_up == 0` alerts only where it was meant to run.
        self._fastpath_up = Gauge(
            "dhcp_fastpath_up",
            "1 while the XDP fast path answers, 0 when it failed and only the slow path serves",
            registry=None,
        )
        self._fastpath_up_registered = False
        self.registry.register(_PoolCollector(pool_usage))
        # Resolve label children once: the request loop must not pay for label lookups.
        self._drop_children = {r: self.dropped.labels(r.label) for r in DropReason}
        self._request_drop_children = {r: self.requests.labels(r.label) for r in DropReason}
        self._reply_children: dict[MessageType | None, Counter] = {}
        self._nak_children = {r: self.naks.labels(r.label) for r in NakReason}
        self._event_children = {
            (kind, path): self.lease_events.labels(kind.value, path)
            for kind in LeaseEventKind
            for path in ("slow", "fast", "peer")
        }

    def count_reply(self, mtype: MessageType | None, n: int = 1) -> None:
        child = self._reply_children.get(mtype)
        if child is None:
            label = mtype.name.lower() if mtype is not None else "reply"
            child = self._reply_children[mtype] = self.requests.labels(label)
        child.inc(n)

    def count_drop(self, reason: DropReason, n: int = 1) -> None:
        self._drop_children[reason].inc(n)
        self._request_drop_children[reason].inc(n)

    def count_nak(self, reason: NakReason, n: int = 1) -> None:
        self._nak_children[reason].inc(n)

    def count_events(self, events: Iterable[LeaseEvent], path: str) -> None:
        # One addition per kind, not per event: each takes the counter's lock.
        for kind, n in collections.Counter(event.kind for event in events).items():
            self._event_children[kind, path].inc(n)

    def count_socket_error(self, operation: str, error: str) -> None:
        self.socket_errors.labels(operation, error).inc()

    def set_fastpath_up(self, up: bool) -> None:
        if not self._fastpath_up_registered:
            self.registry.register(self._fastpath_up)
            self._fastpath_up_registered = True
        self._fastpath_up.set(1 if up else 0)

    def add_replication_transport(
        self,
        counters: "Callable[[], TransportCounters]",
        peers: Sequence[str],
        peers_up: Callable[[], list[str]],
    ) -> None:
        """Export the DTLS transport's counters (registered only where replication runs)."""
        self.registry.register(_TransportCollector(counters, peers, peers_up))

    def add_replication(
        self,
        counters: "Callable[[], ReplicaCounters]",
        owned_blocks: Callable[[], int],
        errors: Callable[[], int],
        past_cap: Callable[[], int],
    ) -> Histogram:
        """Export the replication core's counters; the lag histogram, for the daemon to
        observe (registered only where replication runs)."""
        self.registry.register(_ReplicaCollector(counters, owned_blocks, errors, past_cap))
        return Histogram(
            "dhcp_replication_lag_seconds",
            "Time from a change at its site (its HLC wall time) to its merge here, for "
            "every binding a peer's message changed",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
