"""Photos of one object pasted at a random place on a larger plain canvas, and where Grad-CAM's
peak falls on them: the check that an explanation points at the object (tests/test_gradcam.py,
bench/gradcam_localization.py, docs/evaluate.md).

The objects are Fashion-MNIST photos (data/fashion-mnist/images: white products on black), scaled
up and pasted on a black canvas, so the object is the only thing to see and its box is known.
Each is placed inside the export's evaluation crop (the central 87.5 %), and its box is given in
the model's input pixels after that crop. Chance is the box's share of the input: a peak drawn
uniformly at random falls on the object that often.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

from effnet_common import decode

FASHION = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "fashion-mnist", "images")


@dataclasses.dataclass
class Pasted:
    """Encoded canvases, their labels, and each object's box [top, left, bottom, right) in the
    model's input pixels (after the evaluation crop and resize)."""
    images: List[bytes]
    labels: np.ndarray
    boxes: np.ndarray
    class_names: Tuple[str, ...]

    def chance(self, image_size: int) -> float:
        """The mean share of the input the objects cover."""
        areas = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return float(np.mean(areas) / image_size ** 2)


def _objects(class_names: Sequence[str], per_class: int, start: int) -> List[Tuple[int, Image.Image]]:
    found = []
    for label, name in enumerate(class_names):
        files = sorted(os.listdir(os.path.join(FASHION, name)))[start:start + per_class]
        found += [(label, Image.open(os.path.join(FASHION, name, f)).convert("RGB")) for f in files]
    return found


def make(*, per_class: int, canvas: int, object_side: int, image_size: int, seed: int, start: int = 0,
         class_names: Sequence[str] = ("bag", "sneaker", "trouser", "tshirt_top")) -> Pasted:
    """`per_class` canvases of each class (photos from the `start`-th on, so two draws can
    differ): `canvas` px square, black, one object of `object_side` px at a random place within
    the evaluation crop."""
    rng = np.random.default_rng(seed)
    crop = max(int(canvas * decode.EVAL_CENTRAL_FRACTION), 1)
    offset = (canvas - crop + 1) // 2
    scale = image_size / crop
    images, labels, boxes = [], [], []
    for label, photo in _objects(class_names, per_class, start):
        y, x = rng.integers(offset, offset + crop - object_side + 1, 2)
        page = Image.new("RGB", (canvas, canvas))
        page.paste(photo.resize((object_side, object_side), Image.BILINEAR), (int(x), int(y)))
        buf = io.BytesIO()
        page.save(buf, format="PNG")
        images.append(buf.getvalue())
        labels.append(label)
        boxes.append([(y - offset) * scale, (x - offset) * scale,
                      (y - offset + object_side) * scale, (x - offset + object_side) * scale])
    return Pasted(images, np.asarray(labels), np.asarray(boxes), tuple(class_names))


def peak_on_object(heatmaps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """bool [N]: whether each heatmap's maximum lies inside its object's box."""
    flat = heatmaps.reshape(len(heatmaps), -1).argmax(axis=1)
    rows, cols = np.unravel_index(flat, heatmaps.shape[1:])
    centre_y, centre_x = rows + 0.5, cols + 0.5
    return ((centre_y >= boxes[:, 0]) & (centre_y < boxes[:, 2]) &
            (centre_x >= boxes[:, 1]) & (centre_x < boxes[:, 3]))
