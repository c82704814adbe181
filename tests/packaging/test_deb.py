"""The Debian package: what scripts/build-deb.sh builds, and what its maintainer scripts do.

The package is built once per session, as revisions 1 and 2 in parallel, then inspected with
dpkg-deb. Then the real dpkg installs revision 1, upgrades to 2, removes and purges, inside a
private mount namespace whose /etc, /usr and /var are overlays kept on a tmpfs: the host's
files and dpkg database are never written. systemd is not PID 1 on the test machines, so inside
the namespace /run/systemd/system exists (the maintainer scripts' test for a systemd host) and
`systemctl` and `deb-systemd-invoke` are scripts that record their arguments: the maintainer
scripts take the branches they take on a systemd host, and the test checks what they ask of
systemd. That the service really restarts and stops is checked under real systemd in Molecule.
The namespace has its own network namespace and bpffs too, where the test attaches a stand-in
for the fast path (an XDP program named like it, pinned like it): removing the package must
take it out of the kernel, upgrading must not.
"""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from brushtaild import __version__

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "packaging" / "debian"
UNIT = DEBIAN / "brushtail.brushtaild.service"
BUILD_TIMEOUT = 600
# What maintainer scripts see when dpkg runs them on a Debian system; /usr/local/sbin comes
# first, which is where the namespace's recording systemctl and deb-systemd-invoke live.
SYSTEM_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
SYSTEMD_LOG = "/run/systemd/brushtail-test.log"

DEPENDS = {
    "adduser",
    "iproute2",
    "python3-bpfcc",
    "python3-cryptography",
    "python3-openssl",
    "python3-prometheus-client",
    "python3-pyroute2",
    "python3-systemd",
    "python3-yaml",
    "python3:any",
}


@dataclass(frozen=True)
class Built:
    first: Path  # revision 1, the version packaging/debian/changelog states
    second: Path  # revision 2, for the upgrade
    log: str  # build-deb.sh's output for the first, lintian's findings included


def _build(out: Path, *args: str) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        ["bash", str(REPO / "scripts" / "build-deb.sh"), "--out", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if os.geteuid() != 0:
        pytest.skip("scripts/build-deb.sh installs its build dependencies: needs root")
    if shutil.which("dpkg") is None:
        pytest.skip("not a Debian system (no dpkg)")
    out = tmp_path_factory.mktemp("deb")
    # In parallel: each build is mostly one core, and the machines have two.
    builds = [_build(out), _build(out, "--revision", "2")]
    logs = [build.communicate(timeout=BUILD_TIMEOUT)[0] for build in builds]
    for build, log in zip(builds, logs, strict=True):
        assert build.returncode == 0, f"build-deb.sh {build.args[4:]} failed:\n{log}"
    first = _changelog_version()
    second = first.rsplit("-", 1)[0] + "-2"
    return Built(out / f"brushtail_{first}_all.deb", out / f"brushtail_{second}_all.deb", logs[0])


def _changelog_version() -> str:
    return subprocess.run(
        ["dpkg-parsechangelog", "-l", str(DEBIAN / "changelog"), "-S", "Version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], check=True, capture_output=True, text=True
    ).stdout.strip()


def _relation_names(value: str) -> set[str]:
    """Package names of a relation field, alternatives and version constraints dropped."""
    return {re.split(r"[\s(]", item.strip())[0] for item in value.split(",") if item.strip()}


def _contents(deb: Path) -> set[str]:
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], check=True, capture_output=True, text=True
    ).stdout
    # "-rw-r--r-- root/root 94 2026-11-29 16:55 ./usr/bin/x" (symlinks add " -> target")
    return {line.split(maxsplit=5)[5].split(" -> ")[0][1:] for line in listing.splitlines()}


def _member(deb: Path, path: str) -> bytes:
    tar = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
    ).stdout
    return subprocess.run(
        ["tar", "-xOf", "-", f".{path}"], input=tar, check=True, capture_output=True
    ).stdout


def test_name_version_architecture(debs: Built) -> None:
    version = _changelog_version()
    assert version.rsplit("-", 1)[0] == __version__, "build-deb.sh should have refused this"
    assert debs.first.name == f"brushtail_{version}_all.deb"
    assert _field(debs.first, "Package") == "brushtail"
    assert _field(debs.first, "Version") == version
    assert _field(debs.first, "Architecture") == "all"
    assert _field(debs.second, "Version") == f"{__version__}-2"


def test_depends_on_debian_python_packages_and_recommends_headers(debs: Built) -> None:
    assert _relation_names(_field(debs.first, "Depends")) == DEPENDS
    assert _field(debs.first, "Recommends") == "linux-headers-amd64 | linux-headers-arm64"


