"""brushtaild as a real process in a Link's server namespace."""

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.e2e.netns import SERVER_IF, SERVER_IP, Link

REPO = Path(__file__).resolve().parents[2]
# Debian's interpreter: the daemon's libraries (BCC, pyroute2, prometheus-client) are
# Debian packages.
PYTHON = "/usr/bin/python3"
METRICS_PORT = 9967

CONFIG = """\
site: edge-test
interface: {interface}
server_id: {server_id}
state_dir: {state_dir}
offer_hold: {offer_hold}
pools:
  - name: residential
    subnet: 198.18.0.0/16
    ranges: ["{first}-{last}"]
    routers: [{server_id}]
    dns_servers: [{server_id}]
    lease_time: {lease_time}
fastpath:
  enabled: {fastpath}
  pin_dir: {pin_dir}
"""


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
        fastpath: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.link = link
        self.env = dict(env or {})
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.config_file = workdir / "brushtail.yaml"
        self.log_file = workdir / "brushtaild.log"
        # bpffs is not per network namespace: each test pins under its own directory.
        self.pin_dir = Path("/sys/fs/bpf") / f"brushtail-test-{link.server_ns}"
        self.config_file.write_text(
            CONFIG.format(
                interface=SERVER_IF,
                server_id=SERVER_IP,
                state_dir=self.state_dir,
                offer_hold=offer_hold,
                first=first,
                last=last,
                lease_time=lease_time,
                fastpath="true" if fastpath else "false",
                pin_dir=self.pin_dir,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, timeout: float = 20.0) -> Self:
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.proc = self.link.popen_in(
                self.link.server_ns,
                [PYTHON, "-m", "brushtaild", "--config", str(self.config_file)],
                stdout=log,
                stderr=log,
                env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **self.env},
            )
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
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

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
