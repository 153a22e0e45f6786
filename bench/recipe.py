"""The training recipe against the baselines a practitioner would try, side by side, on real photos.

    python bench/recipe.py [--per_class=20,100,600] [--heldout_per_class=200] [--image_size=64]
        [--contenders=ours,frozen,probe,kerasio] [--variant NAME='--flag=value ...']...

Fashion-MNIST from Debian's `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist; Expat
licence): for each size, the first N photos of each class of the official training file are the
labelled photos a user has, and the first `heldout_per_class` of each class of the official TEST
file are scored: no epoch, temperature or setting of any contender is chosen on them.
EfficientNet-Lite0 from its real ImageNet weights (trainer/models/pretrained/imagenet.py), at 64 px.

  ours     trainer.prepare (80 % train / 20 % validation) + trainer.task with default flags.
  frozen   the same with --finetune_epochs=0: the frozen phase alone.
  probe    scikit-learn's LogisticRegressionCV (C by 5-fold cross-validation) on standardized
           embeddings of ALL labelled photos, from the frozen run's export (`features`: the
           ImageNet backbone's pooled embedding): the baseline a practitioner tries first.
           Needs scikit-learn (pip install -e '.[bench]').
  kerasio  the keras-io recipe ("Image classification via fine-tuning with EfficientNet"; see
           bench/time_to_accuracy.py) on all labelled photos, scored after its last epoch.
  --variant NAME='FLAGS'  ours with extra trainer flags (how the defaults were chosen).

Wall time: each contender's own processes, from start to a trained model (prepare included for
ours). Prints accuracy, expected calibration error (ECE, 15 bins) with and without the fitted
temperature where there is one, wall time, and the ratios to ours. docs/training.md keeps the
figures.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from scripts.fashion_mnist_subset import CLASSES, SOURCE, read_idx  # noqa: E402
from time_to_accuracy import KERASIO  # noqa: E402

BACKBONE = "efficientnet-lite0"
_VAL_ACCURACY = re.compile(r"val_accuracy[=:] ?([0-9.]+)")


def write_photos(split: str, *, per_class: int, folder: str) -> None:
    """The first `per_class` photos of each class of an official Fashion-MNIST file, as PNGs."""
    images = read_idx(os.path.join(SOURCE, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(SOURCE, f"{split}-labels-idx1-ubyte.gz"))
    for index, name in enumerate(CLASSES):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for k, row in enumerate(np.flatnonzero(labels == index)[:per_class]):
            Image.fromarray(images[row], mode="L").save(os.path.join(folder, name, f"{k:05d}.png"))


def read_heldout(folder: str):
    """(encoded bytes, labels) of a folder's photos, labels indexing the sorted class names (the
    order of labels.txt, as prepare writes it, and of the export's outputs)."""
    data, labels = [], []
    for index, name in enumerate(sorted(CLASSES)):
        for file in sorted(os.listdir(os.path.join(folder, name))):
            with open(os.path.join(folder, name, file), "rb") as f:
                data.append(f.read())
            labels.append(index)
    return data, np.asarray(labels)


def run(cmd) -> float:
    """Runs a command (its output to a log beside nothing: failures print it); returns seconds."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017): equal-width confidence bins."""
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def export_outputs(export_dir: str, images, *, signature: str, key: str) -> np.ndarray:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    fn = tf.saved_model.load(export_dir).signatures[signature]
    out = [fn(image_bytes=tf.constant(images[i:i + 256]))[key].numpy() for i in range(0, len(images), 256)]
    return np.concatenate(out)


def score_run(model_dir: str, heldout) -> dict:
    """Held-out accuracy and ECE of a run's newest export, with and without its temperature."""
    from trainer.evaluation import calibration
    export_base = os.path.join(model_dir, "export")
    export_dir = os.path.join(export_base, max(os.listdir(export_base), key=int))
    probabilities = export_outputs(export_dir, heldout[0], signature="serving_default", key="probabilities")
    result = {"accuracy": float((probabilities.argmax(axis=1) == heldout[1]).mean()),
              "ece": ece(probabilities, heldout[1]), "export": export_dir}
    path = os.path.join(model_dir, "calibration.json")
    if os.path.exists(path):
        with open(path) as f:
            temperature = json.load(f)["temperature"]
        result["ece_without_temperature"] = ece(calibration.scaled(probabilities, 1.0 / temperature), heldout[1])
        result["temperature"] = temperature
    return result


