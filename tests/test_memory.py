"""Memory plan (issue 7): estimates per phase, auto batch sizes, plan.json, OOM recovery, accumulation."""
import dataclasses
import json
import re

import numpy as np
import pytest

import trainer  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from tests.testing import two_cpus
from tests.testing.cli import assert_one_error_line, run_module, train_flags
from tests.testing.faults import OomOnce
from tests.testing.presets import TINY
from trainer.configs import config
from trainer.data import pipelines
from trainer.models import classifier
from trainer.runtime import devices, rundir
from trainer.training import accumulate, activations, memory, oom, schedules

GIB = 1024 ** 3
MIB = 1024 ** 2


def make_config(model_dir, *, image_size=224, frozen="auto", finetune="auto", budget_gb=4.0, bn="frozen",
                unfreeze="all", max_batch_size=4096, accumulate_steps=1, num_examples=100_000):
    data = config.Data(train_data="unused/train-*", eval_data=None, class_names=("a", "b", "c"),
                       image_size=image_size, num_train_examples=num_examples)
    model = config.Model(backbone="efficientnet-b0", weights="none", bn=bn)
    phases = (config.Phase(name="frozen", epochs=1, batch_size=frozen, learning_rate=1e-3, base_batch_size=64),
              config.Phase(name="finetune", epochs=1, batch_size=finetune, learning_rate=1e-4, unfreeze=unfreeze,
                           base_batch_size=64))
    runtime = config.Runtime(model_dir=str(model_dir), memory_budget_gb=budget_gb, max_batch_size=max_batch_size,
                             accumulate_steps=accumulate_steps)
    return config.Config(data=data, model=model, phases=phases, runtime=runtime)


def plan(cfg, **kwargs):
    """memory.build_plan on a Config's parts, its plan.json written into the model_dir (as the chief does)."""
    planned, document = memory.build_plan(cfg.phases, model=kwargs.pop("model"), bn=cfg.model.bn, runtime=cfg.runtime,
                                          num_examples=cfg.data.num_train_examples, **kwargs)
    memory.write_plan(rundir.RunDir(cfg.runtime.model_dir), document)
    return planned


@pytest.fixture(scope="module")
def b0_224():
    """B0 at its native 224 px (weights none): the estimate reads shapes only, no training."""
    return classifier.classifier_for(make_config("unused"))


def test_same_budget_frozen_batch_at_least_twice_finetune(b0_224, tmp_path):
    cfg = make_config(tmp_path)
    flags = [layer.trainable for layer in classifier.leaf_layers(b0_224)]
    frozen, finetune = plan(cfg, model=b0_224, replicas=1, device="CPU")
    assert [layer.trainable for layer in classifier.leaf_layers(b0_224)] == flags  # planning changes no flag
    assert finetune.batch_size >= 8 and finetune.batch_size % 8 == 0
    assert frozen.batch_size % 8 == 0
    assert frozen.batch_size >= 2 * finetune.batch_size
    entries = {e["name"]: e for e in rundir.RunDir(str(tmp_path)).read_plan()["phases"]}
    # Rates scale with the square root of the batch above the base of 64, and stay as given below it.
    assert entries["frozen"]["learning_rate"] == pytest.approx(1e-3 * max(1.0, frozen.batch_size / 64) ** 0.5)
    assert entries["finetune"]["learning_rate"] == pytest.approx(1e-4 * max(1.0, finetune.batch_size / 64) ** 0.5)


def test_estimate_orders_phases_and_variants(b0_224):
    """Head-only << top blocks < BN trainable (the seed's variant) < full fine-tune, per example."""
    def per_example(name, unfreeze, bn):
        phase = config.Phase(name=name, epochs=1, batch_size=8, learning_rate=1e-3, unfreeze=unfreeze)
        return memory.estimate_phase(b0_224, phase=phase, bn=bn, device="CPU")
    head = per_example("frozen", "none", "frozen")
    top = per_example("finetune", "top:2", "frozen")
    bn_variant = per_example("frozen", "none", "trainable")
    full = per_example("finetune", "all", "frozen")
    assert head.bytes_per_example * 4 < bn_variant.bytes_per_example < full.bytes_per_example
    assert top.bytes_per_example < bn_variant.bytes_per_example
    assert head.trainable_params < top.trainable_params < full.trainable_params
    assert head.optimizer_bytes == 3 * 4 * head.trainable_params  # gradient + Adam's two slots, float32
    assert full.activations.first_trainable == "stem_conv"
    assert bn_variant.activations.first_trainable == "stem_bn"


