"""The rows of a batch prediction's CSV: the top-k classes and scores of each image.

One definition for every route that scores images (`python -m trainer.predict` on this machine,
`trainer.cloud.batch_predict` on a Vertex AI batch prediction job), so the same export and the
same images give the same CSV whichever route computed the probabilities. Pure: paths and
probabilities in, rows out.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from trainer.evaluation import metrics


def top_k_rows(predictions, *, class_names: Sequence[str], top_k: int,
               thresholds: Optional[np.ndarray] = None) -> List[list]:
    """[path, class_1, score_1, ..., class_k, score_k] per image, most probable first.

    Args:
      predictions: anything with `paths` (N) and `probabilities` ([N, C]), e.g.
        trainer.inference.prediction.Predictions.
      class_names: the export's labels, index i = column i of the probabilities.
      top_k: classes per row (the caller caps it at C).
      thresholds: a multi-label export's per-class thresholds: the row then starts
        [path, labels, ...], labels being the classes at or over their thresholds joined by '|'.
    """
    top = metrics.top_k_indices(predictions.probabilities, top_k)
    rows = []
    for path, probs, indices in zip(predictions.paths, predictions.probabilities, top):
        row = [path]
        if thresholds is not None:
            row.append("|".join(n for n, p, t in zip(class_names, probs, thresholds) if p >= t))
        for i in indices:
            row += [class_names[i], f"{probs[i]:.6f}"]
        rows.append(row)
    return rows


def csv_header(top_k: int, *, multi_label: bool = False) -> List[str]:
    """The header of `top_k_rows`: path, (labels,) class_1, score_1, ..."""
    return ["path"] + (["labels"] if multi_label else []) + [
        f"{what}_{i}" for i in range(1, top_k + 1) for what in ("class", "score")]
