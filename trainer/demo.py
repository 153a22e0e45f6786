"""Built-in demo data: synthetic labelled images, and a stand-in for ImageNet weights, offline.

`python -m trainer.demo --output_dir=DIR` writes DIR/<class>/<class>_NNNN.jpg. Three tasks, drawn
in one visual world (a flat random colour with a little noise, a contrasting foreground, an
object near the centre at a random size and offset):
  shapes   - 4 classes (circle, cross, square, triangle): the demo's classification task.
  glyphs   - 16 other shapes (arrow, chevron, diamond, ell, ellipse, bars, polygons, pac-man,
             ring, semicircle, star, tee, x): a different task,
             on which `pretrain_backbone` trains B0 from scratch so that its features transfer
             to `shapes`, as ImageNet features transfer to photos. Random EfficientNet features
             carry nothing (a frozen-phase head on them stays at chance); these carry edges,
             corners and curvature.
  patterns - 8 classes of textures (stripes at four angles, checkers, dots, rings, noise).

`python -m trainer.demo --pretrain_weights=FILE.h5` writes that backbone as a notop HDF5 weights
file, the format of the official downloads, for `--weights=FILE.h5`; `pretrained_weights()`
keeps one per recipe under ~/.cache/effnet-trainer (EFFNET_CACHE), so a second demo or test
session skips the pretraining.
"""
from __future__ import annotations

import io
import os
import shutil
import sys

from absl import app, flags, logging

from trainer import flagutil
import numpy as np
from PIL import Image, ImageDraw

TASKS = {
    "shapes": ("circle", "cross", "square", "triangle"),
    "patterns": ("checkers", "dots", "noise", "rings", "stripes000", "stripes045", "stripes090", "stripes135"),
    "glyphs": ("arrow", "chevron", "diamond", "ell", "ellipse", "hbar", "hexagon", "octagon", "pacman",
               "pentagon", "ring", "semicircle", "star", "tee", "vbar", "xmark"),
}


# The visual world of shapes and glyphs: object radius and centre offset as fractions of the side.
_RADIUS = (0.25, 0.38)
_OFFSET = 0.15
_NOISE = 8.0


