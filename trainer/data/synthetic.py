"""Synthetic labelled images of a chosen size and count (shapes, glyphs, patterns): the library
of `python -m trainer.demo`, whose docstring describes the tasks. For smoke runs, benchmarks and
plumbing tests; the demo itself trains on real photos (data/fashion-mnist)."""
from __future__ import annotations

import io
import os
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
