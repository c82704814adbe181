#!/usr/bin/env bash
# The whole check, as CI runs it: set up the machine, lint, type-check, run every test.
# Needs root (packages, network namespaces, eBPF): sudo bash scripts/test.sh
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "==> ruff check"
.venv/bin/ruff check brushtaild tests
echo "==> mypy"
.venv/bin/mypy brushtaild
echo "==> pytest"
# Per-test timeout: a hung namespace or client must fail its test, not stall the run.
.venv/bin/pytest -q --timeout=300
