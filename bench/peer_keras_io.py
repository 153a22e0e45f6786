"""Our default frozen-only run against the recipe a Keras user would pick instead, side by side.

    python bench/peer_keras_io.py [--per_class=60] [--heldout_per_class=30] [--image_size=64]

The peer is the keras-io fine-tuning recipe ("Image classification via fine-tuning with
EfficientNet", keras.io/examples/vision/image_classification_efficientnet_fine_tuning): a frozen
B0 called in inference mode, a head of global average pooling, BatchNormalization, dropout 0.2
and a softmax dense layer, Adam at 1e-2 for 25 epochs over `image_dataset_from_directory`, with
its augmentation layers (RandomRotation 0.15, RandomTranslation 0.1, RandomFlip, RandomContrast
0.1), the held-out images as validation data, as in the example. It starts from the same
backbone weights file as ours (the offline stand-in; its preprocessing is the same layer ours
uses) so that only the recipe differs.

Ours is what a user runs on the same folders: `python -m trainer.task --train_data=FOLDER
--eval_data=HELDOUT --image_size=64 --finetune_epochs=0`, default flags otherwise (the frozen
phase on cached embeddings, early stopping on the held-out images as the peer validates on them,
the export, and the validation report through the export: its accuracy is ours). Each side is
timed as one whole process, one after the other, on the same machine; prints accuracy and wall
time of each and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = r'''
import json, sys
import trainer  # TF_USE_LEGACY_KERAS, quiet start-up
import tensorflow as tf
import tf_keras as keras
import efficientnet.tfkeras as efn
from trainer import model as model_lib
train_dir, heldout_dir, weights, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
load = dict(image_size=(size, size), batch_size=64, label_mode="categorical", seed=0)
ds_train = keras.utils.image_dataset_from_directory(train_dir, shuffle=True, **load)
num_classes = len(ds_train.class_names)
ds_train = ds_train.prefetch(tf.data.AUTOTUNE)
ds_test = keras.utils.image_dataset_from_directory(heldout_dir, shuffle=False, **load).prefetch(tf.data.AUTOTUNE)
augmentation = keras.Sequential([keras.layers.RandomRotation(factor=0.15),
                                 keras.layers.RandomTranslation(height_factor=0.1, width_factor=0.1),
                                 keras.layers.RandomFlip(), keras.layers.RandomContrast(factor=0.1)])
inputs = keras.layers.Input(shape=(size, size, 3))
x = model_lib._preprocessing(model_lib.backbones.get("efficientnet-b0"))(augmentation(inputs))
base = efn.EfficientNetB0(include_top=False, weights=None, input_shape=(size, size, 3))
base.load_weights(weights)
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
print(json.dumps({"accuracy": float(model.evaluate(ds_test, verbose=0)[1])}))
'''


def _timed(cmd, *, env=None) -> tuple:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_class", type=int, default=60)
    parser.add_argument("--heldout_per_class", type=int, default=30)
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    import trainer  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    from trainer import demo  # pylint: disable=import-outside-toplevel
    weights = demo.pretrained_weights()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, heldout = os.path.join(tmp, "train"), os.path.join(tmp, "heldout")
        demo.write_images(train_dir, task="shapes", per_class=args.per_class, size=96, seed=21)
        demo.write_images(heldout, task="shapes", per_class=args.heldout_per_class, size=96, seed=22)
        peer_s, out = _timed([py, "-c", PEER, train_dir, heldout, weights, str(args.image_size)])
        peer = json.loads(out.strip().splitlines()[-1])["accuracy"]
        model_dir = os.path.join(tmp, "model")
        ours_s, _ = _timed([py, "-m", "trainer.task", f"--train_data={train_dir}", f"--eval_data={heldout}",
                            f"--model_dir={model_dir}", f"--weights={weights}", f"--image_size={args.image_size}",
                            "--finetune_epochs=0"])
        ours = json.load(open(os.path.join(model_dir, "eval", "metrics.json")))["accuracy"]
    n = 4 * args.heldout_per_class
    print(f"peer_keras_io accuracy={peer:.3f} on {n} held-out images, wall_s={peer_s:.1f}")
    print(f"ours_frozen_only accuracy={ours:.3f} on {n} held-out images, wall_s={ours_s:.1f} (export included)")
    print(f"accuracy_ours_minus_peer={ours - peer:+.3f}  (goal: ours >= 0.9 and above the peer)")
    print(f"wall_time_ratio_ours_vs_peer={ours_s / peer_s:.2f}  (goal <= 0.75)")


if __name__ == "__main__":
    main()
