#!/usr/bin/env bash
# The main job on the built-in demo data, end to end: set up, make demo images, prepare
# TFRecords, train both phases with the default recipe at 64 px, export a SavedModel, and
# predict a few images through it.
#   DEMO_DIR      where everything goes (default demo_out/)
#   DEMO_WEIGHTS  starting weights: "demo" (default: B0 pretrained here from scratch on other
#                 synthetic shapes, an offline stand-in for ImageNet, made once and kept under
#                 ~/.cache/effnet-trainer), "imagenet" (needs internet), or a weights file
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
DIR=${DEMO_DIR:-demo_out}
WEIGHTS=${DEMO_WEIGHTS:-demo}
mkdir -p "$DIR"
start=$SECONDS
if [ "$WEIGHTS" = demo ]; then
  echo "== stand-in backbone (pretrained once on 16 other shapes, then cached)"
  WEIGHTS="$DIR/pretrained-b0-glyphs.h5"
  $PY -m trainer.demo --pretrain_weights="$WEIGHTS"
fi
echo "== demo images: 4 shapes x 100, and TFRecords (80 % train, 20 % validation)"
[ -d "$DIR/images" ] || $PY -m trainer.demo --output_dir="$DIR/images" --per_class=100 --size=96
$PY -m trainer.prepare --input_dir="$DIR/images" --output_dir="$DIR/records" --validation_fraction=0.2 --num_shards=4
echo "== training: frozen phase on cached embeddings, then fine-tuning, then export and validation report"
$PY -m trainer.task --train_data="$DIR/records/train-*.tfrecord" --eval_data="$DIR/records/validation-*.tfrecord" \
  --model_dir="$DIR/model" --overwrite --weights="$WEIGHTS" --image_size=64
EXPORT=$(ls -d "$DIR"/model/export/[0-9]* | sort -V | tail -n 1)
echo "== predictions through the export ($EXPORT)"
$PY -m trainer.predict --model="$EXPORT" --input="$DIR/images/*/*_000[0-1].jpg" --output="$DIR/predictions.csv" --top_k=3
cat "$DIR/predictions.csv"
echo "== done in $((SECONDS - start)) s: the classifier is $EXPORT; its validation report is $DIR/model/eval/"
