"""Three brushtaild sites replicating their leases over real DTLS (tests/e2e/sites.py).

Each test builds its own cluster (certificates, namespaces, peer link) and removes it,
whatever happens. Subscribers are real clients (udhcpc, dhclient) or crafted ones (any
number of MACs from one raw socket, tests/e2e/crafted.py). "Listed at B" is what
`brushtail leases` answers there (the same control-socket request).
"""

import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from brushtaild.dhcp import options as opt
from brushtaild.dhcp.constants import MessageType
from tests.e2e import netns
from tests.e2e.clients import DhclientProcess, UdhcpcProcess
from tests.e2e.crafted import Subscribers
from tests.e2e.daemon import sum_samples
from tests.e2e.sites import NAMES, Cluster, no_address_held_twice, wait_until, watching
from tests.e2e.test_daemon_systemd import Manager
from tests.e2e.test_prometheus import (
    MATCHER_LABEL,
    SELECTOR,
    dashboard_expressions,
    grafana,
    replicated,
    rule_expressions,
)

# A lease made at one site is listed at the others within this (measured: see the test).
REPLICATION_BOUND = 2.0
# Anti-entropy runs a round a second with one peer in turn: a site back from a partition
# or a restart has every difference repaired within a few rounds with each peer.
CONVERGENCE_BOUND = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with Cluster(tmp_path) as created:
        yield created


def mac(site: str, n: int) -> bytes:
    return bytes((0x02, 0x5E, 0x10, NAMES.index(site), 0, n))


def converged(cluster: Cluster, names: tuple[str, ...] = NAMES) -> dict[str, str] | None:
    """Every named site's bound leases, when they are all the same."""
    views = cluster.leases()
    if set(views) != set(names):
        return None
    first = views[names[0]]
    return first if all(views[n] == first for n in names) else None


def unexported_by(samples: dict[str, float]) -> list[str]:
    """The metrics and labels the replication's dashboard panels and alert rules name that
    these samples (one scrape of a replicating site) lack."""
    missing = []
    expressions = [*map(grafana, dashboard_expressions()), *rule_expressions().values()]
    for expr in filter(replicated, expressions):
        for name, matchers in SELECTOR.findall(expr):
            keys = [k for k in samples if k == name or k.startswith(name + "{")]
            if not keys:
                missing.append(name)
            for label in MATCHER_LABEL.findall(matchers):
                if label != "instance" and not any(f"{label}=" in k for k in keys):
                    missing.append(f"{name}{{{label}}}")
    return missing


def listed(cluster: Cluster, site: str, address: str) -> bool:
    return address in cluster.sites[site].bound()


def test_a_lease_made_at_a_is_listed_at_b_and_c_within_the_bound(cluster: Cluster) -> None:
    """udhcpc at A; B and C list its lease within REPLICATION_BOUND of the ACK, the first
    time (a DTLS handshake on the way) and once the sessions are up; `brushtail leases`
    at C shows it; the peers are up in the metrics, STATUS=, `brushtail peers` and
    `status`; evicting a live site is refused."""
    manager = Manager(cluster.root / "notify")
    cluster.sites["a"].env["NOTIFY_SOCKET"] = str(manager.path)
    cluster.start()
    lags = []
    client_ns = cluster.links["a"].client_ns
    for n in range(2):
        # A new subscriber each time (a new MAC), so the second lease is a new one too.
        netns.ip("-n", client_ns, "addr", "flush", "dev", netns.CLIENT_IF)
        netns.ip("-n", client_ns, "link", "set", netns.CLIENT_IF, "address",
                 mac("a", 100 + n).hex(":"))  # fmt: skip
        with UdhcpcProcess(
            cluster.links["a"], cluster.root / f"udhcpc{n}", quit_when_bound=True
        ) as client:
            client.start()
            found = client.wait_for({"bound"}, timeout=10).address
            bound_at = time.monotonic()
        assert found is not None
        address = found
        for site in ("b", "c"):
            wait_until(lambda s=site, a=address: listed(cluster, s, a), REPLICATION_BOUND, site)
        lags.append(time.monotonic() - bound_at)
    # The daemons' own measure: merge time minus the change's HLC stamp, each binding.
    for site in ("b", "c"):
        samples = cluster.sites[site].samples()
        count = sum_samples(samples, "dhcp_replication_lag_seconds_count")
        mean = sum_samples(samples, "dhcp_replication_lag_seconds_sum") / count
        print(f"\n{site}: listed {lags[0]:.3f}s, {lags[1]:.3f}s after udhcpc's bound event; "
              f"lag histogram: {count:.0f} bindings, mean {1000 * mean:.1f} ms")  # fmt: skip
        assert mean < REPLICATION_BOUND
    shown = cluster.sites["c"].cli("leases", "--json")
    assert shown.returncode == 0, shown.stderr
    assert address in shown.stdout
    peers = cluster.sites["a"].ask("peers")
    assert {p["site"]: p["up"] for p in peers["peers"]} == {"b": True, "c": True}
    assert peers["owned_blocks"] > 0
    a = cluster.sites["a"]
    shown = a.cli("peers")
    assert shown.returncode == 0, shown.stderr
    assert "established" in shown.stdout and "blocks owned" in shown.stdout
    assert re.search(r"^peers +b up, c up$", a.cli("status").stdout, re.MULTILINE)
    with manager.sock:  # systemd's STATUS= line names the peers up
        manager.wait_for(lambda m: m.endswith("peers: 2/2 up (b, c)"), timeout=15)
    # A reload reads the certificate files again.
    reloaded = a.cli("reload")
    assert reloaded.returncode == 0, reloaded.stdout
    assert reloaded.stdout.rstrip().endswith("; certificates reloaded")
    # c is alive: evicting it is refused, with the time left.
    refused = a.cli("sites", "evict", "c")
    assert refused.returncode == 1
    assert "heard from too recently: wait" in refused.stderr
    samples = cluster.sites["b"].samples()
    assert samples['dhcp_replication_peer_up{peer="a"}'] == 1
    assert not unexported_by(samples), "names the dashboard or the rules use"
    assert sum_samples(samples, "dhcp_replication_lag_seconds_count") >= 2
    assert samples['dhcp_replication_deltas_total{direction="received"}'] >= 2