def test_kept_tensors_follow_the_gradient_rules():
    """A 4x4x2 toy: which tensors the backward pass keeps, layer by layer."""
    x = inputs = keras.Input((4, 4, 2))
    conv1 = keras.layers.Conv2D(3, 1, use_bias=False, name="conv1")
    x = conv1(x)                                               # 48 floats
    x = keras.layers.BatchNormalization(name="bn")(x)          # 48
    x = keras.layers.Activation("relu", name="relu")(x)        # 48
    x = keras.layers.Conv2D(5, 1, name="conv2")(x)             # 80
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)    # 5
    outputs = keras.layers.Dense(2, name="dense")(x)           # 2
    toy = keras.Model(inputs, outputs)
    for layer in toy.layers:
        layer.trainable = layer.name == "dense"
    acts = activations.analyze_activations(toy)
    assert acts.kept == 5 * 4                                  # dense keeps its input only
    assert acts.first_trainable == "dense" and acts.backward_layers == 1
    # Forward peak: relu's input and output alive at once (48 + 48), or conv2's in and out (48 + 80).
    assert acts.forward_peak == (48 + 80) * 4
    conv1.trainable = True
    acts = activations.analyze_activations(toy)
    # conv1 keeps the input (32), bn keeps its input (48), relu its output (48); conv2 (frozen) nothing.
    assert acts.kept == (32 + 48 + 48 + 5) * 4
    assert acts.backward_layers == 6


def test_mixed_precision_halves_activations():
    policy = keras.mixed_precision.global_policy()
    try:
        sizes = []
        for name in ("float32", "mixed_float16"):
            keras.mixed_precision.set_global_policy(name)
            x = inputs = keras.Input((8, 8, 3))
            x = keras.layers.Conv2D(4, 3, padding="same")(x)
            x = keras.layers.Activation("relu")(x)
            outputs = keras.layers.Dense(2, dtype="float32")(keras.layers.GlobalAveragePooling2D()(x))
            sizes.append(activations.analyze_activations(keras.Model(inputs, outputs)).kept)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert sizes[1] < sizes[0]
    # The conv keeps its float32 input (8*8*3*4); relu its output, dense its input, at the policy's dtype.
    assert sizes[0] == 8 * 8 * 3 * 4 + 8 * 8 * 4 * 4 + 4 * 4
    assert sizes[1] == 8 * 8 * 3 * 4 + 8 * 8 * 4 * 2 + 4 * 2


def test_auto_batch_size_rounding_and_caps():
    acts = activations.Activations(kept=0, forward_peak=100 * MIB, backward_peak=0, input=0, first_trainable=None)
    estimate = memory.Estimate(phase="finetune", total_params=0, trainable_params=0, param_bytes=GIB,
                               optimizer_bytes=0, workspace_bytes=0, bytes_per_example=100 * MIB, activations=acts)
    budget = devices.Budget(int(3 * GIB), "GPU", "test")  # usable 2.4 GiB: 14 examples -> 8
    auto = lambda **kw: memory.auto_batch_size(estimate, budget=budget, **{
        "replicas": 1, "max_batch_size": 1024, "num_examples": None, **kw})
    assert auto() == 8
    assert auto(replicas=4) == 32
    assert auto(replicas=2, max_batch_size=12) == 12
    assert auto(num_examples=5) == 5
    small = devices.Budget(int(1.5 * GIB), "GPU", "test")  # usable 1.2 GiB: 2 examples, fewer than 8
    assert memory.auto_batch_size(estimate, budget=small, replicas=1, max_batch_size=1024, num_examples=None) == 2
    accumulating = dataclasses.replace(estimate, accumulate_steps=4)
    assert memory.auto_batch_size(accumulating, budget=budget, replicas=2, accumulate_steps=4,
                                  max_batch_size=1024, num_examples=None) == 8 * 4 * 2


