"""Network-namespace harness for end-to-end tests and the demo.

A `Link` is two fresh namespaces joined by a veth pair: the server end `sub0` carries
198.18.0.1/16 (RFC 2544 benchmarking space, never routed anywhere), the client end `cli0`
is up with no address so real DHCP clients start from nothing. Everything is created with
`ip` and torn down on exit even when the body fails: every process still running in either
namespace is killed before the namespaces are deleted, which also removes the veth.

Namespace names are `bt-<pid>-<n>-s` / `-c`: the pid lets `sweep_stale` remove what a
killed run left behind without touching namespaces of runs that are still alive.
"""

import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

PREFIX = "bt-"
SERVER_IF = "sub0"
CLIENT_IF = "cli0"
SERVER_IP = "198.18.0.1"
# perfdhcp acts as a relay: it needs an address of its own to put in giaddr.
RELAY_IP = "198.18.0.2"
PREFIX_LEN = 16

CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(rf"^{re.escape(PREFIX)}(\d+)-\d+-[sc]$")
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def available() -> str | None:
    """Why the harness cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def ip(*args: str, timeout: float = 10.0) -> str:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def list_namespaces() -> list[str]:
    out = ip("-j", "netns", "list")
    return [entry["name"] for entry in json.loads(out)] if out.strip() else []


def namespace_pids(ns: str) -> list[int]:
    try:
        out = ip("netns", "pids", ns)
    except RuntimeError:
        return []
    return [int(line) for line in out.split()]


def kill_namespace_processes(ns: str, grace: float = 2.0) -> None:
    """SIGTERM every process in `ns`, then SIGKILL what is still there after `grace`."""
    me = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for pid in namespace_pids(ns) if pid != me]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p != me for p in namespace_pids(ns)):
            time.sleep(0.05)


def delete_namespace(ns: str) -> None:
    kill_namespace_processes(ns)
    with contextlib.suppress(RuntimeError):
        ip("netns", "del", ns)


def terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if `proc` is still running after `grace` seconds; reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped, does not): the test runs
    that own namespaces and pin directories are told apart from dead ones by it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def sweep_stale() -> list[str]:
    """Delete `bt-*` namespaces whose creating process is gone; return their names."""
    stale = []
    for ns in list_namespaces():
        match = _NAME_RE.match(ns)
        if match and not pid_alive(int(match.group(1))):
            delete_namespace(ns)
            stale.append(ns)
    return stale


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the body with this thread in `ns`: sockets opened inside stay in `ns` for life.

    setns only moves the calling thread, so other threads (and the rest of pytest) are not
    affected; the original namespace is restored even if the body raises.
    """
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{ns}", "rb") as dest:
        _setns(dest.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class Link:
    """Server and client namespaces joined by a veth; use as a context manager."""

    client_ip: str | None = None
    server_ns: str = ""
    client_ns: str = ""
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.server_ns:
            base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
            self.server_ns = f"{base}-s"
            self.client_ns = f"{base}-c"

    def __enter__(self) -> "Link":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _create(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # No IPv6 on the link: its neighbour discovery would only add noise to captures.
            self.run_in(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
        ip(
            "link", "add", "name", SERVER_IF, "netns", self.server_ns, "type", "veth",
            "peer", "name", CLIENT_IF, "netns", self.client_ns,
        )  # fmt: skip
        ip("-n", self.server_ns, "addr", "add", f"{SERVER_IP}/{PREFIX_LEN}", "dev", SERVER_IF)
        if self.client_ip is not None:
            ip("-n", self.client_ns, "addr", "add", f"{self.client_ip}/{PREFIX_LEN}",
               "dev", CLIENT_IF)  # fmt: skip
        ip("-n", self.server_ns, "link", "set", SERVER_IF, "up")
        ip("-n", self.client_ns, "link", "set", CLIENT_IF, "up")

    def close(self) -> None:
        existing = [ns for ns in (self.server_ns, self.client_ns) if ns in list_namespaces()]
        for ns in existing:
            kill_namespace_processes(ns)
        # Our own children are dead by now (or never entered a namespace); reap them so no
        # zombie outlives the test.
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        for ns in existing:
            delete_namespace(ns)

    def run_in(
        self, ns: str, argv: Sequence[str], timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `ns` to completion (killed after `timeout` seconds)."""
        result = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in {ns} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def popen_in(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
        stderr: int | IO[bytes] | None = subprocess.DEVNULL,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in `ns`; the Link kills it on exit if it is still running."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
        )
        self._procs.append(proc)
        return proc

    def mac(self, ns: str, ifname: str) -> bytes:
        out = ip("-n", ns, "-j", "link", "show", "dev", ifname)
        return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))

    def ifindex(self, ns: str, ifname: str) -> int:
        out = ip("-n", ns, "-j", "link", "show", "dev", ifname)
        return int(json.loads(out)[0]["ifindex"])

    @property
    def server_mac(self) -> bytes:
        return self.mac(self.server_ns, SERVER_IF)

    @property
    def client_mac(self) -> bytes:
        return self.mac(self.client_ns, CLIENT_IF)

    def addresses(self, ns: str, ifname: str) -> list[str]:
        """IPv4 addresses on the interface, as 'a.b.c.d/len'."""
        out = ip("-n", ns, "-j", "-4", "addr", "show", "dev", ifname)
        return [
            f"{a['local']}/{a['prefixlen']}"
            for entry in json.loads(out)
            for a in entry.get("addr_info", [])
        ]


@dataclass
class Downstream(Link):
    """A client namespace of its own behind `server_ns`, a namespace that exists already (a
    router: the client namespace of a Link with `client_ip`): a veth `router_if` there
    carrying `router_ip` ('a.b.c.d/len'), `cli0` here, up with no address. Only the client
    namespace is created and deleted (the veth goes with it); the router's is left alone.
    Its processes (`popen_in`) are the Link's: real clients run in it as in a Link's."""

    router_if: str = ""
    router_ip: str = ""

    def __post_init__(self) -> None:
        if not self.client_ns:
            self.client_ns = f"{PREFIX}{os.getpid()}-{next(_counter)}-c"

    def _create(self) -> None:
        ip("netns", "add", self.client_ns)
        ip("-n", self.client_ns, "link", "set", "lo", "up")
        self.run_in(self.client_ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
        ip(
            "link", "add", "name", self.router_if, "netns", self.server_ns, "type", "veth",
            "peer", "name", CLIENT_IF, "netns", self.client_ns,
        )  # fmt: skip
        ip("-n", self.server_ns, "addr", "add", self.router_ip, "dev", self.router_if)
        ip("-n", self.server_ns, "link", "set", self.router_if, "up")
        ip("-n", self.client_ns, "link", "set", CLIENT_IF, "up")

    def close(self) -> None:
        if self.client_ns in list_namespaces():
            kill_namespace_processes(self.client_ns)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        delete_namespace(self.client_ns)