def test_a_client_moved_from_a_to_b_keeps_its_address(cluster: Cluster) -> None:
    """dhclient bound at A, stopped, its interface's MAC moved to B's link with its lease
    file: its INIT-REBOOT at B is ACKed for the same address (B does not own it: a roaming
    extension, on the slow path)."""
    cluster.start()
    workdir = cluster.root / "dhclient"
    workdir.mkdir()
    at_a = DhclientProcess(cluster.links["a"], workdir)
    with at_a:
        events = at_a.start().wait_bound(timeout=15)
        address = events.address
        assert address is not None, events
        wait_until(lambda: listed(cluster, "b", address), REPLICATION_BOUND, "at B")
        at_a.stop()
    client_mac = cluster.links["a"].client_mac.hex(":")
    netns.ip("-n", cluster.links["b"].client_ns, "link", "set", netns.CLIENT_IF,
             "address", client_mac)  # fmt: skip
    at_b = DhclientProcess(cluster.links["b"], workdir)
    with at_b:
        seen = len(at_b.events().events)
        events = at_b.start().wait_for({"REBOOT", "BOUND", "FAIL"}, 15, after=seen)
        assert events.address == address, events
    b = cluster.sites["b"]
    assert b.ask("leases", address=address)["leases"][0]["mac"] == client_mac
    assert b.metric('dhcp_slowpath_requests_total{result="ack"}') >= 1


def bind_all(cluster: Cluster, site: str, first: int, count: int) -> dict[str, str]:
    """`count` crafted clients bound at `site`: address -> MAC."""
    got = {}
    with Subscribers(cluster.links[site]) as subscribers:
        for n in range(first, first + count):
            ack = subscribers.bind(mac(site, n))
            assert ack.message_type is MessageType.ACK
            got[opt.format_ip(ack.yiaddr)] = mac(site, n).hex(":")
    return got


def test_a_partition_with_allocations_on_both_sides_holds_no_address_twice(
    cluster: Cluster,
) -> None:
    """C cut off from A and B; clients bound on both sides meanwhile; healed: at no poll
    of the three sites' leases is an address bound to two clients, and all three converge
    to every lease made."""
    cluster.start()
    with watching(cluster) as polls:
        bind_all(cluster, "a", 0, 3)
        wait_until(lambda: converged(cluster), CONVERGENCE_BOUND, "converged before the cut")
        cluster.cut("c")
        made = {**bind_all(cluster, "a", 3, 4), **bind_all(cluster, "b", 0, 4)}
        cut_off = bind_all(cluster, "c", 0, 4)
        time.sleep(2)
        assert not set(cut_off) & set(cluster.sites["b"].bound())  # really cut off
        made |= cut_off
        cluster.cut("c", off=False)
        healed = time.monotonic()
        final = wait_until(lambda: converged(cluster), CONVERGENCE_BOUND, "convergence")
        print(f"\nconverged {time.monotonic() - healed:.1f}s after healing")
    assert set(made) <= set(final)
    assert len(final) == 15
    assert polls[0] > 10


