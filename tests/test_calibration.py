"""Temperature scaling: fitted on validation data, it lowers the log loss on other data, keeps
every prediction, and is folded exactly into the head that every export serves; where the
validation split cannot support a temperature (too few images, no sign of miscalibration) the
run keeps T = 1 and says why (the rule of docs/evaluate.md)."""
import os
import re

import numpy as np

import trainer  # noqa: F401

from tests.testing.presets import REPO_DIR, TINY, TINY_SIZE
from trainer.configs import config
from trainer.evaluation import calibration, metrics
from trainer.models import classifier


def _overconfident(n: int, *, seed: int):
    """Softmax outputs of a 5-class model whose logits are 4x too large (70 % right)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5))
    right = rng.random(n) < 0.7
    logits[np.arange(n), np.where(right, labels, (labels + 1) % 5)] += 2.0
    z = 4.0 * logits
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), labels


def _calibrated(n: int, *, seed: int):
    """Softmax outputs of a 5-class model that is calibrated by construction: each label is drawn
    from the model's own probabilities."""
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.normal(0, 1, (n, 5))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return p, np.minimum(labels, 4)


def _log_loss(p, labels):
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-12))))


def test_temperature_fitted_on_validation_lowers_held_out_log_loss_and_keeps_predictions():
    p_val, y_val = _overconfident(400, seed=0)
    p_test, y_test = _overconfident(400, seed=1)
    t = calibration.fit_temperature(p_val, y_val)
    assert 2.5 < t < 6.0  # the 4x overconfidence, found back
    after = calibration.scaled(p_test, t)
    assert _log_loss(after, y_test) < 0.8 * _log_loss(p_test, y_test)
    np.testing.assert_array_equal(after.argmax(axis=1), p_test.argmax(axis=1))
    ece = [metrics.expected_calibration_error(confidence=p.max(axis=1), correct=p.argmax(axis=1) == y_test)
           for p in (p_test, after)]
    assert ece[1] < ece[0] / 2
    grid = [_log_loss(calibration.scaled(p_val, s), y_val) for s in (t * 0.9, t, t * 1.1)]
    assert grid[1] <= min(grid[0], grid[2])  # a minimum, not just an improvement


def test_folded_head_gives_exactly_the_scaled_probabilities():
    model = classifier.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=3, image_size=TINY_SIZE)
    head = model.get_layer(classifier.HEAD_LAYER)
    head.set_weights([w * 20 for w in head.get_weights()])  # confident enough for T to matter
    x = np.random.default_rng(0).uniform(0, 255, (8, TINY_SIZE, TINY_SIZE, 3)).astype(np.float32)
    before = model.predict(x, verbose=0)
    calibration.fold_into_head(model, 2.5)
    np.testing.assert_allclose(model.predict(x, verbose=0), calibration.scaled(before, 2.5), atol=1e-5)


def test_a_tiny_validation_split_gets_no_temperature_and_says_why():
    """20 photos of a 4x overconfident model: a temperature fitted on them can make held-out ECE
    worse (0.122 -> 0.145 on real photos), so the run keeps T = 1 and records the reason."""
    p_val, y_val = _overconfident(20, seed=0)
    result = calibration.fit(p_val, y_val)
    assert result["temperature"] == 1.0
    assert result["log_loss_after"] == result["log_loss_before"]
    entry = result["calibration"]
    assert entry["fitted"] is False and entry["num_examples"] == 20 and entry["rule"] == calibration.RULE
    assert entry["reason"] == f"20 validation images, below the {calibration.MIN_EXAMPLES} a temperature needs"
    model = classifier.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=3, image_size=TINY_SIZE)
    weights = model.get_layer(classifier.HEAD_LAYER).get_weights()
    calibration.fold_into_head(model, result["temperature"])  # what a re-export folds from calibration.json
    for before, after in zip(weights, model.get_layer(classifier.HEAD_LAYER).get_weights()):
        np.testing.assert_array_equal(before, after)


def test_a_large_overconfident_split_gets_a_temperature_above_1_but_not_beyond_the_fitted_one():
    p_val, y_val = _overconfident(400, seed=0)
    p_test, y_test = _overconfident(2000, seed=1)
    result = calibration.fit(p_val, y_val)
    entry = result["calibration"]
    assert entry["fitted"] is True and entry["num_examples"] == 400
    assert entry["likelihood_ratio"] > calibration.CRITICAL
    assert 2.0 < result["temperature"] < entry["max_likelihood_temperature"] < 6.0  # toward 1, inside the 95 % interval
    assert result["log_loss_after"] < result["log_loss_before"]
    ece = [metrics.expected_calibration_error(confidence=p.max(axis=1), correct=p.argmax(axis=1) == y_test)
           for p in (p_test, calibration.scaled(p_test, result["temperature"]))]
    assert ece[1] < ece[0] / 2


def test_a_calibrated_model_keeps_temperature_1_however_many_images():
    """With no miscalibration to find, the fitted T's gain in log loss is chance: T stays 1."""
    p_val, y_val = _calibrated(1000, seed=0)
    result = calibration.fit(p_val, y_val)
    entry = result["calibration"]
    assert result["temperature"] == 1.0 and entry["fitted"] is False
    assert entry["max_likelihood_temperature"] != 1.0 and entry["likelihood_ratio"] <= calibration.CRITICAL
    assert "no more than chance" in entry["reason"] and "1000 validation images" in entry["reason"]


def test_the_rule_is_the_documented_one():
    """The rule each calibration.json and metrics.json records is, word for word, the one
    docs/evaluate.md states and measures."""
    assert calibration.decide(calibration.MIN_EXAMPLES - 1) is not None
    assert calibration.decide(calibration.MIN_EXAMPLES) is None
    docs = os.path.join(REPO_DIR, "docs", "evaluate.md")
    with open(docs) as f:
        text = re.sub(r"\s+", " ", f.read())
    assert calibration.RULE in text
    assert "python bench/calibration.py" in text
