#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) to build, run and test brushtail. Idempotent: a
# second run changes nothing and skips apt when every package is already installed.
# --bench also installs what bench/report.py needs beyond that: the peers it measures
# brushtail against (dnsmasq, ISC dhcpd; Kea is already here) and matplotlib for its plots.
set -euo pipefail

BENCH=0
for arg in "$@"; do
    case $arg in
    --bench) BENCH=1 ;;
    -h | --help)
        echo "usage: bash scripts/setup.sh [--bench]"
        exit 0
        ;;
    *)
        echo "setup.sh: unknown argument $arg (usage: bash scripts/setup.sh [--bench])" >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=$(mktemp -d /tmp/brushtail-setup.XXXXXX)
LOG=$WORK/log
trap 'rm -rf "$WORK"' EXIT

# Runtime libraries come from Debian so BCC (python3-bpfcc exists only there) and its
# neighbours share one interpreter, /usr/bin/python3; the test tools go into the venv.
PACKAGES=(
    python3 python3-venv python3-pip
    python3-yaml python3-prometheus-client python3-systemd python3-pyroute2
    python3-bpfcc bpfcc-tools python3-openssl python3-cryptography
    iproute2 isc-dhcp-client udhcpc kea-admin kea-dhcp4-server tcpdump util-linux strace
    libfaketime  # tests/e2e/test_clock_step.py steps the daemon's wall clock
    isc-dhcp-relay  # dhcrelay -a, the real relay of tests/e2e/test_isp_example.py
    prometheus   # tests/e2e/test_prometheus.py: its server and promtool check monitoring/
    # Debian package build (scripts/build-deb.sh, tests/packaging)
    debhelper dh-python python3-all python3-setuptools pybuild-plugin-pyproject lintian
    # Linters of scripts/check.sh (ansible for the collections the roles use)
    shellcheck ansible-lint ansible
)
PIP_TOOLS=(pytest pytest-timeout hypothesis ruff mypy types-PyYAML)
# bench/report.py (--bench): the peers it runs in namespaces of its own, its plots, and the
# compiler of bench/floodgen.c.
BENCH_PACKAGES=(dnsmasq-base isc-dhcp-server python3-matplotlib gcc)

STEP_TAIL=40
# shellcheck source=lib/step.sh
source "$REPO/scripts/lib/step.sh"

missing_packages() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f '${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed; then
            echo "$pkg"
        fi
    done
}

apt_update() {
    # Steps run in subshells, so a marker file remembers that the lists are fresh.
    if [ ! -e "$WORK/apt-updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        touch "$WORK/apt-updated"
    fi
}

apt_install() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "    installing: ${missing[*]}" >&3
    # No maintainer script may start a service while we install (kea-dhcp4-server would):
    # policy-rc.d answering 101 is Debian's switch for that, for SysV and systemd alike.
    # Steps run in their own subshell, so the EXIT trap removes the file when this one ends.
    local policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

keep_stopped() {
    # kea-dhcp4-server is only a benchmark peer, prometheus a scraper and dhcrelay a relay,
    # that tests start by hand in a namespace (their binaries, with configs of their own):
    # a host-wide kea would answer on every interface, a host-wide prometheus scrape and
    # fill a disk, a host-wide dhcrelay relay whatever its defaults file names at boot.
    local service
    for service in "$@"; do
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$service"
        elif [ -x "/etc/init.d/$service" ]; then
            update-rc.d "$service" disable
            if "/etc/init.d/$service" status; then
                "/etc/init.d/$service" stop
            fi
        fi
    done
}

kernel_headers() {
    local release modules
    release=$(uname -r)
    modules=/lib/modules/$release
    if [ -e "$modules/build/Makefile" ]; then
        return 0
    fi
    # BCC compiles against the running kernel's headers. Custom kernels (VMs, CI sandboxes)
    # have no matching package; Debian's own headers are the closest usable set.
    apt_update
    if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
        apt_install "linux-headers-$release"
        return 0
    fi
    apt_install linux-headers-amd64
    local build common
    build=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-amd64' -type d | sort -V | tail -n 1)
    common=${build%-amd64}-common
    if [ -z "$build" ] || [ ! -d "$common" ]; then
        echo "no linux-headers-*-amd64 with a matching -common under /usr/src" >&2
        exit 1
    fi
    mkdir -p "$modules"
    ln -sfn "$build" "$modules/build"
    ln -sfn "$common" "$modules/source"
}

mount_bpffs() {
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
}

make_venv() {
    local cfg=.venv/pyvenv.cfg
    # Only a venv over Debian's interpreter, with its site-packages visible, can import bcc.
    if [ -f "$cfg" ] && grep -qx 'home = /usr/bin' "$cfg" &&
        grep -qx 'include-system-site-packages = true' "$cfg"; then
        return 0
    fi
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
}

pip_tools() {
    .venv/bin/python -m pip install -q "${PIP_TOOLS[@]}"
}

pip_project() {
    # Already editable from this checkout: nothing to do (a rebuild would only cost time).
    if .venv/bin/python -m pip show -f brushtaild 2>/dev/null | grep -q "$REPO"; then
        return 0
    fi
    .venv/bin/python -m pip install -q -e .
}

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh must run as root (try: sudo bash scripts/setup.sh)" >&2
    exit 1
fi

# Setup runs may overlap (several checkouts, CI); apt and the venv take one at a time.
exec 9>/run/lock/brushtail-setup.lock
flock 9

step "Debian packages" apt_install "${PACKAGES[@]}"
step "kea-dhcp4-server, prometheus and isc-dhcp-relay services off" \
    keep_stopped kea-dhcp4-server prometheus isc-dhcp-relay
if [ "$BENCH" -eq 1 ]; then
    step "benchmark peers and plots (--bench)" apt_install "${BENCH_PACKAGES[@]}"
    # A host-wide dhcpd would answer on every interface, as Kea would.
    step "isc-dhcp-server service off" keep_stopped isc-dhcp-server
fi
step "kernel headers for BCC" kernel_headers
step "bpffs on /sys/fs/bpf" mount_bpffs
step "venv .venv (/usr/bin/python3, system site-packages)" make_venv
step "test tools in .venv" pip_tools
step "brushtaild editable in .venv" pip_project
echo "==> setup done"
if [ "$BENCH" -eq 1 ]; then
    echo "    benchmarks: .venv/bin/python bench/report.py (as root, about 25 minutes)"
fi
