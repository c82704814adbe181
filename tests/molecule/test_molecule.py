"""The Molecule scenario "default" (one site in a Debian 12 container with systemd) as part of
the normal test run: scripts/molecule.sh sets up the host, builds or reuses the image and the
package, then runs `molecule test -s default` (create, converge with ansible/site.yml,
idempotence, testinfra verify, destroy).

The two-site scenario is one command away: `bash scripts/molecule.sh cluster` (or `all`).
Set BRUSHTAIL_SKIP_MOLECULE=1 to leave this out of a quick local run.
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# First run on a fresh host (2-core VM): packages ~130 s, venv ~60 s, image ~330 s (BCC and
# the kernel headers included), package ~15 s, scenario ~240 s, about 13 minutes in all.
# Later runs reuse the image and venv: about 4 minutes.
TIMEOUT = 1500


@pytest.mark.skipif(os.geteuid() != 0, reason="Molecule runs rootful podman containers: needs root")
@pytest.mark.skipif(
    bool(os.environ.get("BRUSHTAIL_SKIP_MOLECULE")), reason="BRUSHTAIL_SKIP_MOLECULE is set"
)
@pytest.mark.timeout(TIMEOUT + 60)
def test_molecule_default_scenario() -> None:
    try:
        proc = subprocess.run(
            ["bash", "scripts/molecule.sh", "default", "test"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        subprocess.run(["bash", "scripts/molecule.sh", "default", "destroy"], cwd=REPO)
        pytest.fail(f"molecule did not finish in {TIMEOUT} s; last output:\n{output[-6000:]}")
    assert proc.returncode == 0, proc.stdout[-12000:]
