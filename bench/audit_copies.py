"""Copies the audit finds, measured: recall per kind of copy and false pairs between distinct photos.

    python bench/audit_copies.py [--image_size=64] [--copies=1200]

Real photos: the 1,200 Fashion-MNIST photos of data/fashion-mnist/images (28 px grey products,
10 classes, many alike; upscaled to 64 px and saved as PNG: the originals) and matplotlib's
sample photo (grace_hopper.jpg, 512 x 600). Planted, of `--copies` originals (and of the sample
photo): the same bytes (exact), JPEG at quality 70 and 50, a PNG saved as JPEG (quality 90),
resized to 80 % and 50 %, cropped slightly (6 % off the left and top) and mirrored.

Everything goes through trainer.audit's own reading (`embed_sources`: the pixel fingerprint, the
thumbnail and EfficientNet-Lite0's ImageNet embedding of each image). For each kind the originals
and that kind's copies are searched together, as one audit would search them, with two rules:
  before  exact copies, and neighbours whose cosine is at least 0.95 (the audit until now)
  after   exact copies, and neighbours whose cosine is at least --duplicate_threshold (0.6) and
          whose thumbnails correlate at least --pixel_threshold (0.993), one of them mirrored
Recall: the copies paired with their original. False pairs: pairs of images made from two
different photos, over all kinds. Also printed: the distributions the thresholds come from.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

PHOTOS = os.path.join(ROOT, "data", "fashion-mnist", "images")
KINDS = ("exact", "jpeg70", "jpeg50", "png_to_jpeg", "resize80", "resize50", "crop", "mirror")
BEFORE_THRESHOLD = 0.95
NEIGHBOURS = 20  # what the audit looks up: --neighbours (10) + its spare 10


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.BICUBIC)


def copy_of(image: Image.Image, original: bytes, kind: str) -> bytes:
    """The bytes of one kind of copy of `image` (whose PNG bytes are `original`)."""
    dx, dy = round(image.width * 0.06), round(image.height * 0.06)
    return {"exact": lambda: original,
            "jpeg70": lambda: _encode(image, "JPEG", quality=70),
            "jpeg50": lambda: _encode(image, "JPEG", quality=50),
            "png_to_jpeg": lambda: _encode(image, "JPEG", quality=90),
            "resize80": lambda: _encode(_scaled(image, 0.8), "PNG"),
            "resize50": lambda: _encode(_scaled(image, 0.5), "PNG"),
            "crop": lambda: _encode(image.crop((dx, dy, image.width, image.height)), "PNG"),
            "mirror": lambda: _encode(ImageOps.mirror(image), "PNG")}[kind]()


def originals() -> list:
    """(class index, name, RGB image) of every photo: Fashion-MNIST at 64 px, then the sample photo."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    found = []
    for c, name in enumerate(sorted(os.listdir(PHOTOS))):
        for f in sorted(os.listdir(os.path.join(PHOTOS, name))):
            with Image.open(os.path.join(PHOTOS, name, f)) as image:
                found.append((c, os.path.splitext(f)[0], image.convert("RGB").resize((64, 64), Image.BICUBIC)))
    sample = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    with Image.open(sample) as image:
        found.append((found[-1][0] + 1, "grace_hopper", image.convert("RGB")))
    return found


