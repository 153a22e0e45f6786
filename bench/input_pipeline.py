"""Input-pipeline throughput: is the reader only as slow as JPEG decoding forces it to be?

    python bench/input_pipeline.py [--images=2000] [--photo_size=500x375] [--rounds=3]
                                   [--workdir=DIR] [--keep]

Generates N photo-like JPEGs (500x375 by default, about 90 KB each at quality 90) in 10 class
folders, prepares them into TFRecords with trainer.prepare, then measures, one after another in
this one process and each after a warm-up batch, the images per second delivered at 224x224,
batch 32, by:

  (a) tf_keras ImageDataGenerator.flow_from_directory with random flips (the seed blog's era),
  (b) tf_keras.utils.image_dataset_from_directory + random flip + prefetch,
  (c) our reader (trainer.data.pipelines.build_dataset, training split, the default --augment=flip: the
      evaluation crop decoded alone from each JPEG, a random mirror, batch, prefetch) over the
      prepared TFRecords,
  (d) the ceiling: whole-JPEG decoding alone, in parallel on all cores, over the same bytes in
      memory (no file reads, no shuffle, no crop, no resize),
  (e) our reader in a training phase's later epochs: the pixel cache (--cache_pixels, on by
      default where the crops fit) filled by one whole pass before the timing, then shuffle,
      mirror, batch, prefetch from memory,

  (f) our reader over records prepared with the default --max_image_side
      (`effnet_common.downscale.DEFAULT_MAX_IMAGE_SIDE`), where (c) reads records of the originals
      (--max_image_side=0): phone-size photos are stored downscaled once, so every epoch that
      decodes reads and decodes a fraction of the bytes,

each timed in --rounds interleaved windows of N images (the median is reported), then the B0
frozen-phase training step's images/s at 224 px (base frozen, training=False) and the number of
cores that would feed a GPU at NVIDIA's published B0 rate, from records of the originals and from
records prepared with the default (with the seconds each prepare took and the records' bytes per
image). Then the ratios of (c), the epoch
that decodes: `ratio_vs_imagedatagenerator`, `ratio_vs_image_dataset_from_directory` and
`fraction_of_decode_ceiling`; and the same three of (e), prefixed `later_epochs_`.

Where the JPEG is ImageNet-sized (500x375), the 87.5 % center window is too small for DCT
scaling at 224 px and holds most of the rows, so our reader decodes almost what the ceiling does
and then resizes: docs/data.md gives the measured cost of each step. With --photo_size=2000x1500
(a downscaled phone photo) the window decodes at 1/2 or 1/4 scale.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from effnet_common import process

process.prepare()  # TensorFlow's start-up lines off, as in the commands

import numpy as np  # noqa: E402
from effnet_common import downscale  # noqa: E402
import tensorflow as tf
import tf_keras as keras

from trainer.configs import config
from trainer.data import pipelines
from trainer.data import preparing

IMAGE_SIZE = 224
BATCH_SIZE = 32
NUM_CLASSES = 10
# The training throughput of EfficientNet-B0 on one A100 with mixed precision that issue 3 quotes
# from NVIDIA's published figures; a round number to show where the bottleneck moves.
A100_B0_IMAGES_PER_S = 3450

flags.DEFINE_integer("images", 2000, "JPEGs to generate.")
flags.DEFINE_string("photo_size", "500x375", "WIDTHxHEIGHT of the generated JPEGs: 500x375 is an "
                    "ImageNet-sized photo; 2000x1500 a downscaled phone photo, where the DCT "
                    "scaling of the window decode pays.")
flags.DEFINE_enum("photos", "synthetic", ["synthetic", "real"],
                  "synthetic: smooth colour fields plus pixel noise (about 4 bits per pixel at "
                  "quality 90, denser than most photos); real: random crops of matplotlib's "
                  "sample photo (grace_hopper.jpg), rescaled, mirrored and tinted (about 2.5).")
flags.DEFINE_string("workdir", None, "Folder for the images and shards (default: a temp folder).")
flags.DEFINE_bool("keep", False, "Keep the generated images and shards.")
flags.DEFINE_integer("rounds", 3, "Timed windows of --images images per method (median).")
flags.DEFINE_integer("max_image_side", downscale.DEFAULT_MAX_IMAGE_SIDE, "The side (f) prepares its records with "
                     "(default: trainer.prepare's default), against records of the originals.")
flags.DEFINE_integer("b0_steps", 4, "Timed B0 frozen-phase steps (batch 16) after a warm-up.")
FLAGS = flags.FLAGS


def make_photo(rng: np.random.Generator, *, height: int = 375, width: int = 500) -> np.ndarray:
    """A photo-like uint8 image: smooth colour fields plus fine texture, so JPEG sizes resemble
    real photos (tens of KB at quality 90) rather than flat or pure-noise extremes."""
    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse[None], [height, width], method="bicubic")[0].numpy()
    texture = rng.normal(0, 18, size=(height, width, 1)).astype(np.float32)
    edges = (np.sin(np.arange(width) / rng.uniform(3, 12)) * 25)[None, :, None]
    return np.clip(smooth + texture + edges, 0, 255).astype(np.uint8)


def real_photo(rng: np.random.Generator, source: np.ndarray, *, height: int = 375,
               width: int = 500) -> np.ndarray:
    """A random crop (60-100 % of each side) of a real photo, resized, maybe mirrored, tinted."""
    h, w = source.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = tf.image.resize(source[y:y + ch, x:x + cw], [height, width], method="bicubic").numpy()
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(crop * rng.uniform(0.8, 1.2, size=3), 0, 255).astype(np.uint8)


def generate(folder: str, *, count: int, width: int, height: int, seed: int = 0) -> int:
    """Writes `count` JPEGs into NUM_CLASSES class folders; returns the total bytes."""
    rng = np.random.default_rng(seed)
    if FLAGS.photos == "real":
        import matplotlib  # noqa: PLC0415  (only for its sample photo)
        path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
        source = tf.io.decode_jpeg(tf.io.read_file(path), channels=3).numpy().astype(np.float32)
        make = lambda: real_photo(rng, source, height=height, width=width)  # noqa: E731
    else:
        make = lambda: make_photo(rng, height=height, width=width)  # noqa: E731
    total = 0
    bar = keras.utils.Progbar(count, unit_name="generated", interval=0.1 if sys.stdout.isatty() else 30)
    for i in range(count):
        cls = os.path.join(folder, f"class{i % NUM_CLASSES:02d}")
        os.makedirs(cls, exist_ok=True)
        encoded = tf.io.encode_jpeg(make(), quality=90).numpy()
        with open(os.path.join(cls, f"img{i:05d}.jpg"), "wb") as f:
            f.write(encoded)
        total += len(encoded)
        bar.add(1)
    return total


class Meter:
    """Images/s of one input method over windows of `images` images.

    Every window starts a fresh iterator and times from just after its first (warm-up) batch,
    so no method banks work in prefetch buffers while another is timed. The benchmark times
    every method once per round, rounds interleaved, and reports the median: on a shared
    machine the load changes over a minute, and interleaving spreads it evenly.
    """

    def __init__(self, iterable):
        self._iterable = iterable
        self.rates, self.cpu_ms = [], []

    def window(self, images: int) -> None:
        it = iter(self._iterable)
        next(it)
        seen, start, cpu = 0, time.perf_counter(), time.process_time()
        while seen < images:
            seen += _batch_len(next(it))
        self.rates.append(seen / (time.perf_counter() - start))
        self.cpu_ms.append(1000 * (time.process_time() - cpu) / seen)
        del it

    @property
    def median(self) -> float:
        return float(np.median(self.rates))


def _batch_len(batch) -> int:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(x.shape[0])


def image_data_generator(folder: str):
    gen = keras.preprocessing.image.ImageDataGenerator(horizontal_flip=True)
    return gen.flow_from_directory(folder, target_size=(IMAGE_SIZE, IMAGE_SIZE),
                                   batch_size=BATCH_SIZE, class_mode="sparse", seed=0)


def image_dataset_from_directory(folder: str):
    ds = keras.utils.image_dataset_from_directory(folder, image_size=(IMAGE_SIZE, IMAGE_SIZE),
                                                  batch_size=BATCH_SIZE, seed=0)
    ds = ds.map(lambda x, y: (tf.image.random_flip_left_right(x), y),
                num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds.repeat()


def our_reader(shards: str, class_names, *, count: int, later_epochs: bool = False):
    """The training reader at the default --augment=flip: an epoch that decodes (the first of
    every run, and every epoch with --nocache_pixels), or a later epoch served by the pixel
    cache (`later_epochs`: one whole pass fills it before the timing)."""
    cfg = config.Data(train_data=shards, eval_data=None, class_names=tuple(class_names),
                      image_size=IMAGE_SIZE, augment="flip", num_train_examples=count,
                      cache_pixels=later_epochs)
    ds = pipelines.build_dataset(cfg, split="train", batch_size=BATCH_SIZE, repeat=True, epochs=2)
    if later_epochs:
        for _ in ds.take(-(-count // BATCH_SIZE) + 1):
            pass
    return ds


def decode_ceiling(folder: str):
    """Full JPEG decode, nothing else, on all cores, from bytes already in memory."""
    paths = sorted(tf.io.gfile.glob(os.path.join(folder, "*", "*.jpg")))
    blobs = [tf.io.read_file(p).numpy() for p in paths]
    ds = tf.data.Dataset.from_tensor_slices(blobs).repeat()
    ds = ds.map(lambda b: tf.shape(tf.io.decode_jpeg(b, channels=3)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    options = tf.data.Options()
    options.deterministic = False
    return ds.batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE).with_options(options)


def measure_b0_frozen_step(*, steps: int, batch_size: int = 16) -> float:
    """Images/s of the frozen phase's train step: B0 base frozen, in inference mode."""
    from efficientnet.tfkeras import EfficientNetB0  # noqa: PLC0415
    base = EfficientNetB0(include_top=False, weights=None,
                          input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    base.trainable = False
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation="softmax")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3))
    y = np.arange(batch_size) % NUM_CLASSES
    model.train_on_batch(x, y)  # warm-up: tracing
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch_size / (time.perf_counter() - start)


