"""Three brushtaild sites replicating over real DTLS, for tests/e2e/test_replication.py.

Each site is a Link of its own (server namespace: the daemon on sub0, 198.18.0.1/16; client
namespace: its subscribers), with one more interface, peer0, on a shared peer link: a
bridge in a hub namespace (the client end of one more Link, so that a killed test run's
namespaces are swept like any other), each site at 198.19.0.N/24. Cutting a site off is
taking its port of the bridge down; loss is iptables' random drop on the peer interfaces.
Certificates come from brushtaild/replication/pki.py, as `brushtail pki` makes them.
"""

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from brushtaild.replication import pki
from tests.e2e import netns
from tests.e2e.daemon import Brushtaild

T = TypeVar("T")
NAMES = ("a", "b", "c")
PEER_IF = "peer0"
PORT = 6767
BRIDGE = "br0"
FIRST, LAST = "198.18.1.0", "198.18.1.255"  # 16 blocks of 16, shared out among the sites
LEASE_TIME = 120
EXTENSION_BOUND = 60  # the least the config takes

CONFIG = """\
site: {site}
interface: {interface}
server_id: {server_ip}
state_dir: {state_dir}
control_socket: {control_socket}
pools:
  - name: residential
    subnet: {subnet}
    ranges: ["{first}-{last}"]
    routers: [{server_ip}]
    lease_time: {lease_time}
fastpath:
  enabled: false
  pin_dir: {pin_dir}
replication:
  listen: {ip}:{port}
  ca: {pki}/ca.crt
  certificate: {pki}/site.crt
  key: {pki}/site.key
{crl}  peers:
{peers}  tuning:
    block_size: {block_size}
    extension_bound: {extension_bound}
    anti_entropy_interval: {anti_entropy_interval}
"""


@dataclass(frozen=True)
class Shape:
    """What every site of one cluster is configured with (bench/replication_lag.py sets
    its own): the site names, their peer link, the pool and the replication's tuning."""

    names: tuple[str, ...] = NAMES
    peer_net: str = "198.19.0"  # a /24; site N of `names` is .N+1
    subnet: str = "198.18.0.0/16"
    first: str = FIRST
    last: str = LAST
    lease_time: int = LEASE_TIME
    block_size: int = 16
    extension_bound: int = EXTENSION_BOUND
    anti_entropy_interval: int = 1

    def peer_ip(self, name: str) -> str:
        return f"{self.peer_net}.{self.names.index(name) + 1}"


def peer_ip(name: str) -> str:
    return Shape().peer_ip(name)