def test_a_peer_with_a_foreign_certificate_injects_nothing(cluster: Cluster) -> None:
    """Site c starts with a certificate of another CA (trusting that CA itself): its
    leases never reach A or B, whose handshake failures say foreign_ca."""
    c = cluster.sites["c"]
    c.configure(cluster.root / "pki" / "foreign-c", None)
    cluster.start()
    made = bind_all(cluster, "c", 0, 2)
    wait_until(
        lambda: (
            cluster.sites["a"].metric(
                'dhcp_replication_handshake_failures_total{reason="foreign_ca"}'
            )
            >= 1
        ),
        20,
        "a refused c's certificate",
    )
    time.sleep(3)
    for site in ("a", "b"):
        assert not set(made) & set(cluster.sites[site].bound())
        peers = cluster.sites[site].ask("peers")
        assert {p["site"]: p["up"] for p in peers["peers"]}["c"] is False


def test_a_revoked_peer_is_cut_off_at_the_reload_and_injects_nothing(cluster: Cluster) -> None:
    """c's certificate revoked and the new CRL reloaded at A and B: their sessions with c
    close (counted as revoked), c's later leases never reach them, c is down for them."""
    cluster.start()
    first = bind_all(cluster, "c", 0, 1)
    wait_until(lambda: converged(cluster), CONVERGENCE_BOUND, "c's lease everywhere")
    cluster.ca.revoke("c", datetime.now(UTC).replace(tzinfo=None))
    for site in ("a", "b"):
        reloaded = cluster.sites[site].cli("reload")
        assert reloaded.returncode == 0, reloaded.stdout
        assert "revoked sessions closed: c" in reloaded.stdout
    later = bind_all(cluster, "c", 1, 2)
    time.sleep(3)
    for site in ("a", "b"):
        known = set(cluster.sites[site].bound())
        assert set(first) <= known and not set(later) & known
        samples = cluster.sites[site].samples()
        assert samples['dhcp_replication_handshake_failures_total{reason="revoked"}'] >= 1
        assert samples['dhcp_replication_peer_up{peer="c"}'] == 0


def test_a_site_killed_during_gossip_loses_no_acknowledged_lease(cluster: Cluster) -> None:
    """SIGKILL of B while A binds clients and gossips, and of A right after its last ACK:
    restarted, A still has every lease it acknowledged and B catches up with all of them."""
    cluster.start()
    a, b = cluster.sites["a"], cluster.sites["b"]
    made = bind_all(cluster, "a", 0, 4)
    b.kill()
    made |= bind_all(cluster, "a", 4, 4)
    a.kill()
    a.start()
    assert set(made) <= set(a.bound())
    b.start()
    restarted = time.monotonic()
    final = wait_until(lambda: converged(cluster), CONVERGENCE_BOUND, "catch-up")
    print(f"\ncaught up {time.monotonic() - restarted:.1f}s after the restarts")
    assert set(made) <= set(final)


def test_a_site_that_lost_its_disk_recovers_its_peers_leases_and_allocates_nothing(
    cluster: Cluster,
) -> None:
    """B killed, its lease store deleted, restarted with --recovering: it lists every
    lease from its peers again (its own too), owns no block and offers nothing to a new
    client while it waits, and says until when."""
    cluster.start()
    made = {**bind_all(cluster, "a", 0, 2), **bind_all(cluster, "b", 0, 2)}
    wait_until(lambda: converged(cluster), CONVERGENCE_BOUND, "converged before the loss")
    b = cluster.sites["b"]
    b.kill()
    shutil.rmtree(b.state_dir)
    b.args = ["--recovering"]
    b.start()
    final = wait_until(lambda: converged(cluster), CONVERGENCE_BOUND, "recovered")
    assert set(made) <= set(final)
    peers = b.ask("peers")
    assert peers["owned_blocks"] == 0
    assert peers["recovering_until"] > time.time() + 60
    with Subscribers(cluster.links["b"]) as subscribers, pytest.raises(TimeoutError):
        subscribers.discover(mac("b", 50))


def test_a_fifth_of_the_peer_datagrams_lost_still_converges(cluster: Cluster) -> None:
    """20% of every site's incoming datagrams on the peer link dropped at random (handshakes
    included): leases made at all three sites still reach all three."""
    cluster.lose(0.2)
    cluster.start()
    made: dict[str, str] = {}
    for site in NAMES:
        made |= bind_all(cluster, site, 0, 3)
    started = time.monotonic()
    final = wait_until(lambda: converged(cluster), CONVERGENCE_BOUND * 2, "convergence")
    print(f"\nconverged {time.monotonic() - started:.1f}s after the last lease, 20% loss")
    assert set(made) <= set(final)
    no_address_held_twice(cluster.leases())
