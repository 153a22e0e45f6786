"""Writes the demo's photo subset from Debian's `dataset-fashion-mnist` package (how data/ was made).

    apt-get install dataset-fashion-mnist
    python scripts/fashion_mnist_subset.py --per_class=120 --output_dir=data/fashion-mnist/images \
        --test_per_class=30

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando SE, MIT/Expat licence) holds 70,000 28x28
greyscale photos of Zalando products in 10 classes; the package keeps Zalando's idx files under
/usr/share/datasets/fashion-mnist. This takes the first `per_class` images of each class from the
training file, in file order, and writes them as PNGs under output_dir/<class>/; beside
output_dir, `samples/` gets the first `samples` images of each class from the test file (photos
no run trains on, for the demo's predictions), `test/<class>/` the next `test_per_class` of each
class from the test file (the demo's held-out test split: no image of samples/ or of the training
file, so a figure on them is made on photos no run trains on or chooses with), and LICENSE the
licence.
"""
import argparse
import gzip
import os
import shutil

import numpy as np
from PIL import Image

SOURCE = "/usr/share/datasets/fashion-mnist"
# The labels' order in the idx files (Zalando's README), as folder names.
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def read_idx(path: str) -> np.ndarray:
    """An idx file (big-endian header: magic with the rank in its low byte, then the dims)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(dims)


def write(split: str, per_class: int, path_of, *, skip: int = 0) -> None:
    """Images `skip` to `skip + per_class` of each class of the split's file, in file order, as PNGs
    at path_of(class, k), k counting the class's images in the file from 0 (so names never collide
    across calls that skip what an earlier call wrote)."""
    images = read_idx(os.path.join(SOURCE, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(SOURCE, f"{split}-labels-idx1-ubyte.gz"))
    for index, name in enumerate(CLASSES):
        rows = np.flatnonzero(labels == index)
        for k in range(skip, skip + per_class):
            path = path_of(name, k)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(images[rows[k]], mode="L").save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_class", type=int, default=120)
    parser.add_argument("--output_dir", default="data/fashion-mnist/images")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--test_per_class", type=int, default=30,
                        help="test-file images per class after the samples, under test/<class>/ (0: none)")
    args = parser.parse_args()
    parent = os.path.dirname(os.path.abspath(args.output_dir))
    write("train", args.per_class, lambda name, k: os.path.join(args.output_dir, name, f"{name}_{k:04d}.png"))
    write("t10k", args.samples, lambda name, k: os.path.join(parent, "samples", f"{name}_test{k}.png"))
    write("t10k", args.test_per_class, lambda name, k: os.path.join(parent, "test", name, f"{name}_test{k:04d}.png"),
          skip=args.samples)
    shutil.copyfile("/usr/share/doc/dataset-fashion-mnist/copyright", os.path.join(parent, "LICENSE"))
    print(f"wrote {args.per_class} images x {len(CLASSES)} classes to {args.output_dir}; "
          f"{args.test_per_class} x {len(CLASSES)} test-file images to {os.path.join(parent, 'test')}")


if __name__ == "__main__":
    main()
