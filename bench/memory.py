"""Memory estimate against measured peak, per phase and batch size (issue 7).

    python bench/memory.py [--batches=8,16,32] [--configs=frozen,finetune,bn_trainable]
                           [--image_size=224] [--backbone=efficientnet-b0] [--steps=4]

For each configuration and batch, a fresh process (this script with --child) imports
TensorFlow, reads its resident memory (the idle baseline), resets the kernel's high-water mark
(/proc/self/clear_refs), builds the classifier (weights none: the values do not change the
memory), asks trainer.training.memory for the phase's estimate, then trains --steps steps the way the
trainer does (its model, compile and fit, Adam) on synthetic JPEG TFRecords, and reads the peak
resident memory (VmHWM) — on a GPU, TensorFlow's peak device memory instead. The input
pipeline has the trainer's stages (parallel parse and random-crop decode to uint8, parallel
batch, cast to float32, autotuned prefetch) but is written here, so that the benchmark does not
move with trainer/data/pipelines.py's tuning. The table
shows estimate, measured peak over the baseline, and their ratio; the goal is within +-25 %.

Configurations (B0 by default):
  frozen        head only, backbone in inference mode (--bn=frozen, frozen phase)
  finetune      the whole backbone trains, BN frozen (--bn=frozen, --unfreeze=all)
  bn_trainable  the seed blog's variant: BN layers train in the frozen phase (--bn=trainable)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

CONFIGS = {
    "frozen": dict(phase="frozen", unfreeze="none", bn="frozen"),
    "finetune": dict(phase="finetune", unfreeze="all", bn="frozen"),
    "bn_trainable": dict(phase="frozen", unfreeze="none", bn="trainable"),
}
NUM_CLASSES = 10
NUM_RECORDS = 96
RECORD_SIZE = 256
GOAL = 0.25

flags.DEFINE_list("batches", ["8", "16", "32"], "Per-replica batch sizes.")
flags.DEFINE_list("configs", list(CONFIGS), f"Configurations: {', '.join(CONFIGS)}.")
flags.DEFINE_string("backbone", "efficientnet-b0", "Backbone.")
flags.DEFINE_integer("image_size", 224, "Input side in pixels.")
flags.DEFINE_integer("steps", 4, "Training steps per measurement.")
flags.DEFINE_string("json", None, "Also write the rows here.")
flags.DEFINE_string("child", None, "Internal: CONFIG:BATCH to measure in this process.")
flags.DEFINE_string("records", None, "Internal: the TFRecord folder.")
FLAGS = flags.FLAGS


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Sets VmHWM to the current RSS (Linux >= 4.0, `man 5 proc`, clear_refs value 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def write_records(folder: str) -> None:
    """NUM_RECORDS photo-like JPEGs in one TFRecord shard with the data contract's keys."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    path = os.path.join(folder, "train-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(NUM_RECORDS):
            coarse = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.float32)
            image = tf.image.resize(coarse[None], [RECORD_SIZE, RECORD_SIZE])[0].numpy()
            image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_jpeg(image, quality=90).numpy()])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % NUM_CLASSES])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("".join(f"class{i}\n" for i in range(NUM_CLASSES)))


def build_input(records: str, *, batch: int, image_size: int):
    """(float32 images in 0..255, int32 labels) batches, as trainer.data.pipelines.build_dataset yields them."""
    import tensorflow as tf

    def decode(serialized):
        features = tf.io.parse_single_example(serialized, {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64)})
        image_bytes = features["image/encoded"]
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.io.extract_jpeg_shape(image_bytes), tf.zeros([0, 0, 4]), area_range=(0.08, 1.0),
            aspect_ratio_range=(0.75, 1.33), min_object_covered=0.1, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
        image = tf.image.random_flip_left_right(tf.image.resize(image, [image_size, image_size]))
        return tf.cast(image + 0.5, tf.uint8), tf.cast(features["image/class/label"], tf.int32)

    ds = tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(records, "train-*.tfrecord")))
    ds = ds.shuffle(NUM_RECORDS).repeat().map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch, num_parallel_calls=tf.data.AUTOTUNE).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def measure(config_name: str, batch: int, records: str) -> dict:
    """Runs in the child: estimate, then train and read the peak."""
    import tensorflow as tf
    import tf_keras as keras
    from trainer.configs import config
    from trainer.training import memory
    from trainer.models import classifier
    from trainer.models import finetuning
    baseline_kb = proc_status_kb("VmRSS")
    reset_peak_rss()
    spec = CONFIGS[config_name]
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    model_cfg = config.Model(backbone=FLAGS.backbone, weights="none", bn=spec["bn"])
    phase = config.Phase(name=spec["phase"], epochs=1, batch_size=batch, learning_rate=1e-3, unfreeze=spec["unfreeze"])
    model = classifier.build_classifier(model_cfg, num_classes=NUM_CLASSES, image_size=FLAGS.image_size)
    estimate = memory.estimate_phase(model, phase=phase, bn=spec["bn"], device=device)
    finetuning.set_trainable(model, phase=phase, bn=spec["bn"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    ds = build_input(records, batch=batch, image_size=FLAGS.image_size)
    built_kb = proc_status_kb("VmRSS")
    start = time.time()
    model.fit(ds, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0)
    seconds = time.time() - start
    if device == "GPU":
        measured = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    else:
        measured = (proc_status_kb("VmHWM") - baseline_kb) * 1024
    return {"config": config_name, "batch": batch, "device": device,
            "estimate": estimate.peak_bytes(batch), "measured": measured,
            "fixed_bytes": estimate.fixed_bytes, "bytes_per_example": estimate.bytes_per_example,
            "input_bytes_per_example": estimate.input_bytes_per_example,
            "kept": estimate.activations.kept, "forward_peak": estimate.activations.forward_peak,
            "backward_peak": estimate.activations.backward_peak,
            "built": (built_kb - baseline_kb) * 1024, "baseline": baseline_kb * 1024,
            "trainable_params": estimate.trainable_params, "seconds": round(seconds, 1)}


def run_child(config_name: str, batch: int, records: str) -> dict:
    """One measurement in a fresh process: the peak must not include another's."""
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={config_name}:{batch}", f"--records={records}",
           f"--backbone={FLAGS.backbone}", f"--image_size={FLAGS.image_size}", f"--steps={FLAGS.steps}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{config_name}:{batch} failed ({out.returncode}):\n{out.stderr[-3000:]}")


def format_table(rows) -> str:
    mb = 1024 ** 2
    lines = [f"{'config':<13} {'batch':>5} {'estimate MiB':>12} {'measured MiB':>12} {'ratio':>6} "
             f"{'fixed MiB':>9} {'MiB/example':>11} {'within 25%':>10}"]
    for r in rows:
        ratio = r["estimate"] / r["measured"]
        lines.append(f"{r['config']:<13} {r['batch']:>5} {r['estimate'] / mb:>12.0f} {r['measured'] / mb:>12.0f} "
                     f"{ratio:>6.2f} {r['fixed_bytes'] / mb:>9.0f} {r['bytes_per_example'] / mb:>11.1f} "
                     f"{'yes' if abs(ratio - 1) <= GOAL else 'NO':>10}")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.child:
        name, batch = FLAGS.child.split(":")
        print("RESULT " + json.dumps(measure(name, int(batch), FLAGS.records)), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as records:
        write_records(records)
        for name in FLAGS.configs:
            for batch in (int(b) for b in FLAGS.batches):
                row = run_child(name, batch, records)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(format_table(rows))
    worst = max(abs(r["estimate"] / r["measured"] - 1) for r in rows)
    print(f"worst_ratio_error {worst:.3f}")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
