"""Cluster checks across sites (the per-site checks of test_default.py run on each site too):
one CA for the whole cluster, a certificate per site naming that site, the replication peer
list derived from the inventory, both sites serving the same pool on their own links, the
two sites peering over mutual-TLS DTLS (the metric, STATUS= and `brushtail peers`), and a
lease made at edge-a listed by `brushtail leases` at edge-b.
"""

import ipaddress
import json
import time

import testinfra
import yaml

SITES = ["brushtail-edge-a", "brushtail-edge-b"]
# A DTLS session comes up at the first message between the sites: a delta, or at the latest
# an anti-entropy digest (every 30 s by default) once both daemons run; after the rolling
# upgrade each site restarted, so the second one's first round may be that far away.
PEERING_BOUND = 90.0
# A lease reaches the other site as a delta at its commit: milliseconds on one machine
# (tests/e2e/test_replication.py measures it); this leaves room for a busy host.
REPLICATION_BOUND = 10.0


def _hosts():
    return [testinfra.get_host(f"podman://{name}") for name in SITES]


def _config(host):
    return yaml.safe_load(host.file("/etc/brushtail/brushtail.yaml").content_string)


def _journal(host):
    return host.run("journalctl -u brushtaild --no-pager -n 40").stdout


def _poll(check, timeout, what):
    """Calls `check` until it returns something true; that value, or fails with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what()}")
        time.sleep(1)


def _status(host):
    return host.check_output("systemctl show --property=StatusText --value brushtaild")


def _metric(host, name):
    """The value of one sample (name with its labels), or None if not exported."""
    listen = _config(host)["metrics_listen"]
    body = host.check_output("curl -sf --max-time 5 http://%s/metrics", listen)
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_one_cluster_ca():
    cas = {h.file("/etc/brushtail/pki/ca.crt").content_string for h in _hosts()}
    assert len(cas) == 1


def test_site_certificates_are_distinct_and_named():
    subjects = [
        h.check_output("openssl x509 -in /etc/brushtail/pki/site.crt -noout -subject")
        for h in _hosts()
    ]
    assert subjects == [f"subject=CN = {_config(h)['site']}" for h in _hosts()]
    keys = {
        h.check_output("openssl pkey -in /etc/brushtail/pki/site.key -pubout") for h in _hosts()
    }
    assert len(keys) == len(SITES)


def test_peer_list_derived_from_inventory():
    """replication.peers: every other site, by its site name, at its default IPv4 address
    (the containers' ansible_host is no address)."""
    hosts = _hosts()
    sites = [_config(h)["site"] for h in hosts]
    addresses = [h.interface("eth0").addresses[0] for h in hosts]
    for i, host in enumerate(hosts):
        replication = _config(host)["replication"]
        assert replication["peers"] == [
            {"site": sites[j], "address": addresses[j], "port": 6767}
            for j in range(len(hosts))
            if j != i
        ]
        assert replication["ca"] == "/etc/brushtail/pki/ca.crt"
        assert replication["certificate"] == "/etc/brushtail/pki/site.crt"
        assert replication["key"] == "/etc/brushtail/pki/site.key"
        assert replication["tuning"] == {"block_size": 16}


def test_sites_serve_one_pool_each_on_its_own_link():
    """Replication needs the same pools and ranges everywhere; each site has its own
    subscriber link and its own address (server_id) in the shared subnet."""
    configs = [_config(h) for h in _hosts()]
    pools = [
        [{key: pool[key] for key in ("name", "subnet", "ranges")} for pool in config["pools"]]
        for config in configs
    ]
    assert pools[0] == pools[1]
    subnet = ipaddress.ip_network(configs[0]["pools"][0]["subnet"])
    server_ids = [config["server_id"] for config in configs]
    assert len(set(server_ids)) == len(SITES)
    for host, server_id in zip(_hosts(), server_ids, strict=True):
        assert ipaddress.ip_address(server_id) in subnet
        assert host.interface("sub0").exists
        assert server_id in host.interface("sub0").addresses


def test_sites_peer_over_mutual_tls():
    """Each site's DTLS session with the other is up (both certificates verified against
    the cluster CA): the peer-up gauge, the STATUS= line and `brushtail peers` say so, and
    no handshake was refused for a certificate."""
    hosts = _hosts()
    names = [_config(h)["site"] for h in hosts]
    for host, peer in ((hosts[0], names[1]), (hosts[1], names[0])):
        sample = f'dhcp_replication_peer_up{{peer="{peer}"}}'
        _poll(
            lambda h=host, s=sample: _metric(h, s) == 1,
            PEERING_BOUND,
            lambda h=host, s=sample: f"{s} is {_metric(h, s)}\n{_journal(h)}",
        )
        _poll(
            lambda h=host, p=peer: _status(h).endswith(f"peers: 1/1 up ({p})"),
            PEERING_BOUND,
            lambda h=host: f"STATUS={_status(h)}",
        )
        answer = json.loads(host.check_output("brushtail peers --json"))
        assert [(p["site"], p["up"], p["session"]) for p in answer["peers"]] == [
            (peer, True, "established")
        ], answer
        assert answer["owned_blocks"] > 0, answer
        shown = host.check_output("brushtail peers")
        assert peer in shown and " up " in shown and "blocks owned" in shown, shown
        assert _metric(host, "dhcp_replication_handshakes_total") >= 1
        for reason in ("foreign_ca", "expired", "revoked", "name_mismatch", "no_certificate"):
            failures = f'dhcp_replication_handshake_failures_total{{reason="{reason}"}}'
            assert _metric(host, failures) == 0, reason


def test_a_lease_made_at_edge_a_is_listed_at_edge_b():
    """udhcpc in edge-a's client namespace gets a lease from edge-a; `brushtail leases` at
    edge-b lists it (address and MAC) within REPLICATION_BOUND."""
    edge_a, edge_b = _hosts()
    run = edge_a.run("ip netns exec cli udhcpc -i cli0 -f -q -n -t 5 -T 2 -s /bin/true")
    output = run.stdout + run.stderr
    assert run.rc == 0, output + _journal(edge_a)
    line = next(li for li in output.splitlines() if "obtained" in li)
    address = line.split("lease of ")[1].split()[0]
    assert f"from {_config(edge_a)['server_id']}" in line
    mac = edge_a.check_output("ip netns exec cli cat /sys/class/net/cli0/address")

    def listed():
        answer = json.loads(edge_b.check_output("brushtail leases --json --address %s", address))
        return [lease for lease in answer["leases"] if lease["state"] == "bound"]

    leases = _poll(
        listed,
        REPLICATION_BOUND,
        lambda: f"{address} not at edge-b:\n{edge_b.run('brushtail leases').stdout}",
    )
    assert [lease["mac"] for lease in leases] == [mac]
    shown = edge_b.check_output("brushtail leases --address %s", address)
    assert address in shown and mac in shown and "bound" in shown
