"""Train steps per second: the default strategy against MirroredStrategy over 2 logical CPUs.

    python bench/distribute.py [--image_size=64] [--batch_size=16] [--steps=10] [--warmup=2]

One process, one run. The CPU is split into 2 logical devices before TensorFlow starts (the way
the tests run Mirrored without GPUs); then, for each strategy made by trainer.runtime.distribute, B0 is
built and compiled in its scope the way train.py's fine-tune phase does (everything trains, BN
in inference mode), fed the same global batch through distribute_datasets_from_function, traced
with `--warmup` steps and timed over `--steps`. Both logical devices share the same cores, so
the ratio shows Mirrored's overhead (per-replica graphs, gradient all-reduce), not a speed-up.
Prints one line per strategy and the ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(name: str, *, image_size: int, batch_size: int, steps: int, warmup: int) -> dict:
    """Builds, traces and times one strategy; returns steps/s and the replica count."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    from trainer.configs import config
    from trainer.runtime import distribute
    from trainer.models import classifier
    from trainer.models import finetuning
    if name == "mirrored" and not tf.config.list_physical_devices("GPU"):
        # Two logical CPU devices stand in for two GPUs (the product mirrors over real GPUs only).
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = distribute.build_strategy(strategy=name)
    with strategy.scope():
        model = classifier.build_classifier(config.Model(backbone="efficientnet-b0", weights="none"), num_classes=10, image_size=image_size)
        finetuning.set_trainable(model, phase=config.Phase(name="finetune", epochs=1, batch_size=batch_size,
                                                          learning_rate=1e-4, unfreeze="all"), bn="frozen")
        model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, 10, batch_size).astype("int32")
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(ctx.get_per_replica_batch_size(batch_size)).repeat())
    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return {"steps_per_s": steps / (time.perf_counter() - start), "replicas": strategy.num_replicas_in_sync}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16, help="global batch size (even: 2 replicas)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    import trainer  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import  # before TensorFlow
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    results = {}
    for name in ("default", "mirrored"):
        results[name] = measure(name, image_size=args.image_size, batch_size=args.batch_size, steps=args.steps,
                                warmup=args.warmup)
        print(f"{name:>8}: {results[name]['steps_per_s']:.2f} steps/s  ({results[name]['replicas']} replica(s), "
              f"global batch {args.batch_size}, B0 fine-tune at {args.image_size} px)", flush=True)
    print(f"   ratio: mirrored/default = {results['mirrored']['steps_per_s'] / results['default']['steps_per_s']:.2f}")


if __name__ == "__main__":
    main()
