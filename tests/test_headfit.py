"""The frozen phase's head as a cross-validated probe (trainer/training/headfit.py), and its place in training.

The solver is checked against what it claims: the optimum of its objective (its gradient
vanishes), the standardization folded into the kernel (the same logits on raw embeddings), a
regularization chosen by cross-validation (a strong one on noise, a weak one on separable
classes), class weights that move the decision, and on real photos an accuracy at least that of
Adam epochs on the same cache. A tiny training run shows the phase recorded as one epoch whose
backbone never moved.
"""
import json

import numpy as np
import pytest

from trainer.evaluation import metrics
from trainer.training import headfit


def _blobs(n_per_class, *, classes=3, dim=40, spread=1.0, views=1, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    x = centers[labels] * 0.5 + 10 + rng.normal(size=(len(labels), dim)) * spread * 4
    views_x = np.stack([x + rng.normal(size=x.shape) * 0.1 for _ in range(views)], axis=1)
    return views_x.astype(np.float32), labels


def test_the_solution_is_the_objectives_optimum():
    x, y = _blobs(30, dim=20)
    x = x[:, 0].astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)  # as fit_head solves it
    c = 0.05
    kernel, bias = headfit._solve(x, y, np.ones(len(y)), c=c, num_classes=3)  # pylint: disable=protected-access
    log_p = metrics.log_softmax(x @ kernel + bias)
    residual = c * (np.exp(log_p) - np.eye(3)[y])
    assert np.abs(x.T @ residual + kernel).max() < 1e-2 * np.abs(kernel).max()
    assert np.abs(residual.sum(axis=0)).max() < 1e-2


def test_standardization_is_folded_into_the_kernel():
    x, y = _blobs(25, views=2)
    fit = headfit.fit_head(x, y, num_classes=3)
    mean = x.reshape(-1, x.shape[-1]).mean(0)
    scale = x.reshape(-1, x.shape[-1]).std(0) + 1e-6
    standardized_kernel = fit.kernel * scale[:, None]  # the head in standardized coordinates
    raw = x[:, 0] @ fit.kernel + fit.bias
    standardized = ((x[:, 0] - mean) / scale) @ standardized_kernel + (fit.bias + mean @ fit.kernel)
    np.testing.assert_allclose(raw, standardized, rtol=1e-3, atol=1e-3)
    assert fit.kernel.dtype == np.float32 and fit.kernel.shape == (x.shape[-1], 3)


def test_cross_validation_regularizes_noise_and_not_separable_classes():
    noise, noise_labels = _blobs(40, spread=30.0, seed=1)
    clean, clean_labels = _blobs(40, spread=0.05, seed=2)
    assert headfit.fit_head(noise, noise_labels, num_classes=3).c < headfit.fit_head(clean, clean_labels,
                                                                                    num_classes=3).c
    clean_fit = headfit.fit_head(clean, clean_labels, num_classes=3)
    assert clean_fit.cv_accuracy == 1.0 and clean_fit.folds == headfit.FOLDS


def test_class_weights_move_the_decision_toward_the_weighted_class():
    x, y = _blobs(40, spread=3.0, seed=3)
    plain = headfit.fit_head(x, y, num_classes=3)
    weighted = headfit.fit_head(x, y, num_classes=3, weights=np.where(y == 2, 10.0, 1.0))
    predicted = lambda fit: (x[:, 0] @ fit.kernel + fit.bias).argmax(1)  # noqa: E731
    assert (predicted(weighted) == 2).sum() > (predicted(plain) == 2).sum()


def test_a_class_without_examples_is_never_predicted():
    x, y = _blobs(20)
    fit = headfit.fit_head(x, y, num_classes=4)
    assert ((x[:, 0] @ fit.kernel + fit.bias).argmax(1) != 3).all()


@pytest.mark.slow
def test_a_tiny_run_records_the_probe_as_the_frozen_phase(tmp_path, demo_records):
    from tests.testing.cli import run_module, train_flags
    from tests.testing.presets import TINY
    model_dir = tmp_path / "run"
    result = run_module("trainer.task", *train_flags(model_dir, demo_records, "none", "--finetune_epochs=0",
                                                     "--noeval_report", "--nocalibrate", backbone=TINY), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the head as a cross-validated probe" in result.stderr
    history = json.loads((model_dir / "history.json").read_text())
    assert [(h["phase"], h["epoch"]) for h in history] == [("frozen", 1)]
    assert history[0]["probe_c"] in headfit.C_GRID and history[0]["val_accuracy"] is not None
    epochs = run_module("trainer.task", *train_flags(tmp_path / "epochs", demo_records, "none", "--finetune_epochs=0",
                                                     "--noeval_report", "--nocalibrate", "--frozen_head=epochs",
                                                     backbone=TINY), timeout=600)
    assert epochs.returncode == 0 and "epochs of Adam on the embeddings (--frozen_head=epochs)" in epochs.stderr
