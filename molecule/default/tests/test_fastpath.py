"""The XDP fast path under real systemd, with the packaged unit and its sandbox: BCC compiled
the program in the container (against the headers prepare.yml linked in for the host's
kernel), brushtaild attached it to the subscriber interface and pinned its maps, and a real
renewal from busybox udhcpc is answered in the kernel and recorded by the daemon.

Runs after test_default.py (which gives the client its lease) on every site of a scenario.
"""

import re
import time

import yaml

CONFIG = "/etc/brushtail/brushtail.yaml"
# Written by the test into the container: udhcpc's event script, which configures the
# lease on the client's interface so that a renewal can be unicast to the server, as a
# real client's is.
SCRIPT = "/run/brushtail-test-udhcpc.sh"
EVENTS = "/run/brushtail-test-udhcpc.events"
PIDFILE = "/run/brushtail-test-udhcpc.pid"
UDHCPC_SCRIPT = """#!/bin/sh
echo "$1 ${ip:-}" >>EVENTS
case $1 in
deconfig) ip addr flush dev "$interface" ;;
bound | renew) ip addr replace "$ip/${mask:-24}" dev "$interface" ;;
esac
""".replace("EVENTS", EVENTS)


def _config(host):
    return yaml.safe_load(host.file(CONFIG).content_string)


def _pin_dir(host):
    return (_config(host).get("fastpath") or {}).get("pin_dir", "/sys/fs/bpf/brushtail")


def _journal(host, lines=10000):
    return host.check_output("journalctl -u brushtaild --no-pager -o cat -n %s", str(lines))


def _mac(host):
    return host.check_output("ip netns exec cli cat /sys/class/net/cli0/address")


def _acks(host, mac, path):
    entries = host.run(
        "journalctl -u brushtaild --no-pager -o cat CLIENT_MAC=%s LEASE_EVENT=ack DHCP_PATH=%s",
        mac,
        path,
    ).stdout
    return len([line for line in entries.splitlines() if line.startswith("ack ")])


def _metric(host, name, labels):
    listen = _config(host)["metrics_listen"]
    body = host.check_output("curl -sf --max-time 5 http://%s/metrics", listen)
    for line in body.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{{{labels}}} not exported:\n{body}")


def test_fast_path_is_enabled_in_the_config(host):
    assert _config(host)["fastpath"]["enabled"] is True


def test_program_attached_to_the_subscriber_interface(host):
    interface = _config(host)["interface"]
    status = host.run("brushtail fastpath status")
    assert status.rc == 0, status.stdout + status.stderr
    # "interface sub0: XDP native": auto takes native mode on a veth
    assert status.stdout.splitlines()[0] == f"interface {interface}: XDP native", status.stdout
    assert "name xdp_brushtail" in host.check_output("ip -o link show %s", interface)


def test_maps_pinned_in_bpffs(host):
    pin_dir = _pin_dir(host)
    status = host.check_output("brushtail fastpath status")
    # Pinned in a subdirectory named for the maps' layout (loader.layout_version), the only
    # one: an older layout's is removed once its renewals are recorded.
    found = re.search(rf"^maps: {pin_dir}/(v-[0-9a-f]{{16}}), \d+ lease entries$", status, re.M)
    assert found, status
    assert host.file(pin_dir).listdir() == [found.group(1)]
    pins = set(host.file(f"{pin_dir}/{found.group(1)}").listdir())
    assert {"leases", "templates", "config", "renewals"} <= pins, pins
    assert host.check_output("stat -f -c %T /sys/fs/bpf") == "bpf_fs"


def test_journal_says_fast_path_attached(host):
    interface = _config(host)["interface"]
    journal = _journal(host)
    assert re.search(
        rf"^fast path attached to {interface} in native mode: \d+ entries, \d+ stale removed, "
        r"compiled and loaded in [\d.]+s, maps loaded in [\d.]+s$",
        journal,
        re.MULTILINE,
    ), journal[-3000:]


def test_status_line_reports_the_fast_path(host):
    status = host.check_output("systemctl show --property=StatusText --value brushtaild")
    assert "fast path: native XDP" in status, status