def test_budget_too_small_is_a_clear_error(b0_224, tmp_path):
    cfg = make_config(tmp_path, budget_gb=0.3)
    with pytest.raises(config.ConfigError) as info:
        plan(cfg, model=b0_224, replicas=2, device="GPU")
    message = str(info.value)
    assert "\n" not in message
    assert "even 1 example per replica" in message and "--memory_budget_gb" in message and "0.30 GiB" in message
    # An explicit batch size does not escape the check.
    with pytest.raises(config.ConfigError):
        plan(make_config(tmp_path, budget_gb=0.3, frozen=8, finetune=8), model=b0_224, replicas=1,
                    device="GPU")


def test_plan_json_round_trips(b0_224, tmp_path):
    cfg = make_config(tmp_path, frozen=32, finetune="auto", budget_gb=3.0, accumulate_steps=2)
    phases = plan(cfg, model=b0_224, replicas=2, device="CPU")
    with open(tmp_path / "plan.json") as f:
        document = json.load(f)
    assert rundir.RunDir(str(tmp_path)).read_plan() == document
    assert [e["name"] for e in document["phases"]] == ["frozen", "finetune"]
    assert [e["batch_size"] for e in document["phases"]] == [p.batch_size for p in phases]
    frozen, finetune = document["phases"]
    assert frozen["batch_size"] == 32 and frozen["auto"] is False and finetune["auto"] is True
    assert finetune["batch_size"] % (2 * 2) == 0
    # The frozen phase trains the head on cached embeddings: no accumulation there, so no micro-batches.
    assert frozen["per_replica_batch_size"] == 16 and frozen["micro_batch_size"] == 16
    assert frozen["trains"] == "head on cached embeddings" and finetune["trains"] == "network on images"
    assert frozen["trainable_params"] == frozen["total_params"] == 1280 * 3 + 3  # B0's head alone
    for entry in document["phases"]:
        for key in ("trainable_params", "bytes_per_example", "fixed_bytes", "learning_rate", "estimated_peak_bytes"):
            assert entry[key] > 0
    assert document["budget_bytes"] == int(3.0 * GIB / min(2, len(tf.config.list_logical_devices("CPU"))))
    assert document["accumulate_steps"] == 2 and document["replicas"] == 2
    streamed = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, frozen_cache="off"))
    frozen = plan(streamed, model=b0_224, replicas=2, device="CPU")[0]
    assert frozen.micro_batch_size == 8 and not frozen.on_embeddings and frozen.trainable_params == 1280 * 3 + 3


def test_explicit_batch_must_divide_among_replicas_and_micro_batches(b0_224, tmp_path):
    with pytest.raises(config.ConfigError, match="--finetune_batch_size=6 is not divisible by the 2 replicas x 2 "
                                                 "accumulation steps"):
        plan(make_config(tmp_path, frozen=8, finetune=6, accumulate_steps=2), model=b0_224, replicas=2, device="CPU")
    # The frozen phase on cached embeddings has no accumulation: its batch divides among the replicas only.
    frozen, _ = plan(make_config(tmp_path, frozen=6, finetune=8, accumulate_steps=2), model=b0_224, replicas=2,
                     device="CPU")
    assert frozen.on_embeddings and frozen.batch_size == 6 and frozen.accumulate_steps == 1


