#!/usr/bin/env bash
# Sets up the environment and runs the whole test suite (README's second command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q tests "$@"
