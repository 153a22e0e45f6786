"""Training throughput and peak memory per phase: ours against the seed blog's frozen variant.

    python bench/train_phases.py [--image_size=224] [--batch_size=16] [--steps=12]

Three configurations of B0, one run, each in its own process (so peak RSS is its own):
  frozen        our frozen phase: backbone.trainable=False, called in inference mode, head only
  finetune      our fine-tune phase: the whole backbone trains, BN in inference mode
  seed_bn       the seed blog's frozen variant: BN layers trainable (training mode), all else frozen
Each process builds the model, compiles it the way train.py does, runs warm-up steps (tracing),
then times `--steps` steps on synthetic in-memory batches. Prints one line per configuration and
the ratios the issue sets targets for: frozen >= 2x finetune and >= 4x seed_bn.

Then (unless --phase_images=0) a whole 5-epoch frozen phase over the same N demo images
(JPEG TFRecords, with a 20 % validation split, no early stopping), each in its own process, timed
from the start of the phase to its end -- cache building included:
  cached        ours: embeddings computed once per view (2 with the default flip), head trained on them
  streaming     ours with --frozen_cache=off: images decoded and run through the backbone every epoch
  seed_bn       the seed blog's variant (BN trainable, so no cache), streaming
and prints frozen_phase_speedup_vs_seed_bn and frozen_phase_speedup_vs_streaming.
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
    from trainer import config, model as model_lib  # pylint: disable=import-outside-toplevel
    baseline = _peak_rss_mb()
    unfreeze, bn = CONFIGS[name]
    phase_name = "frozen" if unfreeze == "none" else "finetune"
    model = model_lib.build_classifier(config.Model(backbone="efficientnet-b0", weights="none", num_classes=10,
                                                    image_size=image_size, bn=bn))
    model_lib.set_trainable(model, phase=config.Phase(name=phase_name, epochs=1, batch_size=batch_size,
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
            "baseline_rss_mb": baseline, "trainable_params": model_lib.parameter_counts(model)["trainable"]}


PHASE_CONFIGS = {"cached": ("auto", "frozen"), "streaming": ("off", "frozen"), "seed_bn": ("off", "trainable")}


def measure_phase(name: str, *, records: str, image_size: int, batch_size: int, epochs: int, augment: str) -> dict:
    """Runs in the child process: one whole frozen phase through train.py's own phase code."""
    sys.path.insert(0, ROOT)
    import trainer  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from trainer import config, data, preemption, rundir, train  # pylint: disable=import-outside-toplevel
    from trainer import model as model_lib  # pylint: disable=import-outside-toplevel
    cache, bn = PHASE_CONFIGS[name]
    train_glob, eval_glob = os.path.join(records, "train-*.tfrecord"), os.path.join(records, "validation-*.tfrecord")
    names = data.resolve_class_names(train_glob)
    cfg = config.Config(
        data=config.Data(train_data=train_glob, eval_data=eval_glob, class_names=names, image_size=image_size,
                         augment=augment,
                         num_train_examples=data.count_examples(train_glob),
                         num_eval_examples=data.count_examples(eval_glob)),
        model=config.Model(backbone="efficientnet-b0", weights="none", num_classes=len(names), image_size=image_size,
                           bn=bn),
        phases=(config.Phase(name="frozen", epochs=epochs, batch_size=batch_size, learning_rate=1e-3,
                             early_stopping_patience=0),),
        runtime=config.Runtime(model_dir=os.path.join(records, f"run-{name}"), frozen_cache=cache, report=False))
    strategy = tf.distribute.get_strategy()
    model = model_lib.build_classifier(cfg.model)
    loop = train._PhaseLoop(model, cfg=cfg, run_dir=rundir.RunDir(cfg.runtime.model_dir), strategy=strategy,  # pylint: disable=protected-access
                            chief=True, callbacks=[], last_phase_callbacks=[])
    start = time.perf_counter()
    with preemption.Guard(strategy=strategy) as guard:
        loop._fit_phase(cfg.phases[0], history=[], guard=guard, extra=[])  # pylint: disable=protected-access
    return {"name": name, "seconds": time.perf_counter() - start, "images": cfg.data.num_train_examples,
            "peak_rss_mb": _peak_rss_mb()}


def _make_records(folder: str, *, images: int, size: int) -> str:
    sys.path.insert(0, ROOT)
    import trainer  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    from trainer import demo, prepare  # pylint: disable=import-outside-toplevel
    demo.write_images(os.path.join(folder, "images"), task="shapes", per_class=-(-images // 4 * 5 // 4), size=size)
    prepare.prepare(input_dir=os.path.join(folder, "images"), output_dir=os.path.join(folder, "records"),
                    validation_fraction=0.2, num_shards=4, seed=0)
    return os.path.join(folder, "records")


def _phase_benchmark(args) -> None:
    import tempfile  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as tmp:
        records = _make_records(tmp, images=args.phase_images, size=args.image_size + 32)
        results = {}
        for name in PHASE_CONFIGS:
            out = subprocess.run([sys.executable, __file__, f"--phase_child={name}", f"--records={records}",
                                  f"--image_size={args.image_size}", f"--batch_size={args.phase_batch_size}",
                                  f"--phase_epochs={args.phase_epochs}", f"--augment={args.augment}"],
                                 capture_output=True, text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            r = results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"frozen_phase {name:9s} augment={args.augment} seconds={r['seconds']:.1f} images={r['images']} "
                  f"epochs={args.phase_epochs} "
                  f"peak_rss_mb={r['peak_rss_mb']:.0f}", flush=True)
    ours = results["cached"]["seconds"]
    print(f"frozen_phase_speedup_vs_seed_bn={results['seed_bn']['seconds'] / ours:.2f}  (goal >= 8)")
    print(f"frozen_phase_speedup_vs_streaming={results['streaming']['seconds'] / ours:.2f}  (goal >= 4)")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--phase_images", type=int, default=320, help="images of the whole-phase benchmark; 0 skips it")
    parser.add_argument("--phase_epochs", type=int, default=5)
    parser.add_argument("--phase_batch_size", type=int, default=64)
    parser.add_argument("--augment", default="flip", help="flip (2 cached views, the default) or none (1 view)")
    parser.add_argument("--skip_steps", action="store_true", help="only the whole-phase benchmark")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--phase_child", help=argparse.SUPPRESS)
    parser.add_argument("--records", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase_child:
        print(json.dumps(measure_phase(args.phase_child, records=args.records, image_size=args.image_size,
                                       batch_size=args.batch_size, epochs=args.phase_epochs, augment=args.augment)))
        return
    if args.skip_steps:
        _phase_benchmark(args)
        return
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
    if args.phase_images:
        _phase_benchmark(args)


if __name__ == "__main__":
    main()