def ours(name: str, *, records_s: float, records: str, tmp: str, heldout, image_size: int, flags) -> dict:
    model_dir = os.path.join(tmp, name)
    seconds = run([sys.executable, "-m", "trainer.task", f"--train_data={records}/train-*.tfrecord",
                   f"--eval_data={records}/validation-*.tfrecord", f"--model_dir={model_dir}",
                   f"--backbone={BACKBONE}", "--weights=imagenet", f"--image_size={image_size}", "--noeval_report",
                   *flags])
    with open(os.path.join(model_dir, "history.json")) as f:
        epochs, kept = {}, {}
        for record in json.load(f):
            epochs[record["phase"]] = epochs.get(record["phase"], 0) + 1
            kept = {"kept": record["kept_weights_of"]} if "kept_weights_of" in record else kept
    return dict(score_run(model_dir, heldout), wall_s=records_s + seconds, model_dir=model_dir, epochs=epochs, **kept)


def probe(*, frozen_export: str, labelled: str, heldout) -> dict:
    """LogisticRegressionCV on standardized ImageNet embeddings of every labelled photo."""
    from sklearn.linear_model import LogisticRegressionCV  # pylint: disable=import-outside-toplevel
    from sklearn.pipeline import make_pipeline  # pylint: disable=import-outside-toplevel
    from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
    start = time.perf_counter()
    images, labels = read_heldout(labelled)
    train = export_outputs(frozen_export, images, signature="features", key="features")
    classifier = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=3000))
    classifier.fit(train, labels)
    seconds = time.perf_counter() - start
    test = export_outputs(frozen_export, heldout[0], signature="features", key="features")
    probabilities = classifier.predict_proba(test)
    return {"accuracy": float((probabilities.argmax(axis=1) == heldout[1]).mean()),
            "ece": ece(probabilities, heldout[1]), "wall_s": seconds}


def kerasio(*, labelled: str, heldout_dir: str, image_size: int) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", KERASIO, labelled, heldout_dir, str(image_size)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"keras-io recipe failed:\n{done.stderr[-4000:]}")
    scores = [float(m) for m in _VAL_ACCURACY.findall(done.stdout + done.stderr)]
    return {"accuracy": scores[-1], "wall_s": time.perf_counter() - start, "epochs": len(scores)}


def one_size(per_class: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        labelled, heldout_dir, records = (os.path.join(tmp, n) for n in ("labelled", "heldout", "records"))
        write_photos("train", per_class=per_class, folder=labelled)
        write_photos("t10k", per_class=args.heldout_per_class, folder=heldout_dir)
        heldout = read_heldout(heldout_dir)
        records_s = run([sys.executable, "-m", "trainer.prepare", f"--input_dir={labelled}", f"--output_dir={records}",
                         "--validation_fraction=0.2", "--num_shards=2"])
        common = dict(records_s=records_s, records=records, tmp=tmp, heldout=heldout, image_size=args.image_size)
        results = {}
        if "ours" in args.contenders:
            results["ours"] = ours("ours", flags=[], **common)
        for name, flags in args.variant:
            results[name] = ours(name, flags=shlex.split(flags), **common)
        if {"frozen", "probe"} & set(args.contenders):
            results["frozen"] = ours("frozen", flags=["--finetune_epochs=0"], **common)
        if "probe" in args.contenders:
            results["probe"] = probe(frozen_export=results["frozen"]["export"], labelled=labelled, heldout=heldout)
        if "kerasio" in args.contenders:
            results["kerasio"] = kerasio(labelled=labelled, heldout_dir=heldout_dir, image_size=args.image_size)
    return results


def report(per_class: int, results: dict, *, heldout: int) -> None:
    print(f"== {per_class} labelled photos a class ({per_class * 10} in all; ours: 80 % train, 20 % validation), "
          f"scored on {heldout * 10} held-out test photos")
    for name, r in results.items():
        extra = "".join(f" {k}={r[k]:.3f}" for k in ("ece", "ece_without_temperature", "temperature") if k in r)
        epochs = f" epochs={r['epochs']}" if "epochs" in r else ""
        epochs += f" kept={r['kept']}" if "kept" in r else ""  # --keep_best_phase: the phase whose weights the run kept
        print(f"per_class={per_class} {name:10s} accuracy={r['accuracy']:.3f}{extra} wall_s={r['wall_s']:.1f}{epochs}")
    base = results.get("ours")
    if base:
        for name, r in results.items():
            if name != "ours":
                print(f"per_class={per_class} ours_vs_{name}: accuracy {base['accuracy'] - r['accuracy']:+.3f}, "
                      f"wall time ratio ours/{name} {base['wall_s'] / r['wall_s']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_class", default="20,100,600")
    parser.add_argument("--heldout_per_class", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--contenders", default="ours,frozen,probe,kerasio")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME='FLAGS'",
                        type=lambda s: tuple(s.split("=", 1)))
    args = parser.parse_args()
    args.contenders = args.contenders.split(",")
    if not os.path.isdir(SOURCE):
        sys.exit(f"{SOURCE} is missing: apt-get install dataset-fashion-mnist")
    for per_class in (int(n) for n in args.per_class.split(",")):
        report(per_class, one_size(per_class, args), heldout=args.heldout_per_class)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
