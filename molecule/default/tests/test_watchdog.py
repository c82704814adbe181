"""The watchdog under real systemd, in the one-site scenario only: it restarts the service,
which the cluster scenario's upgrade-order checks must not see. Runs after test_default.py."""

import time

import pytest


def _main_pid(host):
    return host.check_output("systemctl show --property=MainPID --value brushtaild")


def test_watchdog_restarts_a_hung_daemon(host):
    """Last: it restarts the service. A daemon that stops answering the watchdog (SIGSTOP
    freezes it) is killed and restarted by systemd, and is READY again."""
    pid = _main_pid(host)
    before = int(host.check_output("systemctl show --property=NRestarts --value brushtaild"))
    host.check_output("kill -STOP %s", pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = host.check_output("systemctl show --property=ActiveState --value brushtaild")
        new_pid = _main_pid(host)
        if state == "active" and new_pid not in ("0", pid):
            break
        time.sleep(1)
    else:
        journal = host.run("journalctl -u brushtaild --no-pager -n 50").stdout
        pytest.fail(f"no restart after the watchdog expired:\n{journal}")
    after = int(host.check_output("systemctl show --property=NRestarts --value brushtaild"))
    assert after == before + 1
    assert "watchdog" in host.run("journalctl -u brushtaild --no-pager -n 100").stdout.lower()
