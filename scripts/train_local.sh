#!/usr/bin/env bash
# Runs the trainer on this machine (CPU or one GPU) with the trainer arguments a Vertex AI job gets,
# laying its outputs out as Vertex AI does: OUTPUT_DIR/model/, /checkpoints/ and /logs/ through
# AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR (docs/cloud.md).
#
#   scripts/train_local.sh [--output_dir=DIR] [--cpu] [--gpu=INDEX] -- TRAINER_ARGS...
#
#   --output_dir=DIR  where the run goes (default runs/local-UTCTIME); local or gs://
#   --cpu             hide every GPU (CUDA_VISIBLE_DEVICES=-1)
#   --gpu=INDEX       use only that GPU (default: whatever CUDA_VISIBLE_DEVICES already allows)
# The Python is $PYTHON, else the checkout's .venv, else python3 on the PATH.
set -euo pipefail

die() { echo "train_local.sh: error: $*" >&2; exit 2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
output_dir="runs/local-$(date -u +%Y%m%d-%H%M%S)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --output_dir=?*) output_dir="${1#--output_dir=}" ;;
    --cpu) export CUDA_VISIBLE_DEVICES=-1 ;;
    --gpu=*)
      [[ "${1#--gpu=}" =~ ^[0-9]+$ ]] || die "$1: pass a GPU index such as --gpu=0"
      export CUDA_VISIBLE_DEVICES="${1#--gpu=}" ;;
    --) shift; break ;;
    *) die "unknown option $1: options go before --, trainer flags after it (see the header of $0)" ;;
  esac
  shift
done
[[ $# -gt 0 ]] || die "no trainer arguments: end the command with -- --train_data=... (see docs/cloud.md)"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

# The same three variables Vertex AI derives from a job's baseOutputDirectory.
output_dir="${output_dir%/}"
export AIP_MODEL_DIR="$output_dir/model/"
export AIP_CHECKPOINT_DIR="$output_dir/checkpoints/"
export AIP_TENSORBOARD_LOG_DIR="$output_dir/logs/"
echo "train_local.sh: outputs in $output_dir (model/, checkpoints/, logs/)" >&2

exec "$PYTHON" -m trainer.task "$@"
