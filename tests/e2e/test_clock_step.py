"""The wall clock stepped under a running daemon (NTP on a box without an RTC, `date -s`):
its leases neither expire early nor late, and the kernel's renewals go on extending them.

libfaketime (Debian `libfaketime`) steps the daemon's wall clock alone: its offset is read
from a file the test rewrites (FAKETIME_NO_CACHE: at every read), and with
FAKETIME_DONT_FAKE_MONOTONIC it leaves CLOCK_MONOTONIC and CLOCK_BOOTTIME alone, as a real
step does. The XDP program, in the kernel, is not affected at all.
"""

from pathlib import Path

from tests.e2e.daemon import Brushtaild, sweep_stale_pins
from tests.e2e.netns import Link
from tests.e2e.test_fastpath import (
    FAST_ACK,
    START_TIMEOUT,
    entries,
    fast_acks,
    renew,
    scrape,
    stored_expiry,
    udhcpc_bound,
    wait_until,
)
from tests.e2e.xdp_pass import attach_client_pass
from tests.environment import unavailable

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
# Shorter than the step: a daemon whose expiry followed the wall clock would expire the
# lease at once (and its entry with it), and the renewal would go to the slow path.
LEASE_TIME = 600
STEP = 1200
STEP_GAUGE = "dhcp_clock_step_seconds"


def test_renewals_extend_leases_on_the_fast_path_across_wall_clock_steps(
    link: Link, tmp_path: Path
) -> None:
    if not LIBFAKETIME.exists():
        unavailable("libfaketime is not installed")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    sweep_stale_pins()
    attach_client_pass(link)
    faked = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    daemon = Brushtaild(link, tmp_path, lease_time=LEASE_TIME, fastpath=True, env=faked)
    try:
        daemon.start(START_TIMEOUT)
        client, address = udhcpc_bound(link, tmp_path / "udhcpc")
        with client:
            wait_until("lease entry", lambda: entries(daemon) == 1)
            expires = stored_expiry(daemon.state_dir, address)
            renewals = 0
            for step in (+STEP, -STEP):  # a step forward, then one back past the start
                offset.write_text(f"{step:+d}\n")
                wait_until("the step seen", lambda s=step: abs(scrape(daemon)[STEP_GAUGE] - s) < 5)
                # The daemon lives through the step with its lease and entry intact...
                assert entries(daemon) == 1
                assert not [line for line in daemon.lines("expire") if f"ip={address} " in line]
                renew(client, address)
                renewals += 1
                wait_until(
                    "path=fast ack line", lambda n=renewals: len(fast_acks(daemon, address)) >= n
                )
                # ...and the kernel's renewal extends it, by the time that really passed.
                later = stored_expiry(daemon.state_dir, address)
                assert expires < later < expires + 60, (expires, later)
                expires = later
            samples = scrape(daemon)
    finally:
        daemon.kill()
        daemon.remove_pins()
    assert samples[FAST_ACK] >= renewals
    assert len([line for line in daemon.log().splitlines() if "wall clock stepped" in line]) == 2
