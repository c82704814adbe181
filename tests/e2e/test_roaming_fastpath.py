"""A subscriber leased at site A appears at site B (issue 10, must-have 5): B answers it
from replicated state in the kernel while its lease stays within the cap, and by the
slow path, with a shortened lease, once it would not (A cut off: the cap stops rising).

Runs on the three-site cluster of tests/e2e/sites.py, with the fast path on at every site.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType
from tests.e2e import netns, sites
from tests.e2e.crafted import Subscribers, answered_by, lease_time
from tests.e2e.netns import SERVER_IF, ip
from tests.e2e.test_replication import REPLICATION_BOUND, listed, mac
from tests.e2e.xdp_pass import attach_client_pass

CAP = 'dhcp_fastpath_requests_total{result="cap"}'


@pytest.fixture
def fast_cluster(tmp_path: Path) -> Iterator[sites.Cluster]:
    """The three sites (not started), each with the fast path on."""
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with sites.Cluster(tmp_path) as cluster:
        for link in cluster.links.values():
            attach_client_pass(link)  # veth: XDP_TX reaches a peer with a program
        for site in cluster.sites.values():
            config = site.config_file.read_text()
            site.config_file.write_text(config.replace("enabled: false", "enabled: true"))
        yield cluster


def test_a_client_of_a_renews_at_b_in_the_kernel_up_to_the_cap_then_by_the_slow_path(
    fast_cluster: sites.Cluster,
) -> None:
    cluster = fast_cluster
    cluster.start()
    client = mac("a", 1)
    with Subscribers(cluster.links["a"]) as at_a:
        address = at_a.bind(client).yiaddr
    text = opt.format_ip(address)
    sites.wait_until(lambda: listed(cluster, "b", text), REPLICATION_BOUND, "at B")
    b = cluster.sites["b"]
    # The slow path's unicast reply to ciaddr, as Subscribers.bind sets it up at A.
    ip("-n", cluster.links["b"].server_ns, "neigh", "replace", text, "lladdr",
       client.hex(":"), "dev", SERVER_IF)  # fmt: skip
    with Subscribers(cluster.links["b"]) as at_b:
        # The entry is written once B has committed the absorbed binding: retried a little.
        for _ in range(10):
            path, ack = answered_by(b, text, lambda: at_b.renew(client, (), address))
            if path == "kernel":
                break
            time.sleep(0.3)
        assert (path, ack.message_type) == ("kernel", MessageType.ACK)
        assert lease_time(ack) == sites.LEASE_TIME
        # A cut off: the cap stays what A last acknowledged plus the extension bound, so
        # within a minute a renewal would pass it.
        cluster.cut("a")
        deadline = time.monotonic() + sites.LEASE_TIME
        while path == "kernel" and time.monotonic() < deadline:
            time.sleep(5)
            path, ack = answered_by(b, text, lambda: at_b.renew(client, (), address))
        assert (path, ack.message_type) == ("slow", MessageType.ACK)
        assert 0 < lease_time(ack) < sites.LEASE_TIME
        assert b.metric(CAP) >= 1
