#!/usr/bin/env bash
# Runs a command inside the project's environment, setting it up first if needed:
#   scripts/run.sh python infer_sglang_offline.py
#   scripts/run.sh python -m pytest
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup_env.sh"
export VIRTUAL_ENV="$root/.venv"
# The thin venv's python first; then the shared environment's console scripts (schemathesis, ruff,
# lm_eval: the last runs without this project, so its tasks here want `python -m lm_eval`).
export PATH="$VIRTUAL_ENV/bin:$(cat "$VIRTUAL_ENV/.megrez-base")/bin:$PATH"
[ $# -gt 0 ] || { echo "usage: scripts/run.sh COMMAND [ARG...]" >&2; exit 2; }
exec "$@"
