#!/usr/bin/env bash
# Sets up the environment and runs the whole test suite (README's second command), on two
# pytest-xdist workers: most tests wait on a child process or on I/O as much as they compute
# (three workers were slower: 12:43 against 10:08 when the suite was shorter). Measured on a fresh
# clone, setup included: 18:50 and 20:26 for 600 tests with the Beam extra, the executed notebook and Grad-CAM (17:11 to 18:41 for 476 before them; 14:46 for 457 before the package restructure; 21:09 for 450 before the export traced its decoding
# once and the tests shared their runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -n 2 tests "$@"
