"""A report's scalars, tables and PNGs written into a TensorBoard log."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence
import tensorflow as tf
from trainer.evaluation import metrics as metrics_lib


def _pairs_markdown(pairs: Sequence[Mapping]) -> str:
    lines = ["| true | predicted | count | fraction of true |", "|---|---|---|---|"]
    lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | {p['fraction']:.1%} |" for p in pairs]
    return "\n".join(lines)


def write_tensorboard(log_dir: str, *, metrics: Mapping, images: Optional[Mapping[str, str]] = None,
                      step: int = 0, prefix: str = "eval") -> None:
    """Writes a report to a TensorBoard log: its numbers as scalars, PNGs as images, and the
    most-confused pairs as a text table, all under `prefix/`.

    Args:
      log_dir: the event folder (local or gs://), e.g. MODEL_DIR/logs/eval.
      metrics: a metrics dict (as `classification_metrics` or metrics.json).
      images: tag -> path of a PNG (local or gs://), e.g. the confusion matrix.
      step: the step the summaries are recorded at (e.g. the epoch count of the run).
      prefix: the tag prefix.
    """
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=step):
        for name, value in sorted(metrics_lib.scalar_metrics(metrics).items()):
            tf.summary.scalar(f"{prefix}/{name}", value)
        for tag, png_path in sorted((images or {}).items()):
            with tf.io.gfile.GFile(png_path, "rb") as f:
                pixels = tf.image.decode_png(f.read(), channels=3)
            tf.summary.image(f"{prefix}/{tag}", pixels[None])
        if metrics.get("most_confused"):
            tf.summary.text(f"{prefix}/most_confused", _pairs_markdown(metrics["most_confused"]))
    writer.flush()
    writer.close()
