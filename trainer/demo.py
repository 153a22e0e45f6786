"""Built-in demo data: synthetic labelled images, generated deterministically as JPEG folders.

`python -m trainer.demo --output_dir=DIR` writes DIR/<class>/<class>_NNNN.jpg. Three tasks:
  shapes   - 4 classes (circle, square, triangle, cross) of random colour, size and position on a
             noisy background: the demo's classification task.
  glyphs   - 8 other shapes (diamond, ellipse, bars, hexagon, ring, star, x): a different task,
             on which `pretrain_backbone` trains a small backbone whose features then transfer
             to `shapes`. It stands in for ImageNet weights where none can be downloaded
             (random EfficientNet features carry nothing: a frozen-phase head on them stays at
             chance).
  patterns - 8 classes of textures (stripes at four angles, checkers, dots, rings, noise).

`python -m trainer.demo --pretrain_weights=FILE.h5` writes such a backbone as a notop HDF5
weights file, the format of the official downloads, for `--weights=FILE.h5`.
"""
from __future__ import annotations

import io
import os

from absl import app, flags, logging

from trainer import flagutil
import numpy as np
from PIL import Image, ImageDraw

TASKS = {
    "shapes": ("circle", "cross", "square", "triangle"),
    "patterns": ("checkers", "dots", "noise", "rings", "stripes000", "stripes045", "stripes090", "stripes135"),
    "glyphs": ("diamond", "ellipse", "hbar", "hexagon", "ring", "star", "vbar", "xmark"),
}


def render(task: str, class_name: str, *, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of `class_name` drawn with randomness from `rng`."""
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    pixels = np.clip(np.ones((size, size, 3)) * background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    colour = tuple(int(c) for c in (255 - background + rng.integers(-40, 41, 3)) % 256)
    if task in ("shapes", "glyphs"):
        _draw_shape(ImageDraw.Draw(image), class_name, size=size, colour=colour, rng=rng)
        return image
    return Image.fromarray(_pattern(class_name, size=size, rng=rng, base=pixels, colour=np.array(colour)))


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, *, size: int, colour, rng) -> None:
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(r, size - r, 2)
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


def pretrain_backbone(path: str, *, backbone: str = "efficientnet-b0", image_size: int = 64, epochs: int = 8,
                      per_class: int = 96, seed: int = 123, task: str = "glyphs") -> str:
    """Trains `backbone` from scratch on `task` (not the demo's shapes) and saves its notop weights to `path`.

    All layers train, BatchNormalization included (bn="trainable"), as in ImageNet pretraining.
    A few minutes on 2 CPU cores at the defaults; the file is written atomically.
    """
    import tf_keras as keras  # pylint: disable=import-outside-toplevel  # TensorFlow only when needed
    from trainer import config, model as model_lib  # pylint: disable=import-outside-toplevel
    names = TASKS[task]
    images, labels = [], []
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        for _ in range(per_class):
            images.append(np.asarray(render(task, name, size=image_size, rng=rng), np.float32))
            labels.append(index)
    keras.utils.set_random_seed(seed)
    model = model_lib.build_classifier(config.Model(backbone=backbone, weights="none", num_classes=len(names),
                                                    image_size=image_size, bn="trainable", dropout=0.1))
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.stack(images)
    model.fit(x, np.array(labels, np.int32), batch_size=32, epochs=epochs, shuffle=True, verbose=2)
    _settle_bn_statistics(model, x, seed=seed)
    tmp = f"{path}.tmp-{os.getpid()}.h5"
    model_lib.backbone_of(model).save_weights(tmp)
    os.replace(tmp, path)
    return path


def _settle_bn_statistics(model, x: np.ndarray, *, seed: int, passes: int = 3, batch_size: int = 64) -> None:
    """Forward passes in training mode so BN moving averages reach the trained weights' statistics.

    With momentum 0.99 a short pretraining leaves the moving averages partly at their initial
    values (0.99**150 ~ 0.2), and inference-mode features, the ones transfer uses, suffer.
    """
    rng = np.random.default_rng(seed)
    for _ in range(passes):
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            model(x[order[start:start + batch_size]], training=True)


FLAGS = flags.FLAGS
def define_flags() -> None:
    """Defines the flags; called when the module runs as a command (or by tests), so that
    importing it beside another entry point defines no clashing flags."""
    flagutil.define("string", "output_dir", None, "Folder to write <class>/<image>.jpg into.")
    flagutil.define("enum", "task", "shapes", list(TASKS), "Which synthetic task.")
    flagutil.define("integer", "per_class", 40, "Images per class.")
    flagutil.define("integer", "size", 96, "Image side in pixels.")
    flagutil.define("integer", "seed", 0, "Random seed; the same seed writes the same images.")
    flagutil.define("string", "pretrain_weights", None, "Instead of images: pretrain B0 on `glyphs` and write its notop "
                        "weights file here (an offline stand-in for ImageNet weights).")
    flags.adopt_module_key_flags(flagutil)  # --helpshort lists them as this command's flags




def main(argv):
    del argv
    if FLAGS.pretrain_weights:
        if os.path.exists(FLAGS.pretrain_weights):
            logging.info("%s exists; delete it to pretrain again", FLAGS.pretrain_weights)
        else:
            pretrain_backbone(FLAGS.pretrain_weights)
        return
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required: the folder to write the demo images into")
    counts = write_images(FLAGS.output_dir, task=FLAGS.task, per_class=FLAGS.per_class, size=FLAGS.size,
                          seed=FLAGS.seed)
    logging.info("wrote %d images in %d classes to %s", sum(counts.values()), len(counts), FLAGS.output_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