def test_installs_programs_unit_config_and_man_pages(debs: Built) -> None:
    contents = _contents(debs.first)
    for path in (
        "/usr/bin/brushtaild",
        "/usr/bin/brushtail",
        "/etc/brushtail/brushtail.yaml",
        "/usr/share/man/man8/brushtaild.8.gz",
        "/usr/share/man/man8/brushtail.8.gz",
        "/usr/share/doc/brushtail/copyright",
        "/usr/share/doc/brushtail/OPERATIONS.md",  # the unit's Documentation= link
        "/usr/share/doc/brushtail/examples/brushtail-full.yaml",
    ):
        assert path in contents, path
    # debhelper 13.11 (Debian 12) installs units under /lib; later ones under /usr/lib.
    units = {f"{lib}/systemd/system/brushtaild.service" for lib in ("/lib", "/usr/lib")}
    assert len(units & contents) == 1, f"no brushtaild.service: is {UNIT.name} in the tree?"
    (unit,) = units & contents
    assert _member(debs.first, unit) == UNIT.read_bytes()


def test_default_config_is_the_only_conffile(debs: Built) -> None:
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(debs.first), "conffiles"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert conffiles == ["/etc/brushtail/brushtail.yaml"]
    assert _member(debs.first, conffiles[0]) == (DEBIAN / "brushtail.yaml").read_bytes()


def test_every_module_is_installed_for_debian_python(debs: Built) -> None:
    contents = _contents(debs.first)
    modules = sorted(REPO.glob("brushtaild/**/*.py"))
    assert modules
    for module in modules:
        installed = "/usr/lib/python3/dist-packages/" + str(module.relative_to(REPO))
        assert installed in contents, installed


def test_bpf_sources_are_installed_for_bcc(debs: Built) -> None:
    in_tree = {p.name for p in (REPO / "bpf").glob("*") if p.suffix in (".c", ".h")}
    prefix = "/usr/share/brushtail/bpf/"
    shipped = {p[len(prefix) :] for p in _contents(debs.first) if p.startswith(prefix)}
    assert shipped - {""} == in_tree


def test_dashboard_and_alerting_rules_are_shipped(debs: Built) -> None:
    """Every file of monitoring/, at the same place under /usr/share/brushtail/monitoring/
    (the rules' tests name the rules file beside them), and the page that explains them."""
    in_tree = {str(p.relative_to(REPO)) for p in (REPO / "monitoring").rglob("*") if p.is_file()}
    contents = _contents(debs.first)
    for path in sorted(in_tree):
        assert f"/usr/share/brushtail/{path}" in contents, path
    # dh_compress compresses docs above 4 kB.
    assert contents & {f"/usr/share/doc/brushtail/METRICS.md{gz}" for gz in ("", ".gz")}


