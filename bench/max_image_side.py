"""What --max_image_side costs the model's input, and what it saves: the measurement behind its default.

    python bench/max_image_side.py [--photos=/usr/share/backgrounds/mate/nature] [--sizes=2000x1500,4000x3000]
                                   [--sides=768,1024,1280,1600] [--qualities=90,95] [--crops=4]

Real photos (Debian's `mate-backgrounds`, GPL-2+: `apt-get install mate-backgrounds`; any folder of
JPEGs works) are cut to 4:3 and resized to each --sizes (a phone photo's shape), encoded at quality
92, as phones write them: the "originals". Each is then passed through trainer.prepare's rule
(`effnet_common.downscale`) at each --sides and JPEG quality, and, at every backbone's native
resolution (trainer/configs/backbones.py), the model's input is compared three ways:

  exact:      the crop cut at full resolution from the whole decoded original and resized with an
              antialiasing filter: what an ideal reader would hand the model;
  original:   the reader's own decode of the original (`effnet_common.decode`: the window alone,
              DCT-scaled, then bilinear), what training on originals sees;
  downscaled: the same reader on the downscaled file, what training on default records sees.

for the evaluation crop (--augment none/flip, the default, and serving) and for --crops random
training crops per photo (--augment crop: 8-100 % of the area, so a small crop of a downscaled
photo is upsampled where the original still had pixels). It prints, per size and side, the median
over photos of the PSNR (dB) of downscaled vs exact, original vs exact and downscaled vs original,
the worst native size, and the bytes kept (downscaled / original). Higher PSNR is closer; above
~40 dB the difference is below JPEG's own at quality 95.
"""
from __future__ import annotations

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from effnet_common import process

process.prepare()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from effnet_common import decode, downscale  # noqa: E402
from trainer.configs import backbones  # noqa: E402

flags.DEFINE_string("photos", "/usr/share/backgrounds/mate/nature", "Folder of real JPEG photos.")
flags.DEFINE_list("sizes", ["2000x1500", "4000x3000"], "WIDTHxHEIGHT of the originals.")
flags.DEFINE_list("sides", ["768", "1024", "1280", "1600"], "--max_image_side values to compare.")
flags.DEFINE_list("qualities", ["90", "95"], "JPEG qualities of the downscaled files.")
flags.DEFINE_integer("crops", 4, "Random training crops per photo and native size.")
flags.DEFINE_integer("limit", 12, "Photos used (the first N, sorted).")
FLAGS = flags.FLAGS
ORIGINAL_QUALITY = 92


def native_sizes() -> list:
    return sorted({spec.native_size for spec in backbones.REGISTRY.values() if spec.native_size >= 224})


def original_photo(path: str, width: int, height: int) -> bytes:
    """The photo cut to the centre 4:3 (or 3:4) and resized to width x height, JPEG quality 92."""
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3).numpy()
    h, w = image.shape[:2]
    target = width / height
    if w / h > target:
        cw = int(h * target)
        image = image[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = int(w / target)
        image = image[(h - ch) // 2:(h - ch) // 2 + ch]
    resized = tf.image.resize(image.astype(np.float32), [height, width], antialias=True)
    return tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), quality=ORIGINAL_QUALITY).numpy()


def fitted(content: bytes, side: int, quality: int) -> bytes:
    """The rule itself at its own quality; at another, the same resize re-encoded at `quality`."""
    return downscale.fit(content, max_side=side) if quality == downscale.JPEG_QUALITY else _fit_at(content, side, quality)


