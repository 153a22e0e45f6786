"""Writes the demo's photo subset from Debian's `dataset-fashion-mnist` package (how data/ was made).

    apt-get install dataset-fashion-mnist
    python scripts/fashion_mnist_subset.py --per_class=120 --output_dir=data/fashion-mnist/images

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando SE, MIT/Expat licence) holds 70,000 28x28
greyscale photos of Zalando products in 10 classes; the package keeps Zalando's idx files under
/usr/share/datasets/fashion-mnist. This takes the first `per_class` images of each class from the
training file, in file order, and writes them as PNGs under output_dir/<class>/; beside
output_dir, `samples/` gets the first `samples` images of each class from the test file (photos
no run trains on, for the demo's predictions) and LICENSE the licence.
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


def write(split: str, per_class: int, path_of) -> None:
    """The first `per_class` images of each class of the split's file, as PNGs at path_of(class, k)."""
    images = read_idx(os.path.join(SOURCE, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(SOURCE, f"{split}-labels-idx1-ubyte.gz"))
    for index, name in enumerate(CLASSES):
        for k, row in enumerate(np.flatnonzero(labels == index)[:per_class]):
            path = path_of(name, k)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(images[row], mode="L").save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_class", type=int, default=120)
    parser.add_argument("--output_dir", default="data/fashion-mnist/images")
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    parent = os.path.dirname(os.path.abspath(args.output_dir))
    write("train", args.per_class, lambda name, k: os.path.join(args.output_dir, name, f"{name}_{k:04d}.png"))
    write("t10k", args.samples, lambda name, k: os.path.join(parent, "samples", f"{name}_test{k}.png"))
    shutil.copyfile("/usr/share/doc/dataset-fashion-mnist/copyright", os.path.join(parent, "LICENSE"))
    print(f"wrote {args.per_class} images x {len(CLASSES)} classes to {args.output_dir}")


if __name__ == "__main__":
    main()
