"""Configured options reach real clients: dhclient and udhcpc bind from a pool with
domain search, NTP servers, classless static routes, an MTU, vendor-specific and a private
option, and hand each to their scripts as they decoded it; udhcpc's renewals answered in
the kernel carry the same options."""

from pathlib import Path

from tests.e2e.clients import DhclientProcess
from tests.e2e.daemon import Brushtaild
from tests.e2e.netns import SERVER_IP, Link
from tests.e2e.test_fastpath import START_TIMEOUT, fast_daemon, options_from_both_paths

POOL_OPTIONS = f"""\
    options:
      domain-search: [isp.example, example.net]
      ntp-servers: [{SERVER_IP}, 198.18.0.2]
      interface-mtu: 1400
      classless-static-routes:
        - 0.0.0.0/0 via {SERVER_IP}
        - 203.0.113.0/24 via 198.18.0.3
      vendor-specific: {{1: "c6120001"}}
      code-224: "62742d6f7074"
"""
DHCLIENT_CONF = """\
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
option bt-private code 224 = string;
also request domain-search, ntp-servers, rfc3442-classless-static-routes,
  vendor-encapsulated-options, bt-private;
"""


def test_dhclient_receives_every_option(link: Link, tmp_path: Path) -> None:
    with Brushtaild(link, tmp_path, pool_extra=POOL_OPTIONS).start():
        client = DhclientProcess(link, tmp_path / "dhclient", extra_conf=DHCLIENT_CONF)
        with client.start():
            bound = client.wait_bound(15)
            assert bound.reasons[-1] == "BOUND", bound.log
            got = client.received()
    assert got["new_domain_search"] == "isp.example. example.net.", got
    assert got["new_ntp_servers"] == f"{SERVER_IP} 198.18.0.2", got
    assert got["new_interface_mtu"] == "1400", got
    assert got["new_rfc3442_classless_static_routes"] == "0 198 18 0 1 24 203 0 113 198 18 0 3"
    assert got["new_vendor_encapsulated_options"] == "1:4:c6:12:0:1", got
    assert got["new_bt_private"] == "bt-opt", got


def test_udhcpc_receives_them_from_both_paths(link: Link, tmp_path: Path) -> None:
    requests = ["search", "ntpsrv", "mtu", "staticroutes", "43", "224"]
    with fast_daemon(link, tmp_path, pool_extra=POOL_OPTIONS) as daemon:
        daemon.start(START_TIMEOUT)
        slow, fast = options_from_both_paths(daemon, link, tmp_path / "udhcpc", requests)
    assert slow["search"] == "isp.example example.net", slow
    assert slow["ntpsrv"] == f"{SERVER_IP} 198.18.0.2", slow
    assert slow["mtu"] == "1400", slow
    assert slow["staticroutes"] == f"0.0.0.0/0 {SERVER_IP} 203.0.113.0/24 198.18.0.3", slow
    assert slow["opt43"] == "0104c6120001", slow
    assert slow["opt224"] == "62742d6f7074", slow
    assert fast == slow
