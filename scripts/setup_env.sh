#!/usr/bin/env bash
# Creates .venv (once) and installs the package with its test extra. Idempotent. pip's own
# output goes to .venv/pip.log (shown when an install fails), so the demo reads as a story.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[tests]'; } > .venv/pip.log 2>&1; then
  tail -n 40 .venv/pip.log >&2
  echo "error: installing the package into .venv failed (full log: .venv/pip.log)" >&2
  exit 1
fi
echo "environment ready: .venv ($(.venv/bin/python --version 2>&1))"