def test_fast_path_counters_exported(host):
    listen = _config(host)["metrics_listen"]
    body = host.check_output("curl -sf --max-time 5 http://%s/metrics", listen)
    assert 'dhcp_fastpath_requests_total{result="ack"}' in body
    assert "dhcp_cache_entries" in body


def test_sandbox_leaves_only_the_pin_dir_writable_in_bpffs(host):
    """The unit's mount namespace: bpffs read-only (ProtectKernelTunables=), the pin
    directory bound writable over it (ReadWritePaths=)."""
    pid = host.check_output("systemctl show --property=MainPID --value brushtaild")
    mounts = {}
    for line in host.file(f"/proc/{pid}/mountinfo").content_string.splitlines():
        fields = line.split()
        mounts[fields[4]] = fields[5].split(",")
    assert "ro" in mounts["/sys/fs/bpf"], mounts.get("/sys/fs/bpf")
    assert "rw" in mounts[_pin_dir(host)], mounts.get(_pin_dir(host))


def test_renewal_answered_by_the_fast_path(host):
    """udhcpc gets its lease (from the kernel: the client is known since test_default.py),
    then renews it on SIGUSR1 with a unicast REQUEST from its address. The kernel answers;
    brushtaild records the renewal (`ack ... path=fast`) and counts it, and the slow path
    answers nothing.

    The kernel's ACK comes back within microseconds, before busybox udhcpc (1.35) listens
    for it, so udhcpc usually renews again by broadcast (REBINDING) after its -T timeout,
    and the kernel answers that one too (OPERATIONS.md, "Clients that are slower than the
    kernel"). Either way the renewal is the fast path's, once or twice; the slow path
    (3-4 ms here) answers late enough for the first."""
    mac = _mac(host)
    host.run("kill $(cat %s) 2>/dev/null; rm -f %s %s", PIDFILE, PIDFILE, EVENTS)
    host.check_output("printf '%%s' %s >%s && chmod 755 %s", UDHCPC_SCRIPT, SCRIPT, SCRIPT)
    try:
        acks = _acks(host, mac, "fast") + _acks(host, mac, "slow")
        # Without -f udhcpc goes to the background once it has a lease.
        got = host.run(
            "ip netns exec cli udhcpc -i cli0 -s %s -p %s -t 5 -T 2 -n </dev/null >/dev/null 2>&1",
            SCRIPT,
            PIDFILE,
        )
        assert got.rc == 0, host.run("cat %s", EVENTS).stdout + _journal(host, 30)
        assert host.file(EVENTS).content_string.splitlines()[-1].startswith("bound ")
        # The ACK of the lease just obtained may be logged a moment later: wait for it.
        deadline = time.monotonic() + 5
        while _acks(host, mac, "fast") + _acks(host, mac, "slow") == acks:
            assert time.monotonic() < deadline, _journal(host, 30)
            time.sleep(0.2)
        fast_before = _acks(host, mac, "fast")
        slow_before = _acks(host, mac, "slow")
        kernel_before = _metric(host, "dhcp_fastpath_requests_total", 'result="ack"')
        host.check_output("kill -USR1 $(cat %s)", PIDFILE)
        # Until udhcpc has its renewal and brushtaild has logged every ACK the kernel
        # counted (it reads them from the ring buffer at least once a second).
        deadline = time.monotonic() + 20
        while True:
            renewed = "renew " in host.file(EVENTS).content_string
            kernel = _metric(host, "dhcp_fastpath_requests_total", 'result="ack"') - kernel_before
            fast = _acks(host, mac, "fast") - fast_before
            if (renewed and kernel >= 1 and fast == kernel) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        events = host.file(EVENTS).content_string
        assert "renew " in events, events + _journal(host, 30)
        assert fast in (1, 2) and fast == kernel, (fast, kernel, _journal(host, 30))
        assert _acks(host, mac, "slow") == slow_before, _journal(host, 30)
    finally:
        host.run("kill $(cat %s) 2>/dev/null; rm -f %s", PIDFILE, PIDFILE)
        host.run("ip -n cli addr flush dev cli0")
