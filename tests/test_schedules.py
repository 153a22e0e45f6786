"""The learning-rate rule: never shrink a small batch's rate, grow a large one's by the square root."""
import pytest

from trainer import schedules


def test_rate_is_as_given_at_or_below_the_base_batch():
    for batch in (1, 8, 16, 64):
        assert schedules.scaled_learning_rate(1e-3, batch_size=batch, base_batch_size=64) == 1e-3


def test_rate_grows_with_the_square_root_above_the_base_batch():
    assert schedules.scaled_learning_rate(1e-3, batch_size=256, base_batch_size=64) == pytest.approx(2e-3)
    assert schedules.scaled_learning_rate(1e-3, batch_size=1024, base_batch_size=64) == pytest.approx(4e-3)
    assert schedules.scaled_learning_rate(1e-3, batch_size=1024, base_batch_size=0) == 1e-3  # 0: as given


def test_warmup_takes_at_most_a_tenth_of_the_phase():
    assert schedules.warmup_steps(warmup_epochs=1.0, steps_per_epoch=12, total_steps=120) == 12
    assert schedules.warmup_steps(warmup_epochs=1.0, steps_per_epoch=12, total_steps=24) == 2  # a short phase
    assert schedules.warmup_steps(warmup_epochs=0.0, steps_per_epoch=12, total_steps=120) == 0
