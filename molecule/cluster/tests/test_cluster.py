"""Cluster checks across sites (the per-site checks of test_default.py run on each site too):
one CA for the whole cluster, a certificate per site naming that site, a gossip peer list
derived from the inventory, and each site serving its own subscriber link.

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
    for name, host in zip(SITES, _hosts(), strict=True):
        text = host.file("/etc/brushtail/brushtail.yaml").content_string
        peers = [li.split("- ", 1)[1] for li in text.splitlines() if li.startswith("#   - ")]
        assert peers == [f"{other}:6767" for other in SITES if other != name]


def test_each_site_serves_its_own_link():
    subnets = [_config(h)["pools"][0]["subnet"] for h in _hosts()]
    assert len(set(subnets)) == len(SITES)
    for host in _hosts():
        assert host.interface("sub0").exists
        assert _config(host)["server_id"] in host.interface("sub0").addresses
