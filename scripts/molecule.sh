#!/usr/bin/env bash
# Run brushtail's Molecule scenarios (as root) on a Debian 12 host, from a fresh machine:
#
#   bash scripts/molecule.sh                  # scenario "default" (one site), `molecule test`
#   bash scripts/molecule.sh cluster          # two sites, each with its own subscriber link
#   bash scripts/molecule.sh all              # every scenario, one after the other
#   bash scripts/molecule.sh default converge # any molecule command (converge, verify, login, destroy)
#
# Host set-up, all idempotent and done here so CI and a fresh machine need nothing by hand:
#   1. Debian packages: podman, runc (crun cannot run containers on cgroup-v1 hybrid hosts),
#      debootstrap, Debian's ansible (ansible-core 2.14 + collections, no Galaxy needed).
#   2. A venv over /usr/bin/python3 with molecule, the podman driver and testinfra; it sees
#      Debian's ansible-core through the system site-packages.
#   3. The Debian 12 image with systemd, built by debootstrap (no registry is used) and tagged
#      with a hash of everything that goes into it, so it is built once and reused.
#   4. The .deb under test, built from this tree by scripts/build-deb.sh.
# Settings: BRUSHTAIL_MOLECULE_CACHE (default /var/cache/brushtail-molecule) holds the venv
# and the image build; MIRROR overrides the Debian mirror.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
CACHE=${BRUSHTAIL_MOLECULE_CACHE:-/var/cache/brushtail-molecule}
SUITE=bookworm
IMAGE_REPO=localhost/brushtail-debian12-systemd

HOST_PACKAGES=(podman runc debootstrap ansible python3-venv python3-cryptography)
# What the Debian 12 instances start with: an init, Ansible's needs (python3-apt), the tools
# the scenarios use (iproute2, udhcpc) and brushtail's runtime dependencies, so converging does
# not download them again on every run. debootstrap does not resolve virtual packages:
# python3-cffi-backend provides what python3-cryptography needs. linux-headers-amd64 (with
# gcc, ~150 MB) is what BCC compiles the fast path against on a kernel without its own
# headers package; the scenarios' prepare links it in for the host's kernel, which would
# otherwise download it into every container on every run.
IMAGE_PACKAGES=(
    systemd systemd-sysv dbus python3 python3-apt iproute2 procps ca-certificates curl
    udhcpc openssl
    python3-yaml python3-prometheus-client python3-systemd python3-pyroute2
    python3-openssl python3-cryptography python3-cffi-backend python3-bpfcc
    linux-headers-amd64
)
# The versions verified together with Debian's ansible-core 2.14
# (/work/shared/notes/molecule-recipe.md); unpinned, pip pulls ansible-core 2.19 into the venv.
PIP_PACKAGES=(
    'ansible-core<2.15' 'molecule==24.9.0' 'molecule-plugins[podman]==23.6.0'
    'ansible-compat==24.10.0' 'pytest-testinfra==10.2.2'
)

LOG=$(mktemp /tmp/brushtail-molecule.XXXXXX)
trap 'rm -f "$LOG"' EXIT

STEP_TAIL=60
# shellcheck source=lib/step.sh
source "$REPO/scripts/lib/step.sh"

host_packages() {
    local pkg missing=()
    for pkg in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f '${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "    installing: ${missing[*]}" >&3
    # scripts/setup.sh's lock, and apt's own wait, as other runs may be installing too.
    mkdir -p /run/lock
    exec 8>/run/lock/brushtail-setup.lock
    flock 8
    local apt=(apt-get -qq -o DPkg::Lock::Timeout=600)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
}

venv() {
    local venv=$CACHE/venv stamp
    stamp=$(printf '%s\n' "${PIP_PACKAGES[@]}" | sha256sum | cut -c1-16)
    [ -f "$venv/.stamp-$stamp" ] && return 0
    rm -rf "$venv"
    # Debian's interpreter with its site-packages: ansible-core and its collections are
    # Debian's, as on the Debian 12 machines the roles are written for.
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q "${PIP_PACKAGES[@]}"
    touch "$venv/.stamp-$stamp"
}

mirror() {
    if [ -n "${MIRROR:-}" ]; then
        echo "$MIRROR"
        return
    fi
    awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
        true
}

image_hash() {
    # Everything that decides the image's content: the package list and this recipe.
    { printf '%s\n' "$SUITE" "${IMAGE_PACKAGES[@]}"; declare -f build_image; } |
        sha256sum | cut -c1-16
}

