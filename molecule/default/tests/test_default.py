"""What every deployed site must show after `ansible/site.yml`: the package, the running
service, its configuration and keys with the right permissions, a metrics endpoint, and a
real DHCP client (busybox udhcpc, in the site's client netns) getting a lease.

Runs on each platform of a scenario (testinfra's podman backend). Values are read from the
site's own brushtail.yaml, so the same checks serve every site of the cluster scenario too.
"""

import ipaddress
import json

import yaml

CONFIG = "/etc/brushtail/brushtail.yaml"
PKI = "/etc/brushtail/pki"


def _config(host):
    return yaml.safe_load(host.file(CONFIG).content_string)


def _unit(host):
    out = host.check_output(
        "systemctl show --property=Type,ActiveState,SubState,StatusText,NRestarts brushtaild"
    )
    return dict(line.split("=", 1) for line in out.splitlines())


def _journal(host):
    return host.run("journalctl -u brushtaild --no-pager -n 50").stdout


def test_systemd_is_pid1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_package_installed(host):
    assert host.package("brushtail").is_installed
    assert host.exists("brushtaild") and host.exists("brushtail")


def test_service_active_and_enabled(host):
    service = host.service("brushtaild")
    assert service.is_running, _journal(host)
    assert service.is_enabled
    assert _unit(host)["NRestarts"] == "0", _journal(host)


def test_service_status_line(host):
    unit = _unit(host)
    assert unit["ActiveState"] == "active", _journal(host)
    assert unit["Type"] == "notify"
    assert "leases" in unit["StatusText"], unit


def test_service_runs_with_only_its_capabilities(host):
    pid = host.check_output("systemctl show --property=MainPID --value brushtaild")
    status = dict(
        line.split(":\t", 1)
        for line in host.file(f"/proc/{pid}/status").content_string.splitlines()
        if ":\t" in line
    )
    # CAP_NET_BIND_SERVICE 10, CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_SYS_ADMIN 21 (BCC
    # reopens pinned maps by id), CAP_PERFMON 38, CAP_BPF 39
    allowed = sum(1 << bit for bit in (10, 12, 13, 21, 38, 39))
    assert int(status["CapBnd"], 16) == allowed
    assert int(status["CapEff"], 16) & ~allowed == 0


def test_config_file(host):
    config = host.file(CONFIG)
    assert config.user == "root" and config.group == "root"
    assert config.mode == 0o644
    assert "# brushtail configuration for site" in config.content_string  # the template
    check = host.run("brushtail check-config %s", CONFIG)
    assert check.rc == 0 and ": OK (" in check.stdout, check.stderr
    assert _config(host)["interface"] == "sub0"


def test_pki_permissions(host):
    directory = host.file(PKI)
    assert directory.is_directory and directory.mode == 0o750 and directory.user == "root"
    key = host.file(f"{PKI}/site.key")
    assert key.user == "root" and key.group == "root" and key.mode == 0o600
    for name in ("site.crt", "ca.crt"):
        cert = host.file(f"{PKI}/{name}")
        assert cert.user == "root" and cert.mode == 0o644
    assert sorted(host.file(PKI).listdir()) == ["ca.crt", "site.crt", "site.key"]


def test_pki_certificate_chain(host):
    verify = host.run("openssl verify -CAfile %s/ca.crt %s/site.crt", PKI, PKI)
    assert verify.rc == 0, verify.stdout + verify.stderr
    cert_key = host.check_output("openssl x509 -in %s/site.crt -noout -pubkey", PKI)
    site_key = host.check_output("openssl pkey -in %s/site.key -pubout", PKI)
    assert cert_key == site_key
    subject = host.check_output("openssl x509 -in %s/site.crt -noout -subject", PKI)
    assert subject.endswith(f"CN = {_config(host)['site']}")
    purposes = host.check_output("openssl x509 -in %s/site.crt -noout -ext extendedKeyUsage", PKI)
    assert "TLS Web Server Authentication" in purposes
    assert "TLS Web Client Authentication" in purposes


def test_ca_key_never_on_a_site(host):
    found = host.run("find / -xdev -name ca.key -not -path '/proc/*'")
    assert found.stdout.strip() == ""


def test_metrics_endpoint(host):
    listen = _config(host)["metrics_listen"]
    body = host.check_output("curl -sf --max-time 5 http://%s/metrics", listen)
    assert "dhcp_pool_addresses" in body
    assert "dhcp_slowpath_requests_total" in body


def test_dhcp_client_gets_a_lease(host):
    config = _config(host)
    pool = config["pools"][0]
    # busybox udhcpc on the client end of the subscriber link; -s /bin/true leaves the
    # interface unconfigured, so the test can run again.
    run = host.run("ip netns exec cli udhcpc -i cli0 -f -q -n -t 5 -T 2 -s /bin/true")
    output = run.stdout + run.stderr
    assert run.rc == 0, output + _journal(host)
    line = next(li for li in output.splitlines() if "obtained" in li)
    # "udhcpc: lease of 198.18.1.10 obtained from 198.18.1.1, lease time 3600"
    address = ipaddress.ip_address(line.split("lease of ")[1].split()[0])
    assert address in ipaddress.ip_network(pool["subnet"])
    assert f"from {config['server_id']}" in line
    leases = host.check_output("brushtail leases")
    assert str(address) in leases and "bound" in leases


def test_journal_finds_one_subscriber_by_mac(host):
    """`journalctl CLIENT_MAC=...` gives a subscriber's history: the lease events of the
    client above are structured journal entries with its MAC, address and pool."""
    mac = host.check_output("ip netns exec cli cat /sys/class/net/cli0/address")
    entries = host.check_output(
        "journalctl -u brushtaild --no-pager -o json CLIENT_MAC=%s LEASE_EVENT=ack", mac
    )
    assert entries, f"no ack for {mac} in the journal:\n{_journal(host)}"
    last = json.loads(entries.splitlines()[-1])
    # slow the first time; fast once the client is known (a second `molecule verify`)
    assert last["DHCP_PATH"] in ("slow", "fast")
    assert last["POOL"] == _config(host)["pools"][0]["name"]
    assert last["SITE"] == _config(host)["site"] and last["LEASE_IP"]
