"""Restarts under real systemd, in the one-site scenario only: they restart the service,
which the cluster scenario's upgrade-order checks must not see. Runs after test_default.py
and test_fastpath.py (files run in name order)."""

import time

import pytest


def _main_pid(host):
    return host.check_output("systemctl show --property=MainPID --value brushtaild")


def _journal(host, lines=50):
    return host.run("journalctl -u brushtaild --no-pager -n %s", str(lines)).stdout


def _mac(host):
    return host.check_output("ip netns exec cli cat /sys/class/net/cli0/address")


def _fast_acks(host, mac):
    return host.run(
        "journalctl -u brushtaild --no-pager -o cat CLIENT_MAC=%s LEASE_EVENT=ack DHCP_PATH=fast",
        mac,
    ).stdout.count("ack ")


def test_fast_path_answers_while_brushtaild_is_stopped(host):
    """The program stays attached and its maps pinned when the daemon stops (by design: the
    fast path answers during restarts and upgrades). A known client gets its lease from the
    kernel alone, and the next brushtaild records that renewal when it starts."""
    mac = _mac(host)
    acks_before = _fast_acks(host, mac)
    host.check_output("systemctl stop brushtaild")
    try:
        assert host.service("brushtaild").is_running is False
        status = host.check_output("brushtail fastpath status")
        assert status.splitlines()[0] == "interface sub0: XDP native", status
        got = host.run("ip netns exec cli udhcpc -i cli0 -f -q -n -t 5 -T 2 -s /bin/true")
        assert got.rc == 0 and "obtained" in got.stdout + got.stderr, got.stdout + got.stderr
    finally:
        host.check_output("systemctl start brushtaild")
    # Read from the pinned ring buffer before READY=1; logged with the first batch after it.
    deadline = time.monotonic() + 10
    while _fast_acks(host, mac) == acks_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _fast_acks(host, mac) == acks_before + 1, _journal(host)
    assert host.check_output("brushtail fastpath status").startswith("interface sub0: XDP native")


def test_disabling_the_fast_path_removes_it(host):
    """With `fastpath: enabled: false` the next brushtaild takes away the program and pins
    an earlier run left (inside the sandbox, where the pin directory is a bind mount), and
    starts; enabled again, the program is back."""
    config = "/etc/brushtail/brushtail.yaml"
    host.check_output("cp %s /run/brushtail.yaml.test", config)
    try:
        host.check_output("sed -i 's/^  enabled: true$/  enabled: false/' %s", config)
        assert "enabled: false" in host.file(config).content_string
        restart = host.run("systemctl restart brushtaild")
        assert restart.rc == 0, restart.stderr + _journal(host)
        status = host.check_output("brushtail fastpath status")
        assert status.splitlines()[0] == "interface sub0: no XDP program", status
        assert "maps: none pinned" in status
        assert "fast path disabled: removed the XDP program" in _journal(host)
    finally:
        host.check_output("cp /run/brushtail.yaml.test %s", config)
        restart = host.run("systemctl restart brushtaild")
    assert restart.rc == 0, restart.stderr + _journal(host)
    assert host.check_output("brushtail fastpath status").startswith("interface sub0: XDP native")


def test_watchdog_restarts_a_hung_daemon(host):
    """Last: it restarts the service. A daemon that stops answering the watchdog (SIGSTOP
    freezes it) is killed and restarted by systemd, is READY again, and has adopted the
    fast path's pinned maps (reopening them is what needs CAP_SYS_ADMIN in the unit)."""
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
        pytest.fail(f"no restart after the watchdog expired:\n{_journal(host)}")
    after = int(host.check_output("systemctl show --property=NRestarts --value brushtaild"))
    assert after == before + 1
    journal = _journal(host, 100)
    assert "watchdog" in journal.lower()
    # The restarted daemon took over the pinned lease entries rather than rebuilding them.
    attached = [li for li in journal.splitlines() if "fast path attached to sub0" in li][-1]
    assert " 0 entries" not in attached and "map layout changed" not in journal, attached
