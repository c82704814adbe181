# shellcheck shell=bash
# step NAME COMMAND [ARGS...]: run one named step of a set-up script, its output kept in
# $LOG and shown (the last $STEP_TAIL lines) only if it fails, which stops the script.
# The caller sets LOG; fd 3 stays the terminal for what a step must show the user.
# Sourced by scripts/setup.sh and scripts/molecule.sh.
STEP_TAIL=${STEP_TAIL:-60}
exec 3>&1

step() {
    local name=$1 rc=0 started=$SECONDS
    shift
    echo "==> $name"
    # A subshell outside any `if`/`||`, so set -e really stops the step at its first
    # failing command (bash ignores -e in functions called from a condition).
    set +e
    (
        set -e
        "$@"
    ) >"$LOG" 2>&1
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then
        echo "$(basename "$0"): step '$name' failed (exit $rc); its output:" >&2
        tail -n "$STEP_TAIL" "$LOG" >&2
        exit 1
    fi
    if ((SECONDS - started > 5)); then
        echo "    ($((SECONDS - started)) s)"
    fi
}
