#!/usr/bin/env bash
# Creates .venv (once) and installs the package with its test extra. Idempotent. The installer's
# own output goes to .venv/pip.log (shown when an install fails), so the demo reads as a story.
#
# uv installs the ~100 wheels (TensorFlow's 600 MB among them) in parallel: measured on a fresh
# clone on this 2-core machine, 20 s against 70 s for pip. --compile-bytecode writes the .pyc
# files as pip does: where PYTHONDONTWRITEBYTECODE is set (this machine), a venv without them
# compiles TensorFlow's Python anew in every process (pytest on a fresh clone: 11:30 against 7:00).
# pip stays the fallback wherever uv cannot be installed or fails. Both install within
# constraints.txt, the versions the Dockerfile pins: a dependency released since (grpcio 1.85.4
# over the pinned 1.85.3) made the tests' environment differ from the image, and the Dockerfile
# replay (tests/test_docker_build.py) could no longer resolve offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
with_uv() {
  .venv/bin/python -m pip install -q uv && VIRTUAL_ENV="$PWD/.venv" .venv/bin/uv pip install -q --compile-bytecode -c constraints.txt -e '.[tests]'
}
with_pip() {
  .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -c constraints.txt -e '.[tests]'
}
if ! { with_uv || { echo "uv failed: installing with pip" && with_pip; }; } > .venv/pip.log 2>&1; then
  tail -n 40 .venv/pip.log >&2
  echo "error: installing the package into .venv failed (full log: .venv/pip.log)" >&2
  exit 1
fi
echo "environment ready: .venv ($(.venv/bin/python --version 2>&1))"
