"""Learning-curve plots, drawn with matplotlib's headless Agg backend and written via gfile."""
from __future__ import annotations

import io
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from effnet_common import fileio  # pylint: disable=wrong-import-position


def plot_learning_curves(history: List[dict], path: str) -> None:
    """Loss and accuracy over the epochs of all phases, with each phase boundary marked."""
    if not history:
        return
    steps = list(range(1, len(history) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [h.get(prefix + metric) for h in history]
            if any(v is not None for v in values):
                ax.plot(steps, [float("nan") if v is None else v for v in values], style, marker="o",
                        label=("validation " if prefix else "training ") + metric)
        for i in range(1, len(history)):
            if history[i]["phase"] != history[i - 1]["phase"]:
                ax.axvline(i + 0.5, color="gray", linestyle=":")
                ax.text(i + 0.6, ax.get_ylim()[1], history[i]["phase"], va="top", fontsize=8, color="gray")
        ax.set_xlabel("epoch (all phases)")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: str) -> None:
    """Renders `fig` to PNG and writes it atomically (local or gs://)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fileio.write_bytes_atomic(path, buf.getvalue())