def test_detect_budget(monkeypatch, tmp_path):
    assert devices.detect_budget(memory_budget_gb=2.0, replicas=1, device="GPU") == \
        devices.Budget(2 * GIB, "GPU", "--memory_budget_gb")
    cpu = devices.detect_budget(memory_budget_gb=None, replicas=1, device="CPU")
    assert 0 < cpu.bytes <= devices._physical_bytes()  # pylint: disable=protected-access
    fake = tmp_path / "nvidia-smi"  # answers like nvidia-smi on a host with an 80 GB and a 141 GB GPU
    fake.write_text("#!/bin/sh\nprintf '81559\\n143771\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(devices.shutil, "which", lambda name: str(fake))
    assert devices.detect_budget(memory_budget_gb=None, replicas=2, device="GPU") == \
        devices.Budget(81559 * MIB, "GPU", "nvidia-smi memory.total")
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    assert devices.detect_budget(memory_budget_gb=None, replicas=1, device="GPU") is None
    assert devices.tpu_hbm_bytes("TPU v4") == 32 * GIB
    assert devices.tpu_hbm_bytes("TPU v5 lite") == 16 * GIB
    assert devices.tpu_hbm_bytes("TPU v3") == 16 * GIB
    assert devices.tpu_hbm_bytes("TPU v9") is None


def test_host_ram_is_one_budget(monkeypatch):
    """The CPU plan gets what the pixel cache keeps left over; each cache its share, never the whole."""
    monkeypatch.setattr(devices, "cpu_available_bytes", lambda: 8 * GIB)
    assert devices.detect_budget(memory_budget_gb=None, replicas=1, device="CPU", reserved_bytes=GIB).bytes == 7 * GIB
    assert devices.detect_budget(memory_budget_gb=3.0, replicas=1, device="CPU", reserved_bytes=GIB).bytes == 3 * GIB
    assert devices.ram_share(devices.PIXEL_CACHE_SHARE) + devices.ram_share(devices.EMBEDDING_CACHE_SHARE) < 8 * GIB
    data = config.Data(train_data="x", eval_data=None, class_names=("a", "b"), image_size=64, cache_pixels=True,
                       augment="flip", num_train_examples=1000)
    assert pipelines.pixel_cache_kept_bytes(data) == 1000 * 64 * 64 * 3  # fits its quarter: kept, and reserved
    monkeypatch.setattr(devices, "cpu_available_bytes", lambda: 4 * 1000 * 64 * 64 * 3 - 4)
    assert pipelines.pixel_cache_kept_bytes(data) == 0  # beyond its share: not kept, nothing reserved


def test_auto_without_a_detectable_budget_asks_for_one(b0_224, tmp_path, monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    cfg = make_config(tmp_path, budget_gb=None)
    with pytest.raises(config.ConfigError, match="pass --memory_budget_gb"):
        plan(cfg, model=b0_224, replicas=1, device="GPU")


def tiny_model():
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(3, activation="softmax", name="head_dense")(
        keras.layers.Dense(8, activation="relu", name="hidden")(inputs))
    return keras.Model(inputs, outputs)


def tiny_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, size=n).astype("int32")


def test_oom_recovery_halves_the_batch(tmp_path):
    """The first step fails; the batch halves, plan.json records it, training continues."""
    phase = config.Phase(name="frozen", epochs=1, batch_size=16, learning_rate=1e-3, base_batch_size=64)
    run_dir = rundir.RunDir(str(tmp_path))
    run_dir.write_plan({"replicas": 2, "accumulate_steps": 1,
                        "phases": [{"name": "frozen", "batch_size": 16, "oom_retries": []}]})
    model = tiny_model()
    before = [w.copy() for w in model.get_weights()]
    x, y = tiny_data()
    attempts, injected = [], OomOnce()

    def fit_once(plan):
        attempts.append((plan.batch_size, [np.array_equal(a, b) for a, b in zip(before, model.get_weights())]))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(plan.batch_size)
        return model.fit(ds, epochs=1, verbose=0, callbacks=[injected])

    planned = schedules.PhasePlan(phase, replicas=2, num_examples=64)
    history = oom.fit_with_oom_recovery(fit_once, plan=planned, run_dir=run_dir)
    assert [a[0] for a in attempts] == [16, 8]
    assert all(attempts[1][1])  # the retry starts from the weights the failed step left untouched
    assert len(history.history["loss"]) == 1
    assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    entry = run_dir.read_plan()["phases"][0]
    assert entry["batch_size"] == 8 and entry["per_replica_batch_size"] == 4
    assert entry["learning_rate"] == pytest.approx(1e-3)  # below the base batch: the rate as given
    assert entry["steps_per_epoch"] == 8  # every derived number follows the revised batch
    assert entry["oom_retries"][0]["batch_size"] == 16 and entry["oom_retries"][0]["new_batch_size"] == 8
    assert "injected by the test" in entry["oom_retries"][0]["error"]


def test_oom_gives_up_below_one_example_per_replica(tmp_path):
    phase = config.Phase(name="finetune", epochs=1, batch_size=8, learning_rate=1e-3, unfreeze="all")
    tried = []

    def always_oom(plan):
        tried.append(plan.batch_size)
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[4,112,112,96]")

    with pytest.raises(oom.OutOfMemoryError) as info:
        oom.fit_with_oom_recovery(always_oom, plan=schedules.PhasePlan(phase, replicas=2), run_dir=None)
    assert tried == [8, 4, 2]
    assert isinstance(info.value, config.ConfigError) and "\n" not in str(info.value)
    assert "even at batch size 2" in str(info.value)
    assert not (tmp_path / "plan.json").exists()  # not the chief: nothing written


@pytest.mark.parametrize("static", [False, True], ids=["dynamic_batch", "static_batch"])
def test_accumulation_matches_one_large_batch(static):
    """Four micro-batches of 4 give the same SGD step, loss and accuracy as one batch of 16."""
    x, y = tiny_data(n=16, seed=1)
    results = []
    for steps in (1, 4):
        keras.utils.set_random_seed(0)
        model = tiny_model()
        initial = model.get_weights()
        accumulate.install(model, steps=steps)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=static)
        logs = model.fit(ds, epochs=1, verbose=0).history
        assert not np.allclose(initial[0], model.get_weights()[0])
        results.append((model.get_weights(), logs["loss"][0], logs["accuracy"][0]))
    (w1, loss1, acc1), (w4, loss4, acc4) = results
    for a, b in zip(w1, w4):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert loss4 == pytest.approx(loss1, rel=1e-5) and acc4 == pytest.approx(acc1)


