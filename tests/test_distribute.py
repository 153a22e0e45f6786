"""Strategies: which one the environment gets, who is chief, and that they train alike.

- A table of CLUSTER_SPEC / TF_CONFIG / GPU / TPU settings -> (strategy, chief), through what
  task.py and train.py call: `task.export_tf_config`, `distribute.build_strategy` and
  `distribute.is_chief(strategy)`. Default and Mirrored strategies are real; the two that this
  machine cannot make (a MultiWorkerMirroredStrategy joins its cluster when made, a TPU one needs
  the TPU) are replaced, where strategies are made, by unstarted ones of the same classes that
  carry the cluster resolver TensorFlow would give them.
- MirroredStrategy over 2 logical CPU devices against the default strategy, same global batch:
  the same weights after a few steps (in a fresh process that the test sets up with two logical
  CPU devices: tests/testing/two_cpus.py). The tiny backbone's top two blocks fine-tune: what is
  checked is the strategy, not EfficientNet.
- A real 2-process MultiWorkerMirroredStrategy job on 127.0.0.1, both phases: one export, by
  the chief; the same weights on both workers; no worker's temporary folder left behind.
"""
import glob
import json
import os
import re
import socket
import subprocess

import numpy as np
import pytest

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf  # noqa: E402

from tests.testing import two_cpus  # noqa: E402
from tests.testing.cli import ROOT, task_command  # noqa: E402
from tests.testing.presets import TINY, TINY_SIZE  # noqa: E402
WORKER = {"cluster": {"worker": ["h0:2222", "h1:2222"]}}
VERTEX = {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
          "workerpool1": ["cmle-training-workerpool1-ab-0:2222", "cmle-training-workerpool1-ab-1:2222"]}


def _spec(task_type, index=0, cluster=None):
    return json.dumps({"cluster": cluster or VERTEX, "task": {"type": task_type, "index": index}, "environment": "cloud"})


def _tf_config(cluster, task_type, index=0):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


# (environment, --strategy, --tpu, GPUs) -> (strategy, chief)
TABLE = [
    ({}, "auto", None, 0, "default", True),
    ({}, "auto", None, 1, "default", True),
    ({}, "auto", None, 2, "mirrored", True),
    ({}, "mirrored", None, 0, "mirrored", True),
    ({}, "auto", "grpc://10.0.0.2:8470", 0, "tpu", True),
    ({"TF_CONFIG": _tf_config({"worker": ["h0:1"]}, "worker")}, "auto", None, 0, "default", True),
    ({"TF_CONFIG": _tf_config(WORKER["cluster"], "worker", 0)}, "auto", None, 4, "multi_worker", True),
    ({"TF_CONFIG": _tf_config(WORKER["cluster"], "worker", 1)}, "auto", None, 0, "multi_worker", False),
    # With a chief in the cluster, worker 0 is the second machine: not the chief.
    ({"TF_CONFIG": _tf_config({"chief": ["c:1"], "worker": ["w:1"]}, "chief")}, "auto", None, 0, "multi_worker", True),
    ({"TF_CONFIG": _tf_config({"chief": ["c:1"], "worker": ["w:1"]}, "worker", 0)}, "auto", None, 0, "multi_worker",
     False),
    ({"TF_CONFIG": _tf_config({"master": ["m:1"], "worker": ["w:1"]}, "master")}, "auto", None, 0, "multi_worker",
     True),
    # Vertex AI custom containers: CLUSTER_SPEC only; workerpool0 is the chief.
    ({"CLUSTER_SPEC": _spec("workerpool0")}, "auto", None, 0, "multi_worker", True),
    ({"CLUSTER_SPEC": _spec("workerpool1", 0)}, "auto", None, 0, "multi_worker", False),
    ({"CLUSTER_SPEC": _spec("workerpool1", 1)}, "auto", None, 0, "multi_worker", False),
    ({"CLUSTER_SPEC": _spec("workerpool0", cluster={"workerpool0": ["p:2222"]})}, "auto", None, 2, "mirrored", True),
    # When Vertex AI sets both, its TF_CONFIG wins (it already names workerpool0 `chief`).
    ({"CLUSTER_SPEC": _spec("workerpool1", 0),
      "TF_CONFIG": _tf_config({"chief": ["c:1"], "worker": ["w:1"]}, "chief")}, "auto", None, 0, "multi_worker", True),
    ({"TF_CONFIG": _tf_config(WORKER["cluster"], "worker", 1)}, "auto", "v4-8", 0, "tpu", True),
]


class UnstartedMultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
    """A MultiWorkerMirroredStrategy as far as `is_chief` can tell: its class, and the resolver
    TensorFlow builds for it from TF_CONFIG. Unstarted: making a real one joins the collectives
    of its cluster, whose other machines do not exist here."""

    def __init__(self):  # pylint: disable=super-init-not-called
        self._resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()

    cluster_resolver = property(lambda self: self._resolver)
    num_replicas_in_sync = property(lambda self: 1)


