"""Does Grad-CAM point at the object? Its peak on pasted-object photos, against chance.

    python bench/gradcam_localization.py [--per_class=50] [--image_size=224] [--canvas=256]
        [--object_side=64] [--backbone=efficientnet-lite0] [--seeds=0,1,2]

Fashion-MNIST photos (4 classes) pasted at random places on a black canvas (testbed/pasted_objects.py).
The classifier is EfficientNet-Lite0 from its real ImageNet weights (offline) with its head
fitted on the embeddings of `per_class` canvases a class as the frozen phase fits it (the
cross-validated logistic probe, trainer/training/headfit.py); the explanations are of `per_class` other canvases a class, each for the class the
model predicts. Prints, per seed, how often the heatmap's peak falls inside the object's box,
the chance rate (the box's mean share of the input), and the held-out accuracy; docs/evaluate.md
keeps the figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import effnet_common  # noqa: E402,F401  # TF_USE_LEGACY_KERAS before TensorFlow loads
from testbed import pasted_objects  # noqa: E402
from trainer.analysis import gradcam  # noqa: E402
from trainer.configs import config  # noqa: E402
from trainer.models import classifier  # noqa: E402
from trainer.training import headfit  # noqa: E402


def build_model(*, backbone: str, image_size: int, num_classes: int):
    return classifier.build_classifier(config.Model(backbone=backbone, weights="imagenet"), num_classes=num_classes,
                                       image_size=image_size)


def measure(model, *, per_class: int, canvas: int, object_side: int, seed: int) -> dict:
    """Fits the head on one draw of canvases, explains another; returns the counts."""
    image_size = int(model.inputs[0].shape[1])
    train = pasted_objects.make(per_class=per_class, canvas=canvas, object_side=object_side,
                                image_size=image_size, seed=seed, start=0)
    held = pasted_objects.make(per_class=per_class, canvas=canvas, object_side=object_side,
                               image_size=image_size, seed=seed + 1000, start=per_class)
    explainer = gradcam.Explainer(model)
    embeddings = classifier.feature_model(model).predict(explainer.pixels(train.images), verbose=0)
    head = headfit.fit_head(embeddings[:, None], train.labels, num_classes=len(train.class_names))
    classifier.set_head(model, kernel=head.kernel, bias=head.bias)
    pixels = explainer.pixels(held.images)
    predicted = explainer.probabilities(pixels).argmax(axis=1)
    heat = np.concatenate([explainer.heatmaps(pixels[i:i + 32], predicted[i:i + 32])
                           for i in range(0, len(pixels), 32)])
    on = pasted_objects.peak_on_object(heat, held.boxes)
    return {"on_object": int(on.sum()), "images": len(on), "chance": held.chance(image_size),
            "accuracy": float(np.mean(predicted == held.labels))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_class", type=int, default=50)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--canvas", type=int, default=256)
    parser.add_argument("--object_side", type=int, default=64)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    model = build_model(backbone=args.backbone, image_size=args.image_size, num_classes=4)
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.time()
        r = measure(model, per_class=args.per_class, canvas=args.canvas, object_side=args.object_side, seed=seed)
        print(f"seed {seed}: peak on the object {r['on_object']}/{r['images']} ({r['on_object'] / r['images']:.1%}); "
              f"chance {r['chance']:.1%}; held-out accuracy {r['accuracy']:.3f}; {time.time() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
