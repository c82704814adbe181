"""The DTLS transport's counters as Prometheus metrics (docs/METRICS.md, Replication)."""

from prometheus_client import generate_latest

from brushtaild.daemon.metrics import Metrics
from brushtaild.net.dtls import Refusal, TransportCounters
from brushtaild.replication.replica import Counters


def test_transport_counters_are_exported_with_every_reason_and_peer() -> None:
    counters = TransportCounters(handshakes=3, bytes_sent=1428, bytes_received=1343)
    counters.refused[Refusal.REVOKED] = 2
    metrics = Metrics(dict)
    metrics.add_replication_transport(lambda: counters, ["edge-b", "edge-c"], lambda: ["edge-c"])
    text = generate_latest(metrics.registry).decode()
    assert 'dhcp_replication_handshake_failures_total{reason="revoked"} 2.0' in text
    for reason in Refusal:
        assert f'dhcp_replication_handshake_failures_total{{reason="{reason}"}}' in text
    assert "dhcp_replication_handshakes_total 3.0" in text
    assert 'dhcp_replication_peer_up{peer="edge-b"} 0.0' in text
    assert 'dhcp_replication_peer_up{peer="edge-c"} 1.0' in text
    assert 'dhcp_replication_wire_bytes_total{direction="sent"} 1428.0' in text
    assert 'dhcp_replication_datagrams_total{direction="received"} 0.0' in text
    assert "dhcp_replication_payloads_dropped_total 0.0" in text


def test_a_single_site_exports_no_replication_metric() -> None:
    assert b"dhcp_replication" not in generate_latest(Metrics(dict).registry)


def test_replica_counters_and_the_lag_are_exported() -> None:
    counters = Counters(deltas_sent=4, deltas_received=7, conflicts=1, too_far_ahead=2)
    counters.anti_entropy_rounds = 9
    metrics = Metrics(dict)
    lag = metrics.add_replication(lambda: counters, lambda: 5, lambda: 0)
    lag.observe(0.004)
    text = generate_latest(metrics.registry).decode()
    assert 'dhcp_replication_deltas_total{direction="sent"} 4.0' in text
    assert 'dhcp_replication_deltas_total{direction="received"} 7.0' in text
    assert "dhcp_replication_anti_entropy_rounds_total 9.0" in text
    assert "dhcp_replication_conflicts_total 1.0" in text
    for reason in ("malformed", "unknown_peer", "wrong_sender"):
        assert f'dhcp_replication_refused_total{{reason="{reason}"}} 0.0' in text
    assert 'dhcp_replication_refused_total{reason="too_far_ahead"} 2.0' in text
    assert "dhcp_replication_owned_blocks 5.0" in text
    assert "dhcp_replication_errors_total 0.0" in text
    assert 'dhcp_replication_lag_seconds_bucket{le="0.005"} 1.0' in text
