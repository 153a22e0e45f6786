"""The one place where tf.distribute strategies are made.

`build_strategy(strategy=..., tpu=...)` turns --strategy and the cluster (TF_CONFIG) into a
strategy and logs which one, how many replicas and why; `is_chief(strategy)` tells whether this
process writes summaries, history, plots and the export. The rules (docs/distributed.md):

- `auto`: a TPU when one is named (--tpu, or TPU_NAME, read by task.py); MultiWorkerMirrored
  when TF_CONFIG lists more than one training task; Mirrored when there is more than one GPU;
  else the default strategy.
- The chief is the `chief` (or legacy `master`) task; only a cluster without one makes worker 0
  the chief. On Vertex AI the primary replica (workerpool0) is `chief` and `worker` 0 is the
  second machine, so a `task_type == 'worker' and task_id == 0` test picks the wrong machine.
- MultiWorkerMirroredStrategy must be created before TensorFlow runs its first op ("Collective
  ops must be configured at program startup"), which is why task.py builds it before it reads
  the data.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Optional, Tuple

from absl import logging
import tensorflow as tf

from trainer.configs.config import STRATEGIES, ConfigError

# Vertex AI names worker pools by their position in workerPoolSpecs[] (CLUSTER_SPEC); TF_CONFIG
# names roles. https://cloud.google.com/vertex-ai/docs/training/distributed-training
ROLE_OF_POOL = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps", "workerpool3": "evaluator"}
CHIEF_ROLES = ("chief", "master")
TRAINING_ROLES = CHIEF_ROLES + ("worker",)
TPU_STEPS_PER_EXECUTION = 32


def tf_config_from_cluster_spec(cluster_spec: Mapping) -> dict:
    """Vertex AI's CLUSTER_SPEC (custom containers) as the TF_CONFIG TensorFlow reads.

    workerpool0 (the primary replica) becomes `chief`, workerpool1 `worker`, workerpool2 `ps`;
    evaluators (workerpool3) are not part of a TensorFlow training cluster and are left out of
    `cluster`, as Vertex AI's own TF_CONFIG does.
    """
    cluster = {}
    for pool, addresses in (cluster_spec.get("cluster") or {}).items():
        if pool not in ROLE_OF_POOL:
            raise ConfigError(f"CLUSTER_SPEC names an unknown worker pool {pool!r}: expected workerpool0..3")
        if addresses and ROLE_OF_POOL[pool] != "evaluator":
            cluster[ROLE_OF_POOL[pool]] = list(addresses)
    task = cluster_spec.get("task") or {"type": "workerpool0", "index": 0}
    role = ROLE_OF_POOL.get(task.get("type"), task.get("type"))
    return {"cluster": cluster, "task": {"type": role, "index": int(task.get("index", 0))}, "environment": "cloud"}


def parse_tf_config(text: Optional[str]) -> dict:
    """TF_CONFIG's JSON as a dict ({} when unset); a malformed one is a ConfigError."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}): fix or unset it") from None
    if not isinstance(value, dict):
        raise ConfigError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return value


def training_tasks(tf_config: Mapping) -> int:
    """How many processes train together (chief, master and workers); 1 without a cluster."""
    cluster = tf_config.get("cluster") or {}
    return sum(len(cluster.get(role) or []) for role in TRAINING_ROLES) or 1


def is_chief_task(tf_config: Mapping) -> bool:
    """Whether the task a TF_CONFIG describes is the one that writes the run's files."""
    cluster = tf_config.get("cluster") or {}
    task = tf_config.get("task") or {}
    if training_tasks(tf_config) <= 1 and task.get("type") in (None, *TRAINING_ROLES):
        return True
    role, index = task.get("type"), int(task.get("index", 0))
    if role in CHIEF_ROLES:
        return True
    return role == "worker" and index == 0 and not any(cluster.get(r) for r in CHIEF_ROLES)


def _check_cluster(tf_config: Mapping) -> None:
    """Refuses clusters MultiWorkerMirroredStrategy cannot run: parameter servers, evaluators."""
    cluster = tf_config.get("cluster") or {}
    role = (tf_config.get("task") or {}).get("type")
    if cluster.get("ps") or role == "ps":
        raise ConfigError("the cluster has parameter servers (ps, Vertex AI workerpool2): this trainer uses "
                          "MultiWorkerMirroredStrategy, which has none; remove that worker pool")
    if role == "evaluator":
        raise ConfigError("this task is an evaluator (Vertex AI workerpool3): the trainer evaluates on the "
                          "training workers; remove that worker pool")
    if role is not None and role not in TRAINING_ROLES:
        raise ConfigError(f"TF_CONFIG task type {role!r} is not one of {', '.join(TRAINING_ROLES)}")