@pytest.mark.slow
def test_accumulation_under_mirrored_matches_one_large_batch(two_cpu_process):
    """Two replicas (logical CPUs, set up in a fresh process), Adam, two steps: same weights."""
    report = two_cpu_process("tests.test_memory:mirrored_accumulation")
    assert report["replicas"] == 2 and report["max_weight_difference"] < 1e-5
    assert report["losses"][0] == pytest.approx(report["losses"][1], rel=1e-5)


def mirrored_accumulation() -> dict:
    """Runs in the two-CPU process: one model without and one with 4 accumulation steps."""
    strategy = two_cpus.mirrored_strategy()
    x, y = tiny_data(n=16, seed=1)
    weights, losses = [], []
    for steps in (1, 4):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = tiny_model()
            accumulate.install(model, steps=steps)
            model.compile(optimizer=keras.optimizers.Adam(0.1), loss="sparse_categorical_crossentropy")
        history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=2, verbose=0).history
        weights.append(model.get_weights())
        losses.append(history["loss"][-1])
    diff = max(float(np.abs(a - b).max()) for a, b in zip(*weights))
    return {"replicas": strategy.num_replicas_in_sync, "max_weight_difference": diff, "losses": losses}


@pytest.mark.slow
def test_plan_only_cli_prints_the_plan_and_refuses_a_tiny_budget(demo_records, tmp_path):
    """python -m trainer.task --plan_only with auto batches: the plan on stdout and nothing
    written, or one line and exit 2. The CLI is what is checked (the estimates are checked on B0
    above): the tiny backbone, whose fixed cost alone (~215 MiB) exceeds the 0.05 GiB budget."""
    auto = ("--frozen_batch_size=auto", "--finetune_batch_size=auto", "--plan_only")
    ok = run_module("trainer.task", *train_flags(tmp_path / "ok", demo_records, "none", *auto, "--memory_budget_gb=2",
                                                 backbone=TINY))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert not (tmp_path / "ok").exists()
    rows = re.findall(r"^\s+(frozen|finetune)\s+\S+\s+[\d,]+\s+(\d+)\*", ok.stdout, flags=re.M)
    batches = {name: int(batch) for name, batch in rows}
    assert batches["frozen"] == 72  # capped by the dataset's 72 training examples
    assert 0 < batches["finetune"] <= 72
    bad = run_module("trainer.task", *train_flags(tmp_path / "bad", demo_records, "none", *auto,
                                                  "--memory_budget_gb=0.05", backbone=TINY))
    assert assert_one_error_line(bad, "frozen phase does not fit even 1 example", "--memory_budget_gb"
                                 ).startswith("error:")
    assert not (tmp_path / "bad" / "plan.json").exists()
