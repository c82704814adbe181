"""The metrics as Prometheus and an operator see them.

Values: after a known sequence of real client actions against the slow path, every reply
counter equals what crossed the wire (a capture on the client end is the independent
count), NAKs are counted under the reason their option 56 gives, and releases, declines
and the pools' assigned and declined addresses are exact.

Prometheus: Debian's server scrapes a running brushtaild (fast path on) in the server's
namespace every second, after relayed perfdhcp exchanges and a udhcpc bind, renew and
release. Then every expression of the dashboard is evaluated through its HTTP API and must
return a series. An alerting rule returns nothing while all is well, so a rule is checked
through what it is made of instead: every metric it names must return series, carrying
every label its matchers name (a matcher's value is a condition, e.g. mode="detached",
which a healthy daemon must not meet), and Prometheus, which loads the rules file, must
report each rule evaluated without error. That the expressions fire on series of those
names and labels is what `promtool test rules` checks, run here too.
"""

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from brushtaild.dhcp.constants import MessageType, OptionCode
from brushtaild.engine.decisions import NakReason
from tests.e2e.capture import Capture
from tests.e2e.clients import DhclientProcess, UdhcpcProcess, run_perfdhcp
from tests.e2e.daemon import METRICS_PORT, PYTHON, REPO, Brushtaild
from tests.e2e.netns import RELAY_IP, SERVER_IF, SERVER_IP, Link, in_netns, ip, terminate
from tests.e2e.test_fastpath import START_TIMEOUT, fast_daemon, renew, udhcpc_bound, wait_until
from tests.environment import unavailable

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
MONITORING = REPO / "monitoring"
RULES = MONITORING / "prometheus" / "brushtail-rules.yml"
RULE_TESTS = MONITORING / "prometheus" / "brushtail-rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "brushtail.json"
PROMETHEUS_PORT = 9990
# Grafana's variables, as the dashboard is shown for every daemon.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m"}
# A metric the daemon exports, or Prometheus' own `up`, with its matchers if any.
SELECTOR = re.compile(r"\b(dhcp_[a-z_]+|up)\b(?:\{([^}]*)\})?")
MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")

# A relay (this namespace's RELAY_IP) leases an address, then declines it.
_DECLINE = """
import socket, sys
from brushtaild.dhcp import options as opt
from brushtaild.dhcp.codec import parse
from brushtaild.dhcp.constants import MessageType as T
from tests.e2e.relay_client import build
relay, server = sys.argv[1], sys.argv[2]
giaddr, server_id = opt.parse_ip(relay), opt.parse_ip(server)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((relay, 67))
sock.settimeout(5)
sock.sendto(build(T.DISCOVER, 7, giaddr), (server, 67))
offer = parse(sock.recv(1500))
sock.sendto(build(T.REQUEST, 7, giaddr, offer.yiaddr, server_id), (server, 67))
ack = parse(sock.recv(1500))
assert ack.message_type is T.ACK, ack
sock.sendto(build(T.DECLINE, 7, giaddr, ack.yiaddr, server_id), (server, 67))
"""

# dhclient's own lease for an address on no network of ours: its INIT-REBOOT is NAKed.
_FOREIGN_LEASE = """lease {{
  interface "{ifname}";
  fixed-address 203.0.113.5;
  option subnet-mask 255.255.255.0;
  option dhcp-lease-time 3600;
  renew 4 2099/01/01 00:00:00;
  rebind 4 2099/01/01 00:00:00;
  expire 4 2099/01/01 00:00:00;
}}
"""


def _require_prometheus() -> None:
    for tool in (PROMETHEUS, PROMTOOL):
        if not tool.exists():
            unavailable(f"{tool} is missing: Debian's prometheus (scripts/setup.sh)")


def relayed_decline(link: Link) -> None:
    link.run_in(
        link.client_ns,
        ["env", f"PYTHONPATH={REPO}", PYTHON, "-c", _DECLINE, RELAY_IP, SERVER_IP],
        timeout=20,
    )