class UnstartedTpu(tf.distribute.TPUStrategy):
    """A TPUStrategy as far as `is_chief` can tell (its class); making a real one needs a TPU."""

    def __init__(self):  # pylint: disable=super-init-not-called
        pass

    cluster_resolver = property(lambda self: None)
    num_replicas_in_sync = property(lambda self: 8)


def kind_of(strategy) -> str:
    from trainer.runtime import distribute
    if distribute.is_tpu(strategy):
        return "tpu"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    return "default" if distribute.is_default(strategy) else type(strategy).__name__


@pytest.mark.parametrize("env,flag,tpu,gpus,expected,chief", TABLE)
def test_environment_to_strategy_and_chief(env, flag, tpu, gpus, expected, chief, monkeypatch):
    """task.main's path: CLUSTER_SPEC -> TF_CONFIG, build_strategy; train.run's: is_chief(strategy)."""
    from trainer import task
    from trainer.runtime import distribute
    env = dict(env)
    task.export_tf_config(env)
    for key in ("TF_CONFIG", "CLUSTER_SPEC", "TPU_NAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    physical = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [f"GPU:{i}" for i in range(gpus)] if kind == "GPU" else physical(kind))
    monkeypatch.setitem(distribute._BUILDERS, "multi_worker", lambda tpu: UnstartedMultiWorker())
    monkeypatch.setitem(distribute._BUILDERS, "tpu", lambda tpu: UnstartedTpu())
    strategy = distribute.build_strategy(strategy=flag, tpu=tpu)
    assert (kind_of(strategy), distribute.is_chief(strategy)) == (expected, chief)
    _, reason = distribute.choose(strategy=flag, tpu=tpu, tf_config=distribute.parse_tf_config(env.get("TF_CONFIG")),
                                  gpus=gpus)
    assert reason


def test_mirrored_without_gpus_is_one_cpu_replica():
    """--strategy=mirrored on a machine without GPUs: TensorFlow's own device choice, one replica
    on the CPU (the product makes no logical devices of its own)."""
    from trainer.runtime import distribute
    strategy = distribute.build_strategy(strategy="mirrored", tf_config={})
    assert isinstance(strategy, tf.distribute.MirroredStrategy) and distribute.is_chief(strategy)
    assert strategy.num_replicas_in_sync == max(1, len(tf.config.list_logical_devices("GPU")))


@pytest.mark.parametrize("env,flag,tpu,words", [
    ({"CLUSTER_SPEC": json.dumps({"cluster": dict(VERTEX, workerpool2=["ps:1"]), "task": {"type": "workerpool1"}})},
     "auto", None, ["parameter servers", "workerpool2"]),
    ({"CLUSTER_SPEC": json.dumps({"cluster": dict(VERTEX, workerpool3=["e:1"]), "task": {"type": "workerpool3"}})},
     "auto", None, ["evaluator", "workerpool3"]),
    ({"CLUSTER_SPEC": "{not json"}, "auto", None, ["CLUSTER_SPEC"]),
    ({"TF_CONFIG": "{not json"}, "auto", None, ["TF_CONFIG"]),
    ({}, "tpu", None, ["--tpu", "TPU_NAME"]),
    ({"CLUSTER_SPEC": _spec("workerpool1", 0)}, "mirrored", None, ["--strategy=mirrored", "multi_worker"]),
])
def test_unusable_clusters_are_one_clear_error(env, flag, tpu, words):
    from trainer import task
    from trainer.runtime import distribute
    from trainer.configs.config import ConfigError
    with pytest.raises(ConfigError) as e:
        task.export_tf_config(env)
        distribute.choose(strategy=flag, tpu=tpu, tf_config=distribute.parse_tf_config(env.get("TF_CONFIG")), gpus=0)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_tpu_resolver_takes_the_address_and_defaults_stay_untouched():
    from trainer.runtime import distribute
    import tensorflow as tf
    resolver = distribute.tpu_resolver("grpc://10.1.2.3:8470")
    assert resolver.master() == "grpc://10.1.2.3:8470"
    assert resolver.cluster_spec().as_dict() == {"worker": ["10.1.2.3:8470"]}
    default = tf.distribute.get_strategy()
    assert distribute.is_chief(default) and not distribute.is_multi_worker(default) and not distribute.is_tpu(default)
    assert distribute.steps_per_execution(default, steps_per_epoch=100) == 1
    assert distribute.write_dir("/m/checkpoints", strategy=default) == "/m/checkpoints"


# --------------------------------------------------------------------------- Mirrored = default

def _by_name(model):
    return {v.name: v.numpy() for v in model.variables}


def mirrored_vs_default() -> dict:
    """Runs in a fresh process with two logical CPUs: the same 3 steps under both strategies."""
    from trainer.configs import config
    from trainer.runtime import distribute
    from trainer.models import classifier
    from trainer.models import finetuning
    import tf_keras as keras
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, TINY_SIZE, TINY_SIZE, 3)).astype("float32")
    y = rng.integers(0, 3, 24).astype("int32")
    phase = config.Phase(name="finetune", epochs=1, batch_size=8, learning_rate=1e-3, unfreeze="top:2")
    weights, replicas, moved, start = {}, {}, {}, None
    for name in ("default", "mirrored"):
        strategy = distribute.build_strategy(strategy="default") if name == "default" else two_cpus.mirrored_strategy()
        with strategy.scope():
            model = classifier.build_classifier(config.Model(backbone=TINY, weights="none", dropout=0.0), num_classes=3, image_size=TINY_SIZE)
            if start is None:  # the mirrored model starts from the default one's initial weights
                start, initial = model.get_weights(), _by_name(model)
            model.set_weights(start)
            finetuning.set_trainable(model, phase=phase, bn="frozen")
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy())
        ds = strategy.distribute_datasets_from_function(
            lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(ctx.get_per_replica_batch_size(8)))
        model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)
        weights[name], replicas[name] = _by_name(model), strategy.num_replicas_in_sync
        moved[name] = max(float(np.max(np.abs(weights[name][k] - initial[k]))) for k in initial)
    diff = max(float(np.max(np.abs(weights["default"][k] - weights["mirrored"][k]))) for k in initial)
    return {"max_abs_diff": diff, "replicas": replicas, "moved": moved}


