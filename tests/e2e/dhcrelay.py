"""ISC dhcrelay (Debian's isc-dhcp-relay) as a real relay agent in a router namespace.

Started by the test, never by the package: setup.sh installs it with services kept from
starting, and its init script's defaults name no server and no interface. Each relay runs
in the foreground (`-d`), writes no pid file (`--no-pid`, so the init script's status
never sees it), listens only on the interfaces it is given, and is killed at the end.

With `-a` it adds option 82 to every request it relays, with one sub-option: circuit-id
(1), the name of the interface the request came in on (no remote-id: dhcrelay 4.4 sends
one only when built to). Its giaddr is that interface's address. It takes option 82 off
the replies, and drops a reply whose circuit-id names none of its interfaces.
"""

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.e2e.netns import Link, terminate


def available() -> str | None:
    """Why dhcrelay cannot run here, or None if it can."""
    if shutil.which("dhcrelay") is None:
        return "dhcrelay is not installed (Debian package isc-dhcp-relay)"
    return None


class Dhcrelay:
    """dhcrelay -4 -a in `ns`, relaying requests from `downstream` to `server` out of
    `upstream`; use as a context manager."""

    def __init__(
        self,
        link: Link,
        ns: str,
        workdir: Path,
        *,
        downstream: Sequence[str],
        upstream: str,
        server: str,
    ) -> None:
        self.link = link
        self.ns = ns
        self.log_file = workdir / "dhcrelay.log"
        self.argv = [
            "dhcrelay", "-4", "-d", "-a", "--no-pid",
            *(arg for ifname in downstream for arg in ("-id", ifname)),
            "-iu", upstream, server,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> "Dhcrelay":
        """Starts it and waits until it listens on every interface (its 'Listening on'
        lines: one per interface and the fallback socket)."""
        with self.log_file.open("ab") as log:
            self.proc = self.link.popen_in(self.ns, self.argv, stdout=log, stderr=log)
        wanted = sum(1 for arg in self.argv if arg in ("-id", "-iu"))
        deadline = time.monotonic() + timeout
        while self.log().count("Listening on LPF/") < wanted:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dhcrelay exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dhcrelay did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def __enter__(self) -> "Dhcrelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
