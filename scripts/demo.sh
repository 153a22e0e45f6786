#!/usr/bin/env bash
# The main job on the built-in demo data, end to end: set up, make demo images, prepare
# TFRecords, train both phases at 64 px, export a SavedModel, predict a few images through it.
#   DEMO_DIR      where everything goes (default demo_out/)
#   DEMO_WEIGHTS  starting weights: "demo" (default: a B0 pretrained here on synthetic textures,
#                 an offline stand-in), "imagenet" (needs internet), "none", or a weights file
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
DIR=${DEMO_DIR:-demo_out}
WEIGHTS=${DEMO_WEIGHTS:-demo}
mkdir -p "$DIR"
if [ "$WEIGHTS" = demo ]; then
  WEIGHTS="$DIR/pretrained-b0-glyphs.h5"
  $PY -m trainer.demo --pretrain_weights="$WEIGHTS"
fi
[ -d "$DIR/images" ] || $PY -m trainer.demo --output_dir="$DIR/images" --per_class=60 --size=96
$PY -m trainer.prepare --input_dir="$DIR/images" --output_dir="$DIR/records" --validation_fraction=0.2 --num_shards=4
$PY -m trainer.task --train_data="$DIR/records/train-*.tfrecord" --eval_data="$DIR/records/validation-*.tfrecord" \
  --model_dir="$DIR/model" --overwrite --weights="$WEIGHTS" --image_size=64 \
  --frozen_epochs=4 --frozen_batch_size=32 --frozen_learning_rate=0.01 \
  --finetune_epochs=3 --finetune_batch_size=16 --finetune_learning_rate=0.0005 --lr_base_batch_size=0
EXPORT=$(ls -d "$DIR"/model/export/[0-9]* | sort -V | tail -n 1)
$PY -m trainer.predict --model="$EXPORT" --input="$DIR/images/*/*_000[0-1].jpg" --output="$DIR/predictions.csv" --top_k=3
cat "$DIR/predictions.csv"
