#!/usr/bin/env bash
# The README's first command: installs what the demo needs (PostgreSQL, Java, DynamoDB Local, a venv), then runs
# podyn end to end on local services it starts and stops itself. Arguments go to the demo (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh --runtime
exec .venv/bin/python -m podyn_py.demo "$@"
