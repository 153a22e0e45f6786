"""TFRecord read throughput from gs:// (through the GCS test front) against local disk.

    python bench/gcs_read.py [--shards=8] [--shard_mb=16] [--record_kb=110] [--cycle_length=8]

Writes the same shards of random records (JPEG-sized, ~110 KB, so they do not compress) to a
local temp folder and, through testbed/gcs_front.py, to the in-memory GCS emulator. Then
reads them, each configuration in a fresh process (TensorFlow reads its GCS_* settings once, at
import), with the interleaved TFRecordDataset that trainer.data.pipelines uses, and prints one line per
figure: MB/s, records/s and the growth of peak RSS while reading, for

  local      local disk (page cache warm: it was just written),
  gcs_16mb   gs:// with the trainer's read block (GCS_READ_CACHE_BLOCK_SIZE_MB=16),
  gcs_64mb   gs:// with TensorFlow's own default block (64 MiB),

then `ratio_gcs_16mb_vs_local`. The gs:// figures measure the front (TLS, a Python proxy, a
Python emulator, all on this machine's cores), not Cloud Storage: they show the overhead the
tests pay, and the memory each read block size costs, not what a cloud job will see.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("shards", 8, "TFRecord shards to write and read.")
flags.DEFINE_integer("shard_mb", 16, "Size of each shard, MB.")
flags.DEFINE_integer("record_kb", 110, "Size of each record, KB (an ImageNet JPEG is ~110).")
flags.DEFINE_integer("cycle_length", 8, "Shards read at once (trainer.data.pipelines uses up to 16).")
flags.DEFINE_string("child", None, "Internal: read FILES_GLOB in this process and print JSON.")
FLAGS = flags.FLAGS

CONFIGS = (("local", None), ("gcs_16mb", "16"), ("gcs_64mb", "64"))


def read_all(*, pattern: str, cycle_length: int) -> dict:
    """Reads every record the glob names; returns bytes, records, seconds, peak-RSS growth."""
    import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=cycle_length, block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE).map(tf.strings.length).batch(64).prefetch(2)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    total, count = 0, 0
    for lengths in ds:
        total += int(tf.reduce_sum(lengths))
        count += int(tf.size(lengths))
    seconds = time.perf_counter() - start
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"bytes": total, "records": count, "seconds": seconds, "rss_growth_mb": rss_growth_mb}


def write_shards(*, roots: list[str]) -> None:
    """Writes identical random shards under each root (local folder or gs:// bucket)."""
    import numpy as np
    import trainer  # noqa: F401
    import tensorflow as tf

    rng = np.random.default_rng(0)
    per_shard = max(1, FLAGS.shard_mb * 1024 // FLAGS.record_kb)
    for i in range(FLAGS.shards):
        records = [rng.integers(0, 256, FLAGS.record_kb * 1024, dtype=np.uint8).tobytes()
                   for _ in range(per_shard)]
        for root in roots:
            path = f"{root}/train-{i:05d}-of-{FLAGS.shards:05d}.tfrecord"
            with tf.io.TFRecordWriter(path) as w:
                for r in records:
                    w.write(r)


def run_child(*, pattern: str, env: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={pattern}",
           f"--cycle_length={FLAGS.cycle_length}"]
    out = subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(read_all(pattern=FLAGS.child, cycle_length=FLAGS.cycle_length)))
        return
    from testbed.gcs_front import GcsFront

    front = GcsFront().start()
    workdir = tempfile.mkdtemp(prefix="gcs-read-bench-")
    try:
        os.environ.update(front.env)
        bucket = front.create_bucket("bench")
        write_shards(roots=[workdir, bucket])
        results = {}
        for name, block_mb in CONFIGS:
            env = dict(os.environ)
            if block_mb:
                env["GCS_READ_CACHE_BLOCK_SIZE_MB"] = block_mb
            root = bucket if block_mb else workdir
            results[name] = run_child(pattern=f"{root}/train-*", env=env)
        report(results)
    finally:
        front.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(results: dict) -> None:
    first = next(iter(results.values()))
    print(f"data {first['records']} records, {first['bytes'] / 1e6:.0f} MB, "
          f"{FLAGS.shards} shards, cycle_length {FLAGS.cycle_length}")
    rates = {}
    for name, r in results.items():
        rates[name] = r["bytes"] / 1e6 / r["seconds"]
        print(f"{name:9s} MB_per_s {rates[name]:7.1f}  records_per_s "
              f"{r['records'] / r['seconds']:7.0f}  peak_rss_growth_MB {r['rss_growth_mb']:6.0f}")
    print(f"ratio_gcs_16mb_vs_local {rates['gcs_16mb'] / rates['local']:.2f}")


if __name__ == "__main__":
    app.run(main)
