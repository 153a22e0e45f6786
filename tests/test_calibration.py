"""Temperature scaling: fitted on validation data, it lowers the log loss on other data, keeps
every prediction, and is folded exactly into the head that every export serves."""
import numpy as np

import trainer  # noqa: F401

from tests.testing.presets import TINY, TINY_SIZE
from trainer import calibration, config, reports
from trainer import model as model_lib


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
    ece = [reports.expected_calibration_error(confidence=p.max(axis=1), correct=p.argmax(axis=1) == y_test)
           for p in (p_test, after)]
    assert ece[1] < ece[0] / 2
    grid = [_log_loss(calibration.scaled(p_val, s), y_val) for s in (t * 0.9, t, t * 1.1)]
    assert grid[1] <= min(grid[0], grid[2])  # a minimum, not just an improvement


def test_folded_head_gives_exactly_the_scaled_probabilities():
    model = model_lib.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=3, image_size=TINY_SIZE)
    head = model.get_layer(model_lib.HEAD_LAYER)
    head.set_weights([w * 20 for w in head.get_weights()])  # confident enough for T to matter
    x = np.random.default_rng(0).uniform(0, 255, (8, TINY_SIZE, TINY_SIZE, 3)).astype(np.float32)
    before = model.predict(x, verbose=0)
    calibration.fold_into_head(model, 2.5)
    np.testing.assert_allclose(model.predict(x, verbose=0), calibration.scaled(before, 2.5), atol=1e-5)