def test_metric_values_after_a_known_sequence_of_client_actions(
    relay_link: Link, tmp_path: Path
) -> None:
    link = relay_link
    with (
        Brushtaild(link, tmp_path).start() as daemon,
        Capture(link, tmp_path / "dhcp.pcap").start() as capture,
    ):
        relayed_decline(link)
        with UdhcpcProcess(link, tmp_path / "udhcpc", discovers=10).start() as udhcpc:
            bound = udhcpc.wait_bound(15)
            assert bound.reasons[-1] == "bound", bound.log
            renewed = udhcpc.renew(10)
            assert renewed.reasons[-1] == "renew", renewed.log
            udhcpc.release(10)
        dhclient = DhclientProcess(link, tmp_path / "dhclient", timeout=15)
        dhclient.lease_file.write_text(_FOREIGN_LEASE.format(ifname=dhclient.ifname))
        with dhclient.start():
            bound = dhclient.wait_bound(20)
            assert bound.reasons[-1] == "BOUND", bound.log
        time.sleep(1.0)  # the last replies reach the capture, the last events the daemon
        samples = daemon.samples()
        seen = capture.seen()
    replies = Counter(s.message.message_type for s in seen if s.from_server)
    sent = Counter(s.message.message_type for s in seen if not s.from_server)
    # The sequence, at the least (a client may retransmit; the capture counts that too).
    assert replies[MessageType.OFFER] >= 3 and replies[MessageType.ACK] >= 4, replies
    assert replies[MessageType.NAK] >= 1, replies
    assert sent[MessageType.RELEASE] == 1 and sent[MessageType.DECLINE] == 1, sent
    for mtype in (MessageType.OFFER, MessageType.ACK, MessageType.NAK):
        label = mtype.name.lower()
        assert samples[f'dhcp_slowpath_requests_total{{result="{label}"}}'] == replies[mtype]
        assert (
            samples[f'dhcp_lease_events_total{{event="{label}",path="slow"}}'] == (replies[mtype])
        )
    why = Counter(
        s.message.options[OptionCode.MESSAGE].decode()
        for s in seen
        if s.from_server and s.message.message_type is MessageType.NAK
    )
    assert why == {NakReason.NOT_ON_NETWORK.value: replies[MessageType.NAK]}
    for reason in NakReason:
        assert samples[f'dhcp_naks_total{{reason="{reason.label}"}}'] == why[reason.value]
    for event in ("release", "decline"):
        assert samples[f'dhcp_lease_events_total{{event="{event}",path="slow"}}'] == 1
    assert samples['dhcp_lease_events_total{event="ack",path="fast"}'] == 0
    pool = '{pool="residential"}'
    # dhclient's lease and the declined address; udhcpc's was released.
    assert samples[f"dhcp_pool_addresses_assigned{pool}"] == 2
    assert samples[f"dhcp_pool_addresses_declined{pool}"] == 1
    size = samples[f"dhcp_pool_addresses{pool}"]
    assert size == 65279  # 198.18.1.0-198.18.255.254
    assert samples[f"dhcp_pool_utilization_ratio{pool}"] == pytest.approx(2 / size)


# --- a real Prometheus --------------------------------------------------------------------


