"""The learning-rate rule: never shrink a small batch's rate, grow a large one's by the square root."""
import pytest

from trainer.training import schedules


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


def test_phase_plan_derives_every_number_from_the_batch():
    from trainer.configs import config
    phase = config.Phase(name="finetune", epochs=4, batch_size=256, learning_rate=1e-4, unfreeze="all",
                         warmup_epochs=1.0, base_batch_size=64)
    plan = schedules.PhasePlan(phase, replicas=4, accumulate_steps=2, num_examples=1000, steps_cap=None)
    assert (plan.per_replica_batch_size, plan.micro_batch_size, plan.steps_per_epoch) == (64, 32, 4)
    assert plan.peak_learning_rate == pytest.approx(2e-4) and plan.warmup_steps == 1  # a tenth of 16 steps
    half = plan.with_batch_size(128)
    assert (half.per_replica_batch_size, half.micro_batch_size, half.steps_per_epoch) == (32, 16, 8)
    assert half.peak_learning_rate == pytest.approx(1e-4 * 2 ** 0.5) and half.warmup_steps == 3
    assert half.to_dict()["learning_rate"] == half.peak_learning_rate and plan.batch_size == 256  # a new value
    assert schedules.PhasePlan(phase, num_examples=1000, steps_cap=2).steps_per_epoch == 2