build_image() {
    local tag=$1 root=$CACHE/rootfs mirror_url
    mirror_url=$(mirror)
    mirror_url=${mirror_url:-http://deb.debian.org/debian}
    rm -rf "$root"
    local list
    list=$(IFS=,; echo "${IMAGE_PACKAGES[*]}")
    debootstrap --variant=minbase --include="$list" "$SUITE" "$root" "$mirror_url"
    # No apt lists (prepare.yml refreshes them), an empty machine-id so every container
    # gets its own, and no service may be started by package scripts at build time.
    chroot "$root" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/* && : > /etc/machine-id'
    tar -C "$root" -cf "$CACHE/image.tar" .
    rm -rf "$root"
    podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' \
        "$CACHE/image.tar" "$tag"
    rm -f "$CACHE/image.tar"
}

image() {
    local tag=$IMAGE_REPO:$1 old
    if ! podman image exists "$tag"; then
        build_image "$tag"
    fi
    # Keep only the current build.
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "$IMAGE_REPO"); do
        [ "$old" = "$tag" ] || podman rmi -f "$old" >/dev/null || true
    done
}

package() {
    # Built as released (scripts/build-deb.sh), into a directory of its own so the one
    # package there is the one just built from this tree.
    rm -rf "$CACHE/dist" "$CACHE/dist-next"
    bash scripts/build-deb.sh --out "$CACHE/dist"
    ls "$CACHE"/dist/brushtail_*_all.deb >"$CACHE/deb-path"
}

next_package() {
    # The same tree as a newer Debian revision: what the cluster scenario upgrades to.
    local revision
    revision=$(dpkg-deb -f "$(cat "$CACHE/deb-path")" Version)
    revision=$((${revision##*-} + 1))
    bash scripts/build-deb.sh --out "$CACHE/dist-next" --revision "$revision"
    ls "$CACHE"/dist-next/brushtail_*_all.deb >"$CACHE/deb-next-path"
}

# Everything runs from main, so bash has read the whole file before it starts: editing or
# checking out this script during a run cannot change what the run does.
main() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "molecule.sh must run as root (rootful podman): sudo bash scripts/molecule.sh" >&2
        exit 1
    fi

    SCENARIO=${1:-default}
    shift || true
    [ $# -eq 0 ] && set -- test
    case $SCENARIO in
        all) SCENARIOS=(default cluster) ;;
        *) SCENARIOS=("$SCENARIO") ;;
    esac

    mkdir -p "$CACHE"
    # One run at a time: scenarios use fixed container names and one image tag.
    mkdir -p /run/lock
    exec 9>/run/lock/brushtail-molecule.lock
    flock 9

    step "host packages (podman, runc, debootstrap, ansible)" host_packages
    step "venv $CACHE/venv (molecule, podman driver, testinfra)" venv
    HASH=$(image_hash)
    step "image $IMAGE_REPO:$HASH (debootstrap $SUITE, cached)" image "$HASH"
    step "brushtail .deb" package
    if [[ " ${SCENARIOS[*]} " == *" cluster "* ]]; then
        step "brushtail .deb, next revision (rolling upgrade in the cluster scenario)" next_package
        BRUSHTAIL_DEB_NEXT=$(cat "$CACHE/deb-next-path")
        export BRUSHTAIL_DEB_NEXT
    fi

    export BRUSHTAIL_MOLECULE_IMAGE=$IMAGE_REPO:$HASH
    BRUSHTAIL_DEB=$(cat "$CACHE/deb-path")
    BRUSHTAIL_DEB=$(realpath "$BRUSHTAIL_DEB")
    export BRUSHTAIL_DEB
    # runc and rlimits the host allows (no CAP_SYS_RESOURCE on some CI hosts).
    export CONTAINERS_CONF=$REPO/molecule/containers.conf
    export PATH=$CACHE/venv/bin:$PATH VIRTUAL_ENV=$CACHE/venv
    echo "    package: $BRUSHTAIL_DEB"

    for scenario in "${SCENARIOS[@]}"; do
        echo "==> molecule $* -s $scenario"
        started=$SECONDS
        # The base config named, not found: molecule looks for it only under a .git
        # directory, and a git worktree has a .git file.
        molecule --base-config "$REPO/.config/molecule/config.yml" "$1" -s "$scenario" "${@:2}"
        echo "    (molecule $1 -s $scenario: $((SECONDS - started)) s)"
    done
}

main "$@"