class Prometheus:
    """Debian's Prometheus in `ns`, scraping brushtaild every second and evaluating the
    rules file; its API is read from inside the namespace."""

    def __init__(self, link: Link, workdir: Path) -> None:
        self.link = link
        self.workdir = workdir
        self.storage = workdir / "tsdb"
        self.config = workdir / "prometheus.yml"
        self.log_file = workdir / "prometheus.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {
                            "job_name": "brushtail",
                            "static_configs": [{"targets": [f"127.0.0.1:{METRICS_PORT}"]}],
                        }
                    ],
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log_file.open("ab") as log:
            self.proc = self.link.popen_in(
                self.link.server_ns,
                [
                    str(PROMETHEUS),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.storage}",
                    f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{self.log_file.read_text()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with in_netns(self.link.server_ns):
                url = f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with in_netns(self.link.server_ns), urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=10)
        shutil.rmtree(self.storage, ignore_errors=True)


@contextlib.contextmanager
def prometheus(link: Link, workdir: Path) -> Iterator[Prometheus]:
    workdir.mkdir()
    server = Prometheus(link, workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def replicated(expr: str) -> bool:
    """An expression on the replication's metrics, which only a site with peers exports."""
    return "dhcp_replication_" in expr


def grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def unexported(server: Prometheus, expr: str) -> list[str]:
    """The metrics `expr` names that return no series, and the labels its matchers name
    that none of a metric's series carries."""
    missing = []
    for name, matchers in SELECTOR.findall(expr):
        series = server.query(name)
        if not series:
            missing.append(name)
        labels = set().union(*(s["metric"] for s in series))
        missing += [
            f"{name}{{{label}}}" for label in MATCHER_LABEL.findall(matchers) if label not in labels
        ]
    return missing


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_and_tests_every_alerting_rule() -> None:
    _require_prometheus()
    checked = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Each alert has a test of its own that expects it.
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    expected = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert expected == set(rule_expressions())


def test_prometheus_scrapes_the_daemon_and_every_dashboard_and_rule_expression_has_series(
    relay_link: Link, tmp_path: Path
) -> None:
    _require_prometheus()
    link = relay_link
    with fast_daemon(link, tmp_path) as daemon, prometheus(link, tmp_path / "prometheus") as server:
        daemon.start(START_TIMEOUT)
        result = run_perfdhcp(link, rate=50, duration=2, clients=50)
        assert result.exchanges["REQUEST-ACK"].received > 0, result.output
        client, address = udhcpc_bound(link, tmp_path / "udhcpc")
        with client:
            renew(client, address)
            client.release(10)
        acked = daemon.metric('dhcp_slowpath_requests_total{result="ack"}')
        scraped: Callable[[], float] = lambda: sum(  # noqa: E731
            float(s["value"][1])
            for s in server.query('dhcp_slowpath_requests_total{job="brushtail",result="ack"}')
        )
        wait_until("a scrape after the clients", lambda: scraped() >= acked, timeout=30)
        time.sleep(3)  # a few more scrapes, so every rate() has its two samples
        # A single site exports no replication metric: tests/e2e/test_replication.py checks
        # those expressions' names against a replicating site, promtool the rules.
        dashboard = [e for e in map(grafana, dashboard_expressions()) if not replicated(e)]
        empty = [e for e in dashboard if not server.query(e)]
        assert not empty, f"dashboard expressions without a series: {empty}"
        single_site = [e for e in rule_expressions().values() if not replicated(e)]
        names = {expr: unexported(server, expr) for expr in [*dashboard, *single_site]}
        unknown = {expr: missing for expr, missing in names.items() if missing}
        assert not unknown, f"metrics or labels the daemon does not export: {unknown}"
        rules = [r for g in server.api("rules")["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules} == set(rule_expressions())
        assert all(r["health"] == "ok" for r in rules), rules
        modes = server.query("dhcp_fastpath_xdp_mode == 1")
        assert [m["metric"]["mode"] for m in modes] in (["native"], ["generic"]), modes
        assert server.query("dhcp_fastpath_up == 1")
        memory = server.query("dhcp_cache_size_bytes")
        assert {"leases", "ratelimit"} <= {m["metric"]["map"] for m in memory}, memory
        assert all(float(m["value"][1]) > 0 for m in memory), memory


def test_a_program_taken_off_the_interface_is_reported_detached(link: Link, tmp_path: Path) -> None:
    """What BrushtailFastPathDetached watches: the mode as the kernel reports it at each
    scrape, not as the daemon remembers attaching it."""
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        attached = [k for k in daemon.samples() if k.startswith("dhcp_fastpath_xdp_mode{")]
        assert attached in (
            ['dhcp_fastpath_xdp_mode{configured="auto",mode="native"}'],
            ['dhcp_fastpath_xdp_mode{configured="auto",mode="generic"}'],
        ), attached
        mode = "xdpgeneric" if "generic" in attached[0] else "xdpdrv"
        ip("-n", link.server_ns, "link", "set", "dev", SERVER_IF, mode, "off")
        samples = daemon.samples()
        assert samples['dhcp_fastpath_xdp_mode{configured="auto",mode="detached"}'] == 1
        assert samples["dhcp_fastpath_up"] == 1  # the daemon did not take it down itself
