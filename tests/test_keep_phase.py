"""A run never ends below its own frozen phase on validation: where fine-tuning scores lower on
the validation split than the phase before it, the run keeps the earlier phase's weights
(`--keep_best_phase`, on by default), says so in the log and in history.json, and the
validation report lists "phase" among what the split chose."""
import numpy as np
import pytest
import tensorflow as tf

from tests.testing.presets import IMAGE_SIZE, PRETRAINED
from trainer.configs import config
from trainer.data import discovery, pipelines
from trainer.runtime import rundir
from trainer.training import train


@pytest.mark.parametrize("history, kept", [
    # accuracy: the later phase is kept unless it scores strictly lower
    ([("frozen", 0.80, 0.5), ("finetune", 0.70, 0.9), ("finetune", 0.75, 0.8)], "frozen"),
    ([("frozen", 0.80, 0.5), ("finetune", 0.70, 0.9), ("finetune", 0.80, 0.8)], "finetune"),
    ([("frozen", 0.80, 0.5), ("finetune", 0.85, 0.9)], "finetune"),
    # no validation figures: nothing to compare
    ([("frozen", None, None), ("finetune", None, None)], None),
])
def test_the_later_phase_gives_way_only_when_it_scores_lower(history, kept):
    records = [{"phase": p, "epoch": i + 1, "val_accuracy": a, "val_loss": l} for i, (p, a, l) in enumerate(history)]
    assert train.phase_to_keep(records, earlier="frozen", later="finetune", multi_label=False) == kept


def test_early_stopping_compares_the_epoch_it_restored_and_multi_label_compares_the_loss():
    records = [{"phase": "frozen", "epoch": 1, "val_accuracy": 0.8, "val_loss": 0.40},
               {"phase": "finetune", "epoch": 1, "val_accuracy": 0.9, "val_loss": 0.30},
               {"phase": "finetune", "epoch": 2, "val_accuracy": 0.7, "val_loss": 0.50}]
    # early stopping restored epoch 1 (0.9): fine-tuning stays; without it the last epoch (0.7) loses
    assert train.phase_to_keep(records, earlier="frozen", later="finetune", multi_label=False,
                               restores_best={"finetune"}) == "finetune"
    assert train.phase_to_keep(records, earlier="frozen", later="finetune", multi_label=False,
                               restores_best=()) == "frozen"
    # multi-label: the lower validation loss wins
    assert train.phase_to_keep(records, earlier="frozen", later="finetune", multi_label=True,
                               restores_best=()) == "frozen"
    assert train.phase_to_keep(records, earlier="frozen", later="finetune", multi_label=True,
                               restores_best={"finetune"}) == "finetune"


def _cfg(demo_records, weights, model_dir, **runtime):
    train_glob, eval_glob = f"{demo_records}/train-*.tfrecord", f"{demo_records}/validation-*.tfrecord"
    return config.Config(
        data=config.Data(train_data=train_glob, eval_data=eval_glob, class_names=discovery.resolve_class_names(train_glob),
                         image_size=IMAGE_SIZE, num_train_examples=discovery.count_examples(train_glob),
                         num_eval_examples=discovery.count_examples(eval_glob)),
        model=config.Model(backbone=PRETRAINED, weights=weights),
        # a fine-tuning rate 10,000x too high: a few Adam steps wreck the network
        phases=(config.Phase(name="frozen", epochs=1, batch_size=16, learning_rate=1e-2),
                config.Phase(name="finetune", epochs=1, batch_size=8, learning_rate=3.0, unfreeze="all",
                             warmup_epochs=0)),
        runtime=config.Runtime(model_dir=model_dir, steps_per_epoch=3, eval_report=False, **runtime))


@pytest.mark.slow
def test_fine_tuning_that_wrecks_the_network_gives_way_to_the_frozen_phase(tmp_path, demo_records,
                                                                          pretrained_weights):
    cfg = _cfg(demo_records, pretrained_weights, str(tmp_path / "run"))
    result = train.run(cfg, strategy=tf.distribute.get_strategy())
    run_dir = rundir.RunDir(cfg.runtime.model_dir)
    history = run_dir.read_history()
    frozen, finetune = (next(r for r in reversed(history) if r["phase"] == p) for p in ("frozen", "finetune"))
    assert finetune["val_accuracy"] < frozen["val_accuracy"], history
    assert finetune["kept_weights_of"] == "frozen"
    # the run's model, and the fine-tuning checkpoint a resumed run loads, are the frozen phase's
    state = run_dir.read_state()
    expected = tf.train.load_checkpoint(state["frozen"])
    reader = tf.train.load_checkpoint(state["finetune"])
    names = [n for n in expected.get_variable_to_shape_map() if "/.ATTRIBUTES/VARIABLE_VALUE" in n
             and n.startswith("layer")]
    assert names
    for name in names:
        np.testing.assert_array_equal(reader.get_tensor(name), expected.get_tensor(name))
    probabilities = result.model.predict(next(iter(pipelines.build_dataset(cfg.data, split="eval", batch_size=64)))[0],
                                         verbose=0)
    assert np.isfinite(probabilities).all()
