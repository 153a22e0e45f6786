"""The product is the classifier it trains: real ImageNet weights, real photos, default flags.

EfficientNet-Lite0 from its real ImageNet checkpoint (trainer/models/pretrained/imagenet.py), on real product
photos: the demo's data, Fashion-MNIST's 10 classes x 120 (data/fashion-mnist, MIT licence),
prepared as the demo prepares it (80 % train, 20 % validation), and scored on the demo's 300
photos from Fashion-MNIST's official test file, which no run trains or chooses anything on.
Only the data, the backbone, `--weights=imagenet` and `--image_size` are given, and fine-tuning is
cut to 3 of its 20 epochs (its cosine schedule sized to them) so that the suite stays quick; the
full default run is the demo (scripts/demo.sh). The frozen phase's head is a cross-validated
probe that chooses nothing on validation, so its validation accuracy is held out too. Chance is
0.10; the thresholds leave room for the spread between machines and thread schedules
(measured on 2 cores: the frozen phase 0.80 on validation, both phases 0.84 on test).
"""
import json
import os
import subprocess
import sys

import pytest

from tests.testing.presets import PRETRAINED
from tests.testing.presets import REPO_DIR as ROOT

TEST_PHOTOS = os.path.join(ROOT, "data", "fashion-mnist", "test")
FROZEN_MIN = 0.74
FINAL_MIN = 0.78


@pytest.fixture(scope="module")
def photo_records(photos, tmp_path_factory):
    """The demo's records: `prepare --validation_fraction=0.2 --num_shards=4` (scripts/demo.sh)."""
    from trainer.data import preparing
    out = str(tmp_path_factory.mktemp("quality") / "records")
    preparing.prepare(input_dir=photos, output_dir=out, validation_fraction=0.2, num_shards=4)
    return out


@pytest.mark.slow
def test_default_recipe_transfers_imagenet_features_to_real_photos(photo_records, pretrained_weights, tmp_path):
    del pretrained_weights  # converted once for the session; --weights=imagenet finds it in the cache
    model_dir = str(tmp_path / "model")
    cmd = [sys.executable, "-m", "trainer.task", f"--train_data={photo_records}/train-*.tfrecord",
           f"--eval_data={photo_records}/validation-*.tfrecord", f"--test_data={TEST_PHOTOS}",
           f"--model_dir={model_dir}", f"--backbone={PRETRAINED}", "--weights=imagenet", "--image_size=64",
           "--finetune_epochs=3"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.load(open(os.path.join(model_dir, "history.json")))
    frozen = [r["val_accuracy"] for r in history if r["phase"] == "frozen"]
    test = json.load(open(os.path.join(model_dir, "eval", "test", "metrics.json")))
    assert len(frozen) == 1 and test["num_examples"] == 300 and test["used_to_choose"] == []
    assert frozen[0] >= FROZEN_MIN, f"the frozen phase alone reached {frozen[0]:.3f} on validation photos"
    assert test["accuracy"] >= FINAL_MIN, f"both phases reached {test['accuracy']:.3f} on held-out test photos"
    assert "test accuracy" in result.stdout and "frozen phase:" in result.stdout  # the run says how good it is
