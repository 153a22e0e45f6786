"""Time to a held-out accuracy, side by side: our default run, the keras-io recipe, the seed blog's.

    python bench/time_to_accuracy.py [--target=0.80] [--also=0.75] [--image_size=64] [--max_s=900]

Real photos and real weights: EfficientNet-Lite0 from its ImageNet checkpoint, Fashion-MNIST's
10 classes from data/fashion-mnist (the first 96 photos of each class train, the last 24 are held
out: 960 and 240). Each contender runs as one process, one after the other, from the same image
folders; its clock starts when the process starts (imports and model building count) and stops
at the end of the first epoch whose held-out accuracy reaches `--target`, read from its own
per-epoch log as the lines arrive. A contender that does not reach it runs to its end (or
`--max_s`) and reports its best. `--also` names a lower target every contender may reach, so
that the ratios are measured rather than bounded.
  ours     python -m trainer.task with default flags: the frozen phase on cached embeddings, then
           fine-tuning (BN in inference mode), the held-out folder as --eval_data.
  kerasio  the keras-io fine-tuning recipe ("Image classification via fine-tuning with
           EfficientNet", keras.io/examples/vision/image_classification_efficientnet_fine_tuning):
           frozen base called in inference mode, pooling + BatchNormalization + dropout 0.2 +
           softmax, Adam 1e-2, 25 epochs, its augmentation layers, image_dataset_from_directory.
  seed_bn  the seed blog's variant through our trainer (--bn=trainable): BN layers train in both
           phases, so the frozen phase streams images through the backbone every epoch.
Prints time_to_accuracy_<name>_s=... (and time_to_<also>_<name>_s=...), and the ratios of the
others to ours.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "data", "fashion-mnist", "images")
TRAIN_PER_CLASS = 96
BACKBONE = "efficientnet-lite0"
KERASIO = r'''
import sys
import trainer  # TF_USE_LEGACY_KERAS, quiet start-up
import tensorflow as tf
import tf_keras as keras
from trainer.models import lite
from trainer.models.pretrained import imagenet
train_dir, heldout_dir, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = dict(image_size=(size, size), batch_size=64, label_mode="categorical", seed=0)
ds_train = keras.utils.image_dataset_from_directory(train_dir, shuffle=True, **load)
num_classes = len(ds_train.class_names)
ds_train = ds_train.prefetch(tf.data.AUTOTUNE)
ds_test = keras.utils.image_dataset_from_directory(heldout_dir, shuffle=False, **load).prefetch(tf.data.AUTOTUNE)
augmentation = keras.Sequential([keras.layers.RandomRotation(factor=0.15),
                                 keras.layers.RandomTranslation(height_factor=0.1, width_factor=0.1),
                                 keras.layers.RandomFlip(), keras.layers.RandomContrast(factor=0.1)])
inputs = keras.layers.Input(shape=(size, size, 3))
x = keras.layers.Rescaling(1 / 128, offset=-127 / 128)(augmentation(inputs))  # Lite's input scaling
base = lite.build_backbone("efficientnet-lite0", image_size=size)
base.load_weights(imagenet.imagenet_notop_file("efficientnet-lite0"))
base.trainable = False
x = base(x, training=False)
x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
x = keras.layers.BatchNormalization()(x)
x = keras.layers.Dropout(0.2, name="top_dropout")(x)
outputs = keras.layers.Dense(num_classes, activation="softmax", name="pred")(x)
model = keras.Model(inputs, outputs)
model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2), loss="categorical_crossentropy",
              metrics=["accuracy"])
model.fit(ds_train, epochs=25, validation_data=ds_test, verbose=2)
'''
# val_accuracy as Keras' verbose=2 lines and our per-epoch log lines print it.
_VAL_ACCURACY = re.compile(r"val_accuracy[=:] ?([0-9.]+)")


def split_folders(tmp: str) -> tuple:
    """train/ and heldout/ image folders: the first TRAIN_PER_CLASS photos of each class, the rest."""
    train, heldout = os.path.join(tmp, "train"), os.path.join(tmp, "heldout")
    for name in sorted(os.listdir(PHOTOS)):
        files = sorted(os.listdir(os.path.join(PHOTOS, name)))
        for folder, part in ((train, files[:TRAIN_PER_CLASS]), (heldout, files[TRAIN_PER_CLASS:])):
            os.makedirs(os.path.join(folder, name))
            for file in part:
                shutil.copy(os.path.join(PHOTOS, name, file), os.path.join(folder, name, file))
    return train, heldout


def time_to_accuracy(cmd, *, targets, max_s: float) -> dict:
    """Runs cmd; for each target the seconds from its start to the first log line with
    val_accuracy >= target (None if never), until the highest target is reached."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    best, epochs, reached = 0.0, 0, {t: None for t in targets}
    for line in proc.stdout:
        match = _VAL_ACCURACY.search(line)
        if match:
            epochs += 1
            best = max(best, float(match.group(1)))
            for target in targets:
                if best >= target and reached[target] is None:
                    reached[target] = time.perf_counter() - start
            if reached[max(targets)] is not None:
                break
        if time.perf_counter() - start > max_s:
            break
    proc.kill()
    proc.wait()
    return {"reached": reached, "best": best, "epochs": epochs, "ran_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.80)
    parser.add_argument("--also", type=float, default=0.75)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--max_s", type=float, default=900)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        train, heldout = split_folders(tmp)
        ours = [py, "-m", "trainer.task", f"--train_data={train}", f"--eval_data={heldout}", f"--backbone={BACKBONE}",
                "--weights=imagenet", f"--image_size={args.image_size}", "--noeval_report"]
        contenders = {
            "ours": ours + [f"--model_dir={tmp}/ours"],
            "kerasio": [py, "-c", KERASIO, train, heldout, str(args.image_size)],
            "seed_bn": ours + [f"--model_dir={tmp}/seed_bn", "--bn=trainable"],
        }
        results = {name: time_to_accuracy(cmd, targets=(args.also, args.target), max_s=args.max_s)
                   for name, cmd in contenders.items()}
    print(f"target: held-out accuracy >= {args.target:.2f} on 240 photos (Fashion-MNIST, 10 classes, "
          f"{BACKBONE} ImageNet, {args.image_size} px)")
    for target, key in ((args.target, "accuracy"), (args.also, f"{args.also:.2f}")):
        for name, r in results.items():
            seconds = r["reached"][target]
            shown = f"{seconds:.1f}" if seconds is not None else "not_reached"
            print(f"time_to_{key}_{name}_s={shown}  (epochs logged {r['epochs']}, best {r['best']:.3f}, "
                  f"ran {r['ran_s']:.1f} s)")
        ours = results["ours"]["reached"][target]
        for name in ("kerasio", "seed_bn"):
            theirs = results[name]["reached"][target]
            ratio = (f"{theirs / ours:.2f}" if theirs is not None else f">{results[name]['ran_s'] / ours:.2f}"
                     ) if ours else "n/a"
            print(f"time_to_{key}_ratio_{name}_vs_ours={ratio}")


if __name__ == "__main__":
    main()
