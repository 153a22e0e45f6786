"""Class imbalance, measured: the minority class's recall with and without --class_weight=balanced.

    python bench/imbalance.py [--minority=shirt] [--ratio=10] [--seeds=0,1,2] [--finetune_epochs=0]

Real photos and real weights: EfficientNet-Lite0 from its ImageNet checkpoint at 64 px, on four
Fashion-MNIST classes that look alike (tshirt_top, pullover, coat, shirt; data/fashion-mnist).
Each majority class trains on 100 photos, the minority class on 100 / ratio; validation holds 20
of each (balanced, photos no run trained on). Per seed (the trainer's --seed), two runs of
`python -m trainer.task` with default flags, one with --class_weight=none and one with balanced,
read the minority's recall, macro F1 and accuracy from their reports (eval/per_class.csv,
eval/metrics.json). Prints one line per run and the means:
  minority_recall_none=... minority_recall_balanced=... macro_f1_none=... macro_f1_balanced=...
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "data", "fashion-mnist", "images")
CLASSES = ("coat", "pullover", "shirt", "tshirt_top")
MAJORITY, HELD_OUT = 100, 20


def make_folders(root: str, *, minority: str, ratio: int) -> tuple:
    """train/ and validation/ class folders: 100 photos a class (100 // ratio of the minority)
    to train on, the last 20 of each held out."""
    for name in CLASSES:
        files = sorted(os.listdir(os.path.join(PHOTOS, name)))
        keep = MAJORITY // ratio if name == minority else MAJORITY
        for split, chosen in (("train", files[:keep]), ("validation", files[-HELD_OUT:])):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for f in chosen:
                shutil.copy(os.path.join(PHOTOS, name, f), os.path.join(root, split, name, f))
    return os.path.join(root, "train"), os.path.join(root, "validation")


def run(train: str, validation: str, *, model_dir: str, class_weight: str, seed: int, finetune_epochs: int) -> dict:
    cmd = [sys.executable, "-m", "trainer.task", f"--train_data={train}", f"--eval_data={validation}",
           f"--model_dir={model_dir}", "--backbone=efficientnet-lite0", "--weights=imagenet", "--image_size=64",
           f"--class_weight={class_weight}", f"--seed={seed}", f"--finetune_epochs={finetune_epochs}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"trainer.task failed: {result.stderr[-2000:]}")
    with open(os.path.join(model_dir, "eval", "per_class.csv")) as f:
        recall = {row["class"]: float(row["recall"]) for row in csv.DictReader(f)}
    with open(os.path.join(model_dir, "eval", "metrics.json")) as f:
        metrics = json.load(f)
    return {"recall": recall, "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minority", default="shirt", choices=CLASSES)
    parser.add_argument("--ratio", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--finetune_epochs", type=int, default=0, help="0: the frozen phase alone (quicker)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="imbalance-")
    try:
        train, validation = make_folders(root, minority=args.minority, ratio=args.ratio)
        print(f"train: {MAJORITY} photos a class, {MAJORITY // args.ratio} of {args.minority}; validation: "
              f"{HELD_OUT} of each; Lite0 ImageNet, 64 px, finetune_epochs={args.finetune_epochs}")
        totals = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            for weight in ("none", "balanced"):
                got = run(train, validation, model_dir=os.path.join(root, f"model-{weight}-{seed}"),
                          class_weight=weight, seed=seed, finetune_epochs=args.finetune_epochs)
                minority = got["recall"][args.minority]
                print(f"seed={seed} class_weight={weight}: minority_recall={minority:.3f} "
                      f"macro_f1={got['macro_f1']:.3f} accuracy={got['accuracy']:.3f}", flush=True)
                for key, value in (("minority_recall", minority), ("macro_f1", got["macro_f1"]),
                                   ("accuracy", got["accuracy"])):
                    totals.setdefault(f"{key}_{weight}", []).append(value)
        print(" ".join(f"{k}={sum(v) / len(v):.3f}" for k, v in sorted(totals.items())))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
