#!/usr/bin/env bash
# Serves an export folder with the official tensorflow/serving container, with the flags we
# recommend (docs/serving.md): a model config file re-read every --poll_wait_seconds (so
# editing it rolls a canary forward or back without a restart), server-side batching that
# splits large requests, warmup replay, Prometheus metrics on the REST port
# (/monitoring/prometheus/metrics), gRPC on 8500 and REST on 8501.
#
#   scripts/serve_tf_serving.sh --export_base=MODEL_DIR/export [--model_name=effnet]
#       [--image=tensorflow/serving:2.21.0] [--grpc_port=8500] [--rest_port=8501]
#       [--poll_wait_seconds=60] [--gpu] [--dry_run] [-- EXTRA_SERVER_FLAGS...]
#
# The image is pinned to the TF Serving release of the TensorFlow the model is trained with
# (setup.py's tensorflow-serving-api pin), not `latest`, which moves under you.
# Arguments after `--` go to tensorflow_model_server unchanged, after ours (so they win), e.g.
# `-- --tensorflow_intra_op_parallelism=4 --file_system_poll_wait_seconds=30`.
#
# --export_base is the folder holding the numeric version folders (1, 2, ...), local or
# gs://. A local folder is mounted read-only at /models/NAME; a gs:// base is read by the
# server itself (mount credentials with GOOGLE_APPLICATION_CREDENTIALS=/path/key.json).
# serving/config/models.config is rendered with the name and base path into a temporary
# folder; --dry_run prints the docker command instead of running it.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
EXPORT_BASE=""
MODEL_NAME="effnet"
IMAGE="tensorflow/serving:2.21.0"
GRPC_PORT=8500
REST_PORT=8501
GPU=0
DRY_RUN=0
POLL_WAIT=60
EXTRA=()

fail() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  arg="$1"
  shift
  case "$arg" in
    --) EXTRA=("$@"); break ;;
    --poll_wait_seconds=*) POLL_WAIT="${arg#*=}" ;;
    --export_base=*) EXPORT_BASE="${arg#*=}" ;;
    --model_name=*) MODEL_NAME="${arg#*=}" ;;
    --image=*) IMAGE="${arg#*=}" ;;
    --grpc_port=*) GRPC_PORT="${arg#*=}" ;;
    --rest_port=*) REST_PORT="${arg#*=}" ;;
    --gpu) GPU=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) fail "unknown argument $arg: see --help (server flags go after --)" ;;
  esac
done

[ -n "$EXPORT_BASE" ] || fail "--export_base is required: pass the export folder (MODEL_DIR/export), local or gs://"
[[ "$MODEL_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || fail "--model_name=$MODEL_NAME: use letters, digits, '_', '.', '-' only"
[[ "$GRPC_PORT" =~ ^[0-9]+$ && "$REST_PORT" =~ ^[0-9]+$ && "$GRPC_PORT" != "$REST_PORT" ]] \
  || fail "--grpc_port and --rest_port must be two different port numbers"
[[ "$POLL_WAIT" =~ ^[0-9]+$ ]] || fail "--poll_wait_seconds=$POLL_WAIT: pass whole seconds (0 reads the config once)"

if [[ "$EXPORT_BASE" == gs://* ]]; then
  BASE_PATH="${EXPORT_BASE%/}"
  MOUNTS=()
  if [ -n "${GOOGLE_APPLICATION_CREDENTIALS:-}" ]; then
    MOUNTS+=(-v "$GOOGLE_APPLICATION_CREDENTIALS:/secrets/key.json:ro" -e GOOGLE_APPLICATION_CREDENTIALS=/secrets/key.json)
  fi
else
  [ -d "$EXPORT_BASE" ] || fail "--export_base=$EXPORT_BASE is not a folder: pass MODEL_DIR/export, the folder holding the version folders"
  EXPORT_BASE="$(cd "$EXPORT_BASE" && pwd)"
  ls "$EXPORT_BASE" | grep -Eq '^[0-9]+$' \
    || fail "$EXPORT_BASE holds no numeric version folder: pass the folder above export/1 (python -m trainer.export writes one)"
  BASE_PATH="/models/$MODEL_NAME"
  MOUNTS=(-v "$EXPORT_BASE:$BASE_PATH:ro")
fi

CONFIG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/tf-serving-config.XXXXXX")"
sed -e "s|name: \"effnet\"|name: \"$MODEL_NAME\"|" -e "s|base_path: \"/models/effnet\"|base_path: \"$BASE_PATH\"|" \
  "$REPO/serving/config/models.config" > "$CONFIG_DIR/models.config"
cp "$REPO/serving/config/batching.config" "$REPO/serving/config/monitoring.config" "$CONFIG_DIR/"
echo "rendered config: $CONFIG_DIR/models.config" >&2

GPU_ARGS=()
if [ "$GPU" = 1 ]; then
  GPU_ARGS=(--gpus all)
  [[ "$IMAGE" == *-gpu ]] || IMAGE="${IMAGE}-gpu"
fi

CMD=(docker run --rm -p "$GRPC_PORT:8500" -p "$REST_PORT:8501" "${GPU_ARGS[@]}" "${MOUNTS[@]}"
  -v "$CONFIG_DIR:/config:ro" "$IMAGE"
  --port=8500 --rest_api_port=8501
  --model_config_file=/config/models.config
  --model_config_file_poll_wait_seconds="$POLL_WAIT"
  --monitoring_config_file=/config/monitoring.config
  --enable_batching=true --batching_parameters_file=/config/batching.config
  --enable_model_warmup=true
  --enable_signature_method_name_check=true
  "${EXTRA[@]}")

if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
command -v docker >/dev/null || fail "docker is not installed: install Docker, or run tensorflow_model_server with the flags --dry_run prints"
echo "serving $EXPORT_BASE as model '$MODEL_NAME' on gRPC :$GRPC_PORT, REST :$REST_PORT" >&2
exec "${CMD[@]}"
