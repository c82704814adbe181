"""brushtaild as a real process in a Link's server namespace."""

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from brushtaild.config.load import MAX_SOCKET_PATH
from tests.e2e.netns import SERVER_IF, SERVER_IP, Link, pid_alive

REPO = Path(__file__).resolve().parents[2]
# Debian's interpreter: the daemon's libraries (BCC, pyroute2, prometheus-client) are
# Debian packages.
PYTHON = "/usr/bin/python3"
METRICS_PORT = 9967
BPFFS = Path("/sys/fs/bpf")
# A test's pin dir is named after its server namespace, bt-<pid of the pytest run>-<n>-s.
_PIN_DIR_RE = re.compile(r"^brushtail-test-bt-(\d+)-\d+-s$")

CONFIG = """\
site: edge-test
interface: {interface}
server_id: {server_id}
state_dir: {state_dir}
control_socket: {control_socket}
offer_hold: {offer_hold}
trusted_relays: {trusted_relays}
pools:
  - name: residential
    subnet: 198.18.0.0/16
    ranges: ["{first}-{last}"]
    routers: [{server_id}]
    dns_servers: [{server_id}]
    lease_time: {lease_time}
{timers}{pool_extra}{vlans}fastpath:
  enabled: {fastpath}
  pin_dir: {pin_dir}
"""


def host_mounts(argv: Sequence[str]) -> list[str]:
    """`argv` in this process's mount namespace, for use under `ip netns exec`.

    `ip netns exec` gives its command a mount namespace of its own with a fresh /sys, where
    /sys/fs/bpf is not mounted: the daemon would mount a bpffs of its own there, whose pins
    die with it, so a restarted daemon could never adopt them. In this process's mount
    namespace /sys/fs/bpf is the host's bpffs, as under systemd; the network namespace
    stays the one `ip netns exec` entered.
    """
    return ["nsenter", f"--mount=/proc/{os.getpid()}/ns/mnt", "--", *argv]


class Brushtaild:
    """Starts the daemon with a fresh config in `workdir`; `state_dir` outlives restarts."""

    def __init__(
        self,
        link: Link,
        workdir: Path,
        *,
        lease_time: int = 3600,
        first: str = "198.18.1.0",
        last: str = "198.18.255.254",
        offer_hold: int = 30,
        renewal_time: int | None = None,
        rebinding_time: int | None = None,
        fastpath: bool = False,
        trusted_relays: Sequence[str] = (),
        pool_extra: str = "",
        vlans: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`pool_extra`: YAML lines added to the pool, indented as its keys."""
        self.link = link
        self.env = dict(env or {})
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.config_file = workdir / "brushtail.yaml"
        self.log_file = workdir / "brushtaild.log"
        self.control_socket = workdir / "control.sock"
        if len(bytes(self.control_socket)) > MAX_SOCKET_PATH:
            # A deep workdir: the server namespace's name is unique to the test too.
            self.control_socket = Path("/tmp") / f"brushtail-{link.server_ns}.sock"
        # bpffs is not per network namespace: each test pins under its own directory.
        self.pin_dir = BPFFS / f"brushtail-test-{link.server_ns}"
        self.config_file.write_text(
            CONFIG.format(
                interface=SERVER_IF,
                server_id=SERVER_IP,
                state_dir=self.state_dir,
                control_socket=self.control_socket,
                offer_hold=offer_hold,
                trusted_relays=json.dumps(list(trusted_relays)),
                first=first,
                last=last,
                lease_time=lease_time,
                timers="".join(
                    f"    {key}: {value}\n"
                    for key, value in (
                        ("renewal_time", renewal_time),
                        ("rebinding_time", rebinding_time),
                    )
                    if value is not None
                ),
                pool_extra=pool_extra,
                vlans=f"    vlans: {json.dumps(list(vlans))}\n" if vlans else "",
                fastpath="true" if fastpath else "false",
                pin_dir=self.pin_dir,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.args: list[str] = []  # more command-line arguments (--recovering)

    def start(self, timeout: float = 20.0) -> Self:
        return self.spawn().wait_started(timeout)

    def spawn(self) -> Self:
        """Starts the process without waiting for it: a test can act while it starts up
        (the fast path compiles for seconds, while the previous program still answers)."""
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.proc = self.link.popen_in(
                self.link.server_ns,
                host_mounts(
                    [PYTHON, "-m", "brushtaild", "--config", str(self.config_file), *self.args]
                ),
                stdout=log,
                stderr=log,
                env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **self.env},
            )
        return self

    def wait_started(self, timeout: float = 20.0) -> Self:
        """Until the 'started' line of this run; raises if the process exits first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while "brushtaild 0" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"brushtaild exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"brushtaild did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        """What this run (since the last start) wrote."""
        if not self.log_file.exists():
            return ""
        with self.log_file.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def lines(self, word: str) -> list[str]:
        return [line for line in self.log().splitlines() if f" {word} " in f" {line} "]

    def metrics(self) -> str:
        done = self.link.run_in(
            self.link.server_ns,
            [PYTHON, "-c", "import sys, urllib.request; sys.stdout.write(urllib.request."
             f"urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5).read().decode())"],
        )  # fmt: skip
        return done.stdout

    def metric(self, name: str) -> float:
        """Sum of every sample of `name` (all label sets)."""
        return sum_samples(self.samples(), name)

    def samples(self) -> dict[str, float]:
        """One scrape: every sample by its name with labels, as exposed
        (`dhcp_fastpath_requests_total{result="ack"}`)."""
        samples = {}
        for line in self.metrics().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def cli(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`brushtail ARGV` against this daemon's control socket (from its config file)."""
        return subprocess.run(
            [PYTHON, "-m", "brushtaild.cli", *argv, "--config", str(self.config_file)],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            timeout=timeout,
            check=False,
        )

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: the clean shutdown case."""
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=timeout)

    def remove_pins(self) -> None:
        """Unpins the fast path's maps (the program goes when its interface does)."""
        shutil.rmtree(self.pin_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        # What a killed daemon leaves (the next start would replace it).
        self.control_socket.unlink(missing_ok=True)


def sum_samples(samples: Mapping[str, float], name: str) -> float:
    """Sum of every sample of `name` (all label sets) in one scrape."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def sweep_stale_pins() -> list[Path]:
    """Removes the pin dirs that test runs killed before their cleanup left behind (those
    of runs still alive stay); returns them."""
    stale = []
    for path in BPFFS.glob("brushtail-test-*"):
        match = _PIN_DIR_RE.match(path.name)
        if match is not None and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            stale.append(path)
    return stale
