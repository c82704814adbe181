"""`brushtail trace` against the program a real brushtaild attached: a real client's
renewal shows up as the kernel's ACK for its MAC, with the daemon running and with the
daemon dead (when the kernel answers alone); one trace at a time; tracing is off again
once the tracer exits, by --count or by SIGTERM.

The tracer runs as a real process in the test's own namespaces: it needs only bpffs."""

import json
import select
import signal
import subprocess
import time
from pathlib import Path

from brushtaild.dhcp.options import format_mac
from brushtaild.xdp import maps
from brushtaild.xdp.loader import Version
from tests.e2e.daemon import PYTHON, REPO, Brushtaild
from tests.e2e.netns import Link
from tests.e2e.test_fastpath import (
    START_TIMEOUT,
    entries,
    fast_daemon,
    renew,
    udhcpc_bound,
    wait_until,
)

TRACE_TIMEOUT = 30.0


def trace_cost(daemon: Brushtaild) -> int:
    """The rate slot of the daemon's pinned config: not 0 while a tracer runs."""
    [version] = daemon.pin_dir.glob("v-*")
    value = Version(version).config(maps.CFG_TRACE_COST)
    assert value is not None
    return value


def brushtail_trace(daemon: Brushtaild, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "brushtaild.cli", "trace", "--config", str(daemon.config_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def tracing(daemon: Brushtaild, tracer: subprocess.Popen[str]) -> None:
    """Once the tracer has switched the trace on."""
    wait_until("tracing on", lambda: tracer.poll() is not None or trace_cost(daemon) > 0)
    assert tracer.poll() is None, tracer.communicate()


def read_until(tracer: subprocess.Popen[str], wanted: str) -> list[str]:
    """The tracer's lines up to the first that contains `wanted`."""
    assert tracer.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + TRACE_TIMEOUT
    while not lines or wanted not in lines[-1]:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([tracer.stdout], [], [], max(left, 0))
        assert ready, f"no {wanted!r} within {TRACE_TIMEOUT:.0f}s: {lines}"
        line = tracer.stdout.readline()
        assert line, f"the tracer exited: {lines} {tracer.communicate()}"
        lines.append(line.rstrip("\n"))
    return lines


def test_trace_shows_the_kernels_ack_to_a_renewing_client(link: Link, tmp_path: Path) -> None:
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        client, address = udhcpc_bound(link, tmp_path / "udhcpc")
        mac = format_mac(link.client_mac)
        with client:
            wait_until("lease entry", lambda: entries(daemon) == 1)
            tracer = brushtail_trace(daemon, "--mac", mac, "--count", "1", "--json")
            try:
                tracing(daemon, tracer)
                second = brushtail_trace(daemon)
                _, refused = second.communicate(timeout=TRACE_TIMEOUT)
                assert second.returncode == 1
                assert "another trace is running (pid " in refused, refused
                renew(client, address)
                out, err = tracer.communicate(timeout=TRACE_TIMEOUT)
            finally:
                tracer.kill()
        assert tracer.returncode == 0, err
        [event] = [json.loads(line) for line in out.splitlines()]
        assert (event["mac"], event["address"], event["message"]) == (mac, address, "REQUEST")
        assert (event["verdict"], event["result"]) == ("answered", "ack")
        assert event["latency_ns"] > 0
        assert err.startswith("1 events shown;"), err
        assert trace_cost(daemon) == 0


def test_trace_works_while_the_daemon_is_dead_and_stops_on_sigterm(
    link: Link, tmp_path: Path
) -> None:
    with fast_daemon(link, tmp_path) as daemon:
        daemon.start(START_TIMEOUT)
        client, address = udhcpc_bound(link, tmp_path / "udhcpc")
        with client:
            wait_until("lease entry", lambda: entries(daemon) == 1)
            daemon.kill()
            tracer = brushtail_trace(daemon)
            mac = format_mac(link.client_mac)
            try:
                tracing(daemon, tracer)
                renew(client, address)
                shown = read_until(tracer, f"{mac} {address} REQUEST answered ack")
                tracer.send_signal(signal.SIGTERM)
                # Read through the buffered file, which may hold lines already: not with
                # communicate(), which reads the pipe under it.
                assert tracer.stdout is not None and tracer.stderr is not None
                out, err = tracer.stdout.read(), tracer.stderr.read()
                tracer.wait(TRACE_TIMEOUT)
            finally:
                tracer.kill()
        assert tracer.returncode == 0, err
        assert err.startswith(f"{len(shown) + len(out.splitlines())} events shown;"), err
        assert trace_cost(daemon) == 0
