"""Serving latency: the export through the gRPC test server vs the same export in-process.

    .venv/bin/python -m bench.serving [--image_size=224] [--reps_batch1=40] [--reps_batch32=12]

Exports a B0 classifier (testbed.exports; random weights: latency does not depend on them), loads
the export in this process, and starts testbed/serving_server.py on it in a child process (a
separate process, as tensorflow_model_server would be). Requests of 1 and 32 JPEGs alternate
between the two paths, so both see the same machine load; each line prints p50 / p99 of one
path and the ratio. Then the in-graph decode: the signature's decode+crop+resize alone vs
the whole serving_default call, per image.

The test server is Python (protobuf conversion in Python, the GIL), so its overhead is an
upper bound on tensorflow_model_server's, which does the same work in C++.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
from PIL import Image

import trainer  # noqa: F401  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
import tensorflow as tf  # noqa: E402

from serving import client as sc, signatures  # noqa: E402
from testbed import exports, serving_server  # noqa: E402


def jpegs(count: int, *, seed: int = 0) -> list:
    """Photo-sized JPEGs (320x240, smooth noise) so decoding costs what it costs in use."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((320, 240), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def percentiles(samples: list) -> tuple:
    ms = np.asarray(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare_paths(*, loaded, client: sc.GrpcClient, batch: int, reps: int) -> None:
    images = tf.constant(jpegs(batch, seed=batch))
    as_list = images.numpy().tolist()
    serve = loaded.signatures["serving_default"]
    for _ in range(2):  # warm both paths (the server replayed its warmup file already)
        serve(image_bytes=images)
        client.predict(as_list)
    local, remote = [], []
    for _ in range(reps):
        local.append(timed(lambda: serve(image_bytes=images)))
        remote.append(timed(lambda: client.predict(as_list)))
    (l50, l99), (r50, r99) = percentiles(local), percentiles(remote)
    print(f"batch {batch:2d} in-process     p50 {l50:8.1f} ms  p99 {l99:8.1f} ms  ({reps} requests)")
    print(f"batch {batch:2d} gRPC server    p50 {r50:8.1f} ms  p99 {r99:8.1f} ms  "
          f"ratio p50 {r50 / l50:.3f}x  p99 {r99 / l99:.3f}x")


def decode_cost(*, loaded, image_size: int, reps: int) -> None:
    images = tf.constant(jpegs(32, seed=7))
    decode = tf.function(lambda b: signatures.decode_batch(b, image_size=image_size))
    serve = loaded.signatures["serving_default"]
    decode(images), serve(image_bytes=images)
    decode_s = [timed(lambda: decode(images).numpy()) for _ in range(reps)]
    serve_s = [timed(lambda: serve(image_bytes=images)) for _ in range(reps)]
    d50, s50 = np.median(decode_s) * 1000 / 32, np.median(serve_s) * 1000 / 32
    print(f"in-graph decode (320x240 JPEG -> {image_size}px)  {d50:6.2f} ms/image  "
          f"whole serving_default {s50:6.2f} ms/image  decode share {d50 / s50:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--reps_batch1", type=int, default=40)
    parser.add_argument("--reps_batch32", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        path = exports.build_export(f"{root}/effnet", backbone="efficientnet-b0", num_classes=10,
                                    image_size=args.image_size, verify=True).path
        loaded = tf.saved_model.load(path)
        proc, address, _ = serving_server.start_subprocess(model_name="effnet", model_base_path=f"{root}/effnet")
        client = sc.GrpcClient(address, model="effnet", timeout=120)
        try:
            print(f"B0 at {args.image_size}px, CPU, export {path.rsplit('/', 1)[-1]}")
            compare_paths(loaded=loaded, client=client, batch=1, reps=args.reps_batch1)
            compare_paths(loaded=loaded, client=client, batch=32, reps=args.reps_batch32)
            decode_cost(loaded=loaded, image_size=args.image_size, reps=args.reps_batch32)
        finally:
            client.close()
            proc.stdin.close()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