def _fit_at(content: bytes, side: int, quality: int) -> bytes:
    """The rule at another JPEG quality (the bench's comparison only)."""
    image = tf.io.decode_jpeg(content, channels=3)
    h, w = image.shape[:2]
    target = downscale.target_size(h, w, side)
    pixels = tf.image.resize(tf.cast(image, tf.float32), target, antialias=True)
    return tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8), quality=quality).numpy()


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def relative_eval_box(height: int, width: int) -> tuple:
    side = int(min(height, width) * decode.EVAL_CENTRAL_FRACTION)
    return ((height - side + 1) // 2 / height, (width - side + 1) // 2 / width, side / height, side / width)


def random_boxes(rng: np.random.Generator, count: int) -> list:
    """Relative [y, x, h, w] boxes drawn as the Inception crop draws them (area, aspect ratio)."""
    boxes = []
    while len(boxes) < count:
        area = rng.uniform(*decode.CROP_AREA_RANGE)
        ratio = np.exp(rng.uniform(*np.log(decode.CROP_ASPECT_RANGE)))
        h, w = np.sqrt(area / ratio), np.sqrt(area * ratio)  # of a square; close enough for 4:3
        if h <= 1 and w <= 1:
            boxes.append((rng.uniform(0, 1 - h), rng.uniform(0, 1 - w), h, w))
    return boxes


def window_of(box):
    def window(shape):
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        y, x = tf.cast(box[0] * h, tf.int32), tf.cast(box[1] * w, tf.int32)
        return tf.stack([y, x, tf.maximum(tf.cast(box[2] * h, tf.int32), 1), tf.maximum(tf.cast(box[3] * w, tf.int32), 1)])
    return window


def reader(content: bytes, box, size: int) -> np.ndarray:
    return decode._decode_window(content, size, window_of(box)).numpy()  # pylint: disable=protected-access


def exact(full: np.ndarray, box, size: int) -> np.ndarray:
    h, w = full.shape[:2]
    y, x = int(box[0] * h), int(box[1] * w)
    crop = full[y:y + max(int(box[2] * h), 1), x:x + max(int(box[3] * w), 1)]
    return tf.image.resize(crop, [size, size], antialias=True).numpy()


def measure(original: bytes, variants: dict, natives: list, rng: np.random.Generator) -> dict:
    """{variant: {native: (down_vs_exact, orig_vs_exact, down_vs_orig) for eval; ... 'crop': ...}}."""
    full = tf.io.decode_jpeg(original, channels=3).numpy().astype(np.float32)
    h, w = full.shape[:2]
    boxes = {"eval": [relative_eval_box(h, w)], "crop": random_boxes(rng, FLAGS.crops)}
    results = {}
    for kind, kind_boxes in boxes.items():
        for size in natives:
            for box in kind_boxes:
                ideal = exact(full, box, size)
                seen = reader(original, box, size)
                for name, content in variants.items():
                    down = reader(content, box, size)
                    results.setdefault((name, kind, size), []).append(
                        (psnr(down, ideal), psnr(seen, ideal), psnr(down, seen)))
    return results


def main(argv) -> None:
    del argv
    paths = sorted(glob.glob(os.path.join(FLAGS.photos, "*.jp*g")))[:FLAGS.limit]
    if not paths:
        raise app.UsageError(f"--photos={FLAGS.photos}: no JPEG there (apt-get install mate-backgrounds)")
    natives = native_sizes()
    rng = np.random.default_rng(0)
    print(f"photos={len(paths)} ({FLAGS.photos}) natives={natives} crops_per_photo={FLAGS.crops}")
    for size_text in FLAGS.sizes:
        width, height = (int(v) for v in size_text.split("x"))
        table, kept = {}, {}
        for path in paths:
            original = original_photo(path, width, height)
            variants = {(int(s), int(q)): fitted(original, int(s), int(q)) for s in FLAGS.sides for q in FLAGS.qualities}
            for name, content in variants.items():
                kept.setdefault(name, []).append(len(content) / len(original))
            for key, values in measure(original, variants, natives, rng).items():
                table.setdefault(key, []).extend(values)
            print(f"  {size_text} {os.path.basename(path)}: {len(original) / 1024:.0f} KB", flush=True)
        for name in sorted(kept):
            side, quality = name
            for kind in ("eval", "crop"):
                rows = {size: np.median(np.asarray(table[(name, kind, size)]), axis=0) for size in natives}
                worst = min(rows, key=lambda s: rows[s][0])
                med = np.median(np.stack(list(rows.values())), axis=0)
                print(f"size={size_text} max_image_side={side} quality={quality} {kind}: "
                      f"downscaled_vs_exact_db={med[0]:.1f} original_vs_exact_db={med[1]:.1f} "
                      f"downscaled_vs_original_db={med[2]:.1f} worst_native={worst} "
                      f"(downscaled_vs_exact_db={rows[worst][0]:.1f}, original_vs_exact_db={rows[worst][1]:.1f}) "
                      f"bytes_kept={np.median(kept[name]):.3f}")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)