class Site(Brushtaild):
    """One site's daemon: Brushtaild with a config that replicates to the other two."""

    def __init__(
        self,
        name: str,
        link: netns.Link,
        workdir: Path,
        pki_dir: Path,
        crl: Path | None,
        shape: Shape = Shape(),
    ) -> None:
        super().__init__(link, workdir)
        self.name = name
        self.shape = shape
        self.configure(pki_dir, crl)

    def configure(self, pki_dir: Path, crl: Path | None) -> None:
        """(Re)write the config with these certificate files, for the next start."""
        name, shape = self.name, self.shape
        peers = "".join(
            f"    - site: {other}\n      address: {shape.peer_ip(other)}\n"
            for other in shape.names
            if other != name
        )
        self.config_file.write_text(
            CONFIG.format(
                site=name,
                interface=netns.SERVER_IF,
                server_ip=netns.SERVER_IP,
                state_dir=self.state_dir,
                control_socket=self.control_socket,
                subnet=shape.subnet,
                first=shape.first,
                last=shape.last,
                lease_time=shape.lease_time,
                pin_dir=self.pin_dir,
                ip=shape.peer_ip(name),
                port=PORT,
                pki=pki_dir,
                crl=f"  crl: {crl}\n" if crl is not None else "",
                peers=peers,
                block_size=shape.block_size,
                extension_bound=shape.extension_bound,
                anti_entropy_interval=shape.anti_entropy_interval,
            )
        )

    def ask(self, command: str, **args: object) -> Any:
        """One control-socket request (as `brushtail` sends it); the result, or raises."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(self.control_socket))
            conn.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        decoded = json.loads(answer)
        if not decoded["ok"]:
            raise RuntimeError(f"{self.name}: {command}: {decoded['error']}")
        return decoded["result"]

    def bound(self) -> dict[str, str]:
        """The bound leases this site knows of: address -> client id."""
        rows = self.ask("leases", state="bound", limit=10_000)["leases"]
        return {row["address"]: row["client_id"] for row in rows}


class Cluster:
    """Three sites, their links and the peer link; a context manager that removes it all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stack = contextlib.ExitStack()
        self.links: dict[str, netns.Link] = {}
        self.sites: dict[str, Site] = {}
        self.hub: netns.Link | None = None

    def __enter__(self) -> "Cluster":
        try:
            self._create()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _create(self) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        ca = self.ca = pki.create_ca(self.root / "ca", "cluster", 30, now)
        for name in NAMES:
            ca.issue(name, 5, self.root / "pki" / name, now)
        # A CA nobody trusts, and a certificate of it naming site c.
        foreign = pki.create_ca(self.root / "foreign-ca", "cluster", 30, now)
        foreign.issue("c", 5, self.root / "pki" / "foreign-c", now)
        self.crl = self.root / "ca" / "ca.crl"
        self.hub = self._stack.enter_context(netns.Link())
        netns.ip("-n", self.hub.client_ns, "link", "add", BRIDGE, "type", "bridge")
        netns.ip("-n", self.hub.client_ns, "link", "set", BRIDGE, "up")
        for name in NAMES:
            link = self.links[name] = self._stack.enter_context(netns.Link())
            port = self.port(name)
            netns.ip(
                "link", "add", "name", port, "netns", self.hub.client_ns, "type", "veth",
                "peer", "name", PEER_IF, "netns", link.server_ns,
            )  # fmt: skip
            netns.ip("-n", self.hub.client_ns, "link", "set", port, "master", BRIDGE, "up")
            netns.ip("-n", link.server_ns, "addr", "add", f"{peer_ip(name)}/24", "dev", PEER_IF)
            netns.ip("-n", link.server_ns, "link", "set", PEER_IF, "up")
            workdir = self.root / name
            workdir.mkdir()
            site = Site(name, link, workdir, self.root / "pki" / name, self.crl)
            self.sites[name] = self._stack.enter_context(site)

    @staticmethod
    def port(name: str) -> str:
        return f"p-{name}"

    def start(self) -> None:
        for site in self.sites.values():
            site.spawn()
        for site in self.sites.values():
            site.wait_started()

    def cut(self, name: str, off: bool = True) -> None:
        """Take a site off the peer link (or put it back): a partition."""
        assert self.hub is not None
        state = "down" if off else "up"
        netns.ip("-n", self.hub.client_ns, "link", "set", self.port(name), state)

    def lose(self, share: float) -> None:
        """Drop `share` of the datagrams each site receives on the peer link, at random."""
        for link in self.links.values():
            link.run_in(
                link.server_ns,
                ["iptables", "-A", "INPUT", "-i", PEER_IF, "-m", "statistic", "--mode",
                 "random", "--probability", str(share), "-j", "DROP"],
            )  # fmt: skip

    def leases(self) -> dict[str, dict[str, str]]:
        """Every site's bound leases (address -> client id), by site; a site that does
        not answer (stopped, restarting) is left out."""
        views = {}
        for name, site in self.sites.items():
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                views[name] = site.bound()
        return views


def no_address_held_twice(views: dict[str, dict[str, str]]) -> None:
    """No address bound to two clients, in one site's view or across the sites' views."""
    holders: dict[str, set[str]] = {}
    for view in views.values():
        for address, client in view.items():
            holders.setdefault(address, set()).add(client)
    twice = {address: clients for address, clients in holders.items() if len(clients) > 1}
    assert not twice, f"addresses held by two clients: {twice} (views: {views})"


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Polls `check` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def watching(cluster: Cluster, interval: float = 0.2) -> Iterator[list[int]]:
    """Checks `no_address_held_twice` on every poll while the body runs, from a thread;
    yields a one-item list counting the polls. Raises at exit if a poll found a duplicate."""
    import threading

    polls = [0]
    failure: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                no_address_held_twice(cluster.leases())
            except BaseException as exc:  # reported at exit
                failure.append(exc)
                return
            polls[0] += 1
            stop.wait(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield polls
    finally:
        stop.set()
        thread.join(timeout=30)
    if failure:
        raise failure[0]
