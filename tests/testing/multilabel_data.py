"""Multi-label data the tests make from real photos: mosaics of Fashion-MNIST products.

Each image is a 2x2 mosaic of product photos (data/fashion-mnist, MIT licence) drawn from a few
classes, with empty (black) tiles too; its labels are the classes it shows, so an image holds
zero to four of them. Written as TFRecord shards per the data contract (docs/data.md): a
repeated `image/class/label` of sorted class indices, `image/class/text` in the same order,
labels.txt and a dataset.json that says `"multi_label": true`.
"""
from __future__ import annotations

import io
import json
import os
import random
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image


def _photos(photos_dir: str, classes: Sequence[str]) -> Dict[str, List[np.ndarray]]:
    found = {}
    for name in classes:
        folder = os.path.join(photos_dir, name)
        found[name] = [np.asarray(Image.open(os.path.join(folder, f)).convert("RGB"))
                       for f in sorted(os.listdir(folder))]
    return found


def mosaic(tiles: Sequence[np.ndarray], *, tile: int) -> np.ndarray:
    """Four tiles (None = black) -> one [2*tile, 2*tile, 3] uint8 image."""
    out = np.zeros((2 * tile, 2 * tile, 3), np.uint8)
    for i, t in enumerate(tiles):
        if t is not None:
            r, c = divmod(i, 2)
            out[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = np.asarray(
                Image.fromarray(t).resize((tile, tile), Image.BILINEAR))
    return out


def _example(pixels: np.ndarray, labels: Sequence[int], class_names: Sequence[str], name: str) -> bytes:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"PNG"])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=list(labels))),
        "image/class/text": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[class_names[i].encode() for i in labels])),
        "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_mosaics(photos_dir: str, out_dir: str, *, classes: Sequence[str], counts: Dict[str, int],
                  tile: int = 32, p_tile: float = 0.6, seed: int = 0) -> str:
    """Writes `counts[split]` mosaics per split into `out_dir`; returns it.

    Each of the 4 tiles shows a product with probability `p_tile`, of a class drawn uniformly;
    train and validation draw from disjoint photos (the first and second half of each class).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    rng = random.Random(seed)
    photos = _photos(photos_dir, classes)
    os.makedirs(out_dir, exist_ok=True)
    info = {"format_version": 1, "created_by": "tests", "class_names": list(classes),
            "num_classes": len(classes), "multi_label": True, "splits": {}}
    for s, (split, n) in enumerate(counts.items()):
        per_class = dict.fromkeys(classes, 0)
        path = os.path.join(out_dir, f"{split}-00000-of-00001.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(n):
                tiles, labels = [], set()
                for _ in range(4):
                    if rng.random() < p_tile:
                        c = rng.randrange(len(classes))
                        pool = photos[classes[c]]
                        half = len(pool) // 2
                        tiles.append(pool[rng.randrange(half) + (half if s else 0)])
                        labels.add(c)
                    else:
                        tiles.append(None)
                for c in labels:
                    per_class[classes[c]] += 1
                writer.write(_example(mosaic(tiles, tile=tile), sorted(labels), classes, f"{split}/{i:04d}.png"))
        info["splits"][split] = {"num_examples": n, "num_shards": 1, "files": [os.path.basename(path)],
                                 "per_class": per_class}
    with open(os.path.join(out_dir, "labels.txt"), "w") as f:
        f.write("".join(c + "\n" for c in classes))
    with open(os.path.join(out_dir, "dataset.json"), "w") as f:
        json.dump(info, f, indent=2)
    return out_dir