def render(task: str, class_name: str, *, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of `class_name` drawn with randomness from `rng`."""
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0, _NOISE if task in ("shapes", "glyphs") else 18, (size, size, 3))
    pixels = np.clip(np.ones((size, size, 3)) * background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    colour = tuple(int(c) for c in (255 - background + rng.integers(-40, 41, 3)) % 256)
    if task in ("shapes", "glyphs"):
        _draw_shape(ImageDraw.Draw(image), class_name, size=size, colour=colour, rng=rng)
        return image
    return Image.fromarray(_pattern(class_name, size=size, rng=rng, base=pixels, colour=np.array(colour)))


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, *, size: int, colour, rng) -> None:
    r = rng.uniform(*_RADIUS) * size
    cx, cy = size / 2 + rng.uniform(-_OFFSET, _OFFSET, 2) * size
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif name == "cross":
        w = max(2, int(r / 3))
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    else:
        _draw_glyph(draw, name, cx=cx, cy=cy, r=r, colour=colour)


def _draw_glyph(draw: ImageDraw.ImageDraw, name: str, *, cx: float, cy: float, r: float, colour) -> None:
    w = max(2, r / 3)
    if name == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif name == "ellipse":
        draw.ellipse([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=colour)
    elif name == "hbar":
        draw.rectangle([cx - r, cy - w / 2, cx + r, cy + w / 2], fill=colour)
    elif name == "vbar":
        draw.rectangle([cx - w / 2, cy - r, cx + w / 2, cy + r], fill=colour)
    elif name == "hexagon":
        draw.regular_polygon((cx, cy, r), 6, fill=colour)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=int(w))
    elif name in ("pentagon", "octagon"):
        draw.regular_polygon((cx, cy, r), 5 if name == "pentagon" else 8, fill=colour)
    elif name in ("semicircle", "pacman"):
        draw.pieslice([cx - r, cy - r, cx + r, cy + r], *((180, 360) if name == "semicircle" else (40, 320)), fill=colour)
    elif name == "arrow":
        draw.polygon([(cx - r, cy - w / 2), (cx, cy - w / 2), (cx, cy - r), (cx + r, cy), (cx, cy + r),
                      (cx, cy + w / 2), (cx - r, cy + w / 2)], fill=colour)
    elif name == "chevron":
        draw.line([(cx - r, cy - r / 2), (cx, cy + r / 2), (cx + r, cy - r / 2)], fill=colour, width=int(w))
    elif name == "tee":
        draw.rectangle([cx - r, cy - r, cx + r, cy - r + w], fill=colour)
        draw.rectangle([cx - w / 2, cy - r, cx + w / 2, cy + r], fill=colour)
    elif name == "ell":
        draw.rectangle([cx - r, cy - r, cx - r + w, cy + r], fill=colour)
        draw.rectangle([cx - r, cy + r - w, cx + r, cy + r], fill=colour)
    elif name == "star":
        points = [(cx + (r if k % 2 == 0 else r / 2.5) * np.cos(np.pi * k / 5 - np.pi / 2),
                   cy + (r if k % 2 == 0 else r / 2.5) * np.sin(np.pi * k / 5 - np.pi / 2)) for k in range(10)]
        draw.polygon(points, fill=colour)
    else:
        draw.line([(cx - r, cy - r), (cx + r, cy + r)], fill=colour, width=int(w))
        draw.line([(cx - r, cy + r), (cx + r, cy - r)], fill=colour, width=int(w))


def _pattern(name: str, *, size: int, rng, base: np.ndarray, colour: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(6, 12)
    phase = rng.uniform(0, period)
    if name.startswith("stripes"):
        angle = np.deg2rad(int(name[-3:]))
        mask = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle) + phase) / period) > 0
    elif name == "checkers":
        mask = ((xx + phase) // period + (yy + phase) // period) % 2 == 0
    elif name == "dots":
        mask = (((xx + phase) % period - period / 2) ** 2 + ((yy + phase) % period - period / 2) ** 2) < (period / 4) ** 2
    elif name == "rings":
        cx, cy = rng.uniform(0, size, 2)
        mask = np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) / period) > 0
    else:
        mask = rng.random((size, size)) > 0.5
    out = base.astype(np.float32)
    out[mask] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def write_images(output_dir: str, *, task: str = "shapes", per_class: int = 40, size: int = 96,
                 seed: int = 0) -> dict:
    """Writes `per_class` JPEGs per class of `task` under output_dir/<class>/; returns counts."""
    if task not in TASKS:
        raise ValueError(f"unknown demo task {task}: choose one of {', '.join(TASKS)}")
    counts = {}
    for index, name in enumerate(TASKS[task]):
        rng = np.random.default_rng([seed, index])
        folder = os.path.join(output_dir, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            buf = io.BytesIO()
            render(task, name, size=size, rng=rng).save(buf, format="JPEG", quality=90)
            with open(os.path.join(folder, f"{name}_{i:04d}.jpg"), "wb") as f:
                f.write(buf.getvalue())
        counts[name] = per_class
    return counts


# The stand-in pretraining, measured on 2 cores (docs/training.md): B0 from scratch at 64 px on
# 12,800 distinct images of 16 glyphs, one pass at batch 16 (800 steps); the frozen phase's head
# on its features reaches 0.79-0.88 on three draws of the demo's shapes (8 glyphs: 0.71-0.92;
# random features: chance). Batch 64 (200 steps) reached only 0.74, batch 32 0.80.
# Distinct images rather than epochs over few: B0 memorizes 1,280 images in 10 epochs (0.99
# train, 0.38 held-out) without learning shapes. No drop-connect: stochastic depth slows a short
# training.
RECIPE = dict(backbone="efficientnet-b0", task="glyphs", image_size=64, images=12800, batch_size=16,
              learning_rate=2e-3, seed=123)


def recipe_key(recipe: dict = RECIPE) -> str:
    """A file name that changes with every setting of the recipe (and this module's version of it)."""
    return "pretrained-{backbone}-{task}-{image_size}px-n{images}-b{batch_size}-lr{learning_rate:g}-s{seed}-v5".format(**recipe)


def cache_dir() -> str:
    """Where pretrained stand-ins are kept between runs: EFFNET_CACHE, else ~/.cache/effnet-trainer."""
    return os.environ.get("EFFNET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "effnet-trainer")


def pretrained_weights(recipe: dict = RECIPE) -> str:
    """The path of the recipe's notop weights file in `cache_dir()`, pretraining it once if absent."""
    path = os.path.join(cache_dir(), recipe_key(recipe) + ".h5")
    if os.path.exists(path):
        logging.info("stand-in backbone: %s (cached; delete it to pretrain again)", path)
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return pretrain_backbone(path, **recipe)


def pretrain_backbone(path: str, *, backbone: str, task: str, image_size: int, images: int, batch_size: int,
                      learning_rate: float, seed: int) -> str:
    """Trains `backbone` from scratch on `task` (not the demo's shapes) and saves its notop weights to `path`.

    All layers train, BatchNormalization included, as in ImageNet pretraining; one pass over
    `images` distinct images, Adam with a 5 % warmup and cosine decay. The file is written
    atomically.
    """
    import tf_keras as keras  # pylint: disable=import-outside-toplevel  # TensorFlow only when needed
    from trainer import config, model as model_lib  # pylint: disable=import-outside-toplevel
    names = TASKS[task]
    x, y = render_arrays(task, per_class=images // len(names), size=image_size, seed=seed)
    keras.utils.set_random_seed(seed)
    model = model_lib.build_classifier(
        config.Model(backbone=backbone, weights="none", num_classes=len(names), image_size=image_size,
                     bn="trainable", dropout=0.1), drop_connect_rate=0.0)
    steps = -(-len(x) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=learning_rate,
                                                      warmup_steps=max(1, steps // 20))
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    logging.info("pretraining the stand-in backbone: %s from scratch on %d %s images at %d px (once; cached)",
                 backbone, len(x), task, image_size)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=1 if sys.stdout.isatty() else 2)
    settle_bn_statistics(model, x[:2048], seed=seed)
    tmp = f"{path}.tmp-{os.getpid()}.h5"
    model_lib.backbone_of(model).save_weights(tmp)
    os.replace(tmp, path)
    logging.info("stand-in backbone written to %s", path)
    return path


def render_arrays(task: str, *, per_class: int, size: int, seed: int):
    """(uint8 images [N, S, S, 3], int32 labels [N]) of `task`, class after class."""
    names = TASKS[task]
    x = np.zeros((per_class * len(names), size, size, 3), np.uint8)
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        for i in range(per_class):
            x[index * per_class + i] = np.asarray(render(task, name, size=size, rng=rng))
    return x, np.repeat(np.arange(len(names), dtype=np.int32), per_class)


def settle_bn_statistics(model, x: np.ndarray, *, seed: int, batch_size: int = 64) -> None:
    """BatchNormalization's moving statistics set to the average over batches of `x`.

    Momentum 0.99 leaves a 200-step training's moving averages mostly at their initial values,
    and inference-mode features, the ones transfer uses, would be wrong. Batch k is folded in
    with momentum k / (k + 1), which makes the statistics the plain mean over the batches.
    """
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    from trainer import model as model_lib  # pylint: disable=import-outside-toplevel
    layers = [l for l in model_lib.leaf_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    saved = [l.momentum for l in layers]
    order = np.random.default_rng(seed).permutation(len(x))
    for k, start in enumerate(range(0, len(x) - batch_size + 1, batch_size)):
        for layer in layers:
            layer.momentum = k / (k + 1.0)
        model(x[order[start:start + batch_size]].astype(np.float32), training=True)
    for layer, momentum in zip(layers, saved):
        layer.momentum = momentum


FLAGS = flags.FLAGS
def define_flags() -> None:
    """Defines the flags; called when the module runs as a command (or by tests), so that
    importing it beside another entry point defines no clashing flags."""
    flagutil.define("string", "output_dir", None, "Folder to write <class>/<image>.jpg into.")
    flagutil.define("enum", "task", "shapes", list(TASKS), "Which synthetic task.")
    flagutil.define("integer", "per_class", 40, "Images per class.")
    flagutil.define("integer", "size", 96, "Image side in pixels.")
    flagutil.define("integer", "seed", 0, "Random seed; the same seed writes the same images.")
    flagutil.define("string", "pretrain_weights", None, "Instead of images: write the stand-in backbone (B0 pretrained "
                    "on `glyphs`, an offline stand-in for ImageNet weights) as a notop weights file here; pretrained "
                    "once and kept under ~/.cache/effnet-trainer.")
    flags.adopt_module_key_flags(flagutil)  # --helpshort lists them as this command's flags




def main(argv):
    del argv
    if FLAGS.pretrain_weights:
        path = pretrained_weights()
        if os.path.abspath(path) != os.path.abspath(FLAGS.pretrain_weights):
            shutil.copyfile(path, FLAGS.pretrain_weights)
        print(FLAGS.pretrain_weights)
        return
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required: the folder to write the demo images into")
    counts = write_images(FLAGS.output_dir, task=FLAGS.task, per_class=FLAGS.per_class, size=FLAGS.size,
                          seed=FLAGS.seed)
    logging.info("wrote %d images in %d classes to %s", sum(counts.values()), len(counts), FLAGS.output_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
