"""`brushtail check-config`: exit codes and output, in-process and as a real process."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brushtaild.cli import main
from brushtaild.engine.leases import Lease, LeaseState
from brushtaild.store.lease_store import LeaseStore

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "brushtail.yaml"
FULL_EXAMPLE = REPO / "docs" / "examples" / "brushtail-full.yaml"

INVALID = """\
site: edge-a
interface: sub0
server_id: 198.18.0.1
pools:
  - name: residential
    subnet: 198.18.0.0/16
    ranges: ["198.18.1.0-198.18.1.255", "198.18.2.0-198.18.1.0"]
    lease_tme: 3600
"""
INVALID_ERRORS = [
    "pools[0].lease_tme: unknown key; did you mean 'lease_time'?",
    "pools[0].ranges[1]: start 198.18.2.0 is after end 198.18.1.0",
]


@pytest.fixture
def invalid(tmp_path: Path) -> Path:
    path = tmp_path / "invalid.yaml"
    path.write_text(INVALID)
    return path


def test_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    # 198.18.1.0-198.18.255.254 holds 255 * 256 - 1 addresses, none reserved.
    assert out == f"{EXAMPLE}: OK (1 pools, 65279 addresses)\n"
    assert err == ""


def test_full_example_counts_exclusions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(FULL_EXAMPLE)]) == 0
    # 127 * 256 + 128 * 256 - 1 residential, 253 business less 11 excluded, 241 business-2,
    # 255 * 256 - 1 on VLANs, and the one reserved address outside every range (198.18.0.10).
    assert capsys.readouterr().out == f"{FULL_EXAMPLE}: OK (5 pools, 131042 addresses)\n"


def test_invalid_file_lists_every_error(invalid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(invalid)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == INVALID_ERRORS


def test_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("site: edge-a\npools: [\n")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err.startswith("line 3, column 1: invalid YAML: ")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == f"{path}: cannot read: No such file or directory\n"


def test_directory_instead_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path}: cannot read: Is a directory\n"


@pytest.mark.parametrize("argv", [[], ["check-config"], ["no-such-command"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: brushtail" in capsys.readouterr().err


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # sys.executable is the venv's python when run through .venv/bin/pytest; the repository
    # goes on PYTHONPATH because the package is used from the source tree, not installed.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "brushtaild.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_subprocess_valid() -> None:
    result = run("check-config", str(EXAMPLE))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"{EXAMPLE}: OK (1 pools, 65279 addresses)\n",
        "",
    )


def test_subprocess_invalid(invalid: Path) -> None:
    result = run("check-config", str(invalid))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == INVALID_ERRORS


def test_subprocess_missing(tmp_path: Path) -> None:
    result = run("check-config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "cannot read: No such file or directory" in result.stderr


def test_leases_lists_current_leases_while_the_store_is_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    bound = Lease(0xC6120105, b"\x01" + bytes(range(6)), bytes(range(6)), "residential",
                  LeaseState.BOUND, now + 600, now)  # fmt: skip
    released = Lease(0xC6120106, b"\x01abcdef", b"abcdef", "residential",
                     LeaseState.RELEASED, now, now)  # fmt: skip
    with LeaseStore.open(tmp_path) as store:  # held open, as the daemon does
        store.apply([bound, released], [])
        assert main(["leases", "--state-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "198.18.1.5" in out and "bound" in out and "00:01:02:03:04:05" in out
        assert "198.18.1.6" not in out
        assert main(["leases", "--all", "--state-dir", str(tmp_path)]) == 0
        assert "198.18.1.6  released" in capsys.readouterr().out
        # The daemon's filters and limit, on the store's leases.
        assert main(["leases", "--all", "--limit", "1", "--state-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "198.18.1.6" not in out and "1 of 2 matching leases shown" in out
        assert main(["leases", "--state", "released", "--state-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "198.18.1.5" not in out and "198.18.1.6" in out
        assert main(["leases", "--mac", "nope", "--state-dir", str(tmp_path)]) == 1
        assert "not a MAC address" in capsys.readouterr().err


def test_leases_without_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leases", "--state-dir", str(tmp_path)]) == 2
    assert "no lease store" in capsys.readouterr().err


# -- check-config --compare and warnings ---------------------------------------------------


def variant(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    """docs/examples/brushtail.yaml with text replaced, written to tmp_path/name."""
    text = EXAMPLE.read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_compare_says_reload_for_keys_a_reload_applies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = variant(tmp_path, "new.yaml", ("lease_time: 3600", "lease_time: 600"))
    assert main(["check-config", "--compare", str(EXAMPLE), str(new)]) == 0
    assert capsys.readouterr() == ("reload\n", "")


def test_compare_names_the_keys_only_a_restart_applies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = variant(
        tmp_path,
        "new.yaml",
        ("interface: sub0", "interface: sub1\nfastpath: {xdp_mode: generic, rate_limit: 3}"),
    )
    assert main(["check-config", "--compare", str(EXAMPLE), str(new)]) == 0
    assert capsys.readouterr() == ("restart: interface, fastpath.xdp_mode\n", "")


def test_compare_refuses_an_invalid_file_naming_it(
    tmp_path: Path, invalid: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--compare", str(EXAMPLE), str(invalid)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"{invalid}: {line}" for line in INVALID_ERRORS]
    absent = tmp_path / "absent.yaml"
    assert main(["check-config", "--compare", str(absent), str(invalid)]) == 2
    assert f"{absent}: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["check-config", "--compare", "a"], ["check-config", "x", "--compare", "a", "b"]],
)
def test_compare_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: brushtail" in capsys.readouterr().err


def test_subprocess_compare() -> None:
    result = run("check-config", "--compare", str(EXAMPLE), str(FULL_EXAMPLE))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "restart: metrics_listen, replication\n",
        "",
    )


def test_warns_when_the_pools_outgrow_the_kernel_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = variant(tmp_path, "small.yaml", ("pools:", "fastpath: {max_subscribers: 1024}\npools:"))
    assert main(["check-config", str(small)]) == 0
    assert capsys.readouterr() == (
        f"{small}: OK (1 pools, 65279 addresses)\n",
        "warning: fastpath.max_subscribers: the pools hold 65279 addresses and the kernel map "
        "holds 1024 entries; leases beyond it are served by the slow path\n",
    )
    off = variant(
        tmp_path,
        "off.yaml",
        ("pools:", "fastpath: {enabled: false, max_subscribers: 1024}\npools:"),
    )
    assert main(["check-config", str(off)]) == 0
    assert capsys.readouterr().err == ""
