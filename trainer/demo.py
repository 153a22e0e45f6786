"""Built-in demo data: synthetic labelled images, generated deterministically as JPEG folders.

`python -m trainer.demo --output_dir=DIR` writes DIR/<class>/<class>_NNNN.jpg. Two tasks:
  shapes   - 4 classes (circle, square, triangle, cross) of random colour, size and position on a
             noisy background: the demo's classification task.
  patterns - 8 classes of textures (stripes at four angles, checkers, dots, rings, noise): a
             different task, used by the tests to pretrain a small backbone whose features then
             transfer to `shapes` (random EfficientNet features carry nothing; see DESIGN.md).
"""
from __future__ import annotations

import io
import os

from absl import app, flags, logging
import numpy as np
from PIL import Image, ImageDraw

TASKS = {
    "shapes": ("circle", "cross", "square", "triangle"),
    "patterns": ("checkers", "dots", "noise", "rings", "stripes000", "stripes045", "stripes090", "stripes135"),
}


def render(task: str, class_name: str, *, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of `class_name` drawn with randomness from `rng`."""
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    pixels = np.clip(np.ones((size, size, 3)) * background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    colour = tuple(int(c) for c in (255 - background + rng.integers(-40, 41, 3)) % 256)
    if task == "shapes":
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
    else:
        w = max(2, int(r / 3))
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)


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


FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Folder to write <class>/<image>.jpg into.")
flags.DEFINE_enum("task", "shapes", list(TASKS), "Which synthetic task.")
flags.DEFINE_integer("per_class", 40, "Images per class.")
flags.DEFINE_integer("size", 96, "Image side in pixels.")
flags.DEFINE_integer("seed", 0, "Random seed; the same seed writes the same images.")


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required: the folder to write the demo images into")
    counts = write_images(FLAGS.output_dir, task=FLAGS.task, per_class=FLAGS.per_class, size=FLAGS.size,
                          seed=FLAGS.seed)
    logging.info("wrote %d images in %d classes to %s", sum(counts.values()), len(counts), FLAGS.output_dir)


if __name__ == "__main__":
    app.run(main)
