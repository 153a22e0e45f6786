"""Training throughput and peak memory per phase: ours against the seed blog's frozen variant.

    python bench/train_phases.py [--image_size=224] [--batch_size=16] [--steps=12]

Three configurations of B0, one run, each in its own process (so peak RSS is its own):
  frozen        our frozen phase: backbone.trainable=False, called in inference mode, head only
  finetune      our fine-tune phase: the whole backbone trains, BN in inference mode
  seed_bn       the seed blog's frozen variant: BN layers trainable (training mode), all else frozen
Each process builds the model, compiles it the way train.py does, runs warm-up steps (tracing),
then times `--steps` steps on synthetic in-memory batches. Prints one line per configuration and
the ratios the issue sets targets for: frozen >= 2x finetune and >= 4x seed_bn.

Whole runs (the frozen phase on cached embeddings, fine-tuning) are compared by the time they
take to reach a held-out accuracy on real photos: bench/time_to_accuracy.py.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"frozen": ("none", "frozen"), "finetune": ("all", "frozen"), "seed_bn": ("none", "trainable")}


def measure(name: str, *, image_size: int, batch_size: int, steps: int, warmup: int) -> dict:
    """Runs in the child process: builds, traces, times; returns img/s and peak RSS."""
    sys.path.insert(0, ROOT)
    import trainer  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    from trainer.configs import config
    from trainer.models import classifier
    from trainer.models import finetuning
    baseline = _peak_rss_mb()
    unfreeze, bn = CONFIGS[name]
    phase_name = "frozen" if unfreeze == "none" else "finetune"
    model = classifier.build_classifier(config.Model(backbone="efficientnet-b0", weights="none", bn=bn), num_classes=10, image_size=image_size)
    finetuning.set_trainable(model, phase=config.Phase(name=phase_name, epochs=1, batch_size=batch_size,
                                                      learning_rate=1e-3, unfreeze=unfreeze), bn=bn)
    model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, batch_size).astype("int32"))
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"name": name, "images_per_s": steps * batch_size / seconds, "peak_rss_mb": _peak_rss_mb(),
            "baseline_rss_mb": baseline, "trainable_params": classifier.parameter_counts(model)["trainable"]}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, image_size=args.image_size, batch_size=args.batch_size,
                                 steps=args.steps, warmup=args.warmup)))
        return
    results = {}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, f"--child={name}", f"--image_size={args.image_size}",
                              f"--batch_size={args.batch_size}", f"--steps={args.steps}", f"--warmup={args.warmup}"],
                             capture_output=True, text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:9s} images_per_s={r['images_per_s']:.1f} peak_rss_mb={r['peak_rss_mb']:.0f} "
              f"trainable_params={r['trainable_params']:,}", flush=True)
    fast = results["frozen"]["images_per_s"]
    print(f"speed_ratio_frozen_vs_finetune={fast / results['finetune']['images_per_s']:.2f}  (target >= 2)")
    print(f"speed_ratio_frozen_vs_seed_bn={fast / results['seed_bn']['images_per_s']:.2f}  (target >= 4)")
    mem = results["frozen"]["peak_rss_mb"]
    print(f"memory_ratio_finetune_vs_frozen={results['finetune']['peak_rss_mb'] / mem:.2f}")
    print(f"memory_ratio_seed_bn_vs_frozen={results['seed_bn']['peak_rss_mb'] / mem:.2f}")


if __name__ == "__main__":
    main()
