"""Writes the demo's photo subset from Debian's `dataset-fashion-mnist` package (how data/ was made).

    apt-get install dataset-fashion-mnist
    python scripts/fashion_mnist_subset.py --per_class=120 --output_dir=data/fashion-mnist

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando SE, MIT/Expat licence) holds 70,000 28x28
greyscale photos of Zalando products in 10 classes; the package keeps Zalando's idx files under
/usr/share/datasets/fashion-mnist. This takes the first `per_class` images of each class from the
training file, in file order, and writes them as PNGs under output_dir/<class>/, with the licence.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_class", type=int, default=120)
    parser.add_argument("--output_dir", default="data/fashion-mnist")
    args = parser.parse_args()
    images = read_idx(os.path.join(SOURCE, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(SOURCE, "train-labels-idx1-ubyte.gz"))
    for index, name in enumerate(CLASSES):
        folder = os.path.join(args.output_dir, name)
        os.makedirs(folder, exist_ok=True)
        for k, row in enumerate(np.flatnonzero(labels == index)[:args.per_class]):
            Image.fromarray(images[row], mode="L").save(os.path.join(folder, f"{name}_{k:04d}.png"), optimize=True)
    shutil.copyfile("/usr/share/doc/dataset-fashion-mnist/copyright", os.path.join(args.output_dir, "COPYRIGHT"))
    print(f"wrote {args.per_class} images x {len(CLASSES)} classes to {args.output_dir}")


if __name__ == "__main__":
    main()
