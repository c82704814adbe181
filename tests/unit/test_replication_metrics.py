"""The DTLS transport's counters as Prometheus metrics (docs/METRICS.md, Replication)."""

from prometheus_client import generate_latest

from brushtaild.daemon.metrics import Metrics
from brushtaild.net.dtls import Refusal, TransportCounters


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
