#!/usr/bin/env bash
# Installs what is missing, then runs pytest with the given arguments; exits with pytest's code.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
exec .venv/bin/pytest "$@"