def choose(*, strategy: str, tpu: Optional[str], tf_config: Mapping, gpus: int) -> Tuple[str, str]:
    """(strategy name, reason) for --strategy, resolving `auto` from the machine and cluster."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy={strategy}: choose one of {', '.join(STRATEGIES)}")
    _check_cluster(tf_config)
    tasks = training_tasks(tf_config)
    if strategy == "tpu" and not tpu:
        raise ConfigError("--strategy=tpu needs --tpu (or TPU_NAME): a TPU name, a grpc:// address, "
                          "or local on a TPU VM")
    if strategy in ("default", "mirrored") and tasks > 1:
        raise ConfigError(f"--strategy={strategy} on a cluster of {tasks} training tasks (TF_CONFIG): each machine "
                          "would train alone and write the same files; use --strategy=multi_worker or auto")
    if strategy != "auto":
        return strategy, f"--strategy={strategy}"
    if tpu:
        return "tpu", f"a TPU is configured ({tpu})"
    if tasks > 1:
        return "multi_worker", f"TF_CONFIG lists {tasks} training tasks"
    if gpus > 1:
        return "mirrored", f"{gpus} GPUs"
    return "default", f"one process with {gpus or 'no'} GPU{'s' if gpus != 1 else ''}"


def build_strategy(*, strategy: str = "auto", tpu: Optional[str] = None,
                   tf_config: Optional[Mapping] = None) -> tf.distribute.Strategy:
    """The strategy for --strategy (see the module docstring); call before any TensorFlow op.

    Args:
      strategy: auto, default, mirrored, multi_worker or tpu.
      tpu: TPU name, grpc:// address or `local`, or None.
      tf_config: the cluster, as TF_CONFIG's dict; default: the TF_CONFIG environment variable
        (which TensorFlow's own resolver reads too).
    """
    if tf_config is None:
        tf_config = parse_tf_config(os.environ.get("TF_CONFIG"))
    gpus = len(tf.config.list_physical_devices("GPU"))
    name, why = choose(strategy=strategy, tpu=tpu, tf_config=tf_config, gpus=gpus)
    built = _BUILDERS[name](tpu)
    logging.info("strategy %s (%s): %d replica(s) in sync, %d worker(s), chief=%s", name, why,
                 built.num_replicas_in_sync, training_tasks(tf_config) if name == "multi_worker" else 1,
                 is_chief(built))
    return built


def tpu_resolver(tpu: str) -> tf.distribute.cluster_resolver.TPUClusterResolver:
    """The resolver for --tpu: a Cloud TPU name, a grpc:// address, or `local` on a TPU VM."""
    return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)


def _tpu(tpu: Optional[str]) -> tf.distribute.Strategy:
    resolver = tpu_resolver(tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


_BUILDERS = {
    "tpu": _tpu,
    "multi_worker": lambda tpu: tf.distribute.MultiWorkerMirroredStrategy(),
    "mirrored": lambda tpu: tf.distribute.MirroredStrategy(),  # every local GPU; the CPU without one
    "default": lambda tpu: tf.distribute.get_strategy(),
}


def _cluster(strategy: tf.distribute.Strategy) -> Tuple[dict, Optional[str], int]:
    """(cluster dict, task type, task id) of a strategy's resolver; ({}, None, 0) without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return {}, None, 0
    return resolver.cluster_spec().as_dict(), resolver.task_type, int(resolver.task_id or 0)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for MultiWorkerMirroredStrategy over more than one process."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and training_tasks({"cluster": _cluster(strategy)[0]}) > 1)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes summaries, history, plots and the export."""
    if not is_multi_worker(strategy):
        return True
    cluster, task_type, task_id = _cluster(strategy)
    return is_chief_task({"cluster": cluster, "task": {"type": task_type, "index": task_id}})


def write_dir(path: str, *, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes what belongs in folder `path`.

    MultiWorkerMirroredStrategy needs every worker to take part in a save (reading a variable
    synchronized on read is a collective), but only the chief's copy may land in `path`: other
    workers write to `path/workertemp_<task id>` and remove it with `remove_write_dir` (the rule
    tf_keras' distributed_file_utils.write_dirpath follows).
    """
    if is_chief(strategy):
        return path
    return os.path.join(path, f"workertemp_{_cluster(strategy)[2]}")


def remove_write_dir(path: str, *, strategy: tf.distribute.Strategy) -> None:
    """Removes a non-chief worker's temporary folder made by `write_dir`; nothing on the chief."""
    temp = write_dir(path, strategy=strategy)
    if temp != path and tf.io.gfile.exists(temp):
        tf.io.gfile.rmtree(temp)


def wait_for_all(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has called it; at once unless multi-worker.

    The end of a run: workers leave together, after the chief's export. A worker that exits
    while the chief still works shows up in the chief's log as a crashed task (the coordination
    service stops getting its heartbeats).
    """
    if is_multi_worker(strategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """True for the default strategy (one device, plain variables)."""
    return not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy,
                                     tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))


def exact_eval_pass(strategy: tf.distribute.Strategy) -> bool:
    """Whether validation can be one exact pass over a finite dataset: only under the default
    strategy. Keras needs a step count for every distributed dataset (they have no cardinality:
    "When providing a distributed dataset, you must specify the number of steps to run"), and
    across workers each must run the same number of steps, so there the eval data repeats and
    its steps are counted; a wrapped-around batch then counts a few images twice."""
    return is_default(strategy)


def steps_per_execution(strategy: tf.distribute.Strategy, *, steps_per_epoch: int) -> int:
    """Train steps per call into the device: many on a TPU (each call has a host round trip),
    one elsewhere so callbacks see every step."""
    return min(steps_per_epoch, TPU_STEPS_PER_EXECUTION) if is_tpu(strategy) else 1


def train_and_eval_datasets(build: Callable, *, strategy: tf.distribute.Strategy, batch_size: int,
                            has_eval: bool, eval_examples: Optional[int]):
    """(train, eval or None, eval steps or None), distributed: what a phase fits on, images or
    embeddings alike.

    `build(split, input_context, per_replica_batch, repeat)` makes one input pipeline's dataset
    of 'train' or 'eval'. Training repeats (the steps per epoch are counted); validation is one
    exact pass where the strategy allows (`exact_eval_pass`), else it repeats and its steps are
    counted from `eval_examples` at the global `batch_size`.
    """
    def make(split: str, repeat: bool):
        return strategy.distribute_datasets_from_function(
            lambda ctx: build(split, ctx, ctx.get_per_replica_batch_size(batch_size), repeat))
    train = make("train", True)
    if not has_eval:
        return train, None, None
    if exact_eval_pass(strategy):
        return train, make("eval", False), None
    return train, make("eval", True), max(1, -(-(eval_examples or 1) // batch_size))

