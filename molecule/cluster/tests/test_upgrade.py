"""After the side effect (site.yml with the next package revision): every site runs the new
package, and the upgrade was rolling: the second site was stopped only after the first was
started again (for Type=notify, "Started" is logged at READY=1).
"""

import os

import pytest
import testinfra

SITES = ["brushtail-edge-a", "brushtail-edge-b"]
NEXT = os.environ.get("BRUSHTAIL_DEB_NEXT", "")

pytestmark = pytest.mark.skipif(not NEXT, reason="BRUSHTAIL_DEB_NEXT not set: no upgrade ran")


def _hosts():
    return [testinfra.get_host(f"podman://{name}") for name in SITES]


def _times(host, text):
    """Realtime (seconds) of the journal lines of brushtaild.service containing text."""
    out = host.check_output("journalctl -u brushtaild --no-pager -o short-unix")
    return [float(line.split()[0]) for line in out.splitlines() if text in line]


def test_every_site_runs_the_next_revision():
    # brushtail_<version>_all.deb
    version = os.path.basename(NEXT).split("_")[1]
    for host in _hosts():
        assert host.package("brushtail").version == version


def test_upgrade_was_one_site_at_a_time():
    first, second = _hosts()
    first_back = max(_times(first, "Started"))
    second_stopped = max(_times(second, "Stopping"))
    # edge-b went down only once edge-a was READY again
    assert second_stopped > first_back
    # and each site was restarted by the upgrade
    assert len(_times(first, "Stopping")) >= 1