@pytest.mark.slow
def test_mirrored_over_two_cpus_matches_default_strategy(two_cpu_process):
    got = two_cpu_process("tests.test_distribute:mirrored_vs_default")
    assert got["replicas"] == {"default": 1, "mirrored": 2}
    assert min(got["moved"].values()) > 1e-3, got  # training changed the weights ...
    assert got["max_abs_diff"] < 1e-4, got  # ... and both strategies changed them alike


# --------------------------------------------------------------------------- 2-process multi-worker

def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def multi_worker_job(tmp_path_factory, demo_records):
    """Two worker processes, TF_CONFIG each, one model_dir; returns (model_dir, [(rc, log)])."""
    model_dir = str(tmp_path_factory.mktemp("multi_worker") / "run")
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    command = task_command(demo_records, model_dir, "--frozen_epochs=1", "--finetune_epochs=1", "--steps_per_epoch=2")
    procs = []
    for index in range(2):
        log = open(f"{model_dir}.worker{index}.log", "w")
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    results = []
    for proc, log in procs:
        try:
            proc.wait(timeout=1200)
        finally:
            proc.kill()
            log.close()
        results.append((proc.returncode, open(log.name).read()))
    return model_dir, results


@pytest.mark.slow
def test_multi_worker_job_finishes_with_one_export_by_the_chief(multi_worker_job):
    model_dir, results = multi_worker_job
    for rc, log in results:
        assert rc == 0, log[-4000:]
    (_, chief_log), (_, worker_log) = results
    assert "strategy multi_worker" in chief_log and "2 replica(s) in sync" in chief_log
    assert "chief=True" in chief_log and "chief=False" in worker_log
    assert "export: " in chief_log and "export: " not in worker_log
    versions = os.listdir(os.path.join(model_dir, "export"))
    assert len(versions) == 1 and versions[0].isdigit()
    assert os.path.exists(os.path.join(model_dir, "export", versions[0], "saved_model.pb"))


@pytest.mark.slow
def test_multi_worker_job_ends_with_the_same_weights_on_both_workers(multi_worker_job):
    _, results = multi_worker_job
    digests = [re.findall(r"final weights: ([0-9a-f]{16})", log) for _, log in results]
    assert len(digests[0]) == 1 and digests[0] == digests[1], digests


@pytest.mark.slow
def test_multi_worker_job_leaves_only_the_chiefs_files(multi_worker_job):
    model_dir, _ = multi_worker_job
    with open(os.path.join(model_dir, "history.json")) as f:
        assert [(h["phase"], h["epoch"]) for h in json.load(f)] == [("frozen", 1), ("finetune", 1)]
    with open(os.path.join(model_dir, "state.json")) as f:
        assert [c["phase"] for c in json.load(f)["completed"]] == ["frozen", "finetune"]
    assert not glob.glob(os.path.join(model_dir, "**", "workertemp_*"), recursive=True)
    assert not os.path.exists(os.path.join(model_dir, "backup", "frozen"))
    assert not os.path.exists(os.path.join(model_dir, "backup", "finetune"))