def write_images(root: str, *, copies: int, seed: int = 0) -> tuple:
    """Writes the originals and their planted copies; returns (files, labels, source, kind) per image."""
    photos = originals()
    chosen = set(np.random.default_rng(seed).permutation(len(photos) - 1)[:copies]) | {len(photos) - 1}
    files, labels, source, kind = [], [], [], []
    for o, (c, stem, image) in enumerate(photos):
        png = _encode(image, "PNG")
        for k in ("original",) + (KINDS if o in chosen else ()):
            data = png if k == "original" else copy_of(image, png, k)
            path = os.path.join(root, k, stem + (".jpg" if data.startswith(b"\xff\xd8") else ".png"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            files.append(path)
            labels.append(c)
            source.append(o)
            kind.append(k)
    return files, labels, np.array(source), np.array(kind)


def embed(root: str, files: list, labels: list, *, image_size: int):
    """trainer.audit's reading of every image: fingerprints, thumbnails, Lite0 ImageNet embeddings."""
    from trainer.analysis import auditing
    from trainer.configs import config
    from trainer.training import embeddings
    from trainer.models.pretrained import imagenet
    from trainer.models import classifier as classifier_lib
    weights = imagenet.imagenet_notop_file("efficientnet-lite0")
    classifier = classifier_lib.build_classifier(config.Model(backbone="efficientnet-lite0", weights=weights),
                                            num_classes=max(labels) + 1, image_size=image_size)
    source = auditing.Source("train", root, tuple(files), tuple(labels))
    images = auditing.embed_sources([source], embed=embeddings.image_embedder(classifier), total=len(files),
                                 num_classes=max(labels) + 1, multi_label=False, image_size=image_size)
    assert len(images.paths) == len(files), "an image did not decode"
    return images


def pairs_found(images, rows: np.ndarray, *, rule: dict) -> set:
    """The (i, j) pairs, as rows of `images`, that the audit lists among `rows` under `rule`."""
    from trainer.analysis import findings
    unit = findings.normalize(images.embeddings[rows])
    exact = findings.exact_duplicate_pairs([images.keys[r] for r in rows])
    indices, sims = findings.nearest_neighbours(unit, k=NEIGHBOURS)
    near = findings.near_duplicate_pairs(indices, sims, threshold=rule["threshold"],
                                         thumbnails=images.thumbnails[rows] if rule.get("pixels") else None,
                                         pixel_threshold=rule.get("pixels", -1.0))
    return {(int(rows[a]), int(rows[b])) for a, b, *_ in exact + near}


def measure(images, source: np.ndarray, kind: np.ndarray, *, rule: dict) -> tuple:
    """({kind: (found, planted)}, the sample photo's found kinds, distinct-photo pairs listed)."""
    originals_at = np.flatnonzero(kind == "original")
    recall, sample, false = {}, [], set()
    for k in KINDS:
        copies = np.flatnonzero(kind == k)
        pairs = pairs_found(images, np.concatenate([originals_at, copies]), rule=rule)
        hits = [c for c in copies if tuple(sorted((int(originals_at[source[c]]), int(c)))) in pairs]
        recall[k] = (len(hits), len(copies))
        sample += [k for c in hits if source[c] == source.max()]
        false |= {tuple(sorted((source[a], source[b]))) for a, b in pairs if source[a] != source[b]}
    return recall, sample, false


def distributions(images, source: np.ndarray, kind: np.ndarray) -> None:
    """The measured margins: each kind's copy against its original, distinct photos against each other."""
    from trainer.analysis import findings
    unit, at = findings.normalize(images.embeddings), np.flatnonzero(kind == "original")
    print("copy vs its original:      cosine min / 5th pct / median    thumbnail correlation min")
    for k in KINDS:
        copies = np.flatnonzero(kind == k)
        cos = np.sum(unit[copies] * unit[at[source[copies]]], axis=1)
        pix = findings.thumbnail_similarity(images.thumbnails[at[source[copies]]], images.thumbnails[copies])
        print(f"  {k:12s} {cos.min():26.3f} / {np.percentile(cos, 5):.3f} / {np.median(cos):.3f}    {pix.min():.4f}")
    sims = unit[at] @ unit[at].T
    np.fill_diagonal(sims, -1.0)
    i, j = np.triu_indices(len(at), 1)
    pix = np.concatenate([findings.thumbnail_similarity(images.thumbnails[at[i[s:s + 2 ** 16]]],
                                                        images.thumbnails[at[j[s:s + 2 ** 16]]])
                          for s in range(0, len(i), 2 ** 16)])
    print(f"distinct photos ({len(i):,} pairs): nearest-neighbour cosine median {np.median(sims.max(axis=1)):.3f}, "
          f"max {sims.max():.3f}; thumbnail correlation max {pix.max():.4f}, "
          f">= 0.98: {int(np.sum(pix >= 0.98))}, >= 0.99: {int(np.sum(pix >= 0.99))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64, help="the audit's --image_size")
    parser.add_argument("--copies", type=int, default=1200, help="originals copied in each kind (of 1,200)")
    parser.add_argument("--duplicate_threshold", type=float, default=None, help="default: the audit's")
    parser.add_argument("--pixel_threshold", type=float, default=None, help="default: the audit's")
    args = parser.parse_args()
    from trainer.analysis import findings
    after = {"threshold": args.duplicate_threshold or findings.CANDIDATE_THRESHOLD,
             "pixels": args.pixel_threshold or findings.PIXEL_THRESHOLD}
    with tempfile.TemporaryDirectory() as root:
        files, labels, source, kind = write_images(root, copies=args.copies)
        images = embed(root, files, labels, image_size=args.image_size)
    distributions(images, source, kind)
    results = [measure(images, source, kind, rule=rule) for rule in ({"threshold": BEFORE_THRESHOLD}, after)]
    print(f"\nrecall per kind at {args.image_size} px   before (cosine >= {BEFORE_THRESHOLD})   after (cosine >= "
          f"{after['threshold']}, thumbnails >= {after['pixels']})")
    for k in KINDS:
        (b, n), (a, _) = results[0][0][k], results[1][0][k]
        print(f"  {k:12s} {b:5d}/{n} = {b / n:6.1%}          {a:5d}/{n} = {a / n:6.1%}")
    print(f"  false pairs (distinct photos)  {len(results[0][2]):5d}                  {len(results[1][2]):5d}")
    print(f"  sample photo (grace_hopper) found as: before {','.join(results[0][1]) or '-'}; "
          f"after {','.join(results[1][1]) or '-'}")


if __name__ == "__main__":
    main()
