"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one
number T, fitted on the validation split by minimizing the log loss of softmax(logits / T).

A fine-tuned network is overconfident (its 0.99 is right far less than 99 % of the time); one
temperature fixes most of that without changing any prediction, since dividing every logit by
the same positive T keeps their order. It is folded into the head's Dense layer (kernel and bias
divided by T), so every export made from the model — the SavedModel's signatures and each .tflite
— serves calibrated probabilities with no extra op. The run keeps T in MODEL_DIR/calibration.json
so that a re-export from a checkpoint (which holds the unscaled head) applies it again.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from trainer import model as model_lib
from trainer import reports

_LOG_RANGE = (math.log(0.05), math.log(20.0))
_EPSILON = 1e-12


def _nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = log_p / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, *, iterations: int = 80) -> float:
    """The T in [0.05, 20] minimizing the validation log loss (golden-section search on log T;
    the loss is convex in 1/T). log(p) stands for the logits: softmax(log p / T) = softmax(z / T)."""
    log_p = np.log(np.maximum(np.asarray(probabilities, np.float64), _EPSILON))
    labels = np.asarray(labels, np.int64)
    lo, hi = _LOG_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(log_p, labels, math.exp(a)), _nll(log_p, labels, math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(log_p, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(log_p, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def fit(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """The fitted temperature with the figures it changes: ECE before (the report measures
    after, through the calibrated export) and the log loss before and after."""
    temperature = fit_temperature(probabilities, labels)
    labels = np.asarray(labels, np.int64)
    before = np.asarray(probabilities, np.float64)
    top1 = before.argmax(axis=1) == labels
    return {"temperature": temperature,
            "expected_calibration_error_before": reports.expected_calibration_error(
                confidence=before.max(axis=1), correct=top1),
            "log_loss_before": _log_loss(before, labels),
            "log_loss_after": _log_loss(scaled(before, temperature), labels)}


def _log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    true = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(true, _EPSILON))))


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): what the folded head gives for these probabilities."""
    z = np.log(np.maximum(np.asarray(probabilities, np.float64), _EPSILON)) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def fold_into_head(model, temperature: Optional[float]) -> None:
    """Divides the softmax head's kernel and bias by T (nothing for None or 1)."""
    if not temperature or temperature == 1.0:
        return
    head = model.get_layer(model_lib.HEAD_LAYER)
    head.set_weights([w / temperature for w in head.get_weights()])
