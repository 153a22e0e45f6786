"""Strategies: which one the environment gets, who is chief, and that they train alike.

- A table of CLUSTER_SPEC / TF_CONFIG / GPU / TPU settings -> (strategy, chief), through the
  same functions task.py and distribute.py use.
- MirroredStrategy over 2 logical CPU devices against the default strategy, same global batch:
  the same weights after a few steps (in a subprocess: logical devices must be set up before
  TensorFlow starts).
- A real 2-process MultiWorkerMirroredStrategy job on 127.0.0.1, both phases: one export, by
  the chief; the same weights on both workers; no worker's temporary folder left behind.
"""
import glob
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


@pytest.mark.parametrize("env,flag,tpu,gpus,expected,chief", TABLE)
def test_environment_to_strategy_and_chief(env, flag, tpu, gpus, expected, chief):
    from trainer import distribute, task
    env = dict(env)
    task.export_tf_config(env)
    tf_config = distribute.parse_tf_config(env.get("TF_CONFIG"))
    name, reason = distribute.choose(strategy=flag, tpu=tpu, tf_config=tf_config, gpus=gpus)
    assert (name, distribute.is_chief_task(tf_config) if name == "multi_worker" else True) == (expected, chief)
    assert reason


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
    from trainer import distribute, task
    from trainer.config import ConfigError
    with pytest.raises(ConfigError) as e:
        task.export_tf_config(env)
        distribute.choose(strategy=flag, tpu=tpu, tf_config=distribute.parse_tf_config(env.get("TF_CONFIG")), gpus=0)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_tpu_resolver_takes_the_address_and_defaults_stay_untouched():
    from trainer import distribute
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


def mirrored_vs_default(out_path: str) -> None:
    """Runs in a fresh process: the same 3 steps under both strategies; writes the max difference."""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from trainer import config, distribute
    from trainer import model as model_lib
    import tf_keras as keras
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 24).astype("int32")
    phase = config.Phase(name="finetune", epochs=1, batch_size=8, learning_rate=1e-3, unfreeze="top:2")
    weights, replicas, moved, start = {}, {}, {}, None
    for name in ("default", "mirrored"):
        strategy = distribute.build_strategy(strategy=name)
        with strategy.scope():
            model = model_lib.build_classifier(config.Model(backbone="efficientnet-b0", weights="none", num_classes=3,
                                                            image_size=32, dropout=0.0))
            if start is None:  # the mirrored model starts from the default one's initial weights
                start, initial = model.get_weights(), _by_name(model)
            model.set_weights(start)
            model_lib.set_trainable(model, phase=phase, bn="frozen")
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy())
        ds = strategy.distribute_datasets_from_function(
            lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(ctx.get_per_replica_batch_size(8)))
        model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)
        weights[name], replicas[name] = _by_name(model), strategy.num_replicas_in_sync
        moved[name] = max(float(np.max(np.abs(weights[name][k] - initial[k]))) for k in initial)
    diff = max(float(np.max(np.abs(weights["default"][k] - weights["mirrored"][k]))) for k in initial)
    with open(out_path, "w") as f:
        json.dump({"max_abs_diff": diff, "replicas": replicas, "moved": moved}, f)


def test_mirrored_over_two_cpus_matches_default_strategy(tmp_path):
    out = tmp_path / "result.json"
    result = subprocess.run([sys.executable, __file__, "mirrored_vs_default", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(out.read_text())
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


def task_command(records, model_dir, *extra):
    """The trainer command of the multi-process tests: B0 at 32 px, no pretrained weights; no
    validation data and only the top block fine-tuned, since every process traces each phase's
    step and tracing B0's whole backward pass is most of what such a tiny run costs."""
    return [sys.executable, "-m", "trainer.task", f"--train_data={records}/train-*.tfrecord",
            f"--model_dir={model_dir}", "--weights=none", "--unfreeze=top:1",
            "--image_size=32", "--frozen_batch_size=8", "--finetune_batch_size=8", "--warmup_epochs=0",
            "--early_stopping_patience=0", "--seed=1", *extra]


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


def test_multi_worker_job_ends_with_the_same_weights_on_both_workers(multi_worker_job):
    _, results = multi_worker_job
    digests = [re.findall(r"final weights: ([0-9a-f]{16})", log) for _, log in results]
    assert len(digests[0]) == 1 and digests[0] == digests[1], digests


def test_multi_worker_job_leaves_only_the_chiefs_files(multi_worker_job):
    model_dir, _ = multi_worker_job
    with open(os.path.join(model_dir, "history.json")) as f:
        assert [(h["phase"], h["epoch"]) for h in json.load(f)] == [("frozen", 1), ("finetune", 1)]
    with open(os.path.join(model_dir, "state.json")) as f:
        assert [c["phase"] for c in json.load(f)["completed"]] == ["frozen", "finetune"]
    assert not glob.glob(os.path.join(model_dir, "**", "workertemp_*"), recursive=True)
    assert not os.path.exists(os.path.join(model_dir, "backup", "frozen"))
    assert not os.path.exists(os.path.join(model_dir, "backup", "finetune"))


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
    {"mirrored_vs_default": mirrored_vs_default}[sys.argv[1]](*sys.argv[2:])
