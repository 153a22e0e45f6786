"""The one place where tf.distribute strategies are made.

`build_strategy(runtime)` turns --strategy and the cluster environment into a strategy;
`is_chief(strategy)` tells whether this process writes summaries, history and the export.
"""
from __future__ import annotations

import json
import os

from absl import logging
import tensorflow as tf

from trainer.config import Runtime


def _cluster_tasks() -> int:
    """Tasks in the TF_CONFIG cluster (1 when there is none)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    return sum(len(v) for v in tf_config.get("cluster", {}).values()) or 1


def choose(runtime: Runtime) -> tuple:
    """(strategy name, reason) for --strategy, resolving `auto` from the environment."""
    if runtime.strategy != "auto":
        return runtime.strategy, "--strategy"
    if runtime.tpu or os.environ.get("TPU_NAME"):
        return "tpu", "a TPU is configured"
    if _cluster_tasks() > 1:
        return "multi_worker", f"the cluster has {_cluster_tasks()} tasks"
    gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus > 1:
        return "mirrored", f"{gpus} GPUs"
    return "default", "one device"


def build_strategy(runtime: Runtime) -> tf.distribute.Strategy:
    name, why = choose(runtime)
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=runtime.tpu or os.environ.get("TPU_NAME"))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("strategy %s (%s), %d replica(s)", name, why, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())
