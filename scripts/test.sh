#!/usr/bin/env bash
# Installs what is missing, then runs pytest with the given arguments; exits with pytest's code.
# The tests run in PODYN_TEST_WORKERS pytest-xdist processes (default 4; most of a test's time is spent waiting on
# services and subprocesses, not on a core), each with its own PostgreSQL and DynamoDB Local; give -n yourself
# (-n 0: one process) to choose otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
parallel=(-n "${PODYN_TEST_WORKERS:-4}" --dist worksteal)
for arg in "$@"; do
    case "$arg" in -n|-n*|--numprocesses|--numprocesses=*) parallel=() ;; esac
done
exec .venv/bin/pytest "${parallel[@]}" "$@"
