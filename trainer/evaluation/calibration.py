"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one
number T, fitted on the validation split by minimizing the log loss of softmax(logits / T).

A fine-tuned network is overconfident (its 0.99 is right far less than 99 % of the time); one
temperature fixes most of that without changing any prediction, since dividing every logit by
the same positive T keeps their order. It is folded into the head's Dense layer (kernel and bias
divided by T), so every export made from the model — the SavedModel's signatures and each .tflite
— serves calibrated probabilities with no extra op. The run keeps T in MODEL_DIR/calibration.json
so that a re-export from a checkpoint (which holds the unscaled head) applies it again.

A temperature fitted on a few photos can make things worse: on 20 validation photos it took a
real run's held-out ECE from 0.122 to 0.145. So `fit` follows one rule (RULE; measured by
bench/calibration.py, docs/evaluate.md): no temperature below MIN_EXAMPLES validation images;
none where the fitted one lowers their log loss by no more than chance would (a likelihood-ratio
test); otherwise not the fitted T but the end of its 95 % likelihood interval nearest 1, a T the
data support at least that strongly, so that the served T errs toward leaving the model alone.
A skipped calibration keeps T = 1 (nothing folded) and says why.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from trainer.evaluation import metrics
from trainer.models import classifier

_LOG_RANGE = (math.log(0.05), math.log(20.0))
# Below this many validation images the likelihood-ratio test misfires on a calibrated model and
# the T it lets through can raise held-out ECE by 0.1; from 100 on, the rule's worst case in
# bench/calibration.py is +0.015 (docs/evaluate.md).
MIN_EXAMPLES = 100
# The chi-square quantile (1 degree of freedom, 95 %) of the likelihood-ratio test and interval.
CRITICAL = 3.84
RULE = (f"a temperature needs at least {MIN_EXAMPLES} validation images and a likelihood-ratio statistic "
        f"above {CRITICAL} (2 n times the drop in mean log loss); the one applied is the end nearest 1 of the "
        f"95 % likelihood interval of the maximum-likelihood temperature")


def _nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return float(-np.mean(metrics.log_softmax(log_p / temperature)[np.arange(len(labels)), labels]))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, *, iterations: int = 80) -> float:
    """The T in [0.05, 20] minimizing the validation log loss (golden-section search on log T;
    the loss is convex in 1/T). log(p) stands for the logits: softmax(log p / T) = softmax(z / T)."""
    log_p = metrics.log_probabilities(probabilities)
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


def decide(n_examples: int, *, min_examples: int = MIN_EXAMPLES) -> Optional[str]:
    """Why `n_examples` validation images cannot carry a temperature, or None when they can:
    below MIN_EXAMPLES one lucky draw moves T far enough to spoil a calibrated model.
    (`min_examples`: for bench/calibration.py, which measures the rule without it.)"""
    if n_examples < min_examples:
        return f"{n_examples} validation images, below the {min_examples} a temperature needs"
    return None


def conservative_temperature(probabilities: np.ndarray, labels: np.ndarray) -> Tuple[float, float, float]:
    """(T to apply, maximum-likelihood T, likelihood-ratio statistic) on the validation split.

    The statistic 2 n (loss(1) - loss(fitted)) is chi-square with one degree of freedom when the
    model is calibrated: at or below CRITICAL the data show no miscalibration and T is 1. Above
    it, T is the end nearest 1 of the 95 % likelihood interval (the loss is convex in 1/T, so
    monotone between 1 and the fitted T): the data put the true temperature beyond it, so the
    applied one moves the model toward calibration and, but for a 2.5 % chance, not past it."""
    log_p = metrics.log_probabilities(probabilities)
    labels = np.asarray(labels, np.int64)
    fitted = fit_temperature(probabilities, labels)
    n = len(labels)
    statistic = 2 * n * (_nll(log_p, labels, 1.0) - _nll(log_p, labels, fitted))
    if statistic <= CRITICAL:
        return 1.0, fitted, statistic
    bound = _nll(log_p, labels, fitted) + CRITICAL / (2 * n)
    outside, inside = 0.0, math.log(fitted)
    for _ in range(40):
        middle = (outside + inside) / 2
        if _nll(log_p, labels, math.exp(middle)) > bound:
            outside = middle
        else:
            inside = middle
    return float(math.exp(inside)), fitted, statistic


def fit(probabilities: np.ndarray, labels: np.ndarray, *, min_examples: int = MIN_EXAMPLES) -> dict:
    """The temperature the rule allows, with the figures it changes: ECE before (the report
    measures after, through the calibrated export), the log loss before and after, and under
    "calibration" whether a temperature was fitted, why, on how many images, by which rule."""
    labels = np.asarray(labels, np.int64)
    before = np.asarray(probabilities, np.float64)
    n = len(labels)
    entry = {"fitted": False, "num_examples": n, "rule": RULE}
    reason = decide(n, min_examples=min_examples)
    temperature = 1.0
    if reason is None:
        temperature, fitted, statistic = conservative_temperature(before, labels)
        entry.update(fitted=temperature != 1.0, max_likelihood_temperature=fitted, likelihood_ratio=statistic)
        reason = _reason(n, temperature=temperature, fitted=fitted, statistic=statistic)
    top1 = before.argmax(axis=1) == labels
    return {"temperature": temperature,
            "expected_calibration_error_before": metrics.expected_calibration_error(
                confidence=before.max(axis=1), correct=top1),
            "log_loss_before": metrics.log_loss(before, labels),
            "log_loss_after": metrics.log_loss(scaled(before, temperature) if entry["fitted"] else before, labels),
            "calibration": {**entry, "reason": reason}}


def _reason(n: int, *, temperature: float, fitted: float, statistic: float) -> str:
    if temperature == 1.0:
        return (f"on {n} validation images the maximum-likelihood T = {fitted:.3f} lowers the log loss no more "
                f"than chance would (likelihood ratio {statistic:.2f} <= {CRITICAL})")
    return (f"T = {temperature:.3f} on {n} validation images: the end nearest 1 of the 95 % interval of the "
            f"maximum-likelihood T = {fitted:.3f} (likelihood ratio {statistic:.1f} > {CRITICAL})")


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): what the folded head gives for these probabilities."""
    return metrics.softmax(metrics.log_probabilities(probabilities) / temperature)


def fold_into_head(model, temperature: Optional[float]) -> None:
    """Divides the softmax head's kernel and bias by T (nothing for None or 1)."""
    if not temperature or temperature == 1.0:
        return
    head = model.get_layer(classifier.HEAD_LAYER)
    head.set_weights([w / temperature for w in head.get_weights()])
