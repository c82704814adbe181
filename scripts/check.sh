#!/usr/bin/env bash
# The fast check, without root, in about a minute: ruff, the format, mypy --strict, the unit,
# property and short fuzz tests, shellcheck, ansible-lint. `bash scripts/test.sh` (as root)
# is the full run: kernel, namespace and packaging tests too.
#
#   bash scripts/check.sh [STEP...]    steps: ruff format mypy pytest shellcheck ansible-lint
#
# Uses the venv at $VENV (default .venv, made by scripts/setup.sh). A linter that is not
# installed is skipped with a message; scripts/setup.sh installs them from Debian.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
VENV=${VENV:-.venv}
STEPS=(ruff format mypy pytest shellcheck ansible-lint)

if [ ! -x "$VENV/bin/python" ]; then
    cat >&2 <<EOF
check.sh: no venv at $VENV. Make one with \`sudo bash scripts/setup.sh\`, or without root:
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/pip install <the PIP_TOOLS of scripts/setup.sh> && .venv/bin/pip install -e .
(Debian's python3-* packages in setup.sh's list must be installed for the tests.)
Or point VENV at an existing one: VENV=/path/to/venv bash scripts/check.sh
EOF
    exit 2
fi

# Caches go in the checkout, or in a directory of this run's own when the checkout is not
# ours to write (a root-owned one after `sudo bash scripts/setup.sh`).
CACHE=.
if [ ! -w . ]; then
    CACHE=$(mktemp -d)
    trap 'rm -rf "$CACHE"' EXIT
fi
export RUFF_CACHE_DIR=$CACHE/.ruff_cache HYPOTHESIS_STORAGE_DIRECTORY=$CACHE/.hypothesis

step_ruff() { "$VENV/bin/ruff" check brushtaild tests bench; }
step_format() { "$VENV/bin/ruff" format --check brushtaild tests bench; }
step_mypy() { PYTHONPATH=$PWD "$VENV/bin/mypy" --strict --cache-dir "$CACHE/.mypy_cache" brushtaild; }
step_pytest() {
    "$VENV/bin/python" -m pytest -q -o cache_dir="$CACHE/.pytest_cache" --timeout=120 \
        tests/unit tests/property tests/fuzz
}

shell_scripts() {
    find scripts tests -name '*.sh' -type f | sort
    find packaging/debian -name '*.preinst' -o -name '*.postinst' -o -name '*.prerm' \
        -o -name '*.postrm' | sort
}

step_shellcheck() {
    if ! command -v shellcheck >/dev/null; then
        echo "SKIPPED: shellcheck is not installed (apt-get install shellcheck)"
        return 0
    fi
    local scripts
    mapfile -t scripts < <(shell_scripts)
    shellcheck "${scripts[@]}"
}

step_ansible-lint() {
    if ! command -v ansible-lint >/dev/null; then
        echo "SKIPPED: ansible-lint is not installed (apt-get install ansible-lint ansible)"
        return 0
    fi
    # The roles use community.crypto, which Debian's ansible package carries.
    if ! /usr/bin/python3 -c 'import ansible_collections.community.crypto' 2>/dev/null; then
        echo "SKIPPED: community.crypto is not installed (apt-get install ansible)"
        return 0
    fi
    (cd ansible && ansible-lint --offline -q -c .ansible-lint)
}

if [ $# -gt 0 ]; then
    STEPS=("$@")
fi
failed=()
for name in "${STEPS[@]}"; do
    if ! declare -F "step_$name" >/dev/null; then
        echo "check.sh: no step '$name' (steps: ruff format mypy pytest shellcheck ansible-lint)" >&2
        exit 2
    fi
    echo "==> $name"
    started=$SECONDS
    if ! "step_$name"; then
        failed+=("$name")
        echo "FAILED: $name"
    fi
    echo "    ($((SECONDS - started)) s)"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "check.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "check.sh: all passed"
