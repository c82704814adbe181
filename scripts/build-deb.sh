#!/usr/bin/env bash
# Build the Debian package brushtail_<version>_all.deb (Debian 12, as root) and lint it.
#
#   bash scripts/build-deb.sh [--out DIR] [--revision N]
#
# --out DIR       where the .deb goes (default: dist/ in the repository)
# --revision N    build <upstream>-N instead of the version in packaging/debian/changelog,
#                 by adding a changelog entry in the scratch copy only: a second, newer
#                 package for upgrade tests without touching the tree
#
# Builds from the working tree's files that git knows or would add (tracked, plus untracked
# ones .gitignore does not exclude), so what is built is what the tests saw. The copy goes to
# a scratch directory with packaging/debian/ as debian/; the tree itself is not written to.
# Fails if the changelog's upstream version differs from brushtaild.__version__, or if
# lintian reports an error; lintian's warnings are shown.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=$REPO/dist
REVISION=
BUILD_DEPS=(
    debhelper dh-python python3-all python3-setuptools pybuild-plugin-pyproject
    python3-yaml lintian git
)

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
    --out)
        [ $# -ge 2 ] || usage
        OUT=$(realpath -m "$2")
        shift 2
        ;;
    --revision)
        [ $# -ge 2 ] || usage
        [[ $2 =~ ^[0-9]+$ ]] || usage
        REVISION=$2
        shift 2
        ;;
    *) usage ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "build-deb.sh must run as root (it installs the build dependencies)" >&2
    exit 1
fi

START=$SECONDS
WORK=$(mktemp -d /tmp/brushtail-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    if ! dpkg-query -W -f '${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing build dependencies: ${missing[*]}"
    # Waits for another apt or dpkg run (setup.sh, a parallel build) instead of failing.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
        {
            tail -n 40 "$WORK/apt.log" >&2
            exit 1
        }
fi

# The version is stated twice, in brushtaild/__init__.py and debian/changelog, and both
# reach the operator (brushtaild --version, dpkg -l): they must agree.
code_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' brushtaild/__init__.py)
deb_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ -z "$code_version" ] || [ "${deb_version%-*}" != "$code_version" ]; then
    echo "version mismatch: brushtaild/__init__.py says '$code_version'," \
        "packaging/debian/changelog says '$deb_version' (its upstream part must match)" >&2
    exit 1
fi

git rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    {
        echo "build-deb.sh builds from a git checkout; $REPO is not one" >&2
        exit 1
    }
SRC=$WORK/brushtail-$code_version
mkdir -p "$SRC"
# A tracked file deleted in the working tree is left out, as the tests would not see it.
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' path; do
        if [ -f "$path" ]; then printf '%s\0' "$path"; fi
    done |
    tar --null -T - -cf - | tar -C "$SRC" -xf -
cp -a packaging/debian "$SRC/debian"

if [ -n "$REVISION" ]; then
    deb_version=$code_version-$REVISION
    {
        printf 'brushtail (%s) bookworm; urgency=medium\n\n' "$deb_version"
        printf '  * Rebuild as revision %s (scripts/build-deb.sh --revision).\n\n' "$REVISION"
        printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Maintainer)" \
            "$(date -uR)"
        cat "$SRC/debian/changelog"
    } >"$WORK/changelog"
    mv "$WORK/changelog" "$SRC/debian/changelog"
fi

echo "==> dpkg-buildpackage brushtail $deb_version"
# Debian's tools only: a python3 from pyenv or a venv earlier on PATH would build for the
# wrong interpreter (pybuild runs `python3.11 -m build`).
if ! (cd "$SRC" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b) \
    >"$WORK/build.log" 2>&1; then
    tail -n 60 "$WORK/build.log" >&2
    echo "build-deb.sh: dpkg-buildpackage failed; the last 60 lines are above" >&2
    exit 1
fi

deb=brushtail_${deb_version}_all.deb
# Named after the build machine's architecture, though the package is arch: all.
changes=$(find "$WORK" -maxdepth 1 -name "brushtail_${deb_version}_*.changes")

echo "==> lintian"
# --fail-on error: warnings are printed for a person to judge but do not fail the build.
# lintian unpacks what it checks, so it runs unprivileged (as it recommends).
chmod 755 "$WORK"
runuser -u nobody -- lintian --fail-on error --display-info "$changes" ||
    {
        echo "build-deb.sh: lintian reported errors" >&2
        exit 1
    }

mkdir -p "$OUT"
cp "$WORK/$deb" "$OUT/$deb"
echo "==> built $OUT/$deb in $((SECONDS - START)) s"