def _photo_size(text: str):
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise app.UsageError(f"--photo_size={text}: pass WIDTHxHEIGHT, e.g. 500x375") from None
    if min(width, height) < IMAGE_SIZE:
        raise app.UsageError(f"--photo_size={text}: both sides must be at least {IMAGE_SIZE}")
    return width, height


def main(argv) -> None:
    del argv
    if FLAGS.images < 4 * BATCH_SIZE:
        raise app.UsageError(f"--images must be at least {4 * BATCH_SIZE}")
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="bench_input_")
    images_dir, shards_dir = os.path.join(workdir, "images"), os.path.join(workdir, "shards")
    try:
        width, height = _photo_size(FLAGS.photo_size)
        total = generate(images_dir, count=FLAGS.images, width=width, height=height)
        prepared = {}
        for side in (0, FLAGS.max_image_side):  # originals, then the side compared
            start = time.perf_counter()
            out = shards_dir if side == 0 else shards_dir + "_default"
            info = preparing.prepare(input_dir=images_dir, output_dir=out, validation_fraction=0.0,
                                     shard_size_mb=8, max_image_side=side)
            seconds = time.perf_counter() - start
            stored = sum(os.path.getsize(f) for f in tf.io.gfile.glob(os.path.join(out, "train-*")))
            prepared[side] = (os.path.join(out, "train-*"), seconds, stored / FLAGS.images, info)
        n, cores = FLAGS.images, os.cpu_count() or 1
        shards = prepared[0][0]
        print(f"load_average={os.getloadavg()[0]:.1f} images={n} "
              f"photos={FLAGS.photos} photo={width}x{height} mean_jpeg_kb={total / n / 1024:.1f} size={IMAGE_SIZE} batch={BATCH_SIZE} cores={cores} "
              f"shards={info['splits']['train']['num_shards']}")
        meters = {"image_data_generator": Meter(image_data_generator(images_dir)),
                  "image_dataset_from_directory": Meter(image_dataset_from_directory(images_dir)),
                  "our_reader": Meter(our_reader(shards, info["class_names"], count=n)),
                  "decode_ceiling": Meter(decode_ceiling(images_dir)),
                  "our_reader_later_epochs": Meter(our_reader(shards, info["class_names"], count=n,
                                                              later_epochs=True)),
                  "our_reader_default_records": Meter(our_reader(prepared[FLAGS.max_image_side][0],
                                                                 info["class_names"], count=n))}
        for _ in range(FLAGS.rounds):
            for meter in meters.values():
                meter.window(n)
        for name, meter in meters.items():  # CPU ms per image: this process, all threads
            print(f"{name}_img_per_s={meter.median:.0f} "
                  f"(rounds: {', '.join(f'{r:.0f}' for r in meter.rates)}; "
                  f"cpu_ms_per_img={np.median(meter.cpu_ms):.2f})")
        a, b, c, d, e, f = (meters[k].median for k in meters)
        step = measure_b0_frozen_step(steps=FLAGS.b0_steps)
        print(f"b0_frozen_train_step_img_per_s={step:.1f} (our reader: {c:.0f}; "
              f"{'the model' if step < c else 'the input'} is the bottleneck here)")
        print(f"cores_to_feed_a100_b0={A100_B0_IMAGES_PER_S / (c / cores):.1f} "
              f"(records of the originals, --max_image_side=0: {c / cores:.0f} img/s per core for "
              f"{A100_B0_IMAGES_PER_S} img/s)")
        side = FLAGS.max_image_side
        print(f"cores_to_feed_a100_b0_default_records={A100_B0_IMAGES_PER_S / (f / cores):.1f} "
              f"(records prepared with --max_image_side={side}: {f / cores:.0f} img/s per core)")
        for label, key in (("originals", 0), ("default", side)):
            print(f"prepare_s_{label}={prepared[key][1]:.1f} record_kb_per_image_{label}={prepared[key][2] / 1024:.1f}")
        print(f"record_bytes_ratio_default_vs_originals={prepared[side][2] / prepared[0][2]:.3f} "
              f"(the generated JPEGs: {total / n / 1024:.1f} KB each)")
        print(f"default_records_speedup={f / c:.2f} (epoch that decodes, default records vs originals)")
        print(f"load_average_after={os.getloadavg()[0]:.1f}")
        print(f"ratio_vs_imagedatagenerator={c / a:.2f}")
        print(f"ratio_vs_image_dataset_from_directory={c / b:.2f}")
        print(f"fraction_of_decode_ceiling={c / d:.2f}")
        print("later epochs, from the pixel cache (--cache_pixels, on by default where the crops fit):")
        print(f"later_epochs_ratio_vs_imagedatagenerator={e / a:.2f}")
        print(f"later_epochs_ratio_vs_image_dataset_from_directory={e / b:.2f}")
        print(f"later_epochs_fraction_of_decode_ceiling={e / d:.2f}")
    finally:
        if not FLAGS.keep and not FLAGS.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)