def test_build_refuses_a_changelog_that_disagrees_with_the_code(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("scripts/build-deb.sh runs only as root")
    for path in ("scripts/build-deb.sh", "brushtaild/__init__.py", "packaging/debian/changelog"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    changelog = tmp_path / "packaging" / "debian" / "changelog"
    changelog.write_text(changelog.read_text().replace(f"({__version__}-", "(99.0-", 1))
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "build-deb.sh"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 1
    assert f"version mismatch: brushtaild/__init__.py says '{__version__}'" in result.stderr
    assert "says '99.0-1'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_lintian_reports_no_errors(debs: Built) -> None:
    assert "==> lintian" in debs.log
    errors = [line for line in debs.log.splitlines() if line.startswith("E: ")]
    assert errors == []


Run = Callable[[str], "subprocess.CompletedProcess[str]"]


@pytest.fixture
def scratch_system(tmp_path: Path) -> Iterator[Run]:
    """Runs shell commands in a mount namespace where /etc, /usr and /var (and /bin, /lib,
    ... on a system without merged /usr) are writable overlays of the real ones on a tmpfs,
    /run is an empty tmpfs, /sys/fs/bpf a bpffs of its own, the network namespace a new one
    (so the maintainer scripts' XDP detach cannot touch the host's interfaces or pins), and
    systemctl and deb-systemd-invoke only record their calls.

    Every mount is made by a shell that unshare starts *inside* the new namespace, never
    through nsenter (which, racing a namespace still being set up, would mount over the
    host's own /etc, /usr and /var), and each command first checks that it is not in the
    host's namespace and refuses to run if it is."""
    if os.geteuid() != 0:
        pytest.skip("mount namespaces and dpkg need root")
    host_ns = os.readlink("/proc/self/ns/mnt")
    host_net = os.readlink("/proc/self/ns/net")
    guard = (
        f'[ "$(readlink /proc/self/ns/mnt)" != "{host_ns}" ] || exit 99\n'
        f'[ "$(readlink /proc/self/ns/net)" != "{host_net}" ] || exit 99'
    )
    layers = tmp_path / "layers"
    layers.mkdir()
    recorder = f'#!/bin/sh\necho "${{0##*/}} $*" >>{SYSTEMD_LOG}\n'
    setup = f"""
        {guard}
        mount -t tmpfs brushtail-test {layers}
        for d in etc usr var bin sbin lib lib32 lib64 libx32; do
            if [ -d /$d ] && [ ! -L /$d ]; then
                mkdir {layers}/$d {layers}/$d/upper {layers}/$d/work
                mount -t overlay overlay \
                    -o lowerdir=/$d,upperdir={layers}/$d/upper,workdir={layers}/$d/work /$d
            fi
        done
        for d in /etc /usr /var/lib/dpkg; do
            [ "$(findmnt -n -o FSTYPE -T $d)" = overlay ]
        done
        mount -t tmpfs brushtail-test-run /run
        mount -t bpf brushtail-test-bpf /sys/fs/bpf
        ip link set lo up
        mkdir -p /run/systemd/system /usr/local/sbin
        for tool in systemctl deb-systemd-invoke; do
            printf '%s' '{recorder}' >/usr/local/sbin/$tool
            chmod 755 /usr/local/sbin/$tool
        done
        echo ready
        exec sleep infinity
    """
    holder = subprocess.Popen(
        ["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-ec", setup],
        env=SYSTEM_ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def run(command: str) -> "subprocess.CompletedProcess[str]":
        assert os.readlink(f"/proc/{holder.pid}/ns/mnt") != host_ns
        assert os.readlink(f"/proc/{holder.pid}/ns/net") != host_net
        enter = ["nsenter", "-t", str(holder.pid), "-m", "-n", "--"]
        return subprocess.run(
            [*enter, "sh", "-ec", f"{guard}\n{command}"],
            env=SYSTEM_ENV,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        assert holder.stdout is not None
        if holder.stdout.readline() != "ready\n":
            holder.kill()
            pytest.fail(f"setting up the scratch namespace failed: {holder.communicate()[1]}")
        yield run
    finally:
        holder.kill()
        holder.communicate()


def _ok(run: Run, command: str) -> str:
    result = run(command)
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    return result.stdout


def _systemd_calls(run: Run) -> list[str]:
    """What the maintainer scripts asked of systemd since the last call."""
    return _ok(run, f"cat {SYSTEMD_LOG} 2>/dev/null || true; rm -f {SYSTEMD_LOG}").splitlines()


def _status(run: Run) -> str:
    return _ok(run, "dpkg-query -W -f '${Status} ${Version}' brushtail 2>/dev/null || true")


# Loads an XDP program that passes everything, named like the fast path's, and pins it at
# argv[1]: bpf(2) through ctypes (x86_64), so the test needs neither BCC nor headers.
PIN_PROGRAM = """
import ctypes, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(321, cmd, buf, 128)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "bpf")
    return fd
insns = ctypes.create_string_buffer(struct.pack("<BBhiBBhi", 0xB7, 0, 0, 2, 0x95, 0, 0, 0))
license = ctypes.create_string_buffer(b"GPL")
prog = bpf(5, struct.pack("<IIQQIIQII16sII", 6, 2, ctypes.addressof(insns),
                          ctypes.addressof(license), 0, 0, 0, 0, 0, b"xdp_brushtail", 0, 0))
path = ctypes.create_string_buffer(sys.argv[1].encode())
bpf(6, struct.pack("<QII", ctypes.addressof(path), prog, 0))
"""
STAND_IN = "/sys/fs/bpf/brushtail/prog"


def _attach_stand_in(run: Run, tmp_path: Path) -> None:
    """The fast path as a stopped brushtaild leaves it: its program on the configured
    interface (sub0 in the shipped config) with pins in /sys/fs/bpf/brushtail, and on an
    interface a since-changed configuration no longer names (old0)."""
    script = tmp_path / "pin_program.py"
    script.write_text(PIN_PROGRAM)
    _ok(
        run,
        f"""
        ip link add sub0 type veth peer name sub0-peer
        ip link add old0 type veth peer name old0-peer
        for dev in sub0 sub0-peer old0 old0-peer; do ip link set $dev up; done
        mkdir -p /sys/fs/bpf/brushtail
        /usr/bin/python3 {script} {STAND_IN}
        ip link set dev sub0 xdpgeneric pinned {STAND_IN}
        ip link set dev old0 xdpdrv pinned {STAND_IN}
        """,
    )


def _xdp_attached(run: Run) -> list[str]:
    """Interfaces running a program named xdp_brushtail."""
    links = _ok(run, "ip -o link show").splitlines()
    return sorted(li.split(": ")[1].split("@")[0] for li in links if "name xdp_brushtail " in li)


def test_install_upgrade_remove_purge(debs: Built, scratch_system: Run, tmp_path: Path) -> None:
    run = scratch_system
    config = "/etc/brushtail/brushtail.yaml"
    state = "/var/lib/brushtail/leases.sqlite3"
    wants = "/etc/systemd/system/multi-user.target.wants/brushtaild.service"

    # Install: programs work with Debian's python3 and the shipped config, but the service
    # is neither enabled nor started.
    _ok(run, f"dpkg -i {debs.first}")
    assert _status(run) == f"install ok installed {__version__}-1"
    assert _ok(run, f"/usr/bin/brushtail check-config {config}").startswith(f"{config}: OK")
    assert _ok(run, "/usr/bin/brushtaild --version").strip() == __version__
    origin = _ok(run, "/usr/bin/python3 -c 'import brushtaild; print(brushtaild.__file__)'")
    assert origin.strip() == "/usr/lib/python3/dist-packages/brushtaild/__init__.py"
    _ok(run, f"test ! -L {wants}")
    # The group that may use the control socket (the unit's SupplementaryGroups= needs it).
    _ok(run, "getent group brushtail")
    calls = _systemd_calls(run)
    assert not [call for call in calls if call.startswith("deb-systemd-invoke")], calls

    # What an operator and a running daemon leave behind: an edited config, leases, the
    # symlink `systemctl enable brushtaild` makes (the recording systemctl makes none), and
    # the attached, pinned fast path.
    _ok(run, f"echo '# edited on site' >>{config}; mkdir -p /var/lib/brushtail; touch {state}")
    _ok(run, f'mkdir -p "$(dirname {wants})"; ln -s /lib/systemd/system/brushtaild.service {wants}')
    _attach_stand_in(run, tmp_path)
    assert _xdp_attached(run) == ["old0", "sub0"]

    # Upgrade: the running service is restarted after the new files are in place (a
    # stopped one stays stopped: try-restart); the edited config and the leases are kept.
    _ok(run, f"dpkg -i {debs.second}")
    assert _status(run) == f"install ok installed {__version__}-2"
    calls = _systemd_calls(run)
    assert "deb-systemd-invoke try-restart brushtaild.service" in calls
    assert "deb-systemd-invoke stop brushtaild.service" not in calls
    assert _ok(run, f"tail -n 1 {config}") == "# edited on site\n"
    _ok(run, f"test -e {state} && test -L {wants}")
    # The fast path answers through the upgrade: still attached, its pins kept.
    assert _xdp_attached(run) == ["old0", "sub0"]
    _ok(run, f"test -e {STAND_IN}")

    # Remove: the service is stopped, the programs go, configuration and leases stay; the
    # fast path is taken out of the kernel, from every interface, with its pins.
    _ok(run, "dpkg -r brushtail")
    assert _status(run).startswith("deinstall ok config-files")
    assert "deb-systemd-invoke stop brushtaild.service" in _systemd_calls(run)
    assert _xdp_attached(run) == []
    _ok(run, "test ! -e /sys/fs/bpf/brushtail")
    _ok(run, "test ! -e /usr/bin/brushtaild && test ! -e /usr/lib/python3/dist-packages/brushtaild")
    assert _ok(run, f"tail -n 1 {config}") == "# edited on site\n"
    _ok(run, f"test -e {state}")

    # Purge: configuration, state and the enablement are deleted, and dpkg forgets the
    # package.
    _ok(run, "dpkg -P brushtail")
    assert _status(run) == ""
    _ok(run, f"test ! -e /etc/brushtail && test ! -e /var/lib/brushtail && test ! -L {wants}")
    calls = _systemd_calls(run)
    assert not [call for call in calls if call.startswith("deb-systemd-invoke")], calls


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text)) - {"--help"}


def _help(*argv: str) -> str:
    return subprocess.run(
        [sys.executable, *argv, "--help"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout


@pytest.mark.parametrize(
    ("page", "commands"),
    [
        ("brushtaild.8", [["-m", "brushtaild"]]),
        (
            "brushtail.8",
            [
                ["-m", "brushtaild.cli"],
                ["-m", "brushtaild.cli", "check-config"],
                ["-m", "brushtaild.cli", "leases"],
                ["-m", "brushtaild.cli", "trace"],
                ["-m", "brushtaild.cli", "pki"],
            ],
        ),
    ],
)
def test_man_page_documents_every_option(page: str, commands: list[list[str]]) -> None:
    text = (REPO / "docs" / "man" / page).read_text().replace("\\-", "-")
    for argv in commands:
        for option in _options(_help(*argv)):
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", text), f"{page}: {option}"
    # The subcommands, as `brushtail --help` lists them under "commands:".
    listed = _help(*commands[0]).partition("commands:")[2]
    for command in re.findall(r"^ {4}([a-z][a-z-]*)\s", listed, flags=re.MULTILINE):
        assert f"brushtail {command}" in text, f"{page}: {command}"
