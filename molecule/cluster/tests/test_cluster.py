"""Cluster checks across sites (the per-site checks of test_default.py run on each site too):
one CA for the whole cluster, a certificate per site naming that site, the replication peer
list derived from the inventory, and each site serving its own subscriber link.

Peers connecting over mutual TLS is checked once replication exists (a later issue).
"""

import testinfra
import yaml

SITES = ["brushtail-edge-a", "brushtail-edge-b"]


def _hosts():
    return [testinfra.get_host(f"podman://{name}") for name in SITES]


def _config(host):
    return yaml.safe_load(host.file("/etc/brushtail/brushtail.yaml").content_string)


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
        assert replication["key"] == "/etc/brushtail/pki/site.key"


def test_each_site_serves_its_own_link():
    subnets = [_config(h)["pools"][0]["subnet"] for h in _hosts()]
    assert len(set(subnets)) == len(SITES)
    for host in _hosts():
        assert host.interface("sub0").exists
        assert _config(host)["server_id"] in host.interface("sub0").addresses
